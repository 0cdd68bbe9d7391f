/* rng.h: all of d2v's randomness: one counter-based hash, and one enum naming every stream. */
#ifndef D2V_RNG_H
#define D2V_RNG_H

#include <stdint.h>

/* Nothing is stateful: every draw is a hash of (seed, step or epoch, global sample id, stream or
 * site) and a position, so no mask, crop or dropout depends on the thread or rank count, and a
 * resumed run draws what an uninterrupted one would (docs/architecture.md, "Randomness"). */

/// Every keyed stream. Values are hash inputs: they only need to be distinct (and stable, since
/// changing one changes the draws of runs already in flight).
typedef enum {
    /* masks, keyed on (seed, epoch, sample) through rng_stream */
    RNG_MASK_TEXT = 1,        // text_mask_sample
    RNG_MASK_IMAGE = 2,       // block_mask_sample
    RNG_MASK_SPEECH = 3,      // span_mask_batch: each row's spans
    RNG_MASK_SPEECH_THIN = 4, // span_mask_batch: thinning to the batch minimum, mask_dropout
    /* data2vec 2.0 masks, keyed on (seed, update, sample, clone) through rng_stream_clone */
    RNG_MASK_V2_IMAGE = 0x201, // v2_mask_batch, V2_MASK_BLOCK_2D_INVERSE
    RNG_MASK_V2_AUDIO = 0x202, // v2_mask_batch, V2_MASK_BLOCK_1D
    RNG_MASK_V2_TEXT = 0x203,  // v2_mask_batch, V2_MASK_RANDOM
    /* data, keyed on (seed, epoch, sample) through rng_stream */
    RNG_SHUFFLE = 0x5f1, // the per-epoch global permutation (sample = UINT64_MAX)
    RNG_AUGMENT = 0x5f2, // image crop and flip
    RNG_CROP = 0x5f3,    // speech crop to the batch length
    RNG_JITTER = 0x5f4,  // image colour jitter (its own stream: the crops do not move)
    /* evaluation, keyed on (seed, 0, UINT64_MAX) through rng_stream */
    RNG_PROBE_SPLIT = 0x9e1, // d2v-probe's held-out part of the train split
    /* parameters, keyed on (seed, RNG_INIT, tensor name hash) through rng_key */
    RNG_INIT = 0x1417,
} RngStreamId;

/// Dropout sites (DropKey.site), keyed on (seed, update, sample, site) through rng_key.
enum {
    RNG_SITE_TEXT_EMBED = 1,   // after the text embedding layer norm
    RNG_SITE_SPEECH_INPUT = 2, // after the speech encoder layer norm (student only)
    RNG_SITE_DEC_INPUT = 9,    // data2vec 2.0 decoder input: the encoder output (student only)
    RNG_SITE_V2_NOISE = 10,    // data2vec 2.0: the noise vectors in the masked slots
    RNG_SITE_BLOCKS = 16,      // encoder block l uses RNG_SITE_BLOCKS * (l + 1) + 0..15
};

/// splitmix64's finaliser: the one hash behind every draw.
static inline uint64_t rng_mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/// Key of one site: a hash of (seed, step, global sample index, site).
static inline uint64_t rng_key(uint64_t seed, uint64_t step, uint64_t sample, uint64_t site) {
    uint64_t h = rng_mix64(seed);
    h = rng_mix64(h ^ step);
    h = rng_mix64(h ^ sample);
    return rng_mix64(h ^ site);
}

/// Uniform in [0, 1) for element `index` under `key` (24 bits). Inline, so element-wise loops
/// vectorise it (dropout masks: src/kernels/simd_impl.c).
static inline float rng_uniform(uint64_t key, uint64_t index) {
    /* 24 bits through int32: the same value, and a conversion every vector ISA has */
    return (float)(int32_t)(rng_mix64(key ^ rng_mix64(index)) >> 40) * (1.0f / 16777216.0f);
}
/// Standard normal for element `index` under `key` (Box-Muller on two counter draws).
float rng_normal(uint64_t key, uint64_t index);
/// 64-bit FNV-1a of a string (tensor names as init keys).
uint64_t rng_hash_name(const char *s);

/// A sequential stream derived from a key: masks and data augmentation draw from these.
typedef struct {
    uint64_t key;
    uint64_t counter;
} RngStream;

/// Stream `id` of one sample in one epoch.
RngStream rng_stream(uint64_t seed, uint64_t epoch, uint64_t sample, RngStreamId id);
/// Stream `id` of clone `clone` of one sample in one update (data2vec 2.0's M masks per sample):
/// rng_stream's key with the clone mixed in by one more splitmix64 round,
/// key' = mix64(key ^ mix64(clone)), so every (seed, update, sample, clone) has its own stream.
static inline RngStream rng_stream_clone(uint64_t seed, uint64_t update, uint64_t sample,
                                         RngStreamId id, uint64_t clone) {
    RngStream r = rng_stream(seed, update, sample, id);
    r.key = rng_mix64(r.key ^ rng_mix64(clone));
    return r;
}
/// Uniform double in [0, 1) (53 bits).
double rng_stream_uniform(RngStream *r);
/// Uniform integer in [lo, hi] (inclusive), without modulo bias; lo <= hi.
int64_t rng_stream_int(RngStream *r, int64_t lo, int64_t hi);

#endif
