/* test_simd.c: every ISA level of the element-wise row kernels (src/kernels/simd.h) this CPU can
 * run: the same results as a double-precision reference, and vector speed. The speed check is a
 * ratio measured in one process, asserted loosely: each level's GELU must beat the same GELU
 * compiled without vectorisation by a wide margin (a level that fell back to scalar code would
 * not), and make bench prints the same ratios. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/kernels/simd.h"
#include "../src/kernels/vmath.h"
#include "check.h"
#include "d2v/kernels.h"
#include "d2v/util.h"

static double gelu_ref(double x) { return 0.5 * x * (1 + erf(x / sqrt(2.0))); }
static double gelu_grad_ref(double x) {
    return 0.5 * (1 + erf(x / sqrt(2.0))) +
           x * exp(-0.5 * x * x) / sqrt(2 * 3.14159265358979323846);
}

/* The same GELU, kept scalar: the speed baseline. */
__attribute__((optimize("no-tree-vectorize"), noinline)) static void
gelu_scalar(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erf_approx(x * 0.70710678118654752440f));
    }
}

static double best_seconds(void (*f)(float *, const float *, size_t), float *y, const float *x,
                           size_t n) {
    double best = 1e30;
    for (int r = 0; r < 7; r++) {
        double t0 = now_seconds();
        for (int k = 0; k < 20; k++)
            f(y, x, n);
        double t = now_seconds() - t0;
        best = t < best ? t : best;
    }
    return best;
}

static void test_level(const SimdOps *v, float min_speedup) {
    printf("-- %s\n", v->name);
    enum { N = 4096, C = 197 };
    float *x = xalloc(N * 4, "x"), *y = xalloc(N * 4, "y"), *dy = xalloc(N * 4, "dy");
    float *dx = xalloc(N * 4, "dx"), *w = xalloc(N * 4, "w"), *b = xalloc(N * 4, "b");
    uint64_t k = rng_key(3, 0, 0, 0);
    for (int i = 0; i < N; i++)
        x[i] = 6 * rng_normal(k, i), dy[i] = rng_normal(k, N + i),
        w[i] = 1 + rng_normal(k, 2 * N + i) / 4, b[i] = rng_normal(k, 3 * N + i) / 4;
    x[0] = -INFINITY, x[1] = 80, x[2] = -80, x[3] = 0; /* tails and zero */
    char label[160];
    /* GELU forward and backward against double */
    v->gelu_forward(y, x, N);
    double e = 0;
    for (int i = 1; i < N; i++)
        e = fmax(e, fabs(y[i] - gelu_ref(x[i])) / fmax(1, fabs(gelu_ref(x[i]))));
    snprintf(label, sizeof label, "%s gelu forward: worst error %.1e (<= 1e-6), gelu(-inf) = %g",
             v->name, e, y[0]);
    check_record(e <= 1e-6 && (y[0] == 0 || isnan(y[0])), label);
    memset(dx, 0, N * 4);
    v->gelu_backward(dx, x, dy, N);
    e = 0;
    for (int i = 1; i < N; i++)
        e = fmax(e, fabs(dx[i] - dy[i] * gelu_grad_ref(x[i])) / fmax(1, fabs(dy[i])));
    snprintf(label, sizeof label, "%s gelu backward: worst error %.1e (<= 2e-6)", v->name, e);
    check_record(e <= 2e-6, label);
    /* softmax rows (C not a multiple of the vector width), masked entries, an all-masked row */
    float *row = x + 4;
    row[5] = -INFINITY;
    v->softmax_row(y, row, C);
    double mx = -INFINITY, s = 0;
    for (int c = 0; c < C; c++)
        mx = fmax(mx, row[c]);
    for (int c = 0; c < C; c++)
        s += exp(row[c] - mx);
    e = 0;
    for (int c = 0; c < C; c++)
        e = fmax(e, fabs(y[c] - exp(row[c] - mx) / s));
    snprintf(label, sizeof label, "%s softmax row of %d: worst error %.1e, masked entry %g",
             v->name, C, e, y[5]);
    check_record(e <= 1e-6 && y[5] == 0, label);
    float masked[C];
    for (int c = 0; c < C; c++)
        masked[c] = -INFINITY;
    v->softmax_row(y, masked, C);
    int zeros = 1;
    for (int c = 0; c < C; c++)
        zeros &= y[c] == 0;
    snprintf(label, sizeof label, "%s softmax of an all-masked row: zeros, not NaN", v->name);
    check_record(zeros, label);
    /* softmax backward, both forms */
    v->softmax_row(y, x + 300, C);
    double dot = 0;
    for (int c = 0; c < C; c++)
        dot += (double)y[c] * dy[c];
    memset(dx, 0, C * 4);
    v->softmax_backward_row(dx, y, dy, C);
    float d[C];
    memcpy(d, dy, sizeof d);
    v->softmax_grad_row_inplace(d, y, C);
    double e1 = 0, e2 = 0;
    for (int c = 0; c < C; c++) {
        double want = y[c] * (dy[c] - dot);
        e1 = fmax(e1, fabs(dx[c] - want)), e2 = fmax(e2, fabs(d[c] - want));
    }
    snprintf(label, sizeof label, "%s softmax backward: worst errors %.1e, %.1e", v->name, e1, e2);
    check_record(e1 <= 1e-6 && e2 <= 1e-6, label);
    /* layer norm row: statistics, normalisation, backward (affine and parameter-less) */
    const float *r = x + 1000;
    double m = 0, var = 0;
    for (int c = 0; c < C; c++)
        m += r[c];
    m /= C;
    for (int c = 0; c < C; c++)
        var += (r[c] - m) * (r[c] - m);
    var /= C;
    float mean, rstd;
    v->row_mean_rstd(r, C, 1e-5f, &mean, &rstd);
    snprintf(label, sizeof label, "%s layer norm statistics (mean %.4f, rstd %.4f)", v->name, mean,
             rstd);
    check_record(fabs(mean - m) <= 1e-5 * fmax(1, fabs(m)) &&
                     fabs(rstd - 1 / sqrt(var + 1e-5)) <= 1e-5 / sqrt(var + 1e-5),
                 label);
    for (int affine = 0; affine < 2; affine++) {
        v->row_normalize(y, r, affine ? w : NULL, affine ? b : NULL, C, mean, rstd);
        e = 0;
        for (int c = 0; c < C; c++) {
            double h = (r[c] - mean) * rstd;
            e = fmax(e, fabs(y[c] - (affine ? h * w[c] + b[c] : h)));
        }
        memset(dx, 0, C * 4);
        v->row_layernorm_backward(dx, r, dy, affine ? w : NULL, C, mean, rstd);
        double sg = 0, sgh = 0;
        for (int c = 0; c < C; c++) {
            double g = affine ? (double)dy[c] * w[c] : dy[c], h = (r[c] - mean) * rstd;
            sg += g, sgh += g * h;
        }
        double eb = 0;
        for (int c = 0; c < C; c++) {
            double g = affine ? (double)dy[c] * w[c] : dy[c], h = (r[c] - mean) * rstd;
            eb = fmax(eb, fabs(dx[c] - rstd * (g - sg / C - h * sgh / C)));
        }
        snprintf(label, sizeof label, "%s layer norm %s: forward %.1e, backward %.1e", v->name,
                 affine ? "affine" : "parameter-less", e, eb);
        check_record(e <= 1e-5 && eb <= 1e-5, label);
    }
    /* column sums (bias and layer-norm parameter gradients): exactly the per-column loop */
    enum { R = 37, LD = 80 };
    float db[SIMD_COLS], dw2[SIMD_COLS], db2[SIMD_COLS], mean_r[R], rstd_r[R];
    const float *xs = x + 500; /* finite values only */
    for (int i = 0; i < R; i++)
        mean_r[i] = xs[i] / 10, rstd_r[i] = 1 + fabsf(dy[i]);
    int exact = 1;
    for (int n = 1; n <= SIMD_COLS; n += 21) {
        memset(db, 0, sizeof db), memset(dw2, 0, sizeof dw2), memset(db2, 0, sizeof db2);
        v->colsum(db, dy, R, LD, n);
        v->ln_param_grad(dw2, db2, dy, xs, mean_r, rstd_r, R, LD, n);
        for (int j = 0; j < n; j++) {
            double s1 = 0, sw = 0;
            for (int q = 0; q < R; q++) {
                float g = dy[(size_t)q * LD + j];
                s1 += g, sw += g * (xs[(size_t)q * LD + j] - mean_r[q]) * rstd_r[q];
            }
            exact &= db[j] == (float)s1 && db2[j] == (float)s1 && dw2[j] == (float)sw;
        }
    }
    snprintf(label, sizeof label, "%s column sums: bit-identical to the per-column loop", v->name);
    check_record(exact, label);
    /* dropout: the same masks as rng_uniform element by element, bit for bit */
    {
        enum { ND = 1000 };
        uint64_t key = rng_key(5, 7, 11, 13), start = 123456789;
        float pd = 0.3f, sc = 1 / (1 - pd), ps = 1.7f;
        float *a = xalloc(ND * 4, "a"), *r1 = xalloc(ND * 4, "r1"), *r2 = xalloc(ND * 4, "r2");
        int same = 1, kept = 0;
        v->dropout_fwd(a, x, key, start, ND, pd, sc);
        for (int i = 0; i < ND; i++) {
            float want = rng_uniform(key, start + i) >= pd ? x[i] * sc : 0.0f;
            same &= a[i] == want || (isnan(a[i]) && isnan(want));
            kept += rng_uniform(key, start + i) >= pd;
        }
        for (int i = 0; i < ND; i++)
            r1[i] = r2[i] = dy[i];
        v->dropout_bwd(r1, x + 8, key, start, ND, pd, sc);
        for (int i = 0; i < ND; i++)
            if (rng_uniform(key, start + i) >= pd) r2[i] += x[8 + i] * sc;
        same &= !memcmp(r1, r2, ND * 4);
        v->branch_fwd(r1, dy, x + 8, w, ps, key, start, ND, pd);
        for (int i = 0; i < ND; i++) {
            float vv = x[8 + i] * ps * w[i];
            r2[i] = dy[i] + (rng_uniform(key, start + i) < pd ? 0.0f : vv);
        }
        same &= !memcmp(r1, r2, ND * 4);
        for (int i = 0; i < ND; i++)
            r1[i] = r2[i] = b[i];
        v->branch_bwd(r1, dy, w, ps, key, start, ND, pd);
        for (int i = 0; i < ND; i++)
            if (rng_uniform(key, start + i) >= pd) r2[i] += dy[i] * ps * w[i];
        same &= !memcmp(r1, r2, ND * 4);
        snprintf(label, sizeof label,
                 "%s dropout and branch kernels: bit-identical to rng_uniform's masks (%d of %d "
                 "kept at p = 0.3)",
                 v->name, kept, ND);
        check_record(same && kept > 600 && kept < 800, label);
        free(a), free(r1), free(r2);
    }
    /* non-finite activations (a diverging run): NaN stays NaN through exp, GELU and softmax, so
     * the trainer's guard sees it, and nothing on the way is undefined behaviour (make test-asan
     * runs this under UBSan, which once caught exp_approx shifting a negative value) */
    {
        const float bad[6] = {NAN, -NAN, INFINITY, -INFINITY, 1e30f, -1e30f};
        float gy[6], gd[6] = {0}, ones[6] = {1, 1, 1, 1, 1, 1}, lg[4], sm[4];
        v->gelu_forward(gy, bad, 6);
        v->gelu_backward(gd, bad, ones, 6); /* accumulates into gd */
        int ok = isnan(gy[0]) && isnan(gy[1]) && isnan(gd[0]) && isnan(gd[1]) &&
                 gy[2] == INFINITY && gy[4] == 1e30f && gy[5] == 0 && gd[4] == 1 && gd[5] == 0;
        int sm_ok = 1;
        for (int c = 0; c < 3; c++) { /* a NaN, a +Inf, a -Inf among finite logits */
            lg[0] = 1, lg[1] = 2, lg[2] = 3, lg[3] = 4;
            lg[1] = c == 0 ? NAN : c == 1 ? INFINITY : -INFINITY;
            v->softmax_row(sm, lg, 4);
            int any_nan = isnan(sm[0]) || isnan(sm[1]) || isnan(sm[2]) || isnan(sm[3]);
            sm_ok &= c < 2 ? any_nan : !any_nan && sm[1] == 0;
        }
        snprintf(label, sizeof label,
                 "%s NaN / Inf: GELU (%g %g %g %g %g %g), softmax propagates NaN and +Inf, -Inf "
                 "logits get 0",
                 v->name, gy[0], gy[1], gy[2], gy[3], gy[4], gy[5]);
        check_record(ok && sm_ok, label);
    }
    /* speed: this level's GELU against the scalar GELU, same process, best of 7 (not under
     * ASan, MODE=asan: -O1 and instrumented loads make every loop about equally slow) */
#ifdef __SANITIZE_ADDRESS__
    (void)min_speedup, (void)best_seconds, (void)gelu_scalar;
    printf("     %s gelu speed: not checked in a sanitizer build\n", v->name);
#else
    double tv = best_seconds(v->gelu_forward, y, x, N), ts = best_seconds(gelu_scalar, y, x, N);
    snprintf(label, sizeof label, "%s gelu is %.1fx the scalar loop's speed (>= %.1fx expected)",
             v->name, ts / tv, min_speedup);
    check_record(ts / tv >= min_speedup, label);
#endif
    free(x), free(y), free(dy), free(dx), free(w), free(b);
}

/* exp_approx itself on the values a diverging run produces */
static void test_exp_nonfinite(void) {
    printf("-- exp_approx on NaN and infinities\n");
    volatile float nan = NAN, inf = INFINITY;
    float a = exp_approx(nan), b = exp_approx(-nan), c = exp_approx(inf), d = exp_approx(-inf);
    float e = exp_approx(1e30f), f = exp_approx(-1e30f), g = exp_approx(0);
    char label[200];
    snprintf(label, sizeof label,
             "exp(NaN) %g, exp(-NaN) %g, exp(+Inf) %g, exp(-Inf) %g, "
             "exp(1e30) %g, exp(-1e30) %g, exp(0) %g",
             a, b, c, d, e, f, g);
    check_record(isnan(a) && isnan(b) && c > 1e38f && isfinite(c) && d == 0 && e == c && f == 0 &&
                     g == 1,
                 label);
}

int main(void) {
    test_exp_nonfinite();
    const char *names[] = {"base", "avx2", "avx512"};
    /* SSE has 4 lanes, AVX2 8, AVX-512 16 (8 on cores that split it): loose floors well under */
    const float floors[] = {1.8f, 2.5f, 2.5f};
    for (int i = 0; i < 3; i++) {
        const SimdOps *v = simd_ops_named(names[i]);
        if (v)
            test_level(v, floors[i]);
        else
            printf("-- %s: not supported by this CPU (tests/script_isa.sh still checks its code)\n",
                   names[i]);
    }
    printf("in use: %s\n", simd_ops()->name);
    return check_summary();
}
