/* masking.h: data2vec's per-modality masks (text spans / BERT, BEiT image blocks, wav2vec speech
 * spans), drawn from a counter-based RNG keyed on (seed, epoch, global sample index), so a
 * sample's mask is the same whatever the rank count or the batch it lands in. */
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

#endif
