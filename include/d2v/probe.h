/* probe.h: probes of frozen features (d2v-probe, docs/evaluation.md): a multinomial
 * logistic-regression linear probe on standardised features, trained full-batch with L-BFGS, its
 * L2 strength chosen on a seeded held-out part of the train split; and the kNN probe of d2v-eval
 * (k = 20, cosine, votes weighted exp(sim / 0.07)). */
#ifndef D2V_PROBE_H
#define D2V_PROBE_H

#include <stddef.h>
#include <stdint.h>

/* ---- L-BFGS --------------------------------------------------------------------------------- */

/// The objective: returns f(x) and writes its gradient into g (both at x, n values).
typedef double (*LbfgsFn)(void *ctx, const double *x, double *g);

/// An optional preconditioner: out = P in for a fixed symmetric positive definite P, an estimate
/// of the inverse Hessian up to scale.
typedef void (*LbfgsPrecond)(void *ctx, const double *in, double *out);

typedef struct {
    int m;                // correction pairs kept (10)
    int max_iter;         // iterations (300)
    int max_evals;        // function evaluations per line search (40)
    double gtol;          // converged when ||g|| <= gtol * max(1, ||g at the start||)  (1e-4)
    double ftol;          // a step that met sufficient decrease but no curvature condition and
                          //   lowered f by less than ftol * max(1, |f|) ends the run (1e-10: the
                          //   floor of a loss computed in float)
    double c1, c2;        // strong Wolfe constants: sufficient decrease and curvature (1e-4, 0.9)
    LbfgsPrecond precond; // NULL: none (the initial inverse Hessian a multiple of I)
    void *precond_ctx;
} LbfgsConfig;
LbfgsConfig lbfgs_defaults(void);

enum {
    LBFGS_CONVERGED = 0,   // the gradient criterion holds
    LBFGS_MAX_ITER = 1,    // max_iter iterations without it
    LBFGS_NO_PROGRESS = 2, // no decrease beyond round-off (f at its floating-point floor)
};
typedef struct {
    int status;       // LBFGS_*
    int iters, evals; // iterations, function evaluations
    double f, gnorm;  // at the returned x
    double gnorm0;    // at the start
} LbfgsResult;

/// Minimise from x (overwritten with the result): the two-loop recursion over the last m
/// (s, y) pairs with the initial inverse Hessian gamma P (P = I without a preconditioner,
/// gamma = s'y / y'Py of the newest pair), pairs with s'y <= 0 skipped, steps from
/// lbfgs_line_search. A preconditioner changes the path, not the minimiser.
LbfgsResult lbfgs_minimize(LbfgsFn fn, void *ctx, double *x, size_t n, const LbfgsConfig *c);

/// A line search along the descent direction d from (x, f, g) (Nocedal & Wright, Algorithms 3.5
/// and 3.6: bracketing, then zoom by safeguarded cubic interpolation), first trial step alpha0.
/// On success (returns 1) the strong Wolfe conditions hold at xn = x + alpha d:
///   f(xn) <= f + c1 alpha g'd   and   |g(xn)'d| <= c2 |g'd|,
/// and xn, fn, gn, alpha hold the point. If max_evals trials find no such point but one with
/// sufficient decrease, that one is returned (returns 2); with no decrease at all, 0 (xn, fn, gn
/// unspecified). *evals receives the evaluations used.
int lbfgs_line_search(LbfgsFn fn, void *ctx, size_t n, const double *x, double f, const double *g,
                      const double *d, double alpha0, double c1, double c2, int max_evals,
                      double *xn, double *fn_out, double *gn, double *alpha, int *evals);

/* ---- softmax regression -----------------------------------------------------------------------
 */

/// Mean cross-entropy of the linear classifier wb = [W (K, D) row-major | b (K)] on the n rows of
/// x (n, D) with labels y in 0..K-1, plus (l2 / 2) ||W||^2 (the bias is not penalised). When
/// grad is given, it receives the gradient (K*D + K, same layout). scratch: n*K floats. Logits
/// and the weight gradient are BLIS GEMMs; sums are in double.
double softmax_loss(const float *x, const int32_t *y, int64_t n, int D, int K, const float *wb,
                    double l2, float *grad, float *scratch);
/// Top-1 accuracy of wb on (x, y); scratch n*K floats.
double softmax_accuracy(const float *x, const int32_t *y, int64_t n, int D, int K, const float *wb,
                        float *scratch);

/* ---- the probes -------------------------------------------------------------------------------
 */

/// Per-column mean and standard deviation of x (n, D) (population std; a constant column gets 1,
/// so it standardises to 0).
void probe_standardise_fit(const float *x, int64_t n, int D, float *mean, float *std);
/// x <- (x - mean) / std, column by column.
void probe_standardise_apply(float *x, int64_t n, int D, const float *mean, const float *std);

#define PROBE_MAX_GRID 16
typedef struct {
    uint64_t seed;               // the held-out split
    double holdout;              // its share of the train split (0.1)
    int n_grid;                  // L2 strengths tried, strongest first (warm-started path)
    double grid[PROBE_MAX_GRID]; // (1e-1 .. 1e-7)
    LbfgsConfig opt;
    int precondition; // 1: L-BFGS preconditioned by the inverse regularised feature covariance
                      //   where it pays (widths up to PROBE_PRECOND_MAX_D and a quarter of the
                      //   fitting rows): the same minimiser in far fewer steps
} ProbeConfig;
#define PROBE_PRECOND_MAX_D 1024
ProbeConfig probe_defaults(void);

typedef struct {
    double l2, heldout_acc;
    int iters, status;
} ProbeGridPoint;

typedef struct {
    double train_acc, test_acc; // the final fit, on the whole train split and on test
    double l2;                  // the chosen strength
    int n_grid;
    ProbeGridPoint grid[PROBE_MAX_GRID];
    int iters, status; // the final fit's L-BFGS
    int64_t n_fit, n_heldout;
} ProbeResult;

/// The linear probe: standardise with the train split's statistics, fit every grid strength on
/// the train split minus a seeded held-out share (strongest first, each warm-started from the
/// previous), keep the strength of the best held-out accuracy (ties: the stronger), refit on the
/// whole train split and score test. Labels in 0..K-1. Deterministic given the seed (and BLIS's
/// thread count). Inputs are not modified.
ProbeResult probe_linear(const float *xtr, const int32_t *ytr, int64_t ntr, const float *xte,
                         const int32_t *yte, int64_t nte, int D, int K, const ProbeConfig *c);

/// kNN top-1 accuracy: cosine similarity of L2-normalised rows, the k most similar train rows
/// vote for their label with weight exp(sim / temperature); ties go to the lower class. Inputs
/// are not modified.
double probe_knn(const float *xtr, const int32_t *ytr, int64_t ntr, const float *xte,
                 const int32_t *yte, int64_t nte, int D, int K, int k, double temperature);

#endif
