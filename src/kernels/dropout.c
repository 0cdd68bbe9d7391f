/* dropout.c: counter-based RNG (stateless hash of seed, step, sample, site, position), inverted
 * dropout and the encoder's residual-branch add (dropout, layer scale, per-sample drop path).
 * Masks are regenerated in backward, so none is stored, and none depends on thread or rank. */
#include <math.h>

#include "d2v/kernels.h"
#include "simd.h"

static inline uint64_t row_key(DropKey k, int b, uint64_t site) {
    uint64_t sample = k.sample_ids ? (uint64_t)k.sample_ids[b] : (uint64_t)b;
    return rng_key(k.seed, k.step, sample, site);
}

void dropout_forward(float *out, const float *inp, int B, size_t n_per_sample, float p, DropKey k) {
    float scale = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    const SimdOps *v = simd_ops();
#pragma omp parallel for
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * n_per_sample;
        float *y = out + (size_t)b * n_per_sample;
        if (p <= 0)
            for (size_t i = 0; i < n_per_sample; i++)
                y[i] = x[i] * scale;
        else
            v->dropout_fwd(y, x, row_key(k, b, k.site), 0, n_per_sample, p, scale);
    }
}

void dropout_backward(float *dinp, const float *dout, int B, size_t n_per_sample, float p,
                      DropKey k) {
    float scale = p > 0 ? 1.0f / (1.0f - p) : 1.0f;
    const SimdOps *v = simd_ops();
#pragma omp parallel for
    for (int b = 0; b < B; b++) {
        const float *dy = dout + (size_t)b * n_per_sample;
        float *dx = dinp + (size_t)b * n_per_sample;
        if (p <= 0)
            for (size_t i = 0; i < n_per_sample; i++)
                dx[i] += dy[i] * scale;
        else
            v->dropout_bwd(dx, dy, row_key(k, b, k.site), 0, n_per_sample, p, scale);
    }
}

/* Per-sample multiplier of a residual branch under stochastic depth (timm DropPath). */
static inline float path_scale(DropKey k, int b, float p_path) {
    if (p_path <= 0) return 1.0f;
    return rng_uniform(row_key(k, b, k.site + 1), 0) >= p_path ? 1.0f / (1.0f - p_path) : 0.0f;
}

void branch_add_forward(float *out, const float *x, const float *branch, const float *gamma, int B,
                        int T, int C, float p_drop, float p_path, DropKey k) {
    float dscale = p_drop > 0 ? 1.0f / (1.0f - p_drop) : 1.0f;
    const SimdOps *v = simd_ops();
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            float ps = path_scale(k, b, p_path) * dscale;
            size_t base = ((size_t)b * T + t) * C;
            /* p_drop 0 keeps everything: rng_uniform is never below 0 */
            v->branch_fwd(out + base, x + base, branch + base, gamma, ps, row_key(k, b, k.site),
                          (size_t)t * C, (size_t)C, p_drop > 0 ? p_drop : 0.0f);
        }
}

void branch_add_backward(float *dx, float *dbranch, float *dgamma, const float *dout,
                         const float *branch, const float *gamma, int B, int T, int C, float p_drop,
                         float p_path, DropKey k) {
    float dscale = p_drop > 0 ? 1.0f / (1.0f - p_drop) : 1.0f;
    if (dx || dbranch) {
        const SimdOps *v = simd_ops();
#pragma omp parallel for collapse(2)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                float ps = path_scale(k, b, p_path) * dscale;
                size_t base = ((size_t)b * T + t) * C;
                if (dx)
                    for (int c = 0; c < C; c++)
                        dx[base + c] += dout[base + c];
                if (dbranch)
                    v->branch_bwd(dbranch + base, dout + base, gamma, ps, row_key(k, b, k.site),
                                  (size_t)t * C, (size_t)C, p_drop > 0 ? p_drop : 0.0f);
            }
    }
    if (dgamma) {
        /* Threads split channels so dgamma elements never race. */
#pragma omp parallel for
        for (int c = 0; c < C; c++) {
            double s = 0;
            for (int b = 0; b < B; b++) {
                float ps = path_scale(k, b, p_path) * dscale;
                if (ps == 0.0f) continue;
                uint64_t key = row_key(k, b, k.site);
                for (int t = 0; t < T; t++) {
                    if (p_drop > 0 && rng_uniform(key, (size_t)t * C + c) < p_drop) continue;
                    size_t i = ((size_t)b * T + t) * C + c;
                    s += (double)dout[i] * branch[i] * ps;
                }
            }
            dgamma[c] += (float)s;
        }
    }
}
