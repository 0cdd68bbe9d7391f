/* norm.c: layer norm over channels (affine or parameter-less) and instance norm over time. */
#include <math.h>

#include "d2v/kernels.h"

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[c] - m) * (x[c] - m);
        v /= C; /* biased variance, as torch.nn.LayerNorm */
        float s = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
        for (int c = 0; c < C; c++) {
            float h = (x[c] - mf) * s;
            y[c] = w ? h * w[c] + b[c] : h;
        }
        if (mean) mean[n] = mf;
        if (rstd) rstd[n] = s;
    }
}

void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C) {
    if (dinp) {
#pragma omp parallel for
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
            float *dx = dinp + (size_t)n * C;
            float m = mean[n], s = rstd[n];
            double sum_g = 0, sum_gh = 0;
            for (int c = 0; c < C; c++) {
                float g = w ? dy[c] * w[c] : dy[c];
                sum_g += g;
                sum_gh += g * (x[c] - m) * s;
            }
            float mg = (float)(sum_g / C), mgh = (float)(sum_gh / C);
            for (int c = 0; c < C; c++) {
                float g = w ? dy[c] * w[c] : dy[c];
                float h = (x[c] - m) * s;
                dx[c] += s * (g - mg - h * mgh);
            }
        }
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
            for (int t = 0; t < T; t++) m += x[(size_t)t * C + c];
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
