/* extract.h: frozen features of every sample of a dataset (d2v-extract): the student, the EMA
 * teacher or a random initialisation of a checkpoint's model, or the raw input as a baseline,
 * written as (N, C) float32 variants plus the dataset's labels to one HDF5 file
 * (docs/evaluation.md). */
#ifndef D2V_EXTRACT_H
#define D2V_EXTRACT_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/dataset.h"

enum { EXTRACT_STUDENT, EXTRACT_TEACHER, EXTRACT_RANDOM_INIT, EXTRACT_RAW };
extern const char *const extract_network_names[4]; // "student", "teacher", "random-init", "raw"

typedef struct {
    const char *checkpoint; // model.h5 or a run directory (its newest complete checkpoint);
                            //   unused (NULL) with EXTRACT_RAW
    const char *data;       // the dataset to embed
    const char *out;        // the features file; must not exist
    int network;            // EXTRACT_*
    int batch;              // samples per forward (speech: always 1, whole utterances)
    int last_k;             // blocks averaged by mean_lastk; 0: min(4, L)
    int progress;           // 1: progress lines with an ETA on rank 0 (stderr)
    const char *created_by; // the root attribute, e.g. "d2v-extract 1"
} ExtractConfig;

/// Collective: the batches of `batch` consecutive samples are split over the ranks in contiguous
/// blocks (so every batch, hence every feature, is the same for any rank count), each rank embeds
/// its own, and rank 0 gathers them and writes `out` under a temporary name, renamed when
/// complete. Dies with one line naming the file on any error (an existing output included).
void extract_features(const ExtractConfig *c);

/* The raw-input baselines (EXTRACT_RAW), one sample at a time. */
/// Width of the raw features of d's samples: H*W*C pixels; min(V, EXTRACT_TEXT_BUCKETS) token
/// counts; 2 * EXTRACT_FRAME values of speech frame statistics.
int extract_raw_width(const Dataset *d);
#define EXTRACT_TEXT_BUCKETS 4096 // a larger vocabulary is hashed into this many buckets
#define EXTRACT_FRAME 400         // speech frames: the feature extractor's receptive field ...
#define EXTRACT_HOP 320           // ... and stride (25 ms every 20 ms at 16 kHz)
/// Sample i's raw features into out (extract_raw_width floats): pixels / 255 (the probe
/// standardises each one); token counts (ids above the buckets hashed); speech normalised to
/// zero mean and unit variance, cut into frames, then per frame position the mean over frames
/// followed by the standard deviation. Dies naming the file on a read error.
void extract_raw_sample(const Dataset *d, int64_t i, float *out);

#endif
