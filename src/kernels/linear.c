/* linear.c: fully connected layer y = x W^T + b (PyTorch weight layout) on BLIS GEMMs. */
#include "d2v/kernels.h"
#include "simd.h"

void linear_forward(float *out, const float *inp, const float *W, const float *bias, int N, int C,
                    int OC) {
    if (bias) {
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++)
                out[(size_t)n * OC + o] = bias[o];
    }
    gemm_rowmajor(0, 1, N, OC, C, 1.0f, inp, C, W, C, bias ? 1.0f : 0.0f, out, OC, 0);
}

void linear_backward(float *dinp, float *dW, float *dbias, const float *dout, const float *inp,
                     const float *W, int N, int C, int OC) {
    if (dinp) gemm_rowmajor(0, 0, N, C, OC, 1.0f, dout, OC, W, C, 1.0f, dinp, C, 0);
    if (dW) gemm_rowmajor(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dW, C, 0);
    if (dbias) { /* threads take blocks of columns and read them row by row (cache lines) */
        const SimdOps *v = simd_ops();
#pragma omp parallel for
        for (int o = 0; o < OC; o += SIMD_COLS)
            v->colsum(dbias + o, dout + o, N, (size_t)OC, OC - o < SIMD_COLS ? OC - o : SIMD_COLS);
    }
}
