/* simd.h: the hot element-wise row kernels, compiled once per x86 ISA level (simd_impl.c built
 * three times by the Makefile) and chosen at start-up, so every node runs vector code: GCC's
 * target_clones had silently compiled the AVX2 GELU to scalar code. D2V_SIMD=base|avx2|avx512
 * forces one (tests and make bench run each on one machine). */
#ifndef D2V_SIMD_H
#define D2V_SIMD_H

#include <stddef.h>
#include <stdint.h>

#define SIMD_COLS 64 /* columns per colsum / ln_param_grad call */

typedef struct {
    const char *name;
    void (*gelu_forward)(float *out, const float *inp, size_t n);
    void (*gelu_backward)(float *dinp, const float *inp, const float *dout, size_t n);
    /// y = softmax(x) over C (a row of all -inf gives zeros); y may alias x.
    void (*softmax_row)(float *y, const float *x, int C);
    /// dx += y * (dy - <y, dy>)
    void (*softmax_backward_row)(float *dx, const float *y, const float *dy, int C);
    /// d <- p * (d - <p, d>)
    void (*softmax_grad_row_inplace)(float *d, const float *p, int T);
    void (*row_mean_rstd)(const float *x, int C, float eps, float *mean, float *rstd);
    void (*row_normalize)(float *y, const float *x, const float *w, const float *b, int C, float m,
                          float s);
    void (*row_layernorm_backward)(float *dx, const float *x, const float *dy, const float *w,
                                   int C, float m, float s);
    /// db[j] += sum over the N rows (stride ld) of x[r][j], j < n <= SIMD_COLS, summed in double
    /// in row order (bias gradients: the same sums as a per-column loop, read row by row)
    void (*colsum)(float *db, const float *x, int N, size_t ld, int n);
    /// Layer-norm parameter gradients of columns j < n <= SIMD_COLS: dw[j] += sum_r dy (x - m_r)
    /// s_r, db[j] += sum_r dy, in double in row order; either output may be NULL
    void (*ln_param_grad)(float *dw, float *db, const float *dy, const float *x, const float *mean,
                          const float *rstd, int N, size_t ld, int n);
    /* Dropout, element i of a row kept when rng_uniform(key, start + i) >= p (the masks of
     * dropout.c, bit for bit, with the counter hash vectorised): */
    /// y[i] = kept ? x[i] * scale : 0 (y may alias x)
    void (*dropout_fwd)(float *y, const float *x, uint64_t key, uint64_t start, size_t n, float p,
                        float scale);
    /// dx[i] += kept ? dy[i] * scale : nothing
    void (*dropout_bwd)(float *dx, const float *dy, uint64_t key, uint64_t start, size_t n, float p,
                        float scale);
    /// out[i] = x[i] + (kept ? branch[i] * ps * gamma[i] : 0), gamma NULL = 1
    void (*branch_fwd)(float *out, const float *x, const float *branch, const float *gamma,
                       float ps, uint64_t key, uint64_t start, size_t n, float p);
    /// dbranch[i] += kept ? dout[i] * ps * gamma[i] : nothing
    void (*branch_bwd)(float *dbranch, const float *dout, const float *gamma, float ps,
                       uint64_t key, uint64_t start, size_t n, float p);
    /// y += a x: the plain vector loop the throughput checks compare against
    void (*axpy)(float *y, const float *x, float a, size_t n);
} SimdOps;

extern const SimdOps simd_base, simd_avx2, simd_avx512;

/// The ISA level in use: the best the CPU has, or D2V_SIMD's.
const SimdOps *simd_ops(void);
/// The table of one ISA level ("base", "avx2", "avx512"), NULL if unknown or this CPU lacks it.
const SimdOps *simd_ops_named(const char *name);

#endif
