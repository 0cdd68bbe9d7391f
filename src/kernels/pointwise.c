/* pointwise.c: exact-erf GELU, residual add and row softmax, threaded with OpenMP. */
#include <math.h>

#include "d2v/kernels.h"
#include "vmath.h"

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define CHUNK 4096

/* Exact erf form (nn.GELU() default, fairseq "gelu"), not the tanh approximation; erf and exp
 * are the vectorisable versions of vmath.h, accurate to ~2e-7. */
SIMD_CLONES static void gelu_forward_chunk(float *out, const float *inp, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erf_approx(x * INV_SQRT2));
    }
}

SIMD_CLONES static void gelu_backward_chunk(float *dinp, const float *inp, const float *dout,
                                            size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erf_approx(x * INV_SQRT2));
        float pdf = INV_SQRT_2PI * exp_approx(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i += CHUNK)
        gelu_forward_chunk(out + i, inp + i, n - i < CHUNK ? n - i : CHUNK);
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i += CHUNK)
        gelu_backward_chunk(dinp + i, inp + i, dout + i, n - i < CHUNK ? n - i : CHUNK);
}

void residual_forward(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

void residual_backward(float *da, float *db, const float *dout, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}

/* Reductions keep explicit per-lane partial sums (see dot_lanes in vmath.h): GCC 12 cannot
 * vectorise `omp simd reduction` inside target_clones functions. */
#define LANES VMATH_LANES

SIMD_CLONES void softmax_row(float *y, const float *x, int C) {
    float mxl[LANES], sl[LANES];
    for (int j = 0; j < LANES; j++)
        mxl[j] = -INFINITY, sl[j] = 0.0f;
    int c = 0;
    for (; c + LANES <= C; c += LANES)
#pragma omp simd
        for (int j = 0; j < LANES; j++)
            mxl[j] = x[c + j] > mxl[j] ? x[c + j] : mxl[j];
    float mx = -INFINITY;
    for (int j = 0; j < LANES; j++)
        mx = mxl[j] > mx ? mxl[j] : mx;
    for (; c < C; c++)
        mx = x[c] > mx ? x[c] : mx;
    if (mx == -INFINITY) { /* every entry masked: a zero row rather than NaN */
        for (c = 0; c < C; c++)
            y[c] = 0.0f;
        return;
    }
    for (c = 0; c + LANES <= C; c += LANES)
#pragma omp simd
        for (int j = 0; j < LANES; j++)
            sl[j] += (y[c + j] = exp_approx(x[c + j] - mx));
    float s = 0;
    for (int j = 0; j < LANES; j++)
        s += sl[j];
    for (; c < C; c++)
        s += (y[c] = exp_approx(x[c] - mx));
    float inv = 1.0f / s;
#pragma omp simd
    for (c = 0; c < C; c++)
        y[c] *= inv;
}

void softmax_forward(float *out, const float *inp, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        softmax_row(out + (size_t)n * C, inp + (size_t)n * C, C);
}

SIMD_CLONES void softmax_backward_row(float *dx, const float *y, const float *dy, int C) {
    float dot = dot_lanes(y, dy, C);
#pragma omp simd
    for (int c = 0; c < C; c++)
        dx[c] += y[c] * (dy[c] - dot);
}

void softmax_backward(float *dinp, const float *out, const float *dout, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        softmax_backward_row(dinp + (size_t)n * C, out + (size_t)n * C, dout + (size_t)n * C, C);
}
