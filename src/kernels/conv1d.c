/* conv1d.c: grouped, strided, padded 1-D convolution on channels-last (B, L, C) tensors as
 * im2col + BLIS GEMM one group at a time, or, ungrouped with many input channels, as one GEMM per
 * tap on strided views of the input; weights in PyTorch's (Cout, Cin/groups, K) layout. */
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

int conv1d_out_len(int L, int K, int stride, int pad) { return (L + 2 * pad - K) / stride + 1; }

/* The wav2vec 2.0 stack after its first layer and the text decoder (docs/algorithm.md §7): tap k
 * is a GEMM (Lout x Cin) (Cin x Cout) whose input rows are every stride-th row of the input from
 * row k - pad (the output rows whose window leaves the input skip that tap), so nothing is copied
 * and the scratch is only the repacked weights and their gradient (docs/performance.md). */
static int by_taps(int Cin, int K, int groups) { return groups == 1 && K > 1 && Cin >= 64; }

/* Output rows [*t0, *t1) read input row t * stride - pad + k inside [0, L) at tap k. */
static void tap_rows(int *t0, int *t1, int L, int k, int stride, int pad, int Lout) {
    int lo = pad - k > 0 ? (pad - k + stride - 1) / stride : 0;
    int hi = L - 1 + pad - k < 0 ? 0 : (L - 1 + pad - k) / stride + 1;
    *t0 = lo, *t1 = hi < Lout ? hi : Lout;
}

size_t conv1d_cols_size(int B, int L, int Cin, int Cout, int K, int stride, int pad, int groups) {
    if (by_taps(Cin, K, groups)) return 2 * (size_t)Cout * Cin * K;
    int Lout = conv1d_out_len(L, K, stride, pad); /* one group's im2col: (B Lout, Cin/groups K) */
    return (size_t)B * (Lout > 0 ? Lout : 0) * (Cin / (groups > 0 ? groups : 1)) * K;
}

/* Wr[k][o][ci] = W[o][ci][k]: tap k's (Cout, Cin) matrix. */
static void repack(float *Wr, const float *W, int Cout, int Cin, int K) {
#pragma omp parallel for
    for (int o = 0; o < Cout; o++)
        for (int ci = 0; ci < Cin; ci++)
            for (int k = 0; k < K; k++)
                Wr[((size_t)k * Cout + o) * Cin + ci] = W[((size_t)o * Cin + ci) * K + k];
}

static void taps_forward(float *out, float *scratch, const float *inp, const float *W,
                         const float *bias, int B, int L, int Cin, int Cout, int K, int stride,
                         int pad, int Lout) {
    float *Wr = scratch;
    repack(Wr, W, Cout, Cin, K);
    /* unpadded, tap 0 covers every output row and may overwrite; padded, some rows miss it */
    int overwrite = !bias && pad == 0;
    if (!overwrite) {
#pragma omp parallel for
        for (size_t n = 0; n < (size_t)B * Lout; n++)
            for (int o = 0; o < Cout; o++)
                out[n * Cout + o] = bias ? bias[o] : 0.0f;
    }
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++) {
            int t0, t1;
            tap_rows(&t0, &t1, L, k, stride, pad, Lout);
            if (t1 <= t0) continue;
            gemm_rowmajor(0, 1, t1 - t0, Cout, Cin, 1.0f,
                          inp + ((size_t)b * L + t0 * stride - pad + k) * Cin, stride * Cin,
                          Wr + (size_t)k * Cout * Cin, Cin, k == 0 && overwrite ? 0.0f : 1.0f,
                          out + ((size_t)b * Lout + t0) * Cout, Cout, 0);
        }
}

static void taps_backward(float *dinp, float *dW, float *scratch, const float *dout,
                          const float *inp, const float *W, int B, int L, int Cin, int Cout, int K,
                          int stride, int pad, int Lout) {
    float *Wr = scratch, *dWr = scratch + (size_t)Cout * Cin * K;
    if (dW) {
        memset(dWr, 0, sizeof(float) * Cout * Cin * K);
        for (int b = 0; b < B; b++)
            for (int k = 0; k < K; k++) {
                int t0, t1;
                tap_rows(&t0, &t1, L, k, stride, pad, Lout);
                if (t1 <= t0) continue;
                gemm_rowmajor(1, 0, Cout, Cin, t1 - t0, 1.0f, dout + ((size_t)b * Lout + t0) * Cout,
                              Cout, inp + ((size_t)b * L + t0 * stride - pad + k) * Cin,
                              stride * Cin, 1.0f, dWr + (size_t)k * Cout * Cin, Cin, 0);
            }
#pragma omp parallel for
        for (int o = 0; o < Cout; o++)
            for (int ci = 0; ci < Cin; ci++)
                for (int k = 0; k < K; k++)
                    dW[((size_t)o * Cin + ci) * K + k] += dWr[((size_t)k * Cout + o) * Cin + ci];
    }
    if (dinp) { /* tap k adds into every stride-th input row from row k - pad; taps run in turn */
        repack(Wr, W, Cout, Cin, K);
        for (int b = 0; b < B; b++)
            for (int k = 0; k < K; k++) {
                int t0, t1;
                tap_rows(&t0, &t1, L, k, stride, pad, Lout);
                if (t1 <= t0) continue;
                gemm_rowmajor(0, 0, t1 - t0, Cin, Cout, 1.0f, dout + ((size_t)b * Lout + t0) * Cout,
                              Cout, Wr + (size_t)k * Cout * Cin, Cin, 1.0f,
                              dinp + ((size_t)b * L + t0 * stride - pad + k) * Cin, stride * Cin,
                              0);
            }
    }
}

/* Group g's im2col: cols[b*Lout + t][ci*K + k] = inp[b, t*stride - pad + k, g*Cg + ci] (0
 * outside). One group at a time keeps the scratch `groups` times smaller than all of them. */
static void im2col(float *cols, const float *inp, int B, int L, int Cin, int K, int stride, int pad,
                   int groups, int g, int Lout) {
    int Cg = Cin / groups, row = Cg * K;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Lout; t++) {
            float *dst = cols + ((size_t)b * Lout + t) * row;
            for (int k = 0; k < K; k++) {
                int l = t * stride - pad + k;
                const float *src = inp + ((size_t)b * L + l) * Cin + (size_t)g * Cg;
                int inside = l >= 0 && l < L;
                for (int ci = 0; ci < Cg; ci++)
                    dst[ci * K + k] = inside ? src[ci] : 0.0f;
            }
        }
}

static void col2im_add(float *dinp, const float *cols, int B, int L, int Cin, int K, int stride,
                       int pad, int groups, int g, int Lout) {
    int Cg = Cin / groups, row = Cg * K;
#pragma omp parallel for /* one sample per thread: overlapping windows never race */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < Lout; t++) {
            const float *src = cols + ((size_t)b * Lout + t) * row;
            for (int k = 0; k < K; k++) {
                int l = t * stride - pad + k;
                if (l < 0 || l >= L) continue;
                float *dst = dinp + ((size_t)b * L + l) * Cin + (size_t)g * Cg;
                for (int ci = 0; ci < Cg; ci++)
                    dst[ci] += src[ci * K + k];
            }
        }
}

static void check_shape(int L, int Cin, int Cout, int K, int stride, int pad, int groups) {
    if (groups <= 0 || Cin % groups || Cout % groups || K <= 0 || stride <= 0 || pad < 0 ||
        conv1d_out_len(L, K, stride, pad) <= 0)
        die("conv1d: bad shape L=%d Cin=%d Cout=%d K=%d stride=%d pad=%d groups=%d", L, Cin, Cout,
            K, stride, pad, groups);
}

void conv1d_forward(float *out, float *cols, const float *inp, const float *W, const float *bias,
                    int B, int L, int Cin, int Cout, int K, int stride, int pad, int groups) {
    check_shape(L, Cin, Cout, K, stride, pad, groups);
    int Lout = conv1d_out_len(L, K, stride, pad);
    if (by_taps(Cin, K, groups)) {
        taps_forward(out, cols, inp, W, bias, B, L, Cin, Cout, K, stride, pad, Lout);
        return;
    }
    int Cg = Cin / groups, Og = Cout / groups, row = Cg * K;
    size_t N = (size_t)B * Lout;
    if (bias) {
#pragma omp parallel for
        for (size_t n = 0; n < N; n++)
            for (int o = 0; o < Cout; o++)
                out[n * Cout + o] = bias[o];
    }
    for (int g = 0; g < groups; g++) {
        im2col(cols, inp, B, L, Cin, K, stride, pad, groups, g, Lout);
        gemm_rowmajor(0, 1, (int)N, Og, row, 1.0f, cols, row, W + (size_t)g * Og * row, row,
                      bias ? 1.0f : 0.0f, out + (size_t)g * Og, Cout, 0);
    }
}

void conv1d_backward(float *dinp, float *dW, float *dbias, float *cols, const float *dout,
                     const float *inp, const float *W, int B, int L, int Cin, int Cout, int K,
                     int stride, int pad, int groups) {
    check_shape(L, Cin, Cout, K, stride, pad, groups);
    int Lout = conv1d_out_len(L, K, stride, pad);
    int Cg = Cin / groups, Og = Cout / groups, row = Cg * K;
    size_t N = (size_t)B * Lout;
    if (dbias) {
#pragma omp parallel for
        for (int o = 0; o < Cout; o++) {
            double s = 0;
            for (size_t n = 0; n < N; n++)
                s += dout[n * Cout + o];
            dbias[o] += (float)s;
        }
    }
    if (by_taps(Cin, K, groups)) {
        taps_backward(dinp, dW, cols, dout, inp, W, B, L, Cin, Cout, K, stride, pad, Lout);
        return;
    }
    for (int g = 0; g < groups; g++) {
        if (dW) { /* recomputed, not kept */
            im2col(cols, inp, B, L, Cin, K, stride, pad, groups, g, Lout);
            gemm_rowmajor(1, 0, Og, row, (int)N, 1.0f, dout + (size_t)g * Og, Cout, cols, row, 1.0f,
                          dW + (size_t)g * Og * row, row, 0);
        }
        if (dinp) { /* the group's im2col is spent: reuse it for d(cols) */
            gemm_rowmajor(0, 0, (int)N, row, Og, 1.0f, dout + (size_t)g * Og, Cout,
                          W + (size_t)g * Og * row, row, 0.0f, cols, row, 0);
            col2im_add(dinp, cols, B, L, Cin, K, stride, pad, groups, g, Lout);
        }
    }
}
