/* attention.c: multi-head scaled-dot-product self-attention with key padding mask, additive
 * per-head bias, ALiBi distance biases (data2vec 2.0 audio) and counter-based attention dropout.
 * One (sample, head) pair per OpenMP task, each running single-threaded strided BLIS GEMMs straight
 * on the (B, T, 3C) qkv layout. With att == NULL the probabilities are never stored: the backward
 * recomputes them in a per-thread T x T tile, bit-identical to the forward's (docs/performance.md,
 * "attention"). */
#include <math.h>
#include <omp.h>

#include "d2v/kernels.h"
#include "simd.h"

size_t attention_scratch_size(int T) { return (size_t)omp_get_max_threads() * 3 * T * T; }

/* dst = src * mask / (1 - p_drop) for head h of sample b (T x T); dst may alias src. */
static void drop_probs(float *pd, const float *p, int b, int h, int T, float p_drop, DropKey k) {
    uint64_t sample = k.sample_ids ? (uint64_t)k.sample_ids[b] : (uint64_t)b;
    uint64_t key = rng_key(k.seed, k.step, sample, k.site);
    float scale = 1.0f / (1.0f - p_drop);
    simd_ops()->dropout_fwd(pd, p, key, (size_t)h * T * T, (size_t)T * T, p_drop, scale);
}

/* ALiBi's distance of query i and key j in row b: |pos_i - pos_j| (positions 0..T-1 when the
 * row has none of its own). */
static inline float alibi_dist(const AttnAlibi *al, int b, int T, int i, int j) {
    if (!al->pos) return (float)(i > j ? i - j : j - i);
    const int32_t *p = al->pos + (size_t)b * T;
    return (float)(p[i] > p[j] ? p[i] - p[j] : p[j] - p[i]);
}

/* s = softmax(scale Q K^T + bias - m_h |pos_i - pos_j|, padding keys -inf) for head h of sample
 * b (T x T). The one routine both passes use, so a recomputed tile equals the forward's bit for
 * bit. */
static void head_probs(float *s, const float *qkv, const uint8_t *key_pad, const float *bias,
                       const AttnAlibi *al, int b, int h, int T, int C, int NH) {
    int hs = C / NH;
    size_t C3 = 3 * (size_t)C;
    const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs, *kk = q + C;
    gemm_rowmajor(0, 1, T, T, hs, 1.0f / sqrtf((float)hs), q, (int)C3, kk, (int)C3, 0.0f, s, T, 1);
    const uint8_t *pad = key_pad ? key_pad + (size_t)b * T : NULL;
    const float *bh = bias ? bias + (size_t)h * T * T : NULL;
    for (int i = 0; i < T; i++) {
        float *row = s + (size_t)i * T;
        if (bh)
            for (int j = 0; j < T; j++)
                row[j] += bh[(size_t)i * T + j];
        if (al)
            for (int j = 0; j < T; j++)
                row[j] -= al->m[h] * alibi_dist(al, b, T, i, j);
        if (pad)
            for (int j = 0; j < T; j++)
                if (pad[j]) row[j] = -INFINITY;
        softmax_row(row, row, T); /* all keys padding: a zero row (attend to nothing), not NaN */
    }
}

static void head_forward(float *out, float *s, float *pd, const float *qkv, const uint8_t *key_pad,
                         const float *bias, const AttnAlibi *al, int b, int h, int T, int C, int NH,
                         float p_drop, DropKey k) {
    int hs = C / NH;
    size_t C3 = 3 * (size_t)C;
    const float *v = qkv + (size_t)b * T * C3 + (size_t)h * hs + 2 * C;
    head_probs(s, qkv, key_pad, bias, al, b, h, T, C, NH);
    const float *p = s;
    if (p_drop > 0) {
        drop_probs(pd, s, b, h, T, p_drop, k);
        p = pd;
    }
    gemm_rowmajor(0, 0, T, hs, T, 1.0f, p, T, v, (int)C3, 0.0f,
                  out + (size_t)b * T * C + (size_t)h * hs, C, 1);
}

void attention_forward_ex(float *out, float *att, float *scratch, const float *qkv,
                          const uint8_t *key_pad, const float *bias, const AttnAlibi *al, int B,
                          int T, int C, int NH, float p_drop, DropKey k) {
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            float *pd = scratch + (size_t)omp_get_thread_num() * 3 * T * T;
            float *s = att ? att + ((size_t)b * NH + h) * T * T : pd + (size_t)T * T;
            head_forward(out, s, pd, qkv, key_pad, bias, al, b, h, T, C, NH, p_drop, k);
        }
}

void attention_forward(float *out, float *att, float *scratch, const float *qkv,
                       const uint8_t *key_pad, const float *bias, int B, int T, int C, int NH,
                       float p_drop, DropKey k) {
    attention_forward_ex(out, att, scratch, qkv, key_pad, bias, NULL, B, T, C, NH, p_drop, k);
}

static void head_backward(float *dqkv, float *dbias, float *pd, const float *dout, const float *qkv,
                          const float *att, const uint8_t *key_pad, const float *bias,
                          const AttnAlibi *al, int b, int h, int T, int C, int NH, float p_drop,
                          DropKey k) {
    int hs = C / NH;
    size_t C3 = 3 * (size_t)C;
    size_t qoff = (size_t)b * T * C3 + (size_t)h * hs;
    const float *q = qkv + qoff, *kk = q + C, *v = q + 2 * C;
    float *dq = dqkv + qoff, *dk = dq + C, *dv = dq + 2 * C;
    float *dp = pd + (size_t)T * T, *tile = dp + (size_t)T * T;
    const float *p = att ? att + ((size_t)b * NH + h) * T * T : tile;
    if (!att) head_probs(tile, qkv, key_pad, bias, al, b, h, T, C, NH);
    const float *dy = dout + (size_t)b * T * C + (size_t)h * hs;
    float scale = 1.0f / sqrtf((float)hs);
    const float *pused = p;
    if (p_drop > 0) {
        drop_probs(pd, p, b, h, T, p_drop, k);
        pused = pd;
    }
    gemm_rowmajor(1, 0, T, hs, T, 1.0f, pused, T, dy, C, 1.0f, dv, (int)C3, 1); /* dV += P^T dY */
    gemm_rowmajor(0, 1, T, T, hs, 1.0f, dy, C, v, (int)C3, 0.0f, dp, T, 1);     /* dP = dY V^T */
    if (p_drop > 0) drop_probs(dp, dp, b, h, T, p_drop, k); /* through the same mask */
    for (size_t i = 0; i < (size_t)T; i++)
        simd_ops()->softmax_grad_row_inplace(dp + i * T, p + i * T, T);
    if (dbias) {
        float *db = dbias + (size_t)h * T * T;
        for (size_t i = 0; i < (size_t)T * T; i++)
            db[i] += dp[i];
    }
    if (al && al->dm_bh) { /* d logit / d m_h = -|pos_i - pos_j|: one sum per (sample, head) */
        double acc = 0;
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++)
                acc -= (double)dp[(size_t)i * T + j] * alibi_dist(al, b, T, i, j);
        al->dm_bh[(size_t)b * NH + h] = acc;
    }
    gemm_rowmajor(0, 0, T, hs, T, scale, dp, T, kk, (int)C3, 1.0f, dq, (int)C3, 1); /* dQ */
    gemm_rowmajor(1, 0, T, hs, T, scale, dp, T, q, (int)C3, 1.0f, dk, (int)C3, 1);  /* dK */
}

void attention_backward_ex(float *dqkv, float *dbias, float *scratch, const float *dout,
                           const float *qkv, const float *att, const uint8_t *key_pad,
                           const float *bias, const AttnAlibi *al, int B, int T, int C, int NH,
                           float p_drop, DropKey k) {
    if (dbias) {
        /* Heads in parallel, samples in sequence: each dbias[h] has a single writer. */
#pragma omp parallel for schedule(dynamic)
        for (int h = 0; h < NH; h++) {
            float *pd = scratch + (size_t)omp_get_thread_num() * 3 * T * T;
            for (int b = 0; b < B; b++)
                head_backward(dqkv, dbias, pd, dout, qkv, att, key_pad, bias, al, b, h, T, C, NH,
                              p_drop, k);
        }
        return;
    }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            float *pd = scratch + (size_t)omp_get_thread_num() * 3 * T * T;
            head_backward(dqkv, NULL, pd, dout, qkv, att, key_pad, bias, al, b, h, T, C, NH, p_drop,
                          k);
        }
}

void attention_backward(float *dqkv, float *dbias, float *scratch, const float *dout,
                        const float *qkv, const float *att, const uint8_t *key_pad,
                        const float *bias, int B, int T, int C, int NH, float p_drop, DropKey k) {
    attention_backward_ex(dqkv, dbias, scratch, dout, qkv, att, key_pad, bias, NULL, B, T, C, NH,
                          p_drop, k);
}
