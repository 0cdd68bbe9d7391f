/* conv2d.c: grouped 2-D convolution, stride 1, "same" padding (odd K, pad K/2), on channels-last
 * (B, H, W, C) tensors as one group's im2col + BLIS GEMM at a time; weights in PyTorch's
 * (Cout, Cin/groups, K, K) layout. The data2vec 2.0 image decoder's conv (docs/algorithm.md §7). */
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/util.h"
#include "simd.h"

static void check_shape(int B, int H, int W, int Cin, int Cout, int K, int groups) {
    if (B <= 0 || H <= 0 || W <= 0 || groups <= 0 || Cin % groups || Cout % groups || K <= 0 ||
        K % 2 == 0)
        die("conv2d: bad shape B=%d H=%d W=%d Cin=%d Cout=%d K=%d groups=%d (K odd, groups "
            "dividing both channel counts)",
            B, H, W, Cin, Cout, K, groups);
}

/* One group's im2col: (B H W, Cin/groups K K), the columns in the weights' (ci, ky, kx) order. */
size_t conv2d_cols_size(int B, int H, int W, int Cin, int K, int groups) {
    return (size_t)B * H * W * (Cin / (groups > 0 ? groups : 1)) * K * K;
}

/* cols[(b H + y) W + x][(ci K + ky) K + kx] = inp[b, y + ky - K/2, x + kx - K/2, g Cg + ci], 0
 * outside the image. */
static void im2col(float *cols, const float *inp, int B, int H, int W, int Cin, int K, int groups,
                   int g) {
    int Cg = Cin / groups, KK = K * K, row = Cg * KK, p = K / 2;
#pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                float *dst = cols + (((size_t)b * H + y) * W + x) * row;
                for (int ky = 0; ky < K; ky++)
                    for (int kx = 0; kx < K; kx++) {
                        int yi = y + ky - p, xi = x + kx - p, tap = ky * K + kx;
                        if (yi < 0 || yi >= H || xi < 0 || xi >= W) {
                            for (int ci = 0; ci < Cg; ci++)
                                dst[ci * KK + tap] = 0.0f;
                            continue;
                        }
                        const float *src =
                            inp + (((size_t)b * H + yi) * W + xi) * Cin + (size_t)g * Cg;
                        for (int ci = 0; ci < Cg; ci++)
                            dst[ci * KK + tap] = src[ci];
                    }
            }
}

/* dinp[b, yi, xi, g Cg + ci] += the column entries of every output pixel whose window holds it.
 * A gather per input pixel (not a scatter per output pixel), so threads never write the same
 * element and each sum runs over the taps in one order, whatever the thread count. */
static void col2im_add(float *dinp, const float *cols, int B, int H, int W, int Cin, int K,
                       int groups, int g) {
    int Cg = Cin / groups, KK = K * K, row = Cg * KK, p = K / 2;
#pragma omp parallel for collapse(3)
    for (int b = 0; b < B; b++)
        for (int yi = 0; yi < H; yi++)
            for (int xi = 0; xi < W; xi++) {
                float *dst = dinp + (((size_t)b * H + yi) * W + xi) * Cin + (size_t)g * Cg;
                for (int ky = 0; ky < K; ky++)
                    for (int kx = 0; kx < K; kx++) {
                        int y = yi - ky + p, x = xi - kx + p, tap = ky * K + kx;
                        if (y < 0 || y >= H || x < 0 || x >= W) continue;
                        const float *src = cols + (((size_t)b * H + y) * W + x) * row;
                        for (int ci = 0; ci < Cg; ci++)
                            dst[ci] += src[ci * KK + tap];
                    }
            }
}

void conv2d_forward(float *out, float *cols, const float *inp, const float *w, const float *bias,
                    int B, int H, int W, int Cin, int Cout, int K, int groups) {
    check_shape(B, H, W, Cin, Cout, K, groups);
    int Og = Cout / groups, row = Cin / groups * K * K;
    size_t N = (size_t)B * H * W;
    if (bias) {
#pragma omp parallel for
        for (size_t n = 0; n < N; n++)
            memcpy(out + n * Cout, bias, sizeof(float) * Cout);
    }
    for (int g = 0; g < groups; g++) { /* (N x row) (row x Og) into the group's output columns */
        im2col(cols, inp, B, H, W, Cin, K, groups, g);
        gemm_rowmajor(0, 1, (int)N, Og, row, 1.0f, cols, row, w + (size_t)g * Og * row, row,
                      bias ? 1.0f : 0.0f, out + (size_t)g * Og, Cout, 0);
    }
}

void conv2d_backward(float *dinp, float *dw, float *dbias, float *cols, const float *dout,
                     const float *inp, const float *w, int B, int H, int W, int Cin, int Cout,
                     int K, int groups) {
    check_shape(B, H, W, Cin, Cout, K, groups);
    int Og = Cout / groups, row = Cin / groups * K * K;
    size_t N = (size_t)B * H * W;
    if (dbias) { /* column sums read row by row, as linear_backward's */
        const SimdOps *v = simd_ops();
#pragma omp parallel for
        for (int o = 0; o < Cout; o += SIMD_COLS)
            v->colsum(dbias + o, dout + o, (int)N, (size_t)Cout,
                      Cout - o < SIMD_COLS ? Cout - o : SIMD_COLS);
    }
    for (int g = 0; g < groups; g++) {
        const float *dg = dout + (size_t)g * Og;
        if (dw) { /* the forward's im2col is recomputed, not kept */
            im2col(cols, inp, B, H, W, Cin, K, groups, g);
            gemm_rowmajor(1, 0, Og, row, (int)N, 1.0f, dg, Cout, cols, row, 1.0f,
                          dw + (size_t)g * Og * row, row, 0);
        }
        if (dinp) { /* d(cols) = dout_g w_g into the spent im2col buffer, then gathered */
            gemm_rowmajor(0, 0, (int)N, row, Og, 1.0f, dg, Cout, w + (size_t)g * Og * row, row,
                          0.0f, cols, row, 0);
            col2im_add(dinp, cols, B, H, W, Cin, K, groups, g);
        }
    }
}
