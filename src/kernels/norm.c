/* norm.c: layer norm over channels (affine or parameter-less) and instance norm over time. */
#include <math.h>

#include "d2v/kernels.h"
#include "vmath.h"

/* Row statistics with 16 float partial sums per pass (vectorised in every clone; see
 * softmax_row), finished in double. Two passes: mean, then biased variance as nn.LayerNorm. */
#define LANES VMATH_LANES
SIMD_CLONES static void row_mean_rstd(const float *x, int C, float eps, float *mean, float *rstd) {
    float acc[LANES] = {0};
    int c = 0;
    for (; c + LANES <= C; c += LANES)
#pragma omp simd
        for (int j = 0; j < LANES; j++)
            acc[j] += x[c + j];
    double m = 0;
    for (int j = 0; j < LANES; j++)
        m += acc[j], acc[j] = 0;
    for (; c < C; c++)
        m += x[c];
    m /= C;
    float mf = (float)m;
    for (c = 0; c + LANES <= C; c += LANES)
#pragma omp simd
        for (int j = 0; j < LANES; j++)
            acc[j] += (x[c + j] - mf) * (x[c + j] - mf);
    double v = 0;
    for (int j = 0; j < LANES; j++)
        v += acc[j];
    for (; c < C; c++)
        v += (x[c] - mf) * (x[c] - mf);
    v /= C;
    *mean = mf;
    *rstd = (float)(1.0 / sqrt(v + eps));
}

SIMD_CLONES static void row_normalize(float *y, const float *x, const float *w, const float *b,
                                      int C, float m, float s) {
    if (w) {
#pragma omp simd
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - m) * s * w[c] + b[c];
    } else {
#pragma omp simd
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - m) * s;
    }
}

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float m, s;
        row_mean_rstd(inp + (size_t)n * C, C, eps, &m, &s);
        row_normalize(out + (size_t)n * C, inp + (size_t)n * C, w, b, C, m, s);
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = s;
    }
}

/* dx += s (g - mean(g) - h mean(g h)), g = dy * w, h = (x - m) s. */
SIMD_CLONES static void row_layernorm_backward(float *dx, const float *x, const float *dy,
                                               const float *w, int C, float m, float s) {
    float ag[LANES] = {0}, agh[LANES] = {0};
    int c = 0;
    for (; c + LANES <= C; c += LANES)
#pragma omp simd
        for (int j = 0; j < LANES; j++) {
            float g = w ? dy[c + j] * w[c + j] : dy[c + j];
            ag[j] += g;
            agh[j] += g * (x[c + j] - m) * s;
        }
    double sum_g = 0, sum_gh = 0;
    for (int j = 0; j < LANES; j++)
        sum_g += ag[j], sum_gh += agh[j];
    for (; c < C; c++) {
        float g = w ? dy[c] * w[c] : dy[c];
        sum_g += g;
        sum_gh += g * (x[c] - m) * s;
    }
    float mg = (float)(sum_g / C), mgh = (float)(sum_gh / C);
#pragma omp simd
    for (c = 0; c < C; c++) {
        float g = w ? dy[c] * w[c] : dy[c];
        dx[c] += s * (g - mg - (x[c] - m) * s * mgh);
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
    if (dinp) {
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            row_layernorm_backward(dinp + (size_t)n * C, inp + (size_t)n * C, dout + (size_t)n * C,
                                   w, C, mean[n], rstd[n]);
    }
    if (dw || db) {
        /* Threads split channels so no two write the same dw/db element. */
#pragma omp parallel for
        for (int c = 0; c < C; c++) {
            double sw = 0, sb = 0;
            for (int n = 0; n < N; n++) {
                float dy = dout[(size_t)n * C + c];
                sw += dy * (inp[(size_t)n * C + c] - mean[n]) * rstd[n];
                sb += dy;
            }
            if (dw) dw[c] += (float)sw;
            if (db) db[c] += (float)sb;
        }
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
