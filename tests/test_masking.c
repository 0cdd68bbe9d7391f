/* test_masking.c: mask RNG; text/image/speech mask statistics; determinism, rank independence. */
#include "d2v/masking.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

#define SEED 1234u
#define EPOCH 3u

/* ---- RNG ------------------------------------------------------------------------------------ */

static void test_rng(void) {
    RngStream r = rng_stream(SEED, EPOCH, 17, RNG_MASK_TEXT);
    const int n = 200000;
    double s = 0, s2 = 0, lo = 1, hi = 0;
    for (int i = 0; i < n; i++) {
        double u = rng_stream_uniform(&r);
        s += u, s2 += u * u;
        if (u < lo) lo = u;
        if (u > hi) hi = u;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    printf("rng uniform: mean %.5f var %.5f (1/12 = %.5f) range [%.2e, %.6f]\n", mean, var,
           1.0 / 12, lo, hi);
    CHECK(fabs(mean - 0.5) < 0.005); /* sd of the mean ~ 6.5e-4 */
    CHECK(fabs(var - 1.0 / 12) < 0.002);
    CHECK(lo >= 0 && hi < 1);

    /* Integers in [3, 12]: inclusive at both ends, chi-square with 9 dof (p = 1e-4 at ~33.7). */
    int hist[10] = {0}, out_of_range = 0;
    const int m = 100000;
    for (int i = 0; i < m; i++) {
        int64_t v = rng_stream_int(&r, 3, 12);
        if (v < 3 || v > 12)
            out_of_range++;
        else
            hist[v - 3]++;
    }
    double chi2 = 0, e = m / 10.0;
    for (int k = 0; k < 10; k++)
        chi2 += (hist[k] - e) * (hist[k] - e) / e;
    printf("rng int [3,12]: chi2 %.2f (9 dof), hits lo %d hi %d\n", chi2, hist[0], hist[9]);
    CHECK(out_of_range == 0);
    CHECK(chi2 < 33.7);
    CHECK(hist[0] > 0 && hist[9] > 0);
    CHECK(rng_stream_int(&r, 5, 5) == 5);
    CHECK(rng_stream_int(&r, -4, -4) == -4);
    int neg_ok = 1;
    for (int i = 0; i < 1000; i++) {
        int64_t v = rng_stream_int(&r, -2, 1);
        if (v < -2 || v > 1) neg_ok = 0;
    }
    CHECK(neg_ok);

    /* Determinism by key, and distinct streams for a different seed, epoch, sample or stream. */
    RngStream a = rng_stream(SEED, EPOCH, 5, RNG_MASK_IMAGE);
    RngStream b = rng_stream(SEED, EPOCH, 5, RNG_MASK_IMAGE);
    RngStream d[4] = {rng_stream(SEED + 1, EPOCH, 5, RNG_MASK_IMAGE),
                      rng_stream(SEED, EPOCH + 1, 5, RNG_MASK_IMAGE),
                      rng_stream(SEED, EPOCH, 6, RNG_MASK_IMAGE),
                      rng_stream(SEED, EPOCH, 5, RNG_MASK_SPEECH)};
    int same = 1, differs[4] = {0, 0, 0, 0};
    for (int i = 0; i < 64; i++) {
        double u = rng_stream_uniform(&a);
        if (u != rng_stream_uniform(&b)) same = 0;
        for (int k = 0; k < 4; k++)
            if (u != rng_stream_uniform(&d[k])) differs[k]++;
    }
    CHECK(same);
    for (int k = 0; k < 4; k++)
        CHECK(differs[k] == 64);
}

/* ---- text ----------------------------------------------------------------------------------- */

enum { TL = 512, VOCAB = 1000, NSPECIAL = 4, MASK_ID = VOCAB - 1 };

static void fill_tokens(int32_t *tok, int len, uint64_t id) {
    RngStream r = rng_stream(99, 0, id, 1000);
    for (int i = 0; i < len; i++)
        tok[i] = (int32_t)rng_stream_int(&r, NSPECIAL, MASK_ID - 1);
}

static TextMaskConfig text_span_cfg(void) {
    TextMaskConfig c = {0.35f, 4, 0.0f, 0.0f, 0, MASK_ID, VOCAB, NSPECIAL, {0}, 0};
    return c;
}

/* Exact expected masked fraction of span mode for one length: position i stays unmasked when none
 * of the c_i = min(i+1, span) starts that cover it is chosen among num_mask of len. */
static double text_span_expected(int len, double mask_prob, int span) {
    double x = mask_prob * len / span;
    int m0 = (int)floor(x);
    double w1 = x - m0; /* P(num_mask = m0 + 1) */
    double total = 0;
    for (int m = m0; m <= m0 + 1; m++) {
        double w = m == m0 ? 1 - w1 : w1, covered = 0;
        for (int i = 0; i < len; i++) {
            int ci = i + 1 < span ? i + 1 : span;
            double p_free = 1;
            for (int j = 0; j < m; j++)
                p_free *= (double)(len - ci - j) / (len - j);
            covered += 1 - p_free;
        }
        total += w * covered / len;
    }
    return total;
}

static void test_text_span(void) {
    TextMaskConfig c = text_span_cfg();
    int32_t tok[TL], out[TL];
    uint8_t loss[TL];
    int scratch[2 * TL];
    const int N = 2000;
    long masked = 0;
    int hold_mask = 1, unchanged = 1, runs_ok = 1, count_ok = 1, cmin = TL, cmax = 0;
    for (int s = 0; s < N; s++) {
        fill_tokens(tok, TL, (uint64_t)s);
        RngStream r = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_TEXT);
        int n = text_mask_sample(out, loss, tok, TL, &c, &r, scratch);
        int pop = 0;
        for (int i = 0; i < TL; i++) {
            pop += loss[i];
            if (loss[i] && out[i] != MASK_ID) hold_mask = 0;
            if (!loss[i] && out[i] != tok[i]) unchanged = 0;
        }
        /* Every maximal masked run is a union of 4-spans: length >= 4 unless clipped at the end. */
        for (int i = 0; i < TL;) {
            if (!loss[i]) {
                i++;
                continue;
            }
            int j = i;
            while (j < TL && loss[j])
                j++;
            if (j - i < 4 && j != TL) runs_ok = 0;
            i = j;
        }
        if (n != pop) count_ok = 0;
        if (n < cmin) cmin = n;
        if (n > cmax) cmax = n;
        masked += n;
    }
    double frac = (double)masked / ((double)N * TL), want = text_span_expected(TL, 0.35, 4);
    printf("text span 0.35/4, len %d: masked fraction %.4f (exact expectation %.4f), per-sample "
           "count %d..%d\n",
           TL, frac, want, cmin, cmax);
    CHECK(fabs(frac - want) < 0.004); /* sd of the mean ~ 5e-4 */
    CHECK(frac > 0.27 && frac < 0.35);
    CHECK(hold_mask);
    CHECK(unchanged);
    CHECK(runs_ok);
    CHECK(count_ok);
}

static void test_text_bert(void) {
    TextMaskConfig c = {0.15f, 1, 0.1f, 0.1f, 1, MASK_ID, VOCAB, NSPECIAL, {0}, 0};
    TextMaskConfig c0 = c;
    c0.loss_on_all_selected = 0;
    int32_t tok[TL], out[TL], out0[TL];
    uint8_t sel[TL], loss0[TL];
    int scratch[2 * TL];
    const int N = 2000;
    long n_sel = 0, n_mask = 0, n_keep = 0, n_rand = 0;
    int sel_count_ok = 1, rand_range_ok = 1, same_tokens = 1, loss0_ok = 1, ret_ok = 1;
    int hit_lo = 0;
    for (int s = 0; s < N; s++) {
        fill_tokens(tok, TL, (uint64_t)s);
        RngStream r = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_TEXT);
        int n = text_mask_sample(out, sel, tok, TL, &c, &r, scratch);
        RngStream r0 = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_TEXT);
        int n0 = text_mask_sample(out0, loss0, tok, TL, &c0, &r0, scratch);
        /* span 1: exactly num_mask = int(0.15 * 512 + U) = 76 or 77 selected positions. */
        if (n != 76 && n != 77) sel_count_ok = 0;
        int pop0 = 0;
        for (int i = 0; i < TL; i++) {
            if (out[i] != out0[i]) same_tokens = 0;
            /* loss_on_all_selected 0: exactly the selected positions that now hold <mask>. */
            if (loss0[i] != (sel[i] && out[i] == MASK_ID)) loss0_ok = 0;
            if (!sel[i]) {
                if (out[i] != tok[i]) same_tokens = 0;
                continue;
            }
            pop0 += loss0[i];
            n_sel++;
            if (out[i] == MASK_ID)
                n_mask++;
            else if (out[i] == tok[i])
                n_keep++; /* includes random draws equal to the token (p = 1/996) */
            else {
                n_rand++;
                if (out[i] < NSPECIAL || out[i] >= VOCAB) rand_range_ok = 0;
                if (out[i] == NSPECIAL) hit_lo = 1; /* the lowest non-special id is drawn */
            }
        }
        if (n0 != pop0) ret_ok = 0;
    }
    double fs = (double)n_sel / ((double)N * TL), fm = (double)n_mask / n_sel,
           fk = (double)n_keep / n_sel, fr = (double)n_rand / n_sel;
    printf("text BERT 0.15 (0.1/0.1): selected %.4f; of them <mask> %.4f, kept %.4f, random %.4f\n",
           fs, fm, fk, fr);
    CHECK(sel_count_ok);
    CHECK(fabs(fs - 0.15) < 0.002);
    CHECK(fabs(fm - 0.8) < 0.01);
    CHECK(fabs(fk - 0.1) < 0.01);
    CHECK(fabs(fr - 0.1) < 0.01);
    CHECK(rand_range_ok);
    CHECK(hit_lo);
    CHECK(same_tokens);
    CHECK(loss0_ok);
    CHECK(ret_ok);
}

static void test_text_edges(void) {
    TextMaskConfig c = text_span_cfg();
    int32_t tok[8] = {0, 10, 11, 12, 13, 14, 15, 2}, out[8];
    uint8_t loss[8];
    int scratch[16], ok = 1, any_masked_len1 = 0;
    for (int len = 0; len <= 8; len++)
        for (uint64_t s = 0; s < 200; s++) {
            RngStream r = rng_stream(SEED, EPOCH, s, RNG_MASK_TEXT);
            int n = text_mask_sample(out, loss, tok, len, &c, &r, scratch);
            if (n < 0 || n > len) ok = 0;
            if (len == 1 && n == 1) any_masked_len1 = 1;
        }
    CHECK(ok);
    CHECK(any_masked_len1); /* int(0.35/4 + U) = 1 with p 0.0875 */
    /* Exact-size heap buffers (2 len ints of scratch) for every mode and short length. */
    TextMaskConfig modes[2] = {c, {1.0f, 3, 0.1f, 0.1f, 1, MASK_ID, VOCAB, NSPECIAL, {0}, 0}};
    for (int k = 0; k < 2; k++)
        for (int len = 1; len <= 8; len++) {
            int32_t *o = malloc((size_t)len * sizeof *o);
            uint8_t *l = malloc((size_t)len);
            int *st = malloc(2 * (size_t)len * sizeof *st);
            RngStream q = rng_stream(SEED, EPOCH, (uint64_t)len, RNG_MASK_TEXT);
            int n = text_mask_sample(o, l, tok, len, &modes[k], &q, st);
            if (n < 0 || n > len) ok = 0;
            free(o);
            free(l);
            free(st);
        }
    CHECK(ok);
    TextMaskConfig z = c;
    z.mask_prob = 0;
    RngStream r = rng_stream(SEED, EPOCH, 0, RNG_MASK_TEXT);
    CHECK(text_mask_sample(out, loss, tok, 8, &z, &r, scratch) == 0);
    CHECK(memcmp(out, tok, sizeof tok) == 0);
    /* mask_prob 1, span 1: every position selected. */
    TextMaskConfig all = c;
    all.mask_prob = 1, all.span = 1;
    CHECK(text_mask_sample(out, loss, tok, 8, &all, &r, scratch) == 8);
}

/* ---- image ---------------------------------------------------------------------------------- */

/* Number of horizontally or vertically adjacent cell pairs with different mask values. */
static int boundary_pairs(const uint8_t *m, int H, int W) {
    int n = 0;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            if (j + 1 < W) n += m[i * W + j] != m[i * W + j + 1];
            if (i + 1 < H) n += m[i * W + j] != m[(i + 1) * W + j];
        }
    return n;
}

/* Aggregate stats over N draws; returns the mean count. */
static double image_case(int H, int W, int target, int min_patches, int N, double lo_mean,
                         int min_allowed, double *mean_boundary) {
    BlockMaskConfig c = {target, min_patches, 0, 0.3f};
    uint8_t m[28 * 28];
    long total = 0, bsum = 0;
    int cmin = H * W, cmax = 0, pop_ok = 1;
    for (int s = 0; s < N; s++) {
        RngStream r = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_IMAGE);
        int n = block_mask_sample(m, H, W, &c, &r);
        int pop = 0;
        for (int k = 0; k < H * W; k++)
            pop += m[k] == 1, pop_ok &= m[k] <= 1;
        if (pop != n) pop_ok = 0;
        if (n < cmin) cmin = n;
        if (n > cmax) cmax = n;
        total += n;
        bsum += boundary_pairs(m, H, W);
    }
    double mean = (double)total / N;
    *mean_boundary = (double)bsum / N;
    /* A mask of the same density with independent cells would have 2 p (1-p) per adjacent pair. */
    double p = mean / (H * W), pairs = (double)H * (W - 1) + (double)(H - 1) * W;
    printf("image %dx%d target %d min %d: mean %.2f (%.3f of grid), count %d..%d, boundary pairs "
           "%.1f (iid mask: %.1f)\n",
           H, W, target, min_patches, mean, p, cmin, cmax, *mean_boundary, 2 * p * (1 - p) * pairs);
    CHECK(pop_ok);
    CHECK(cmax <= target);
    CHECK(mean >= lo_mean && mean <= target);
    CHECK(cmin >= min_allowed);
    /* Blocks, not scattered cells: far fewer mask/unmask boundaries than an iid mask. */
    CHECK(*mean_boundary < 0.6 * 2 * p * (1 - p) * pairs);
    return mean;
}

static int popcount_img(const uint8_t *m, int n) {
    int k = 0;
    for (int i = 0; i < n; i++)
        k += m[i];
    return k;
}

static void test_image(void) {
    double b;
    image_case(14, 14, 120, 16, 1000, 110, 60, &b);
    image_case(7, 7, 30, 4, 1000, 26, 10, &b);
    image_case(28, 28, 470, 16, 300, 440, 200, &b);
    /* 8 x 20: a first block with h < 8 can fail 10 times in a row (BEiT's own generator then
     * returns an empty mask too, about once in 1000 draws), so no lower bound per draw. */
    image_case(8, 20, 96, 16, 500, 80, 0, &b);

    /* Degenerate grids: no block with area >= 16 fits 2 x 2 (w < W and h < H), nothing masked. */
    BlockMaskConfig c = {120, 16, 0, 0.3f};
    uint8_t m[16];
    RngStream r = rng_stream(SEED, EPOCH, 0, RNG_MASK_IMAGE);
    CHECK(block_mask_sample(m, 2, 2, &c, &r) == 0);
    CHECK(m[0] == 0 && m[1] == 0 && m[2] == 0 && m[3] == 0);
    CHECK(block_mask_sample(m, 1, 1, &c, &r) == 0);
    BlockMaskConfig none = {0, 16, 0, 0.3f};
    CHECK(block_mask_sample(m, 4, 4, &none, &r) == 0);
    /* Target above the grid: stops when nothing more fits, never overruns. */
    BlockMaskConfig over = {100, 1, 9, 0.3f};
    int over_ok = 1, over_max = 0;
    for (uint64_t s = 0; s < 200; s++) {
        RngStream q = rng_stream(SEED, EPOCH, s, RNG_MASK_IMAGE);
        int n = block_mask_sample(m, 4, 4, &over, &q);
        if (n < 1 || n > 16 || n != popcount_img(m, 16)) over_ok = 0;
        if (n > over_max) over_max = n;
    }
    CHECK(over_ok);
    CHECK(over_max >= 12);
}

/* ---- speech --------------------------------------------------------------------------------- */

enum { ST = 500, SB = 8 };

static SpanMaskConfig speech_cfg(void) {
    SpanMaskConfig c = {0.65f, 10, 1, 1, 0.0f};
    return c;
}

static int popcount(const uint8_t *m, int n) {
    int k = 0;
    for (int i = 0; i < n; i++)
        k += m[i];
    return k;
}

/* The unthinned row of sample `id`, as span_mask_batch draws it. */
static int speech_row(uint8_t *m, int T, const SpanMaskConfig *c, uint64_t seed, uint64_t id,
                      int *scratch) {
    RngStream r = rng_stream(seed, EPOCH, id, RNG_MASK_SPEECH);
    return span_mask_sample(m, T, c, &r, scratch);
}

static void test_speech_sample(void) {
    SpanMaskConfig c = speech_cfg();
    uint8_t m[ST];
    int scratch[2 * ST];
    const int N = 2000;
    long total = 0;
    int pop_ok = 1, cmin = ST, cmax = 0;
    for (int s = 0; s < N; s++) {
        int n = speech_row(m, ST, &c, SEED, (uint64_t)s, scratch);
        if (n != popcount(m, ST)) pop_ok = 0;
        if (n < cmin) cmin = n;
        if (n > cmax) cmax = n;
        total += n;
    }
    double frac = (double)total / ((double)N * ST);
    printf("speech span 0.65/10, T %d: masked fraction %.4f, per-row count %d..%d\n", ST, frac,
           cmin, cmax);
    CHECK(frac > 0.44 && frac < 0.54);
    CHECK(pop_ok);

    /* min_masks on short inputs: at least one span start inside the sequence. */
    int min_ok = 1, tiny_ok = 1;
    for (int T = 2; T <= 40; T++)
        for (uint64_t s = 0; s < 50; s++)
            if (speech_row(m, T, &c, SEED, s, scratch) < 1) min_ok = 0;
    SpanMaskConfig c4 = c;
    c4.min_masks = 4, c4.mask_length = 1, c4.mask_prob = 0.01f;
    for (uint64_t s = 0; s < 200; s++)
        if (speech_row(m, 30, &c4, SEED, s, scratch) < 4) min_ok = 0;
    for (int T = 0; T <= 1; T++)
        for (uint64_t s = 0; s < 50; s++) {
            int n = speech_row(m, T, &c, SEED, s, scratch);
            if (n < 0 || n > T) tiny_ok = 0;
        }
    /* Exactly 2T ints of scratch even when min_masks asks for more starts than frames (heap
     * buffers of the exact size, so the asan build catches any overrun). */
    SpanMaskConfig big = c;
    big.min_masks = 50;
    for (int T = 1; T <= 30; T++) {
        uint8_t *mt = malloc((size_t)T);
        int *st = malloc(2 * (size_t)T * sizeof *st);
        for (uint64_t s = 0; s < 20; s++) {
            RngStream r = rng_stream(SEED, EPOCH, s, RNG_MASK_SPEECH);
            int n = span_mask_sample(mt, T, &big, &r, st);
            if (n < 0 || n > T || n != popcount(mt, T)) tiny_ok = 0;
        }
        free(mt);
        free(st);
    }
    SpanMaskConfig z = c;
    z.mask_prob = 0, z.min_masks = 0;
    CHECK(speech_row(m, ST, &z, SEED, 0, scratch) == 0);
    CHECK(min_ok);
    CHECK(tiny_ok);
}

/* Tiny and empty batches, with guard bytes around the masks and past 2T ints of scratch. A 3 x 1
 * batch writes exactly its 3 bytes, each row is its own 1-frame mask thinned to the batch
 * minimum, and it is deterministic; B = 0 or T = 0 touches neither buffer. */
static void test_speech_tiny_batches(const SpanMaskConfig *c) {
    enum { G = 16, NB = 3, SCR = 64 };
    const uint8_t GUARD = 0xA5;
    const int SGUARD = 0x5a5a5a5a;
    uint8_t buf[G + NB + G], again[G + NB + G], raw[NB];
    int scratch[SCR];
    int64_t ids[NB] = {0, 1, 2};
    int bytes_ok = 1, guard_ok = 1, scratch_ok = 1, equal = 1, subset = 1, same = 1, seen[2] = {0};
    /* many seeds, so both the masked (1) and unmasked (0) outcomes of a 1-frame row occur */
    for (uint64_t seed = 0; seed < 64; seed++) {
        memset(buf, GUARD, sizeof buf);
        for (int i = 0; i < SCR; i++)
            scratch[i] = SGUARD;
        span_mask_batch(buf + G, NB, 1, c, seed, EPOCH, NULL, scratch);
        for (int i = 0; i < G; i++)
            if (buf[i] != GUARD || buf[G + NB + i] != GUARD) guard_ok = 0;
        for (int i = 2; i < SCR; i++) /* scratch: 2T = 2 ints */
            if (scratch[i] != SGUARD) scratch_ok = 0;
        int target = 1;
        for (int b = 0; b < NB; b++) {
            int n = speech_row(raw + b, 1, c, seed, (uint64_t)b, scratch);
            if (n < target) target = n;
        }
        for (int b = 0; b < NB; b++) {
            uint8_t v = buf[G + b];
            if (v > 1) bytes_ok = 0;
            if (v != target) equal = 0;
            if (v && !raw[b]) subset = 0;
            seen[v & 1] = 1;
        }
        memset(again, GUARD, sizeof again);
        span_mask_batch(again + G, NB, 1, c, seed, EPOCH, ids, scratch);
        if (memcmp(again, buf, sizeof buf)) same = 0; /* ids 0..2 = NULL ids; deterministic */
    }
    CHECK(guard_ok);
    CHECK(scratch_ok);
    CHECK(bytes_ok);
    CHECK(equal);
    CHECK(subset);
    CHECK(same);
    CHECK(seen[0] && seen[1]);

    /* Empty batches leave the masks and the scratch as they were. */
    uint8_t big[SB * ST], before[SB * ST];
    int sbig[2 * ST], sbefore[2 * ST];
    const int eb[3] = {0, 0, SB}, et[3] = {ST, ST, 0};
    const int64_t *eids[3] = {NULL, ids, NULL};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < SB * ST; i++)
            big[i] = (uint8_t)(0x40 + i % 7);
        for (int i = 0; i < 2 * ST; i++)
            sbig[i] = SGUARD + i;
        memcpy(before, big, sizeof big);
        memcpy(sbefore, sbig, sizeof sbig);
        span_mask_batch(big, eb[k], et[k], c, SEED, EPOCH, eids[k], sbig);
        char label[96];
        snprintf(label, sizeof label,
                 "speech batch B=%d T=%d (%s ids) leaves masks and scratch as they were", eb[k],
                 et[k], eids[k] ? "given" : "NULL");
        check_record(!memcmp(big, before, sizeof big) && !memcmp(sbig, sbefore, sizeof sbig),
                     label);
    }
}

static void test_speech_batch(void) {
    SpanMaskConfig c = speech_cfg();
    uint8_t masks[SB * ST], raw[SB * ST], drop[SB * ST], loose[SB * ST];
    int scratch[2 * ST];
    int64_t ids[SB];
    for (int b = 0; b < SB; b++)
        ids[b] = 100 + 7 * b;
    span_mask_batch(masks, SB, ST, &c, SEED, EPOCH, ids, scratch);
    int target = ST;
    for (int b = 0; b < SB; b++) {
        int n = speech_row(raw + b * ST, ST, &c, SEED, (uint64_t)ids[b], scratch);
        if (n < target) target = n;
    }
    int equal = 1, subset = 1, thinned = 0;
    for (int b = 0; b < SB; b++) {
        if (popcount(masks + b * ST, ST) != target) equal = 0;
        if (popcount(raw + b * ST, ST) > target) thinned++;
        for (int t = 0; t < ST; t++)
            if (masks[b * ST + t] && !raw[b * ST + t]) subset = 0;
    }
    printf("speech batch: target %d, %d of %d rows thinned\n", target, thinned, SB);
    CHECK(equal);
    CHECK(subset);
    CHECK(thinned > 0);

    /* require_same_masks 0: rows are the per-sample masks. */
    SpanMaskConfig cl = c;
    cl.require_same_masks = 0;
    span_mask_batch(loose, SB, ST, &cl, SEED, EPOCH, ids, scratch);
    CHECK(memcmp(loose, raw, sizeof raw) == 0);

    /* mask_dropout 0.2: drops rint(0.2 * target) more, only from the thinned rows. */
    SpanMaskConfig cd = c;
    cd.mask_dropout = 0.2f;
    span_mask_batch(drop, SB, ST, &cd, SEED, EPOCH, ids, scratch);
    int want = target - (int)nearbyint(0.2 * target), drop_ok = 1;
    for (int b = 0; b < SB; b++) {
        if (popcount(drop + b * ST, ST) != want) drop_ok = 0;
        for (int t = 0; t < ST; t++)
            if (drop[b * ST + t] && !masks[b * ST + t]) drop_ok = 0;
    }
    CHECK(drop_ok);

    /* NULL ids mean row b has id b. */
    int64_t seq[SB];
    for (int b = 0; b < SB; b++)
        seq[b] = b;
    span_mask_batch(masks, SB, ST, &c, SEED, EPOCH, seq, scratch);
    span_mask_batch(loose, SB, ST, &c, SEED, EPOCH, NULL, scratch);
    CHECK(memcmp(masks, loose, sizeof masks) == 0);
    test_speech_tiny_batches(&c);
}

/* ---- determinism and rank independence ------------------------------------------------------ */

/* "1 rank" holds ids 0..7; "rank 1 of 2" holds ids 1, 3, 5, 7. A sample's text/image mask and its
 * unthinned speech row depend only on (seed, epoch, id). span_mask_batch depends on its batch only
 * through the minimum count: a row with the same id and target is identical. */
static void test_rank_independence(void) {
    enum { NS = 8, HW = 14 * 14 };
    TextMaskConfig tc = text_span_cfg();
    BlockMaskConfig bc = {120, 16, 0, 0.3f};
    SpanMaskConfig sc = speech_cfg();
    int32_t tok[TL], out1[NS][TL], out2[TL];
    uint8_t loss1[NS][TL], loss2[TL], img1[NS][HW], img2[HW];
    int scratch[2 * ST > 2 * TL ? 2 * ST : 2 * TL];
    for (int s = 0; s < NS; s++) {
        fill_tokens(tok, TL, (uint64_t)s);
        RngStream r = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_TEXT);
        text_mask_sample(out1[s], loss1[s], tok, TL, &tc, &r, scratch);
        RngStream q = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_IMAGE);
        block_mask_sample(img1[s], 14, 14, &bc, &q);
    }
    int text_same = 1, img_same = 1;
    for (int s = 1; s < NS; s += 2) { /* rank 1 of 2, drawn in a different order */
        RngStream q = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_IMAGE);
        block_mask_sample(img2, 14, 14, &bc, &q);
        if (memcmp(img2, img1[s], HW) != 0) img_same = 0;
        fill_tokens(tok, TL, (uint64_t)s);
        RngStream r = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_TEXT);
        text_mask_sample(out2, loss2, tok, TL, &tc, &r, scratch);
        if (memcmp(out2, out1[s], sizeof out2) || memcmp(loss2, loss1[s], TL)) text_same = 0;
    }
    CHECK(text_same);
    CHECK(img_same);

    /* Speech: unthinned rows agree; after thinning, rows agree whenever the targets agree. */
    uint8_t all[NS * ST], half[5 * ST], row[ST];
    int64_t ids_all[NS] = {0, 1, 2, 3, 4, 5, 6, 7};
    span_mask_batch(all, NS, ST, &sc, SEED, EPOCH, ids_all, scratch);
    int raw_same = 1, argmin = 0, target = ST, counts[NS];
    for (int s = 0; s < NS; s++) {
        counts[s] = speech_row(row, ST, &sc, SEED, (uint64_t)s, scratch);
        if (counts[s] < target) target = counts[s], argmin = s;
        uint8_t again[ST];
        RngStream r = rng_stream(SEED, EPOCH, (uint64_t)s, RNG_MASK_SPEECH);
        span_mask_sample(again, ST, &sc, &r, scratch);
        if (memcmp(again, row, ST)) raw_same = 0;
    }
    CHECK(raw_same);
    /* Rank 1's batch plus the sample holding the global minimum: same target, same rows. */
    int64_t ids_half[5] = {1, 3, 5, 7, argmin};
    int nh = argmin % 2 ? 4 : 5;
    span_mask_batch(half, nh, ST, &sc, SEED, EPOCH, ids_half, scratch);
    int thin_same = 1;
    for (int k = 0; k < nh; k++)
        if (memcmp(half + k * ST, all + ids_half[k] * ST, ST)) thin_same = 0;
    CHECK(thin_same);
    /* Rank 1's batch alone: its own (larger or equal) target; rows still come from the same
     * unthinned masks, so each row is a subset of its unthinned row. */
    span_mask_batch(half, 4, ST, &sc, SEED, EPOCH, ids_half, scratch);
    int subset = 1, t4 = popcount(half, ST);
    for (int k = 0; k < 4; k++) {
        speech_row(row, ST, &sc, SEED, (uint64_t)ids_half[k], scratch);
        for (int t = 0; t < ST; t++)
            if (half[k * ST + t] && !row[t]) subset = 0;
        if (popcount(half + k * ST, ST) != t4) subset = 0;
    }
    CHECK(subset);
    CHECK(t4 >= target);

    /* Negative control: another seed (or epoch) gives other masks. */
    int text_diff = 0, img_diff = 0, speech_diff = 0, epoch_diff = 0;
    for (int s = 0; s < NS; s++) {
        fill_tokens(tok, TL, (uint64_t)s);
        RngStream r = rng_stream(SEED + 1, EPOCH, (uint64_t)s, RNG_MASK_TEXT);
        text_mask_sample(out2, loss2, tok, TL, &tc, &r, scratch);
        text_diff += memcmp(loss2, loss1[s], TL) != 0;
        RngStream e = rng_stream(SEED, EPOCH + 1, (uint64_t)s, RNG_MASK_TEXT);
        text_mask_sample(out2, loss2, tok, TL, &tc, &e, scratch);
        epoch_diff += memcmp(loss2, loss1[s], TL) != 0;
        RngStream q = rng_stream(SEED + 1, EPOCH, (uint64_t)s, RNG_MASK_IMAGE);
        block_mask_sample(img2, 14, 14, &bc, &q);
        img_diff += memcmp(img2, img1[s], HW) != 0;
    }
    uint8_t other[NS * ST];
    span_mask_batch(other, NS, ST, &sc, SEED + 1, EPOCH, ids_all, scratch);
    for (int s = 0; s < NS; s++)
        speech_diff += memcmp(other + s * ST, all + s * ST, ST) != 0;
    printf("negative control (seed + 1): text %d/8, image %d/8, speech %d/8 differ; epoch + 1: "
           "text %d/8\n",
           text_diff, img_diff, speech_diff, epoch_diff);
    CHECK(text_diff == NS && img_diff == NS && speech_diff == NS && epoch_diff == NS);
}

/* Random replacements never draw a special token, wherever the vocabulary puts them (a GPT-2
 * vocab.json gets <s> <pad> </s> <unk> <mask> appended at its end). */
static void test_text_random_excludes_specials(void) {
    printf("-- text random tokens avoid special ids\n");
    TextMaskConfig c = {1.0f, 1, 0.0f, 1.0f, 1, 9, 10, 0, {9, 8, 7, 0, 1}, 5};
    int32_t tok[64], out[64];
    uint8_t loss[64];
    int scratch[128], bad = 0, drawn = 0;
    for (int i = 0; i < 64; i++)
        tok[i] = 2 + i % 5;
    for (int s = 0; s < 200; s++) {
        RngStream r = rng_stream(3, 0, (uint64_t)s, RNG_MASK_TEXT);
        text_mask_sample(out, loss, tok, 64, &c, &r, scratch);
        for (int i = 0; i < 64; i++) {
            if (!loss[i]) continue;
            drawn++;
            bad |= out[i] == 9 || out[i] == 8 || out[i] == 7 || out[i] == 0 || out[i] == 1;
        }
    }
    CHECK(drawn > 1000 && !bad);
}

int main(void) {
    test_rng();
    test_text_random_excludes_specials();
    test_text_span();
    test_text_bert();
    test_text_edges();
    test_image();
    test_speech_sample();
    test_speech_batch();
    test_rank_independence();
    return check_summary();
}
