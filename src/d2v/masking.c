/* masking.c: data2vec masks (docs/algorithm.md §3). v1: text spans/BERT, BEiT image blocks,
 * wav2vec speech spans (fairseq MaskTokensDataset, BEiT MaskingGenerator, compute_mask_indices);
 * v2: fairseq compute_block_mask_2d (inverse) / _1d and MAE random masking. On a keyed RNG.
 *
 * Every draw comes from a RngStream keyed on (seed, epoch, global sample id, stream), as fairseq
 * keys numpy's default_rng on hash((seed, epoch, index)): a sample's mask never depends on the rank
 * count or on its neighbours in the batch (except speech's thinning to the batch minimum). The
 * distributions follow fairseq/BEiT; the bit streams do not (no numpy/Python RNG emulation). */
#include "d2v/masking.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

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

/* ---- data2vec 2.0 (docs/algorithm.md §3.4)
 * ----------------------------------------------------------------------- */

/* The double Python would hold for a config value that reaches us as a float: the shortest
 * decimal (<= 9 digits) that reads back as the same float. fairseq's counts are int() of double
 * products, so 0.2f (0.20000000298) has to count as 0.2: int(10 * (1 - 0.2)) = 8, not 7. */
static double decimal_value(float x) {
    char buf[32];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(buf, sizeof buf, "%.*g", digits, (double)x);
        double v = strtod(buf, NULL);
        if ((float)v == x) return v;
    }
    return x;
}

static void v2_need(const char *fn, const char *name, const void *p) {
    if (!p) die("%s: %s is NULL", fn, name);
}

static void v2_check_len(const char *fn, const char *name, int v) {
    if (v <= 0) die("%s: %s = %d (must be > 0)", fn, name, v);
}

static double v2_check_prob(const char *fn, float r) {
    if (!(r >= 0 && r < 1)) die("%s: mask_prob = %g outside [0, 1)", fn, (double)r);
    return decimal_value(r);
}

static void v2_check_block(const char *fn, int block) {
    if (block < 1) die("%s: block = %d (must be >= 1)", fn, block);
}

/* fairseq accepts any adjust; [0, 1] keeps the centre count (and the work) within 2 T. */
static double v2_check_adjust(const char *fn, float a) {
    if (!(a >= 0 && a <= 1)) die("%s: adjust = %g outside [0, 1]", fn, (double)a);
    return decimal_value(a);
}

static int v2_grid_len(const char *fn, int H, int W) {
    v2_check_len(fn, "H", H);
    v2_check_len(fn, "W", W);
    if (H > INT_MAX / W) die("%s: grid H x W = %d x %d is too large", fn, H, W);
    return H * W;
}

/* The counts, in fairseq's operation order on doubles (p, a from decimal_value). */
static int keep_2d(int L, double p) { return (int)(L * (1 - p)); }
static int centres_2d(int L, double p, int block, double a) {
    return (int)(L * (((1 - p) + a) / ((double)block * block)));
}
static int masked_1d(int T, double p) { return (int)(T * p); }
static int centres_1d(int T, double p, int block, double a) { return (int)(T * ((p + a) / block)); }
static int keep_random(int T, double p) { return (int)(T * (1 - p)); }

/* fairseq's require_same_masks step: set cells switched off, or unset cells switched on, chosen
 * uniformly without replacement (torch.multinomial on 0/1 weights: any cell of that value,
 * adjacent to a block or not) until exactly `target` are set. pos: L ints. */
static void fix_count(uint8_t *x, int L, int target, RngStream *rng, int *pos) {
    int n = row_count(x, L);
    if (n == target) return;
    uint8_t from = n > target; /* the value of the cells that flip */
    int k = n > target ? n - target : target - n, cand = 0;
    for (int t = 0; t < L; t++)
        if (x[t] == from) pos[cand++] = t;
    shuffle_prefix(pos, cand, k, rng);
    for (int j = 0; j < k; j++)
        x[pos[j]] = !from;
}

/* Cells lo .. lo + block - 1 of a side of n, clipped: fairseq clamps every index to [0, n-1],
 * which lands the outside ones on border cells the block covers anyway (0 <= centre < n and
 * 0 <= offset < block), so clamping and clipping set the same cells. 64-bit: block may be big. */
static void clip_span(int centre, int block, int n, int *first, int *last) {
    int64_t lo = (int64_t)centre - block / 2, hi = lo + block - 1;
    *first = lo < 0 ? 0 : (int)lo;
    *last = hi > n - 1 ? n - 1 : (int)hi;
}

/* The three row algorithms on validated arguments (p, a: decimal_value of mask_prob, adjust). */

static int row_2d_inverse(uint8_t *mask, int H, int W, double p, int block, double a,
                          RngStream *rng, int *scratch) {
    int L = H * W;
    /* mask holds "kept" until the end: inverse, so the blocks are what stays visible. Centres
     * are uniform over all cells with replacement (torch.randint; a repeat changes nothing). */
    memset(mask, 0, (size_t)L);
    int nc = centres_2d(L, p, block, a);
    for (int k = 0; k < nc; k++) {
        int c = (int)rng_stream_int(rng, 0, L - 1), r0, r1, c0, c1;
        clip_span(c / W, block, H, &r0, &r1);
        clip_span(c % W, block, W, &c0, &c1);
        for (int i = r0; i <= r1; i++)
            memset(mask + (size_t)i * W + c0, 1, (size_t)(c1 - c0 + 1));
    }
    int keep = keep_2d(L, p);
    fix_count(mask, L, keep, rng, scratch);
    for (int t = 0; t < L; t++)
        mask[t] ^= 1;
    return L - keep;
}

static int row_1d(uint8_t *mask, int T, double p, int block, double a, RngStream *rng,
                  int *scratch) {
    memset(mask, 0, (size_t)T);
    int nc = centres_1d(T, p, block, a);
    for (int k = 0; k < nc; k++) {
        int first, last;
        clip_span((int)rng_stream_int(rng, 0, T - 1), block, T, &first, &last);
        memset(mask + first, 1, (size_t)(last - first + 1));
    }
    int masked = masked_1d(T, p);
    fix_count(mask, T, masked, rng, scratch);
    return masked;
}

static int row_random(uint8_t *mask, int T, double p, RngStream *rng, int *scratch) {
    /* The first len_keep of argsort(iid noise) are a uniform len_keep-subset: the same
     * distribution as a partial Fisher-Yates. */
    int keep = keep_random(T, p);
    choose_without_replacement(scratch, T, keep, rng);
    memset(mask, 1, (size_t)T);
    for (int j = 0; j < keep; j++)
        mask[scratch[j]] = 0;
    return T - keep;
}

int v2_inverse_block_mask_2d(uint8_t *mask, int H, int W, float mask_prob, int block, float adjust,
                             RngStream *rng, int *scratch) {
    static const char fn[] = "v2_inverse_block_mask_2d";
    v2_grid_len(fn, H, W);
    double p = v2_check_prob(fn, mask_prob), a = v2_check_adjust(fn, adjust);
    /* fairseq asserts block > 1; block 1 (scattered cells) is allowed as a baseline. */
    v2_check_block(fn, block);
    v2_need(fn, "mask", mask), v2_need(fn, "rng", rng), v2_need(fn, "scratch", scratch);
    return row_2d_inverse(mask, H, W, p, block, a, rng, scratch);
}

int v2_block_mask_1d(uint8_t *mask, int T, float mask_prob, int block, float adjust, RngStream *rng,
                     int *scratch) {
    static const char fn[] = "v2_block_mask_1d";
    v2_check_len(fn, "T", T);
    double p = v2_check_prob(fn, mask_prob), a = v2_check_adjust(fn, adjust);
    v2_check_block(fn, block);
    v2_need(fn, "mask", mask), v2_need(fn, "rng", rng), v2_need(fn, "scratch", scratch);
    return row_1d(mask, T, p, block, a, rng, scratch);
}

int v2_random_mask(uint8_t *mask, int T, float mask_prob, RngStream *rng, int *scratch) {
    static const char fn[] = "v2_random_mask";
    v2_check_len(fn, "T", T);
    double p = v2_check_prob(fn, mask_prob);
    v2_need(fn, "mask", mask), v2_need(fn, "rng", rng), v2_need(fn, "scratch", scratch);
    return row_random(mask, T, p, rng, scratch);
}

int v2_mask_len(const V2MaskConfig *c) {
    static const char fn[] = "V2MaskConfig";
    v2_need("v2_mask_len", "config", c);
    int L;
    switch (c->kind) {
    case V2_MASK_BLOCK_2D_INVERSE:
        L = v2_grid_len(fn, c->H, c->W);
        break;
    case V2_MASK_BLOCK_1D:
    case V2_MASK_RANDOM:
        v2_check_len(fn, "T", c->T);
        L = c->T;
        break;
    default:
        die("%s: kind = %d is not a V2MaskKind", fn, (int)c->kind);
    }
    v2_check_prob(fn, c->mask_prob);
    if (c->kind != V2_MASK_RANDOM) {
        v2_check_block(fn, c->block);
        v2_check_adjust(fn, c->adjust);
    }
    return L;
}

int v2_mask_count(const V2MaskConfig *c) {
    int L = v2_mask_len(c);
    double p = decimal_value(c->mask_prob);
    switch (c->kind) {
    case V2_MASK_BLOCK_2D_INVERSE:
        return L - keep_2d(L, p);
    case V2_MASK_BLOCK_1D:
        return masked_1d(L, p);
    default:
        return L - keep_random(L, p);
    }
}

size_t v2_mask_scratch(const V2MaskConfig *c) { return (size_t)v2_mask_len(c); }

void v2_mask_batch(uint8_t *masks, int B, int M, const V2MaskConfig *c, uint64_t seed,
                   uint64_t update, const int64_t *sample_ids, int *scratch) {
    static const char fn[] = "v2_mask_batch";
    int L = v2_mask_len(c);
    if (B < 0) die("%s: B = %d (must be >= 0)", fn, B);
    if (M < 1) die("%s: M = %d clones (must be >= 1)", fn, M);
    if (B == 0) return;
    v2_need(fn, "masks", masks), v2_need(fn, "scratch", scratch);
    RngStreamId id = c->kind == V2_MASK_BLOCK_2D_INVERSE ? RNG_MASK_V2_IMAGE
                     : c->kind == V2_MASK_BLOCK_1D       ? RNG_MASK_V2_AUDIO
                                                         : RNG_MASK_V2_TEXT;
    double p = decimal_value(c->mask_prob), a = decimal_value(c->adjust);
    for (int b = 0; b < B; b++) {
        uint64_t sample = sample_ids ? (uint64_t)sample_ids[b] : (uint64_t)b;
        for (int m = 0; m < M; m++) {
            uint8_t *row = masks + ((size_t)b * M + m) * L;
            RngStream r = rng_stream_clone(seed, update, sample, id, (uint64_t)m);
            if (c->kind == V2_MASK_BLOCK_2D_INVERSE)
                row_2d_inverse(row, c->H, c->W, p, c->block, a, &r, scratch);
            else if (c->kind == V2_MASK_BLOCK_1D)
                row_1d(row, L, p, c->block, a, &r, scratch);
            else
                row_random(row, L, p, &r, scratch);
        }
    }
}

int v2_kept_indices(const uint8_t *mask, int T, int32_t *ids_keep) {
    static const char fn[] = "v2_kept_indices";
    v2_check_len(fn, "T", T);
    v2_need(fn, "mask", mask), v2_need(fn, "ids_keep", ids_keep);
    int n = 0;
    for (int t = 0; t < T; t++)
        if (!mask[t]) ids_keep[n++] = t;
    return n;
}
