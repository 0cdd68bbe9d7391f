/* simd_impl.c: the element-wise row kernels of simd.h, written once and compiled per ISA level
 * (SIMD_ISA = base, avx2, avx512; see the Makefile). Loops are branch-free so GCC if-converts
 * and vectorises them (-fno-trapping-math lets it); tests/script_isa.sh checks the result. */
#include <math.h>

#include "d2v/rng.h"
#include "simd.h"
#include "vmath.h"

#define CAT_(a, b, c) a##b##c
#define CAT(a, b, c) CAT_(a, b, c)
#define FN(name) CAT(simd_, SIMD_ISA, _##name)

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define LANES VMATH_LANES

/* Exact erf form (nn.GELU() default, fairseq "gelu"), not the tanh approximation. */
static void FN(gelu_forward)(float *out, const float *inp, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erf_approx(x * INV_SQRT2));
    }
}

static void FN(gelu_backward)(float *dinp, const float *inp, const float *dout, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float cdf = 0.5f * (1.0f + erf_approx(x * INV_SQRT2));
        float pdf = INV_SQRT_2PI * exp_approx(-0.5f * x * x);
        dinp[i] += dout[i] * (cdf + x * pdf);
    }
}

/* Reductions keep explicit per-lane partial sums: GCC vectorises this form reliably. */
static void FN(softmax_row)(float *y, const float *x, int C) {
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

static void FN(softmax_backward_row)(float *dx, const float *y, const float *dy, int C) {
    float dot = dot_lanes(y, dy, C);
#pragma omp simd
    for (int c = 0; c < C; c++)
        dx[c] += y[c] * (dy[c] - dot);
}

static void FN(softmax_grad_row_inplace)(float *d, const float *p, int T) {
    float dot = dot_lanes(p, d, T);
#pragma omp simd
    for (int j = 0; j < T; j++)
        d[j] = p[j] * (d[j] - dot);
}

/* Two passes, finished in double: mean, then the biased variance (nn.LayerNorm). */
static void FN(row_mean_rstd)(const float *x, int C, float eps, float *mean, float *rstd) {
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

static void FN(row_normalize)(float *y, const float *x, const float *w, const float *b, int C,
                              float m, float s) {
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

/* dx += s (g - mean(g) - h mean(g h)), g = dy * w, h = (x - m) s. */
static void FN(row_layernorm_backward)(float *dx, const float *x, const float *dy, const float *w,
                                       int C, float m, float s) {
    float ag[LANES] = {0}, agh[LANES] = {0};
    int c = 0;
    if (w) {
        for (; c + LANES <= C; c += LANES)
#pragma omp simd
            for (int j = 0; j < LANES; j++) {
                float g = dy[c + j] * w[c + j];
                ag[j] += g, agh[j] += g * (x[c + j] - m) * s;
            }
    } else {
        for (; c + LANES <= C; c += LANES)
#pragma omp simd
            for (int j = 0; j < LANES; j++) {
                float g = dy[c + j];
                ag[j] += g, agh[j] += g * (x[c + j] - m) * s;
            }
    }
    double sum_g = 0, sum_gh = 0;
    for (int j = 0; j < LANES; j++)
        sum_g += ag[j], sum_gh += agh[j];
    for (; c < C; c++) {
        float g = w ? dy[c] * w[c] : dy[c];
        sum_g += g, sum_gh += g * (x[c] - m) * s;
    }
    float mg = (float)(sum_g / C), mgh = (float)(sum_gh / C);
    if (w) {
#pragma omp simd
        for (c = 0; c < C; c++)
            dx[c] += s * (dy[c] * w[c] - mg - (x[c] - m) * s * mgh);
    } else {
#pragma omp simd
        for (c = 0; c < C; c++)
            dx[c] += s * (dy[c] - mg - (x[c] - m) * s * mgh);
    }
}

static void FN(colsum)(float *db, const float *x, int N, size_t ld, int n) {
    double acc[SIMD_COLS] = {0};
    for (int r = 0; r < N; r++) {
        const float *row = x + (size_t)r * ld;
#pragma omp simd
        for (int j = 0; j < n; j++)
            acc[j] += row[j];
    }
    for (int j = 0; j < n; j++)
        db[j] += (float)acc[j];
}

static void FN(ln_param_grad)(float *dw, float *db, const float *dy, const float *x,
                              const float *mean, const float *rstd, int N, size_t ld, int n) {
    double aw[SIMD_COLS] = {0}, ab[SIMD_COLS] = {0};
    for (int r = 0; r < N; r++) {
        const float *g = dy + (size_t)r * ld, *xr = x + (size_t)r * ld;
        float m = mean[r], s = rstd[r];
#pragma omp simd
        for (int j = 0; j < n; j++) {
            float t = g[j] * (xr[j] - m) * s; /* in float, as the per-column loop did */
            aw[j] += t, ab[j] += g[j];
        }
    }
    for (int j = 0; j < n; j++) {
        if (dw) dw[j] += (float)aw[j];
        if (db) db[j] += (float)ab[j];
    }
}

/* The dropout kernels must round as dropout.c's scalar loops did (no fused multiply-add), so a
 * run's masks and sums do not depend on the ISA level. */
#define NO_FMA __attribute__((optimize("fp-contract=off")))

NO_FMA static void FN(dropout_fwd)(float *y, const float *x, uint64_t key, uint64_t start, size_t n,
                                   float p, float scale) {
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        y[i] = rng_uniform(key, start + i) >= p ? x[i] * scale : 0.0f;
}

NO_FMA static void FN(dropout_bwd)(float *dx, const float *dy, uint64_t key, uint64_t start,
                                   size_t n, float p, float scale) {
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        dx[i] = rng_uniform(key, start + i) >= p ? dx[i] + dy[i] * scale : dx[i];
}

NO_FMA static void FN(branch_fwd)(float *out, const float *x, const float *branch,
                                  const float *gamma, float ps, uint64_t key, uint64_t start,
                                  size_t n, float p) {
    if (gamma) {
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float v = branch[i] * ps * gamma[i];
            out[i] = x[i] + (rng_uniform(key, start + i) < p ? 0.0f : v);
        }
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++) {
            float v = branch[i] * ps * 1.0f;
            out[i] = x[i] + (rng_uniform(key, start + i) < p ? 0.0f : v);
        }
    }
}

NO_FMA static void FN(branch_bwd)(float *dbranch, const float *dout, const float *gamma, float ps,
                                  uint64_t key, uint64_t start, size_t n, float p) {
    if (gamma) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            dbranch[i] =
                rng_uniform(key, start + i) < p ? dbranch[i] : dbranch[i] + dout[i] * ps * gamma[i];
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            dbranch[i] =
                rng_uniform(key, start + i) < p ? dbranch[i] : dbranch[i] + dout[i] * ps * 1.0f;
    }
}

static void FN(axpy)(float *y, const float *x, float a, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

#define STR_(x) #x
#define STR(x) STR_(x)
const SimdOps CAT(simd_, SIMD_ISA, ) = {.name = STR(SIMD_ISA),
                                        .gelu_forward = FN(gelu_forward),
                                        .gelu_backward = FN(gelu_backward),
                                        .softmax_row = FN(softmax_row),
                                        .softmax_backward_row = FN(softmax_backward_row),
                                        .softmax_grad_row_inplace = FN(softmax_grad_row_inplace),
                                        .row_mean_rstd = FN(row_mean_rstd),
                                        .row_normalize = FN(row_normalize),
                                        .row_layernorm_backward = FN(row_layernorm_backward),
                                        .colsum = FN(colsum),
                                        .ln_param_grad = FN(ln_param_grad),
                                        .dropout_fwd = FN(dropout_fwd),
                                        .dropout_bwd = FN(dropout_bwd),
                                        .branch_fwd = FN(branch_fwd),
                                        .branch_bwd = FN(branch_bwd),
                                        .axpy = FN(axpy)};
