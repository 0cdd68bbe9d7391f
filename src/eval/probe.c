/* probe.c: probes of frozen features (docs/evaluation.md): L-BFGS with a strong-Wolfe line
 * search, the softmax-regression loss on BLIS GEMMs, standardisation, the linear probe with its
 * held-out choice of the L2 strength, and the kNN probe. Every sum has a fixed order, so a probe
 * is bit-for-bit repeatable for one seed and thread count. */
#include "d2v/probe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/rng.h"
#include "d2v/util.h"

/* ---- L-BFGS --------------------------------------------------------------------------------- */

LbfgsConfig lbfgs_defaults(void) {
    return (LbfgsConfig){.m = 10,
                         .max_iter = 300,
                         .max_evals = 40,
                         .gtol = 1e-4,
                         .ftol = 1e-10,
                         .c1 = 1e-4,
                         .c2 = 0.9};
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* The minimiser of the cubic through (a0, f0, d0) and (a1, f1, d1) (values and slopes; Nocedal
 * & Wright eq. 3.59), or NAN when it has none. */
static double cubic_min(double a0, double f0, double d0, double a1, double f1, double d1) {
    double t = d0 + d1 - 3 * (f0 - f1) / (a0 - a1);
    double disc = t * t - d0 * d1;
    if (!(disc >= 0) || !isfinite(disc)) return NAN;
    double s = copysign(sqrt(disc), a1 - a0), den = d1 - d0 + 2 * s;
    if (den == 0) return NAN;
    return a1 - (a1 - a0) * (d1 + s - t) / den;
}

int lbfgs_line_search(LbfgsFn fn, void *ctx, size_t n, const double *x, double f0, const double *g0,
                      const double *d, double alpha0, double c1, double c2, int max_evals,
                      double *xn, double *fn_out, double *gn, double *alpha, int *evals) {
    double dphi0 = dot(g0, d, n);
    *evals = 0;
    if (!(dphi0 < 0)) return 0; /* not a descent direction */
    /* the best point with sufficient decrease, returned if no strong-Wolfe point is found */
    double *bx = xalloc(sizeof(double) * n, "line search x");
    double *bg = xalloc(sizeof(double) * n, "line search g");
    double best_f = INFINITY, best_a = 0;
    double a = alpha0, fa = 0, dphia = 0;
    /* the bracket: lo satisfies sufficient decrease with the lowest f so far */
    double lo = 0, f_lo = f0, d_lo = dphi0, hi = 0, f_hi = 0, d_hi = 0;
    double prev = 0, f_prev = f0, d_prev = dphi0;
    int zoom = 0, rc = 0;
#define TRIAL(step)                                                                                \
    do {                                                                                           \
        for (size_t i = 0; i < n; i++)                                                             \
            xn[i] = x[i] + (step)*d[i];                                                            \
        fa = fn(ctx, xn, gn), dphia = dot(gn, d, n), ++*evals;                                     \
        if (isfinite(fa) && fa <= f0 + c1 * (step)*dphi0 && fa < best_f) {                         \
            best_f = fa, best_a = (step);                                                          \
            memcpy(bx, xn, sizeof(double) * n), memcpy(bg, gn, sizeof(double) * n);                \
        }                                                                                          \
    } while (0)
    /* Algorithm 3.5: grow the step until it brackets a strong-Wolfe point */
    for (int it = 0; !zoom; it++) {
        if (*evals >= max_evals) goto out;
        TRIAL(a);
        int armijo = isfinite(fa) && fa <= f0 + c1 * a * dphi0;
        if (!armijo || (it > 0 && fa >= f_prev)) {
            lo = prev, f_lo = f_prev, d_lo = d_prev, hi = a, f_hi = fa, d_hi = dphia, zoom = 1;
        } else if (fabs(dphia) <= -c2 * dphi0) {
            rc = 1;
            goto out;
        } else if (dphia >= 0) {
            lo = a, f_lo = fa, d_lo = dphia, hi = prev, f_hi = f_prev, d_hi = d_prev, zoom = 1;
        } else {
            prev = a, f_prev = fa, d_prev = dphia;
            a *= 2;
        }
    }
    /* Algorithm 3.6: shrink the bracket by safeguarded cubic interpolation */
    while (*evals < max_evals) {
        double l = fmin(lo, hi), h = fmax(lo, hi), w = h - l;
        if (!(w > 1e-16 * fmax(1.0, h))) break; /* collapsed at floating-point resolution */
        a = isfinite(f_hi) ? cubic_min(lo, f_lo, d_lo, hi, f_hi, d_hi) : NAN;
        if (!(a > l + 0.1 * w && a < h - 0.1 * w)) a = 0.5 * (lo + hi);
        TRIAL(a);
        int armijo = isfinite(fa) && fa <= f0 + c1 * a * dphi0;
        if (!armijo || fa >= f_lo) {
            hi = a, f_hi = fa, d_hi = dphia;
        } else {
            if (fabs(dphia) <= -c2 * dphi0) {
                rc = 1;
                goto out;
            }
            if (dphia * (hi - lo) >= 0) hi = lo, f_hi = f_lo, d_hi = d_lo;
            lo = a, f_lo = fa, d_lo = dphia;
        }
    }
out:
#undef TRIAL
    if (rc == 1) {
        *fn_out = fa, *alpha = a;
    } else if (isfinite(best_f)) { /* sufficient decrease without the curvature condition */
        memcpy(xn, bx, sizeof(double) * n), memcpy(gn, bg, sizeof(double) * n);
        *fn_out = best_f, *alpha = best_a, rc = 2;
    }
    free(bx), free(bg);
    return rc;
}

LbfgsResult lbfgs_minimize(LbfgsFn fn, void *ctx, double *x, size_t n, const LbfgsConfig *c) {
    int m = c->m > 0 ? c->m : 1;
    double *S = xalloc(sizeof(double) * n * m, "lbfgs s"), *Y = xalloc(sizeof(double) * n * m, "y");
    double *rho = xalloc(sizeof(double) * m, "rho"), *al = xalloc(sizeof(double) * m, "alpha");
    double *g = xalloc(sizeof(double) * n, "g"), *d = xalloc(sizeof(double) * n, "d");
    double *xn = xalloc(sizeof(double) * n, "x"), *gn = xalloc(sizeof(double) * n, "g");
    double *pq = xalloc(sizeof(double) * n, "preconditioned"), gamma = 1;
    LbfgsResult r = {LBFGS_MAX_ITER, 0, 1, 0, 0, 0};
    r.f = fn(ctx, x, g);
    r.gnorm = r.gnorm0 = sqrt(dot(g, g, n));
    double tol = c->gtol * fmax(1.0, r.gnorm0);
    int pairs = 0, newest = -1; /* ring of the last m (s, y) pairs */
    if (r.gnorm <= tol) r.status = LBFGS_CONVERGED;
    while (r.status != LBFGS_CONVERGED && r.iters < c->max_iter) {
        /* two-loop recursion: d = -H g, H0 = gamma P (gamma = s'y / y'Py of the newest pair) */
        memcpy(d, g, sizeof(double) * n);
        for (int k = 0; k < pairs; k++) {
            int i = (newest - k + m) % m;
            al[i] = rho[i] * dot(S + (size_t)i * n, d, n);
            for (size_t j = 0; j < n; j++)
                d[j] -= al[i] * Y[(size_t)i * n + j];
        }
        if (c->precond) { /* H0 = gamma P */
            c->precond(c->precond_ctx, d, pq);
            memcpy(d, pq, sizeof(double) * n);
        }
        if (pairs)
            for (size_t j = 0; j < n; j++)
                d[j] *= gamma;
        for (int k = pairs - 1; k >= 0; k--) {
            int i = (newest - k + m) % m;
            double beta = rho[i] * dot(Y + (size_t)i * n, d, n);
            for (size_t j = 0; j < n; j++)
                d[j] += (al[i] - beta) * S[(size_t)i * n + j];
        }
        for (size_t j = 0; j < n; j++)
            d[j] = -d[j];
        if (!(dot(d, g, n) < 0)) { /* lost descent (round-off): restart without the pairs */
            pairs = 0;
            if (c->precond)
                c->precond(c->precond_ctx, g, d);
            else
                memcpy(d, g, sizeof(double) * n);
            for (size_t j = 0; j < n; j++)
                d[j] = -d[j];
        }
        /* without curvature pairs the first trial step has unit length */
        double alpha0 = pairs ? 1.0 : fmin(1.0, 1.0 / sqrt(dot(d, d, n))), alpha = 0, fnew = 0;
        int evals = 0;
        int ok = lbfgs_line_search(fn, ctx, n, x, r.f, g, d, alpha0, c->c1, c->c2, c->max_evals, xn,
                                   &fnew, gn, &alpha, &evals);
        r.evals += evals;
        /* no strong-Wolfe point and no decrease beyond round-off: f is at its floor */
        if (!ok || (ok == 2 && r.f - fnew <= c->ftol * fmax(1.0, fabs(r.f)))) {
            r.status = LBFGS_NO_PROGRESS;
            break;
        }
        int slot = (newest + 1) % m;
        double *s = S + (size_t)slot * n, *y = Y + (size_t)slot * n;
        for (size_t j = 0; j < n; j++)
            s[j] = xn[j] - x[j], y[j] = gn[j] - g[j];
        double sy = dot(s, y, n), yy = dot(y, y, n);
        if (sy > 1e-10 * yy && yy > 0) { /* keeps H positive definite */
            double ypy = yy;
            if (c->precond) c->precond(c->precond_ctx, y, pq), ypy = dot(y, pq, n);
            rho[slot] = 1.0 / sy, newest = slot;
            gamma = ypy > 0 ? sy / ypy : 1.0;
            if (pairs < m) pairs++;
        } else if (pairs == m) { /* the slot held the oldest pair: it is gone */
            pairs--;
        }
        memcpy(x, xn, sizeof(double) * n), memcpy(g, gn, sizeof(double) * n);
        r.f = fnew, r.iters++;
        r.gnorm = sqrt(dot(g, g, n));
        if (r.gnorm <= tol) r.status = LBFGS_CONVERGED;
    }
    free(S), free(Y), free(rho), free(al), free(g), free(d), free(xn), free(gn), free(pq);
    return r;
}

/* ---- softmax regression ------------------------------------------------------------------- */

enum { ROWS = 256 }; /* rows per partial sum: a fixed order for any thread count */

double softmax_loss(const float *x, const int32_t *y, int64_t n, int D, int K, const float *wb,
                    double l2, float *grad, float *scratch) {
    if (n <= 0 || n > INT32_MAX) die("softmax_loss: %lld rows", (long long)n);
    const float *W = wb, *b = wb + (size_t)K * D;
    float *Z = scratch;
    gemm_rowmajor(0, 1, (int)n, K, D, 1.0f, x, D, W, D, 0.0f, Z, K, 0);
    int64_t nblk = (n + ROWS - 1) / ROWS;
    double *part = xalloc(sizeof(double) * (size_t)nblk, "loss partial sums");
    double inv_n = 1.0 / (double)n;
#pragma omp parallel for schedule(static)
    for (int64_t blk = 0; blk < nblk; blk++) {
        double s = 0;
        int64_t end = (blk + 1) * ROWS < n ? (blk + 1) * ROWS : n;
        for (int64_t i = blk * ROWS; i < end; i++) {
            float *z = Z + (size_t)i * K;
            double mx = -INFINITY, sum = 0;
            for (int k = 0; k < K; k++) {
                z[k] += b[k];
                if (z[k] > mx) mx = z[k];
            }
            double zy = z[y[i]];
            for (int k = 0; k < K; k++) { /* z becomes exp(z - max): one exp per logit */
                z[k] = expf(z[k] - (float)mx);
                sum += z[k];
            }
            s += mx + log(sum) - zy; /* -log softmax(z)[y] */
            if (grad) {              /* dLoss/dz = (softmax - onehot) / n */
                double scale = inv_n / sum;
                for (int k = 0; k < K; k++)
                    z[k] = (float)(z[k] * scale - (k == y[i] ? inv_n : 0.0));
            }
        }
        part[blk] = s;
    }
    double loss = 0, reg = 0;
    for (int64_t blk = 0; blk < nblk; blk++)
        loss += part[blk];
    free(part);
    loss *= inv_n;
    for (size_t j = 0; j < (size_t)K * D; j++)
        reg += (double)W[j] * W[j];
    loss += 0.5 * l2 * reg;
    if (grad) {
        gemm_rowmajor(1, 0, K, D, (int)n, 1.0f, Z, K, x, D, 0.0f, grad, D, 0);
        for (size_t j = 0; j < (size_t)K * D; j++)
            grad[j] += (float)(l2 * W[j]);
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int64_t i = 0; i < n; i++)
                s += Z[(size_t)i * K + k];
            grad[(size_t)K * D + k] = (float)s;
        }
    }
    return loss;
}

double softmax_accuracy(const float *x, const int32_t *y, int64_t n, int D, int K, const float *wb,
                        float *scratch) {
    if (n <= 0) return 0;
    gemm_rowmajor(0, 1, (int)n, K, D, 1.0f, x, D, wb, D, 0.0f, scratch, K, 0);
    const float *b = wb + (size_t)K * D;
    int64_t correct = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *z = scratch + (size_t)i * K;
        int best = 0;
        for (int k = 1; k < K; k++)
            if (z[k] + b[k] > z[best] + b[best]) best = k;
        correct += best == y[i];
    }
    return (double)correct / (double)n;
}

/* The L-BFGS objective: the parameters in double, the model's arithmetic in float. */
typedef struct {
    const float *x;
    const int32_t *y;
    int64_t n;
    int D, K;
    double l2;
    float *wb, *grad, *scratch;
} SoftmaxFit;

static double softmax_objective(void *ctx, const double *p, double *g) {
    SoftmaxFit *s = ctx;
    size_t np = (size_t)s->K * s->D + s->K;
    for (size_t j = 0; j < np; j++)
        s->wb[j] = (float)p[j];
    double f = softmax_loss(s->x, s->y, s->n, s->D, s->K, s->wb, s->l2, s->grad, s->scratch);
    for (size_t j = 0; j < np; j++)
        g[j] = s->grad[j];
    return f;
}

/* ---- the probes --------------------------------------------------------------------------- */

void probe_standardise_fit(const float *x, int64_t n, int D, float *mean, float *std) {
    double *s1 = xalloc(sizeof(double) * D, "sums"), *s2 = xalloc(sizeof(double) * D, "sums");
    for (int64_t i = 0; i < n; i++) {
        const float *r = x + (size_t)i * D;
        for (int j = 0; j < D; j++)
            s1[j] += r[j];
    }
    for (int j = 0; j < D; j++)
        s1[j] /= n > 0 ? (double)n : 1.0;
    for (int64_t i = 0; i < n; i++) { /* two passes: no cancellation on offset features */
        const float *r = x + (size_t)i * D;
        for (int j = 0; j < D; j++)
            s2[j] += (r[j] - s1[j]) * (r[j] - s1[j]);
    }
    for (int j = 0; j < D; j++) {
        double sd = sqrt(s2[j] / (n > 0 ? (double)n : 1.0));
        mean[j] = (float)s1[j];
        std[j] = sd > 1e-6 * (fabs(s1[j]) + 1e-30) && sd > 0 ? (float)sd : 1.0f;
    }
    free(s1), free(s2);
}

void probe_standardise_apply(float *x, int64_t n, int D, const float *mean, const float *std) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float *r = x + (size_t)i * D;
        for (int j = 0; j < D; j++)
            r[j] = (r[j] - mean[j]) / std[j];
    }
}

ProbeConfig probe_defaults(void) {
    ProbeConfig c = {
        .seed = 0, .holdout = 0.1, .n_grid = 7, .opt = lbfgs_defaults(), .precondition = 1};
    for (int i = 0; i < c.n_grid; i++)
        c.grid[i] = pow(10.0, -1 - i); /* 1e-1 .. 1e-7 */
    return c;
}

/* The preconditioner: (Sigma + eps I)^-1 on each class's weight row, the identity on the
 * biases, with Sigma the standardised features' covariance. Features from a network are highly
 * correlated (condition numbers of 1e5 and more): plain L-BFGS then needs thousands of
 * iterations, while the softmax loss's Hessian is about c Sigma + l2 I (c, the softmax's
 * curvature, ~0.1), whose inverse this is up to scale for eps = l2 / c. */
typedef struct {
    int D, K;
    double *L, *U; // (D, D) lower Cholesky factor of Sigma + eps I, and its transpose
    double *z;     // (D, K) right-hand sides, one column per class
} Precond;

static void precond_apply(void *ctx, const double *in, double *out) {
    const Precond *p = ctx;
    int D = p->D, K = p->K;
    double *z = p->z;
    for (int k = 0; k < K; k++)     /* the K weight rows as columns: the solves' inner loops run */
        for (int i = 0; i < D; i++) /* over contiguous K-vectors */
            z[(size_t)i * K + k] = in[(size_t)k * D + i];
    for (int i = 0; i < D; i++) { /* L z = b */
        const double *Li = p->L + (size_t)i * D;
        double *zi = z + (size_t)i * K;
        for (int j = 0; j < i; j++)
            for (int k = 0; k < K; k++)
                zi[k] -= Li[j] * z[(size_t)j * K + k];
        for (int k = 0; k < K; k++)
            zi[k] /= Li[i];
    }
    for (int i = D - 1; i >= 0; i--) { /* L' x = z, by the rows of U = L' */
        const double *Ui = p->U + (size_t)i * D;
        double *zi = z + (size_t)i * K;
        for (int j = i + 1; j < D; j++)
            for (int k = 0; k < K; k++)
                zi[k] -= Ui[j] * z[(size_t)j * K + k];
        for (int k = 0; k < K; k++)
            zi[k] /= Ui[i];
    }
    for (int k = 0; k < K; k++)
        for (int i = 0; i < D; i++)
            out[(size_t)k * D + i] = z[(size_t)i * K + k];
    memcpy(out + (size_t)K * D, in + (size_t)K * D, sizeof(double) * K);
}

/* L of cov + eps I (cov: (D, D) float) and U = L'; 0, or -1 if not positive definite. */
static int precond_factor(Precond *p, const float *cov, double eps) {
    int D = p->D;
    double *L = p->L;
    for (size_t i = 0; i < (size_t)D * D; i++)
        L[i] = cov[i];
    for (int j = 0; j < D; j++) {
        double *Lj = L + (size_t)j * D;
        double v = Lj[j] + eps;
        for (int k = 0; k < j; k++)
            v -= Lj[k] * Lj[k];
        if (!(v > 0)) return -1;
        Lj[j] = sqrt(v);
        for (int i = j + 1; i < D; i++) {
            double *Li = L + (size_t)i * D, w = Li[j];
            for (int k = 0; k < j; k++)
                w -= Li[k] * Lj[k];
            Li[j] = w / Lj[j];
        }
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            if (j > i) L[(size_t)i * D + j] = 0; /* the strict upper triangle, unused */
            p->U[(size_t)i * D + j] = j >= i ? L[(size_t)j * D + i] : 0; /* U[i][j] = L[j][i] */
        }
    return 0;
}

static void fit(SoftmaxFit *s, double *p, const LbfgsConfig *opt0, const float *cov, Precond *pc,
                int *iters, int *status) {
    LbfgsConfig opt = *opt0;
    /* eps = l2 / c with c = 0.1; the floor keeps the factor defined on constant features */
    if (cov && precond_factor(pc, cov, 10 * s->l2 + 1e-6) == 0)
        opt.precond = precond_apply, opt.precond_ctx = pc;
    LbfgsResult r = lbfgs_minimize(softmax_objective, s, p, (size_t)s->K * s->D + s->K, &opt);
    *iters = r.iters, *status = r.status;
    for (size_t j = 0; j < (size_t)s->K * s->D + s->K; j++)
        s->wb[j] = (float)p[j]; /* the returned parameters, for scoring */
}

ProbeResult probe_linear(const float *xtr, const int32_t *ytr, int64_t ntr, const float *xte,
                         const int32_t *yte, int64_t nte, int D, int K, const ProbeConfig *c) {
    if (ntr < 2) die("probe: %lld train samples (at least 2)", (long long)ntr);
    if (c->n_grid < 1 || c->n_grid > PROBE_MAX_GRID) die("probe: %d L2 strengths", c->n_grid);
    ProbeResult res;
    memset(&res, 0, sizeof res);
    size_t sz = (size_t)D * sizeof(float);
    float *mean = xalloc(sz, "mean"), *std = xalloc(sz, "std");
    probe_standardise_fit(xtr, ntr, D, mean, std);
    /* the held-out rows: the first share of a seeded permutation, both parts kept in order */
    int64_t nh = (int64_t)llround(c->holdout * (double)ntr);
    nh = nh < 1 ? 1 : nh > ntr - 1 ? ntr - 1 : nh;
    int64_t *perm = xalloc(sizeof(int64_t) * (size_t)ntr, "permutation");
    uint8_t *held = xalloc((size_t)ntr, "held-out flags");
    for (int64_t i = 0; i < ntr; i++)
        perm[i] = i;
    RngStream r = rng_stream(c->seed, 0, UINT64_MAX, RNG_PROBE_SPLIT);
    for (int64_t i = ntr - 1; i > 0; i--) {
        int64_t j = rng_stream_int(&r, 0, i), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int64_t i = 0; i < nh; i++)
        held[perm[i]] = 1;
    free(perm);
    float *xs = xalloc(sz * (size_t)ntr, "standardised train");
    int32_t *ys = xalloc(sizeof(int32_t) * (size_t)ntr, "train labels");
    int64_t nf = 0, at_h = ntr - nh; /* fit rows first, then the held-out ones */
    for (int64_t i = 0; i < ntr; i++) {
        int64_t to = held[i] ? at_h++ : nf++;
        memcpy(xs + (size_t)to * D, xtr + (size_t)i * D, sz);
        ys[to] = ytr[i];
    }
    free(held);
    probe_standardise_apply(xs, ntr, D, mean, std);
    size_t np = (size_t)K * D + K;
    int64_t nmax = ntr > nte ? ntr : nte;
    SoftmaxFit s = {xs,
                    ys,
                    nf,
                    D,
                    K,
                    0,
                    xalloc(np * 4, "weights"),
                    xalloc(np * 4, "gradient"),
                    xalloc(sizeof(float) * (size_t)nmax * K, "logits")};
    double *p = xalloc(sizeof(double) * np, "parameters");
    double *best = xalloc(sizeof(double) * np, "best parameters");
    double best_acc = -1;
    res.n_grid = c->n_grid, res.n_fit = nf, res.n_heldout = nh;
    /* the fitting rows' covariance for the preconditioner (its precision only affects speed) */
    float *cov = NULL;
    Precond pre = {D, K, NULL, NULL, NULL};
    /* applying it costs ~2 K D^2 against ~4 N K D per evaluation, in plain loops that run a
     * few times slower than the GEMMs: worth it while D is well under N */
    if (c->precondition && D <= PROBE_PRECOND_MAX_D && (int64_t)D * 4 <= nf) {
        cov = xalloc(sizeof(float) * (size_t)D * D, "feature covariance");
        pre.L = xalloc(sizeof(double) * (size_t)D * D, "preconditioner");
        pre.U = xalloc(sizeof(double) * (size_t)D * D, "preconditioner");
        pre.z = xalloc(sizeof(double) * (size_t)D * K, "preconditioner");
        gemm_rowmajor(1, 0, D, D, (int)nf, 1.0f / (float)nf, xs, D, xs, D, 0.0f, cov, D, 0);
    }
    for (int gi = 0; gi < c->n_grid; gi++) { /* strongest first, each from the previous */
        ProbeGridPoint *gp = &res.grid[gi];
        s.l2 = gp->l2 = c->grid[gi];
        fit(&s, p, &c->opt, cov, &pre, &gp->iters, &gp->status);
        gp->heldout_acc = softmax_accuracy(xs + (size_t)nf * D, ys + nf, nh, D, K, s.wb, s.scratch);
        if (gp->heldout_acc > best_acc) {
            best_acc = gp->heldout_acc, res.l2 = gp->l2;
            memcpy(best, p, sizeof(double) * np);
        }
    }
    /* refit on the whole train split from the chosen strength's solution */
    s.n = ntr, s.l2 = res.l2;
    memcpy(p, best, sizeof(double) * np);
    fit(&s, p, &c->opt, cov, &pre, &res.iters, &res.status);
    res.train_acc = softmax_accuracy(xs, ys, ntr, D, K, s.wb, s.scratch);
    float *xt = xalloc(sz * (size_t)(nte > 0 ? nte : 1), "standardised test");
    memcpy(xt, xte, sz * (size_t)nte);
    probe_standardise_apply(xt, nte, D, mean, std);
    res.test_acc = softmax_accuracy(xt, yte, nte, D, K, s.wb, s.scratch);
    free(xt), free(xs), free(ys), free(mean), free(std), free(p), free(best), free(cov),
        free(pre.L), free(pre.U), free(pre.z);
    free(s.wb), free(s.grad), free(s.scratch);
    return res;
}

static float *normalised_copy(const float *x, int64_t n, int D) {
    float *o = xalloc(sizeof(float) * (size_t)(n > 0 ? n : 1) * D, "normalised features");
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float *r = x + (size_t)i * D;
        double s = 0;
        for (int j = 0; j < D; j++)
            s += (double)r[j] * r[j];
        float inv = (float)(1.0 / sqrt(s + 1e-12));
        for (int j = 0; j < D; j++)
            o[(size_t)i * D + j] = r[j] * inv;
    }
    return o;
}

double probe_knn(const float *xtr, const int32_t *ytr, int64_t ntr, const float *xte,
                 const int32_t *yte, int64_t nte, int D, int K, int k, double temperature) {
    if (ntr < 1 || nte < 1 || k < 1) return 0;
    if (ntr > INT32_MAX) die("probe: %lld train samples for kNN", (long long)ntr);
    float *tr = normalised_copy(xtr, ntr, D), *te = normalised_copy(xte, nte, D);
    float *sim = xalloc(sizeof(float) * ROWS * (size_t)ntr, "similarities");
    int64_t correct = 0;
    for (int64_t r0 = 0; r0 < nte; r0 += ROWS) {
        int rows = (int)(nte - r0 < ROWS ? nte - r0 : ROWS);
        gemm_rowmajor(0, 1, rows, (int)ntr, D, 1.0f, te + (size_t)r0 * D, D, tr, D, 0.0f, sim,
                      (int)ntr, 0);
#pragma omp parallel reduction(+ : correct)
        {
            int64_t *top = xalloc(sizeof(int64_t) * (size_t)k, "neighbours");
            double *vote = xalloc(sizeof(double) * (size_t)K, "votes");
#pragma omp for schedule(static)
            for (int r = 0; r < rows; r++) {
                const float *s = sim + (size_t)r * ntr;
                int nk = 0;
                for (int64_t j = 0; j < ntr; j++) { /* insertion into the k best; ties: first */
                    if (nk == k && s[j] <= s[top[k - 1]]) continue;
                    int pos = nk < k ? nk++ : k - 1;
                    while (pos > 0 && s[top[pos - 1]] < s[j])
                        top[pos] = top[pos - 1], pos--;
                    top[pos] = j;
                }
                memset(vote, 0, sizeof(double) * (size_t)K);
                for (int q = 0; q < nk; q++)
                    vote[ytr[top[q]]] += exp(s[top[q]] / temperature);
                int best = 0;
                for (int q = 1; q < K; q++)
                    if (vote[q] > vote[best]) best = q;
                correct += best == yte[r0 + r];
            }
            free(top), free(vote);
        }
    }
    free(tr), free(te), free(sim);
    return (double)correct / (double)nte;
}
