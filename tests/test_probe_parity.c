/* test_probe_parity.c: the probe's softmax regression against PyTorch (tests/ref/probe_ref.py,
 * fixture build/fixtures/probe_ref.h5): standardisation statistics, the L2-regularised
 * cross-entropy and its gradient at a point, and the minimiser L-BFGS reaches (plain and
 * through probe_linear's preconditioned path) against float64 torch's, with negative controls. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/kernels.h"
#include "d2v/probe.h"
#include "fixture.h"

enum { N = 150, D = 7, K = 4, NP = K * D + K };

typedef struct {
    const float *x;
    const int32_t *y;
    double l2;
    float wb[NP], grad[NP], scratch[N * K];
} Fit;

static double objective(void *ctx, const double *p, double *g) {
    Fit *f = ctx;
    for (int j = 0; j < NP; j++)
        f->wb[j] = (float)p[j];
    double v = softmax_loss(f->x, f->y, N, D, K, f->wb, f->l2, f->grad, f->scratch);
    for (int j = 0; j < NP; j++)
        g[j] = f->grad[j];
    return v;
}

/* The biases are unpenalised and softmax ignores a shift of all logits, so the minimiser is
 * unique only up to a constant added to every bias: compare with the biases centred. (W is
 * unique: the penalty makes its rows sum to zero.) */
static void centre_biases(float *wb) {
    double m = 0;
    for (int k = 0; k < K; k++)
        m += wb[K * D + k];
    for (int k = 0; k < K; k++)
        wb[K * D + k] -= (float)(m / K);
}

/* The minimiser by plain L-BFGS from zero, as floats. */
static void minimise(Fit *f, float *out) {
    double p[NP] = {0};
    LbfgsConfig c = lbfgs_defaults();
    c.gtol = 1e-6, c.max_iter = 2000;
    LbfgsResult r = lbfgs_minimize(objective, f, p, NP, &c);
    printf("     l2 %g: %d iterations, status %d, |g| %.1e\n", f->l2, r.iters, r.status, r.gnorm);
    for (int j = 0; j < NP; j++)
        out[j] = (float)p[j];
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "build/fixtures/probe_ref.h5";
    gemm_init(0);
    hid_t file = fx_open(path);
    Fixture pt = fx_group(file, path, "point");
    const hsize_t nd[2] = {N, D}, n1[1] = {N}, d1[1] = {D}, p1[1] = {NP};
    float *x = fx_load_f32(&pt, "x", 2, nd), *xs = fx_load_f32(&pt, "x_std", 2, nd);
    int32_t *y = fx_load_i32(&pt, "y", 1, n1);
    float *mean_t = fx_load_f32(&pt, "mean", 1, d1), *std_t = fx_load_f32(&pt, "std", 1, d1);
    float *wb0 = fx_load_f32(&pt, "wb", 1, p1), *grad_t = fx_load_f32(&pt, "grad", 1, p1);
    double l2 = fx_attr(&pt, "l2"), loss_t = fx_attr(&pt, "loss");

    printf("-- standardisation\n");
    float mean[D], std[D];
    probe_standardise_fit(x, N, D, mean, std);
    fx_compare("point", "column mean", mean, mean_t, D, 1e-6, NULL, 0);
    fx_compare("point", "column population std", std, std_t, D, 1e-6, NULL, 0);
    float *mine = xalloc(sizeof(float) * N * D, "standardised");
    memcpy(mine, x, sizeof(float) * N * D);
    probe_standardise_apply(mine, N, D, mean, std);
    fx_compare("point", "standardised features", mine, xs, (size_t)N * D, 1e-5, NULL, 0);

    printf("-- the loss and its gradient at a point (l2 = %g)\n", l2);
    float grad[NP], scratch[N * K], g2[NP];
    double loss = softmax_loss(x, y, N, D, K, wb0, l2, grad, scratch);
    char label[160];
    snprintf(label, sizeof label, "loss %.7f = torch %.7f", loss, loss_t);
    check_record(fabs(loss - loss_t) <= 2e-6 * fabs(loss_t), label);
    fx_compare("point", "gradient (W then b)", grad, grad_t, NP, 1e-4, NULL, 0);
    double other = softmax_loss(x, y, N, D, K, wb0, 1.2 * l2, g2, scratch);
    check_record(fabs(other - loss_t) > 2e-6 * fabs(loss_t) &&
                     !fx_compare("point", "", g2, grad_t, NP, 1e-4, NULL, 1),
                 "negative control: l2 x 1.2 gives another loss and gradient");

    printf("-- the minimiser on the standardised features\n");
    Fixture oa = fx_group(file, path, "opt_a"), ob = fx_group(file, path, "opt_b");
    float *wa = fx_load_f32(&oa, "wb", 1, p1), *wbb = fx_load_f32(&ob, "wb", 1, p1);
    static Fit fa, fb;
    fa.x = fb.x = xs, fa.y = fb.y = y;
    fa.l2 = fx_attr(&oa, "l2"), fb.l2 = fx_attr(&ob, "l2");
    float got_a[NP], got_b[NP];
    minimise(&fa, got_a), minimise(&fb, got_b);
    centre_biases(got_a), centre_biases(got_b), centre_biases(wa), centre_biases(wbb);
    fx_compare("opt_a", "L-BFGS minimiser (biases centred)", got_a, wa, NP, 1e-3, NULL, 0);
    fx_compare("opt_b", "L-BFGS minimiser (biases centred)", got_b, wbb, NP, 1e-3, NULL, 0);
    check_record(!fx_compare("opt_a", "", got_a, wbb, NP, 1e-3, NULL, 1),
                 "negative control: the minimiser for l2 = 1e-2 is not torch's for 1e-3");
    double fo = softmax_loss(xs, y, N, D, K, got_a, fa.l2, NULL, scratch);
    snprintf(label, sizeof label, "loss at the minimiser %.7f = torch %.7f", fo,
             fx_attr(&oa, "loss"));
    check_record(fabs(fo - fx_attr(&oa, "loss")) <= 1e-6 * fabs(fo), label);

    /* probe_linear's fit (standardise, preconditioned L-BFGS): with one grid strength and the
     * train split as its own test, its train accuracy is the accuracy of torch's minimiser */
    ProbeConfig pc = probe_defaults();
    pc.n_grid = 1, pc.grid[0] = fa.l2, pc.opt.gtol = 1e-6;
    ProbeResult r = probe_linear(x, y, N, x, y, N, D, K, &pc);
    double acc_t = softmax_accuracy(xs, y, N, D, K, wa, scratch);
    snprintf(label, sizeof label,
             "probe_linear (preconditioned) train accuracy %.4f = torch "
             "minimiser's %.4f",
             r.train_acc, acc_t);
    check_record(fabs(r.train_acc - acc_t) <= 1.0 / N + 1e-12 && r.status != LBFGS_MAX_ITER, label);

    fx_close(&pt), fx_close(&oa), fx_close(&ob);
    H5Fclose(file);
    free(x), free(xs), free(y), free(mean_t), free(std_t), free(wb0), free(grad_t), free(mine);
    free(wa), free(wbb);
    return check_summary();
}
