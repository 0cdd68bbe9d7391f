/* test_probe.c: the probe library (src/eval/probe.c) on synthetic toy sets: L-BFGS on a convex
 * quadratic (plain and preconditioned) and its line search's Wolfe conditions, the
 * softmax-regression loss against a double-precision loop and its gradient against finite
 * differences (with wrong gradients rejected), standardisation, the linear and kNN probes on a
 * separable set (~100%) and on shuffled labels (chance), and bit-for-bit determinism. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/kernels.h"
#include "d2v/probe.h"
#include "d2v/rng.h"
#include "d2v/util.h"
#include "fd.h"

/* ---- L-BFGS on f(x) = 1/2 x'Ax - b'x, A = Q diag(lam) Q' with eigenvalues 1 .. 1e3 ---- */

enum { QN = 40 };
typedef struct {
    double A[QN * QN], b[QN];
    int evals;
} Quad;

static double quad_f(void *ctx, const double *x, double *g) {
    Quad *q = ctx;
    double f = 0;
    for (int i = 0; i < QN; i++) {
        double ax = 0;
        for (int j = 0; j < QN; j++)
            ax += q->A[i * QN + j] * x[j];
        g[i] = ax - q->b[i];
        f += 0.5 * x[i] * ax - q->b[i] * x[i];
    }
    q->evals++;
    return f;
}

/* The exact inverse Hessian as a preconditioner: A^-1 = Q diag(1/lam) Q'. */
typedef struct {
    double Ainv[QN * QN];
} QuadInv;
static void quad_precond(void *ctx, const double *in, double *out) {
    const QuadInv *p = ctx;
    for (int i = 0; i < QN; i++) {
        double s = 0;
        for (int j = 0; j < QN; j++)
            s += p->Ainv[i * QN + j] * in[j];
        out[i] = s;
    }
}

static void make_quad(Quad *q, QuadInv *qi, double *xstar) {
    uint64_t key = rng_key(7, 0, 0, 0);
    double v[QN], vv = 0, lam[QN];
    for (int i = 0; i < QN; i++)
        v[i] = rng_normal(key, (uint64_t)i), vv += v[i] * v[i];
    for (int i = 0; i < QN; i++)
        lam[i] = pow(10.0, 3.0 * i / (QN - 1)); /* 1 .. 1000 */
    /* Q = I - 2 v v' / v'v (a Householder reflection: orthogonal and symmetric) */
    double Q[QN * QN];
    for (int i = 0; i < QN; i++)
        for (int j = 0; j < QN; j++)
            Q[i * QN + j] = (i == j) - 2 * v[i] * v[j] / vv;
    for (int i = 0; i < QN; i++)
        for (int j = 0; j < QN; j++) {
            double a = 0, ai = 0;
            for (int k = 0; k < QN; k++)
                a += Q[i * QN + k] * lam[k] * Q[j * QN + k],
                    ai += Q[i * QN + k] / lam[k] * Q[j * QN + k];
            q->A[i * QN + j] = a, qi->Ainv[i * QN + j] = ai;
        }
    for (int i = 0; i < QN; i++)
        xstar[i] = rng_normal(key, 1000 + (uint64_t)i);
    for (int i = 0; i < QN; i++) {
        q->b[i] = 0;
        for (int j = 0; j < QN; j++)
            q->b[i] += q->A[i * QN + j] * xstar[j];
    }
}

static double rel_err(const double *x, const double *y, int n) {
    double d = 0, s = 0;
    for (int i = 0; i < n; i++)
        d += (x[i] - y[i]) * (x[i] - y[i]), s += y[i] * y[i];
    return sqrt(d / s);
}

static void test_lbfgs_quadratic(void) {
    printf("-- L-BFGS on a convex quadratic (condition number 1e3, n = %d)\n", QN);
    static Quad q;
    static QuadInv qi;
    double xstar[QN], x[QN];
    make_quad(&q, &qi, xstar);
    LbfgsConfig c = lbfgs_defaults();
    c.gtol = 1e-8, c.ftol = 0, c.max_iter = 1000; /* an exact objective: no round-off floor */
    memset(x, 0, sizeof x);
    LbfgsResult r = lbfgs_minimize(quad_f, &q, x, QN, &c);
    double e = rel_err(x, xstar, QN);
    char label[200];
    snprintf(label, sizeof label,
             "converged in %d iterations (%d evaluations), |x - x*|/|x*| = %.1e", r.iters, r.evals,
             e);
    check_record(r.status == LBFGS_CONVERGED && e < 1e-5 && r.iters < 300, label);
    snprintf(label, sizeof label, "the returned f and |g| are those of x (f = %.6g, |g| = %.1e)",
             r.f, r.gnorm);
    double g[QN];
    double f = quad_f(&q, x, g);
    check_record(f == r.f && r.gnorm <= 1e-8 * r.gnorm0, label);

    /* negative control: three iterations cannot get there */
    LbfgsConfig c3 = c;
    c3.max_iter = 3;
    memset(x, 0, sizeof x);
    r = lbfgs_minimize(quad_f, &q, x, QN, &c3);
    snprintf(label, sizeof label, "negative control: 3 iterations stop at max_iter, %.1e away",
             rel_err(x, xstar, QN));
    check_record(r.status == LBFGS_MAX_ITER && rel_err(x, xstar, QN) > 1e-3, label);

    /* the exact inverse Hessian as preconditioner: the first step is Newton's */
    LbfgsConfig cp = c;
    cp.precond = quad_precond, cp.precond_ctx = &qi;
    memset(x, 0, sizeof x);
    r = lbfgs_minimize(quad_f, &q, x, QN, &cp);
    snprintf(label, sizeof label, "preconditioned by A^-1: %d iteration(s), %.1e away", r.iters,
             rel_err(x, xstar, QN));
    check_record(r.status == LBFGS_CONVERGED && r.iters <= 2 && rel_err(x, xstar, QN) < 1e-10,
                 label);
}

/* Strong Wolfe at the returned step, recomputed here. */
static int wolfe_holds(Quad *q, const double *x, const double *d, double f0, const double *g0,
                       double alpha, double c1, double c2) {
    double xn[QN], gn[QN], gd0 = 0, gd = 0;
    for (int i = 0; i < QN; i++)
        xn[i] = x[i] + alpha * d[i];
    double f = quad_f(q, xn, gn);
    for (int i = 0; i < QN; i++)
        gd0 += g0[i] * d[i], gd += gn[i] * d[i];
    return f <= f0 + c1 * alpha * gd0 && fabs(gd) <= c2 * fabs(gd0);
}

static void test_line_search(void) {
    printf("-- the line search satisfies the strong Wolfe conditions\n");
    static Quad q;
    static QuadInv qi;
    double xstar[QN], x[QN], g[QN], d[QN], xn[QN], gn[QN];
    make_quad(&q, &qi, xstar);
    memset(x, 0, sizeof x);
    double f = quad_f(&q, x, g);
    for (int i = 0; i < QN; i++)
        d[i] = -g[i];
    const double c1 = 1e-4, c2s[2] = {0.9, 0.1};
    const double starts[3] = {1e-6, 1.0, 1e3}; /* far too short, too long, far too long */
    int all = 1, exact = 1;
    for (int ci = 0; ci < 2; ci++)
        for (int si = 0; si < 3; si++) {
            double fn = 0, alpha = 0;
            int evals = 0;
            int rc = lbfgs_line_search(quad_f, &q, QN, x, f, g, d, starts[si], c1, c2s[ci], 40, xn,
                                       &fn, gn, &alpha, &evals);
            int ok = rc == 1 && wolfe_holds(&q, x, d, f, g, alpha, c1, c2s[ci]);
            double gq[QN], fq = 0;
            double xq[QN];
            for (int i = 0; i < QN; i++)
                xq[i] = x[i] + alpha * d[i];
            fq = quad_f(&q, xq, gq);
            exact &= fq == fn && !memcmp(xq, xn, sizeof xq) && !memcmp(gq, gn, sizeof gq);
            if (!ok)
                printf("     c2 %.1f, alpha0 %.0e: rc %d, alpha %.3e\n", c2s[ci], starts[si], rc,
                       alpha);
            all &= ok;
        }
    check_record(all, "from steps 1e-6, 1 and 1e3 with c2 = 0.9 and 0.1");
    check_record(exact, "the returned point, value and gradient are those of x + alpha d");
    /* negative control: the checker rejects a step that is too long */
    check_record(!wolfe_holds(&q, x, d, f, g, 1.0, c1, 0.9),
                 "negative control: the unit step of this ill-scaled problem is not a Wolfe step");
    /* not a descent direction: nothing */
    double fn = 0, alpha = 0;
    int evals = 0;
    check_record(lbfgs_line_search(quad_f, &q, QN, x, f, g, g, 1.0, c1, 0.9, 40, xn, &fn, gn,
                                   &alpha, &evals) == 0,
                 "an ascent direction is refused");
}

/* ---- the softmax-regression loss ---- */

enum { SN = 37, SD = 6, SK = 4 };
typedef struct {
    float x[SN * SD], wb[SK * SD + SK], scratch[SN * SK];
    int32_t y[SN];
    double l2;
} Soft;

static void make_soft(Soft *s) {
    uint64_t key = rng_key(21, 0, 0, 0);
    for (int i = 0; i < SN * SD; i++)
        s->x[i] = rng_normal(key, (uint64_t)i);
    for (int i = 0; i < SN; i++)
        s->y[i] = (int32_t)(rng_uniform(key, 5000 + (uint64_t)i) * SK);
    for (int i = 0; i < SK * SD + SK; i++)
        s->wb[i] = 0.7f * rng_normal(key, 9000 + (uint64_t)i);
    s->l2 = 0.05;
}

static double soft_fd_loss(void *ctx) {
    Soft *s = ctx;
    return softmax_loss(s->x, s->y, SN, SD, SK, s->wb, s->l2, NULL, s->scratch);
}

/* The loss in double from its definition. */
static double soft_reference(const Soft *s) {
    double loss = 0, reg = 0;
    for (int i = 0; i < SN; i++) {
        double z[SK], mx = -INFINITY, sum = 0;
        for (int k = 0; k < SK; k++) {
            z[k] = s->wb[SK * SD + k];
            for (int j = 0; j < SD; j++)
                z[k] += (double)s->wb[k * SD + j] * s->x[i * SD + j];
            mx = fmax(mx, z[k]);
        }
        for (int k = 0; k < SK; k++)
            sum += exp(z[k] - mx);
        loss += mx + log(sum) - z[s->y[i]];
    }
    for (int j = 0; j < SK * SD; j++)
        reg += (double)s->wb[j] * s->wb[j];
    return loss / SN + 0.5 * s->l2 * reg;
}

static void test_softmax_loss(void) {
    printf("-- softmax-regression loss and gradient (N = %d, D = %d, K = %d, l2 = 0.05)\n", SN, SD,
           SK);
    static Soft s;
    make_soft(&s);
    float grad[SK * SD + SK], bad[SK * SD + SK];
    double f = softmax_loss(s.x, s.y, SN, SD, SK, s.wb, s.l2, grad, s.scratch);
    double want = soft_reference(&s);
    char label[160];
    snprintf(label, sizeof label, "loss %.8f = the double-precision definition %.8f", f, want);
    check_record(fabs(f - want) <= 1e-5 * fabs(want), label);
    double again = softmax_loss(s.x, s.y, SN, SD, SK, s.wb, s.l2, NULL, s.scratch);
    check_record(again == f, "the loss without a gradient is the same value");
    fd_tensor("softmax weights and biases", soft_fd_loss, &s, s.wb, grad, SK * SD + SK,
              SK * SD + SK, 0);
    /* negative controls: the gradient without the L2 term, and with one bias wrong */
    float g0[SK * SD + SK];
    double l2 = s.l2;
    s.l2 = 0;
    softmax_loss(s.x, s.y, SN, SD, SK, s.wb, 0, g0, s.scratch);
    s.l2 = l2;
    check_record(!fd_tensor("", soft_fd_loss, &s, s.wb, g0, SK * SD + SK, SK * SD + SK, 1),
                 "negative control: the gradient without its L2 term is rejected");
    memcpy(bad, grad, sizeof bad);
    bad[SK * SD + 1] += 0.05f;
    check_record(!fd_tensor("", soft_fd_loss, &s, s.wb, bad, SK * SD + SK, SK * SD + SK, 1),
                 "negative control: one bias gradient off by 0.05 is rejected");
    /* accuracy by hand */
    int correct = 0;
    for (int i = 0; i < SN; i++) {
        int best = 0;
        double zb = -INFINITY;
        for (int k = 0; k < SK; k++) {
            double z = s.wb[SK * SD + k];
            for (int j = 0; j < SD; j++)
                z += (double)s.wb[k * SD + j] * s.x[i * SD + j];
            if (z > zb) zb = z, best = k;
        }
        correct += best == s.y[i];
    }
    check_record(softmax_accuracy(s.x, s.y, SN, SD, SK, s.wb, s.scratch) == (double)correct / SN,
                 "softmax_accuracy = the argmax by hand");
}

/* ---- the probes on toy sets ---- */

/* n points of K Gaussian classes in D dims: centres `sep` apart on the axes, unit noise; an
 * offset and scale per column so that standardisation matters. shuffle: labels drawn apart. */
static void toy(float *x, int32_t *y, int64_t n, int D, int K, double sep, int shuffle,
                uint64_t seed) {
    uint64_t key = rng_key(seed, 0, 0, 0);
    for (int64_t i = 0; i < n; i++) {
        int c = (int)(i % K);
        y[i] = shuffle ? (int32_t)(rng_uniform(key, 777777 + (uint64_t)i) * K) : c;
        for (int j = 0; j < D; j++) {
            double v = rng_normal(key, (uint64_t)(i * D + j)) + (j % K == c ? sep : 0);
            x[i * D + j] = (float)(50.0 + (j + 1) * 3.0 * v);
        }
    }
}

static void test_standardise(void) {
    printf("-- standardisation\n");
    enum { N = 200, D = 3 };
    float x[N * D], mean[D], std[D];
    for (int i = 0; i < N; i++)
        x[i * D] = (float)i, x[i * D + 1] = 7.0f, x[i * D + 2] = (float)(i % 2 ? 1e3 : -1e3);
    probe_standardise_fit(x, N, D, mean, std);
    double sd0 = sqrt((N * (double)N - 1) / 12.0); /* population std of 0 .. N-1 */
    check_record(fabs(mean[0] - (N - 1) / 2.0) < 1e-4 && fabs(std[0] - sd0) < 1e-3 * sd0 &&
                     mean[1] == 7.0f && std[1] == 1.0f && fabs(mean[2]) < 1e-3 &&
                     fabs(std[2] - 1e3) < 1e-2,
                 "mean and population std per column; a constant column gets std 1");
    probe_standardise_apply(x, N, D, mean, std);
    check_record(x[D + 1] == 0.0f && fabs(x[2] + 1.0f) < 1e-6, "applied: (x - mean) / std");
}

static void test_probes(void) {
    printf("-- linear and kNN probes\n");
    enum { NTR = 600, NTE = 600, D = 8, K = 4 };
    static float xtr[NTR * D], xte[NTE * D];
    static int32_t ytr[NTR], yte[NTE];
    ProbeConfig pc = probe_defaults();
    pc.seed = 3;
    char label[200];

    toy(xtr, ytr, NTR, D, K, 8.0, 0, 1), toy(xte, yte, NTE, D, K, 8.0, 0, 2);
    ProbeResult r = probe_linear(xtr, ytr, NTR, xte, yte, NTE, D, K, &pc);
    double knn = probe_knn(xtr, ytr, NTR, xte, yte, NTE, D, K, 20, 0.07);
    snprintf(label, sizeof label,
             "separable: linear %.2f%% (l2 %.0e, %d iterations, %s), kNN %.2f%%", 100 * r.test_acc,
             r.l2, r.iters, r.status == LBFGS_CONVERGED ? "converged" : "not", 100 * knn);
    check_record(r.test_acc >= 0.995 && knn >= 0.99 && r.status != LBFGS_MAX_ITER, label);
    snprintf(label, sizeof label, "held out %lld of %lld train samples (10%%)",
             (long long)r.n_heldout, (long long)NTR);
    check_record(r.n_heldout == 60 && r.n_fit == NTR - 60 && r.n_grid == pc.n_grid, label);

    toy(xtr, ytr, NTR, D, K, 1.0, 1, 1), toy(xte, yte, NTE, D, K, 1.0, 1, 2);
    r = probe_linear(xtr, ytr, NTR, xte, yte, NTE, D, K, &pc);
    knn = probe_knn(xtr, ytr, NTR, xte, yte, NTE, D, K, 20, 0.07);
    snprintf(label, sizeof label, "shuffled labels: linear %.2f%%, kNN %.2f%% (chance 25%%)",
             100 * r.test_acc, 100 * knn);
    check_record(fabs(r.test_acc - 0.25) < 0.07 && fabs(knn - 0.25) < 0.07, label);

    /* a noisy (not separable) set, where the held-out accuracies vary with the split */
    toy(xtr, ytr, NTR, D, K, 1.2, 0, 1), toy(xte, yte, NTE, D, K, 1.2, 0, 2);
    ProbeResult a = probe_linear(xtr, ytr, NTR, xte, yte, NTE, D, K, &pc);
    ProbeResult b = probe_linear(xtr, ytr, NTR, xte, yte, NTE, D, K, &pc);
    snprintf(label, sizeof label,
             "noisy set: linear %.2f%% (l2 %.0e); a second run is bit-identical", 100 * a.test_acc,
             a.l2);
    check_record(!memcmp(&a, &b, sizeof a) && a.test_acc > 0.5 && a.test_acc < 0.95, label);
    ProbeConfig plain = pc;
    plain.precondition = 0, plain.opt.max_iter = 3000;
    ProbeResult pl = probe_linear(xtr, ytr, NTR, xte, yte, NTE, D, K, &plain);
    snprintf(label, sizeof label,
             "unpreconditioned: the same choice and accuracy (%.2f%%, l2 %.0e), %d against %d "
             "final iterations",
             100 * pl.test_acc, pl.l2, pl.iters, a.iters);
    check_record(pl.l2 == a.l2 && fabs(pl.test_acc - a.test_acc) <= 2.0 / NTE, label);
    ProbeConfig other = pc;
    other.seed = 4;
    ProbeResult o = probe_linear(xtr, ytr, NTR, xte, yte, NTE, D, K, &other);
    int differs = 0;
    for (int g = 0; g < o.n_grid; g++)
        differs |= o.grid[g].heldout_acc != a.grid[g].heldout_acc;
    check_record(differs, "negative control: another seed holds out other samples (held-out "
                          "accuracies differ)");
    double k1 = probe_knn(xtr, ytr, NTR, xte, yte, NTE, D, K, 20, 0.07);
    check_record(k1 == probe_knn(xtr, ytr, NTR, xte, yte, NTE, D, K, 20, 0.07),
                 "kNN is deterministic");

    /* kNN by hand: k = 1 takes the most cosine-similar train row's label */
    float tr2[3 * 2] = {1, 0, 0, 1, -1, -1}, te2[2 * 2] = {5, 1, -0.1f, -3};
    int32_t ytr2[3] = {0, 1, 2}, yte2[2] = {0, 2};
    check_record(probe_knn(tr2, ytr2, 3, te2, yte2, 2, 2, 3, 1, 0.07) == 1.0,
                 "kNN with k = 1: the nearest row by cosine, not by distance");
    yte2[1] = 1;
    check_record(probe_knn(tr2, ytr2, 3, te2, yte2, 2, 2, 3, 1, 0.07) == 0.5,
                 "negative control: a wrong label counts as wrong");
}

/* Strongly correlated features (a shared component plus small private ones, condition number
 * ~1e4): the preconditioner must cut the iterations and leave the answer. */
static void test_preconditioner(void) {
    printf("-- the preconditioner on correlated features\n");
    enum { N = 2000, D = 16, K = 3 };
    static float x[N * D];
    static int32_t y[N];
    uint64_t key = rng_key(31, 0, 0, 0);
    for (int i = 0; i < N; i++) {
        y[i] = i % K;
        double z0 = rng_normal(key, (uint64_t)i * 100);
        for (int j = 0; j < D; j++)
            x[i * D + j] = (float)(z0 + 0.02 * rng_normal(key, (uint64_t)i * 100 + 1 + j) +
                                   (j % K == y[i] ? 0.02 : 0));
    }
    ProbeConfig pc = probe_defaults();
    pc.n_grid = 1, pc.grid[0] = 1e-4, pc.opt.max_iter = 3000;
    ProbeResult a = probe_linear(x, y, N, x, y, N, D, K, &pc);
    pc.precondition = 0;
    ProbeResult b = probe_linear(x, y, N, x, y, N, D, K, &pc);
    char label[200];
    snprintf(label, sizeof label,
             "preconditioned %d + %d iterations against %d + %d plain; accuracy %.2f%% and %.2f%%",
             a.grid[0].iters, a.iters, b.grid[0].iters, b.iters, 100 * a.train_acc,
             100 * b.train_acc);
    check_record(a.status != LBFGS_MAX_ITER && b.status != LBFGS_MAX_ITER &&
                     3 * (a.grid[0].iters + a.iters) < b.grid[0].iters + b.iters &&
                     fabs(a.train_acc - b.train_acc) <= 3.0 / N,
                 label);
}

int main(void) {
    gemm_init(0);
    test_lbfgs_quadratic();
    test_line_search();
    test_softmax_loss();
    test_standardise();
    test_probes();
    test_preconditioner();
    return check_summary();
}
