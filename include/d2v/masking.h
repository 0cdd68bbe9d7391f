/* masking.h: data2vec's per-modality masks (v1: text spans / BERT, BEiT image blocks, wav2vec
 * speech spans; v2: inverse 2-D blocks, 1-D blocks, random tokens), drawn from a counter-based
 * RNG keyed on (seed, epoch or update, global sample index), so a sample's mask is the same
 * whatever the rank count or the batch it lands in. */
#ifndef D2V_MASKING_H
#define D2V_MASKING_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/rng.h"

/* ---- text: fairseq MaskTokensDataset (docs/algorithm.md §3.2)
 * ------------------------------------------- */
typedef struct {
    float mask_prob;           // 0.35 span mode (data2vec release), 0.15 BERT mode
    int span;                  // mask_multiple_length: 4 span mode, 1 BERT mode
    float leave_unmasked_prob; // BERT: 0.1 (selected but kept as is); span mode 0
    float random_token_prob;   // BERT: 0.1 (selected, replaced by a random token); span mode 0
    int loss_on_all_selected;  // 0: only positions that now hold <mask> enter the loss (fairseq,
                               //    issue #4229); 1: every selected position (BERT paper)
    int mask_id;               // <mask>
    int vocab_size;            // random tokens are drawn uniformly from [nspecial, vocab_size)
    int nspecial;              // ids below this (bos/pad/eos/unk...) are never drawn as random
    int32_t exclude[8];        // further ids never drawn (special tokens anywhere in the vocab,
    int n_exclude;             //   e.g. appended after a GPT-2 vocab.json)
} TextMaskConfig;

/// Mask one sample of `len` real tokens (no padding inside). Writes out[0..len) (the student
/// input) and loss[0..len) (1 = position enters the loss). scratch: >= 2*len ints.
/// Returns the number of loss positions.
int text_mask_sample(int32_t *out, uint8_t *loss, const int32_t *tokens, int len,
                     const TextMaskConfig *c, RngStream *rng, int *scratch);

/* ---- image: BEiT block-wise masking (docs/algorithm.md §3.3)
 * ---------------------------------------------- */
typedef struct {
    int num_masking_patches; // 120 of 196 for 224/16 (about 60 %)
    int min_num_patches;     // 16
    int max_num_patches;     // upper bound of one block's area; <= 0 means num_masking_patches
    float min_aspect;        // 0.3; aspect ratio is log-uniform in [min_aspect, 1/min_aspect]
} BlockMaskConfig;

/// Mask one H x W patch grid (row-major, 1 = masked). Returns the masked count (<= target: like
/// BEiT it may stop early when no block fits).
int block_mask_sample(uint8_t *mask, int H, int W, const BlockMaskConfig *c, RngStream *rng);

/* ---- speech: wav2vec 2.0 compute_mask_indices (docs/algorithm.md §3.1)
 * ------------------------------------ */
typedef struct {
    float mask_prob;        // 0.65
    int mask_length;        // 10
    int min_masks;          // 1
    int require_same_masks; // 1: thin every row to the batch's smallest masked count
    float mask_dropout;     // 0: extra fraction of masked positions dropped at random
} SpanMaskConfig;

/// Mask one sequence of T frames (1 = masked); spans may overlap and merge. scratch >= 2*T ints.
/// Returns the masked count.
int span_mask_sample(uint8_t *mask, int T, const SpanMaskConfig *c, RngStream *rng, int *scratch);

/// Masks for a batch of B sequences of T frames: each row from span_mask_sample keyed on its
/// sample id, then (require_same_masks) every row randomly thinned to the smallest count, as
/// fairseq does. The thinning is the one place where a row depends on its batch: the target count
/// is the batch minimum (its randomness is still keyed on the sample id). sample_ids NULL means
/// row b has id b. scratch >= 2*T ints.
void span_mask_batch(uint8_t *masks, int B, int T, const SpanMaskConfig *c, uint64_t seed,
                     uint64_t epoch, const int64_t *sample_ids, int *scratch);

/* ---- data2vec 2.0 (docs/algorithm.md §3.4)
 * ------------------------------------------------ */

/* Every v2 mask has the same masked count in every row (fairseq require_same_masks), so the
 * student encoder can gather the kept positions of a (B*M, T) batch into a dense (B*M, T - n)
 * tensor. Counts follow fairseq's arithmetic in doubles, with mask_prob and adjust read back as
 * the shortest decimal that gives the same float (0.8f as 0.8), so a value written in a config
 * gives Python's count: int(10 * (1 - 0.2)) = 8 kept, where 0.2f would give 7. */

typedef enum {
    V2_MASK_BLOCK_2D_INVERSE = 1, // images: kept 2-D blocks, R = 0.8, block 3, adjust 0.07
    V2_MASK_BLOCK_1D = 2,         // audio: masked 1-D blocks, R = 0.5, block 5, adjust 0.05
    V2_MASK_RANDOM = 3,           // text: MAE random masking, R = 0.48
} V2MaskKind;

typedef struct {
    V2MaskKind kind;
    int T;           // row length (BLOCK_1D, RANDOM); ignored by BLOCK_2D_INVERSE
    int H, W;        // patch grid (BLOCK_2D_INVERSE, rows of H*W cells, row-major); else ignored
    float mask_prob; // R, in [0, 1): the masked share
    int block;       // block side (>= 1); ignored by RANDOM
    float adjust;    // A, in [0, 1]: extra block centres (fairseq mask_prob_adjust); not RANDOM
} V2MaskConfig;

/// fairseq compute_block_mask_2d(inverse_mask=True, require_same_masks=True) on an H x W grid
/// (1 = masked, row-major): int(H*W*(1-R+A)/block^2) centres of KEPT blocks uniform over the
/// cells (with replacement), each keeping block x block cells from centre - block/2 (clipped at
/// the border), then uniformly chosen kept cells dropped, or unkept cells added, until exactly
/// int(H*W*(1-R)) are kept. scratch >= H*W ints. Returns the masked count,
/// H*W - int(H*W*(1-R)) (157 of 196 at 14 x 14, R = 0.8).
int v2_inverse_block_mask_2d(uint8_t *mask, int H, int W, float mask_prob, int block, float adjust,
                             RngStream *rng, int *scratch);

/// fairseq compute_block_mask_1d(require_same_masks=True) on T frames (1 = masked):
/// int(T*(R+A)/block) centres of MASKED blocks of `block` frames from centre - block/2 (clipped),
/// then forced to exactly int(T*R) masked by uniform un-masking or masking. scratch >= T ints.
/// Returns the masked count int(T*R).
int v2_block_mask_1d(uint8_t *mask, int T, float mask_prob, int block, float adjust, RngStream *rng,
                     int *scratch);

/// MAE random masking (fairseq modalities/base.py random_masking): a uniform random set of
/// len_keep = int(T*(1-R)) positions is kept (as argsort of uniform noise), the rest masked.
/// scratch >= T ints. Returns the masked count T - len_keep.
int v2_random_mask(uint8_t *mask, int T, float mask_prob, RngStream *rng, int *scratch);

/// Row length of a configuration (H*W or T); dies on an invalid configuration, naming the field.
int v2_mask_len(const V2MaskConfig *c);
/// The masked count of every row of the configuration (validated as v2_mask_len).
int v2_mask_count(const V2MaskConfig *c);
/// Ints of scratch v2_mask_batch and the per-row functions need for this configuration.
size_t v2_mask_scratch(const V2MaskConfig *c);

/// Masks of B samples x M clones, (B*M, v2_mask_len(c)) bytes, sample-major: row b*M + m is
/// clone m of sample b (PyTorch's repeat_interleave(M) order). Row (b, m) draws from
/// rng_stream_clone(seed, update, sample_ids[b], RNG_MASK_V2_*, m), so it is the same whatever
/// rank, thread count or batch position the sample has. sample_ids NULL means row b has id b.
/// scratch: v2_mask_scratch(c) ints.
void v2_mask_batch(uint8_t *masks, int B, int M, const V2MaskConfig *c, uint64_t seed,
                   uint64_t update, const int64_t *sample_ids, int *scratch);

/// The kept (0) positions of one mask row in ascending order into ids_keep (room for T);
/// returns their count. The student gathers these rows.
int v2_kept_indices(const uint8_t *mask, int T, int32_t *ids_keep);

#endif
