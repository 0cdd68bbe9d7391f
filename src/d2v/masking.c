/* masking.c: data2vec v1 masks (docs/algorithm.md §3): text spans/BERT, BEiT image blocks, wav2vec
 * speech spans. fairseq MaskTokensDataset, BEiT MaskingGenerator and compute_mask_indices, on a
 * keyed RNG.
 *
 * Every draw comes from a RngStream keyed on (seed, epoch, global sample id, stream), as fairseq
 * keys numpy's default_rng on hash((seed, epoch, index)): a sample's mask never depends on the rank
 * count or on its neighbours in the batch (except speech's thinning to the batch minimum). The
 * distributions follow fairseq/BEiT; the bit streams do not (no numpy/Python RNG emulation). */
#include "d2v/masking.h"

#include <math.h>
#include <string.h>

#include "d2v/kernels.h"

/* Partial Fisher-Yates over vals[0..n): afterwards vals[0..k) is a uniform random k-subset of
 * them, in random order (numpy's choice(vals, k, replace=False)). k <= n. */
static void shuffle_prefix(int *vals, int n, int k, RngStream *r) {
    for (int j = 0; j < k; j++) {
        int p = (int)rng_stream_int(r, j, n - 1);
        int t = vals[j];
        vals[j] = vals[p];
        vals[p] = t;
    }
}

/* choice(n, k, replace=False): idx (n ints of scratch) ends with the k picks in idx[0..k). */
static void choose_without_replacement(int *idx, int n, int k, RngStream *r) {
    for (int i = 0; i < n; i++)
        idx[i] = i;
    shuffle_prefix(idx, n, k, r);
}

/* ---- text (docs/algorithm.md §3.2)
 * ----------------------------------------------------------------------- */

/* A uniform ordinary token: specials are redrawn (a few tries, then the first ordinary id). */
static int32_t random_token(const TextMaskConfig *c, RngStream *rng) {
    for (int attempt = 0; attempt < 64; attempt++) {
        int32_t t = (int32_t)rng_stream_int(rng, c->nspecial, c->vocab_size - 1);
        int special = 0;
        for (int k = 0; k < c->n_exclude; k++)
            special |= t == c->exclude[k];
        if (!special) return t;
    }
    for (int32_t t = c->nspecial; t < c->vocab_size; t++) {
        int special = 0;
        for (int k = 0; k < c->n_exclude; k++)
            special |= t == c->exclude[k];
        if (!special) return t;
    }
    return c->mask_id;
}

int text_mask_sample(int32_t *out, uint8_t *loss, const int32_t *tokens, int len,
                     const TextMaskConfig *c, RngStream *rng, int *scratch) {
    if (len <= 0) return 0;
    memcpy(out, tokens, (size_t)len * sizeof *out);
    memset(loss, 0, (size_t)len);
    int span = c->span > 0 ? c->span : 1;

    /* num_mask = int(mask_prob * len / span + U): probabilistic rounding; may be 0 for short
     * inputs. Clamped to len (only reachable with mask_prob * ... > len - 1 + ...). */
    int num_mask = (int)((double)c->mask_prob * len / span + rng_stream_uniform(rng));
    if (num_mask > len) num_mask = len;
    if (num_mask < 0) num_mask = 0;

    /* Span starts anywhere, <s> and </s> included; spans are clipped at len, overlaps merge.
     * loss[] doubles as the "selected" flag until the end. */
    choose_without_replacement(scratch, len, num_mask, rng);
    for (int j = 0; j < num_mask; j++)
        for (int k = 0; k < span && scratch[j] + k < len; k++)
            loss[scratch[j] + k] = 1;

    /* BERT mode: a selected position escapes <mask> with p = leave + rand; of those, the share
     * leave/p keep their token and the rest get a random non-special token (fairseq draws both
     * coin flips for every position and ANDs with the selection: the same distribution). */
    double p_other = (double)c->leave_unmasked_prob + c->random_token_prob;
    double p_keep = p_other > 0 ? c->leave_unmasked_prob / p_other : 0;
    int can_random = c->vocab_size > c->nspecial; /* else "random" degrades to "keep" */
    int count = 0;
    for (int i = 0; i < len; i++) {
        if (!loss[i]) continue;
        int keep = 0, random = 0;
        if (p_other > 0 && rng_stream_uniform(rng) < p_other) {
            if (p_keep >= 1 || (p_keep > 0 && rng_stream_uniform(rng) < p_keep) || !can_random)
                keep = 1;
            else
                random = 1;
        }
        if (random)
            out[i] = random_token(c, rng);
        else if (!keep)
            out[i] = c->mask_id;
        /* fairseq's loss is "now holds <mask>" (data2vec_text.py; issue #4229), so a random draw
         * that happens to be <mask> counts too; loss_on_all_selected takes every selected one. */
        loss[i] = c->loss_on_all_selected || out[i] == c->mask_id;
        count += loss[i];
    }
    return count;
}

/* ---- image (docs/algorithm.md §3.3)
 * ---------------------------------------------------------------------- */

/* One BEiT block: up to 10 attempts to place an h x w rectangle (area U(min, max_new), aspect
 * log-uniform) that adds between 1 and max_new new cells. Returns the cells added (0 = none). */
static int block_mask_one(uint8_t *mask, int H, int W, const BlockMaskConfig *c, int max_new,
                          RngStream *rng) {
    double lo_ar = log((double)c->min_aspect), hi_ar = -lo_ar; /* max_aspect = 1 / min_aspect */
    for (int attempt = 0; attempt < 10; attempt++) {
        /* Python random.uniform(a, b) = a + (b - a) U, also when b < a (few patches left). */
        double area = c->min_num_patches + (max_new - c->min_num_patches) * rng_stream_uniform(rng);
        double ar = exp(lo_ar + (hi_ar - lo_ar) * rng_stream_uniform(rng));
        /* Python round() is round-half-even, as nearbyint under the default rounding mode. */
        int h = (int)nearbyint(sqrt(area * ar));
        int w = (int)nearbyint(sqrt(area / ar));
        if (!(w < W && h < H)) continue; /* strict, as BEiT: a block never spans the whole side */
        int top = (int)rng_stream_int(rng, 0, H - h); /* randint: inclusive */
        int left = (int)rng_stream_int(rng, 0, W - w);
        int already = 0;
        for (int i = top; i < top + h; i++)
            for (int j = left; j < left + w; j++)
                already += mask[i * W + j];
        int added = h * w - already;
        if (added > 0 && added <= max_new) {
            for (int i = top; i < top + h; i++)
                for (int j = left; j < left + w; j++)
                    mask[i * W + j] = 1;
            return added;
        }
    }
    return 0;
}

int block_mask_sample(uint8_t *mask, int H, int W, const BlockMaskConfig *c, RngStream *rng) {
    if (H <= 0 || W <= 0) return 0;
    memset(mask, 0, (size_t)H * W);
    int max_block = c->max_num_patches > 0 ? c->max_num_patches : c->num_masking_patches;
    int count = 0;
    while (count < c->num_masking_patches) {
        int max_new = c->num_masking_patches - count;
        if (max_new > max_block) max_new = max_block;
        int added = block_mask_one(mask, H, W, c, max_new, rng);
        if (added == 0) break; /* no block fitted in 10 attempts: stop below the target, as BEiT */
        count += added;
    }
    return count;
}

/* ---- speech (docs/algorithm.md §3.1)
 * --------------------------------------------------------------------- */

int span_mask_sample(uint8_t *mask, int T, const SpanMaskConfig *c, RngStream *rng, int *scratch) {
    if (T <= 0) return 0;
    memset(mask, 0, (size_t)T);
    int len = c->mask_length > 0 ? c->mask_length : 1;
    int num_mask = (int)((double)c->mask_prob * T / len + rng_stream_uniform(rng));
    if (num_mask < c->min_masks) num_mask = c->min_masks;
    /* Deviation: at most T starts (fairseq raises "mask everything" on such tiny inputs), which
     * also bounds the start range below by T + 1 <= 2T, the scratch size. */
    if (num_mask > T) num_mask = T;
    if (num_mask <= 0) return 0;

    /* Starts come from range(T - min_len) (fairseq idc_select_ver 1), so spans rarely run past
     * the end; when that range would hold <= num_mask starts it widens to num_mask + 1. */
    int min_len = len;
    if (T - min_len <= num_mask) min_len = T - num_mask - 1;
    int n = T - min_len;
    choose_without_replacement(scratch, n, num_mask, rng);
    int count = 0;
    for (int j = 0; j < num_mask; j++)
        for (int k = 0; k < len && scratch[j] + k < T; k++) {
            count += !mask[scratch[j] + k]; /* overlapping spans merge */
            mask[scratch[j] + k] = 1;
        }
    return count;
}

/* Keep a uniform random `keep` of the row's masked positions (numpy choice without replacement
 * over the masked indices); pos needs as many ints as the row has masked positions. */
static void thin_row(uint8_t *row, int T, int keep, RngStream *rng, int *pos) {
    int n = 0;
    for (int t = 0; t < T; t++)
        if (row[t]) pos[n++] = t;
    shuffle_prefix(pos, n, keep, rng);
    memset(row, 0, (size_t)T);
    for (int j = 0; j < keep; j++)
        row[pos[j]] = 1;
}

static int row_count(const uint8_t *row, int T) {
    int n = 0;
    for (int t = 0; t < T; t++)
        n += row[t];
    return n;
}

void span_mask_batch(uint8_t *masks, int B, int T, const SpanMaskConfig *c, uint64_t seed,
                     uint64_t epoch, const int64_t *sample_ids, int *scratch) {
    if (B <= 0 || T <= 0) return;
    int target = T;
    for (int b = 0; b < B; b++) {
        uint64_t id = sample_ids ? (uint64_t)sample_ids[b] : (uint64_t)b;
        RngStream r = rng_stream(seed, epoch, id, RNG_MASK_SPEECH);
        int n = span_mask_sample(masks + (size_t)b * T, T, c, &r, scratch);
        if (n < target) target = n;
    }
    for (int b = 0; b < B; b++) {
        uint8_t *row = masks + (size_t)b * T;
        uint64_t id = sample_ids ? (uint64_t)sample_ids[b] : (uint64_t)b;
        /* fairseq thins every row with the last row's generator; here each row's thinning has
         * its own stream keyed on its id, so it depends on the batch only through `target`. */
        RngStream r = rng_stream(seed, epoch, id, RNG_MASK_SPEECH_THIN);
        int n = row_count(row, T);
        if (c->require_same_masks && n > target) {
            thin_row(row, T, target, &r, scratch);
            n = target;
        }
        if (c->mask_dropout > 0) {
            /* np.rint: round half to even, as nearbyint under the default rounding mode. */
            int holes = (int)nearbyint((double)n * c->mask_dropout);
            if (holes > n) holes = n;
            thin_row(row, T, n - holes, &r, scratch);
        }
    }
}
