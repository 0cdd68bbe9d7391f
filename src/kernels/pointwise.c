/* pointwise.c: exact-erf GELU, residual add and row softmax, threaded with OpenMP. */
#include <math.h>

#include "d2v/kernels.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f

/* Exact erf form (nn.GELU() default, fairseq "gelu"), not the tanh approximation. */
void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * INV_SQRT2));
    }
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erff(x * INV_SQRT2));
        float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void residual_backward(float *da, float *db, const float *dout, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}

void softmax_forward(float *out, const float *inp, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * C;
        float *y = out + (size_t)n * C;
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = fmaxf(mx, x[c]);
        if (mx == -INFINITY) { /* every entry masked: a zero row rather than NaN */
            for (int c = 0; c < C; c++) y[c] = 0.0f;
            continue;
        }
        double s = 0;
        for (int c = 0; c < C; c++) s += (y[c] = expf(x[c] - mx));
        float inv = (float)(1.0 / s);
        for (int c = 0; c < C; c++) y[c] *= inv;
    }
}

void softmax_backward(float *dinp, const float *out, const float *dout, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *y = out + (size_t)n * C, *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * C;
        double dot = 0;
        for (int c = 0; c < C; c++) dot += (double)y[c] * dy[c];
        float d = (float)dot;
        for (int c = 0; c < C; c++) dx[c] += y[c] * (dy[c] - d);
    }
}
