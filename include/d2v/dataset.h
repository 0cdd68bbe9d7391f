/* dataset.h: read-only access to d2v HDF5 datasets (one shard or an index of shards, validated at
 * open) and the per-rank batch loader: a global per-epoch shuffle every rank computes alike,
 * disjoint rank slices of each global batch, a rank-count independent cursor, per-modality batch
 * assembly with augmentation, and a background prefetch thread. Layout: docs/datasets.md. */
#ifndef D2V_DATASET_H
#define D2V_DATASET_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

enum { D2V_TEXT = 0, D2V_IMAGE = 1, D2V_SPEECH = 2 };
extern const char *const d2v_modality_names[3];

typedef struct {
    char path[PATH_MAX];
    long long file;      // hid_t of the open shard
    int64_t num_samples; // documents, images or utterances
    int64_t first;       // global index of its first sample
    int64_t *offsets;    // text/speech: (num_samples + 1) token / audio-frame offsets
} DatasetShard;

typedef struct {
    int modality;
    char path[PATH_MAX];
    int n_shards;
    DatasetShard *shards;
    int64_t num_samples;
    int32_t *labels;    // (num_samples) or NULL
    char **label_names; // (n_label_names) or NULL
    size_t n_label_names;
    int H, W, C;                                                 // image
    int32_t vocab_size, bos_id, eos_id, pad_id, unk_id, mask_id; // text
    int sample_rate, audio_float;                                // speech
} Dataset;

/* What a dataset may declare (anything else is refused at open as damaged): */
#define D2V_MAX_SAMPLES ((int64_t)1 << 48) // num_samples
#define D2V_MAX_SHARDS 65536
#define D2V_MAX_IMAGE_SIDE 65536      // height, width
#define D2V_MAX_IMAGE_BYTES (1 << 28) // height x width x channels
#define D2V_MAX_VOCAB (1 << 24)       // vocab_size
#define D2V_MIN_SAMPLE_RATE 1000      // sample_rate, Hz
#define D2V_MAX_SAMPLE_RATE 1000000

/// Open and validate every shard: format_version, modality, integer attributes read as int64
/// and range-checked, shard counts, every dataset's shape, element type and storage, offsets,
/// labels (non-negative, below the number of label names when there are names) and every token
/// id against the vocabulary. `modality` < 0 accepts any. Returns 0, or -1 with a one-line
/// message naming the file and the field in err.
int dataset_open(Dataset *d, const char *path, int modality, char *err, size_t errlen);
void dataset_close(Dataset *d);
/// Length of sample i in tokens (text) or audio frames (speech).
int64_t dataset_sample_len(const Dataset *d, int64_t i);
/// Read one image (H*W*C bytes), `count` tokens or audio frames from offset `start` of sample i.
/// Return 0, or -1 with err naming the file (e.g. truncated).
int dataset_read_image(const Dataset *d, int64_t i, uint8_t *pixels, char *err, size_t errlen);
int dataset_read_tokens(const Dataset *d, int64_t i, int64_t start, int64_t count, int32_t *out,
                        char *err, size_t errlen);
int dataset_read_audio(const Dataset *d, int64_t i, int64_t start, int64_t count, float *out,
                       char *err, size_t errlen);

/* ---- batches ----------------------------------------------------------------------------------
 */

typedef struct {
    int modality;
    int batch_size; // per rank
    uint64_t seed;
    int shuffle; // 1: a new global permutation each epoch
    /* text: blocks of T tokens, each starting with bos; documents end with eos */
    int text_T;
    int text_stream; // 0: a block never crosses a document (padded); 1: one token stream
    /* images: random-resized-crop + horizontal flip (augment), then mean/std per channel */
    int image_augment;
    float crop_scale_min, crop_scale_max; // 0.08, 1 (BEiT); 0.2, 1 (MAE)
    float crop_ratio_min, crop_ratio_max; // 3/4, 4/3
    float flip_prob;                      // 0.5
    int out_H, out_W;                     // output size (0 = dataset size)
    float mean[3], std[3];
    /* speech: crop every utterance to the batch's shortest (fairseq pretraining), at most max */
    int speech_max_samples; // 320000 (20 s)
    int speech_min_samples; // shorter utterances are skipped: 32000 (2 s)
    int speech_normalize;   // zero mean, unit variance per utterance
    int prefetch;           // batches prepared ahead by a background thread (0: none)
    /* images, appended (zero: no jitter, bilinear, the loader's behaviour before they existed) */
    float color_jitter; // augment only: ColorJitter(s, s, s) on the whole image before the crop
    int interpolation;  // LOADER_INTERP_BILINEAR or LOADER_INTERP_BICUBIC (crop resampling)
} LoaderConfig;

/* Image resampling (the crop to out_H x out_W), both on align_corners = False pixel centres with
 * indices clamped at the image edge (torchvision clamps at the crop's) and no antialiasing
 * (F.interpolate semantics):
 *   bilinear  2x2 taps;
 *   bicubic   4x4 taps of PyTorch's cubic convolution (upsample_bicubic2d, A = -0.75), the result
 *             clamped to [0, 255] as a uint8 image would be. The official vision code resizes PIL
 *             images, whose bicubic is A = -0.5 with the filter widened when downscaling; that
 *             antialiasing is not reproduced. */
enum { LOADER_INTERP_BILINEAR = 0, LOADER_INTERP_BICUBIC = 1 };

/// One image's colour-jitter draw (torchvision ColorJitter.get_params with hue off): factor[0..2]
/// for brightness, contrast and saturation, each uniform in [max(0, 1 - s), 1 + s], and order, a
/// random permutation of {0, 1, 2}: the order the three are applied in. Keyed on (seed, epoch,
/// sample) like the crop, on a stream of its own.
typedef struct {
    float factor[3];
    int order[3];
} ColorJitter;
ColorJitter color_jitter_draw(uint64_t seed, int64_t epoch, int64_t sample, float s);
/// torchvision's tensor ColorJitter on img (H, W, C) holding values in [0, 255], in place, in
/// float (PIL would round to uint8 after each step): brightness f*x; contrast f*x + (1-f)*mean,
/// the mean of the whole grayscale image; saturation f*x + (1-f)*gray(x) per pixel (RGB only:
/// one channel is left as it is); gray = 0.2989 R + 0.587 G + 0.114 B; each step clamped to
/// [0, 255].
void color_jitter_apply(float *img, int H, int W, int C, const ColorJitter *j);

typedef struct Batch {
    int B; // samples in this batch (per rank)
    int64_t epoch;
    int64_t *ids;    // (B) global sample index (text: block index) of each row
    int T;           // text: tokens per row
    int32_t *tokens; // (B, T), pad_id after the end
    int H, W, C;     // images
    float *images;   // (B, H, W, C) normalised
    int S;           // speech: samples per row (the crop length)
    float *audio;    // (B, S)
    int32_t *labels; // (B) or -1 when the dataset has none
} Batch;

typedef struct {
    int64_t epoch;
    int64_t position; // global samples handed out in this epoch (rank-count independent)
} LoaderCursor;

typedef struct Loader Loader;

/// A loader for this rank. `rank`/`world` select the slice of each global batch of
/// world * batch_size samples; `start` is where the first batch starts (a checkpoint's cursor:
/// epoch >= 0 and 0 <= position <= samples per epoch, else refused). Dies with a clear message on
/// impossible settings.
Loader *loader_create(Dataset *d, const LoaderConfig *c, int rank, int world, LoaderCursor start);
/// The same, returning NULL with the message in err instead of dying (for fuzzing and callers
/// that recover).
Loader *loader_create_err(Dataset *d, const LoaderConfig *c, int rank, int world,
                          LoaderCursor start, char *err, size_t errlen);
void loader_destroy(Loader *l);
/// Next batch (valid until the next call). Dies naming the file on a read error.
const Batch *loader_next(Loader *l);
/// The same, returning NULL with the message in err on a read error (the loader is then spent:
/// destroy it).
const Batch *loader_next_err(Loader *l, char *err, size_t errlen);
/// Where the next batch will start: save it in checkpoints, pass it back to resume.
LoaderCursor loader_cursor(const Loader *l);
/// Number of loader samples per epoch (text: blocks; others: samples).
int64_t loader_epoch_samples(const Loader *l);

#endif
