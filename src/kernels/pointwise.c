/* pointwise.c: GELU, residual add and row softmax threaded with OpenMP, on the ISA level's row
 * kernels (simd.h). */
#include <math.h>

#include "d2v/kernels.h"
#include "simd.h"

#define CHUNK 4096

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i += CHUNK)
        simd_ops()->gelu_forward(out + i, inp + i, n - i < CHUNK ? n - i : CHUNK);
}

void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp parallel for
    for (size_t i = 0; i < n; i += CHUNK)
        simd_ops()->gelu_backward(dinp + i, inp + i, dout + i, n - i < CHUNK ? n - i : CHUNK);
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

void softmax_row(float *y, const float *x, int C) { simd_ops()->softmax_row(y, x, C); }

void softmax_forward(float *out, const float *inp, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        softmax_row(out + (size_t)n * C, inp + (size_t)n * C, C);
}

void softmax_backward_row(float *dx, const float *y, const float *dy, int C) {
    simd_ops()->softmax_backward_row(dx, y, dy, C);
}

void softmax_backward(float *dinp, const float *out, const float *dout, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        softmax_backward_row(dinp + (size_t)n * C, out + (size_t)n * C, dout + (size_t)n * C, C);
}
