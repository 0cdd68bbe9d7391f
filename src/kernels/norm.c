/* norm.c: layer norm over channels (affine or parameter-less; rows on simd.h's kernels) and
 * instance norm over time. */
#include <math.h>

#include "d2v/kernels.h"
#include <stdlib.h>

#include "d2v/util.h"
#include "simd.h"

/* A per-thread row buffer (not counted in the arenas: C floats). */
static float *xalloc_rows(int C) {
    float *z = malloc(sizeof(float) * (size_t)(C > 0 ? C : 1));
    if (!z) die("layer norm: out of memory for a row of %d", C);
    return z;
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps) {
    const SimdOps *v = simd_ops();
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float m, s;
        v->row_mean_rstd(inp + (size_t)n * C, C, eps, &m, &s);
        v->row_normalize(out + (size_t)n * C, inp + (size_t)n * C, w, b, C, m, s);
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = s;
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
    if (dinp) {
        const SimdOps *v = simd_ops();
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            v->row_layernorm_backward(dinp + (size_t)n * C, inp + (size_t)n * C,
                                      dout + (size_t)n * C, w, C, mean[n], rstd[n]);
    }
    if (dw || db) {
        /* Threads take blocks of channels (no two write the same dw/db element), read row by
         * row; each sum runs over the rows in order, whatever the thread count. */
        const SimdOps *v = simd_ops();
#pragma omp parallel for
        for (int c = 0; c < C; c += SIMD_COLS)
            v->ln_param_grad(dw ? dw + c : NULL, db ? db + c : NULL, dout + c, inp + c, mean, rstd,
                             N, (size_t)C, C - c < SIMD_COLS ? C - c : SIMD_COLS);
    }
}

void instancenorm_forward(float *out, float *mean, float *rstd, const float *inp, int B, int T,
                          int C, float eps) {
#pragma omp parallel for
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * T * C;
        float *y = out + (size_t)b * T * C;
        float *mb = mean + (size_t)b * C, *sb = rstd + (size_t)b * C;
        /* two passes per channel with double sums: biased variance, as F.instance_norm */
        for (int c = 0; c < C; c++) {
            double m = 0, v = 0;
            for (int t = 0; t < T; t++)
                m += x[(size_t)t * C + c];
            m /= T;
            for (int t = 0; t < T; t++) {
                double d = x[(size_t)t * C + c] - m;
                v += d * d;
            }
            v /= T;
            mb[c] = (float)m;
            sb[c] = (float)(1.0 / sqrt(v + eps));
        }
        for (int t = 0; t < T; t++)
            for (int c = 0; c < C; c++)
                y[(size_t)t * C + c] = (x[(size_t)t * C + c] - mb[c]) * sb[c];
    }
}

void instancenorm_backward(float *dinp, const float *dout, const float *inp, const float *mean,
                           const float *rstd, int B, int T, int C) {
#pragma omp parallel for
    for (int b = 0; b < B; b++) {
        const float *x = inp + (size_t)b * T * C, *dy = dout + (size_t)b * T * C;
        float *dx = dinp + (size_t)b * T * C;
        for (int c = 0; c < C; c++) {
            float m = mean[(size_t)b * C + c], s = rstd[(size_t)b * C + c];
            double sg = 0, sgh = 0;
            for (int t = 0; t < T; t++) {
                float g = dy[(size_t)t * C + c];
                sg += g;
                sgh += g * (x[(size_t)t * C + c] - m) * s;
            }
            float mg = (float)(sg / T), mgh = (float)(sgh / T);
            for (int t = 0; t < T; t++) {
                float h = (x[(size_t)t * C + c] - m) * s;
                dx[(size_t)t * C + c] += s * (dy[(size_t)t * C + c] - mg - h * mgh);
            }
        }
    }
}

void layernorm_gelu_backward(float *dinp, const float *dout, const float *inp, const float *w,
                             const float *b, const float *mean, const float *rstd, int N, int C) {
    const SimdOps *v = simd_ops();
#pragma omp parallel
    {
        float *z = xalloc_rows(C); /* one row of the LN output, never the whole tensor */
#pragma omp for
        for (int n = 0; n < N; n++) {
            size_t o = (size_t)n * C;
            v->row_normalize(z, inp + o, w, b, C, mean[n], rstd[n]);
            v->gelu_backward(dinp + o, z, dout + o, (size_t)C);
        }
        free(z);
    }
}
