/* test_objective.c: the data2vec objective and optimiser pieces checked by hand: EMA decay
 * schedule and update, target normalisations and top-K averaging, smooth-L1/L2 loss with its
 * scale and gradient, variance statistics, AdamW, every LR schedule, and gradient clipping. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "d2v/objective.h"
#include "d2v/optim.h"

#define NEAR(a, b, tol) (fabs((double)(a) - (double)(b)) <= (tol) * (1 + fabs((double)(b))))

static void test_ema(void) {
    printf("-- EMA\n");
    CHECK(NEAR(ema_tau(0.999, 0.9999, 30000, 0), 0.999, 1e-12));
    CHECK(NEAR(ema_tau(0.999, 0.9999, 30000, 15000), 0.99945, 1e-12));
    CHECK(NEAR(ema_tau(0.999, 0.9999, 30000, 30000), 0.9999, 1e-12));
    CHECK(NEAR(ema_tau(0.999, 0.9999, 30000, 10000000), 0.9999, 1e-12));
    CHECK(NEAR(ema_tau(0.9998, 0.9998, 0, 5), 0.9998, 1e-12)); /* constant (vision) */
    float t[3] = {1, 2, 3}, s[3] = {3, 2, 1};
    ema_update(t, s, 3, 0.75); /* 0.75 t + 0.25 s */
    CHECK(NEAR(t[0], 1.5, 1e-7) && NEAR(t[1], 2, 1e-7) && NEAR(t[2], 2.5, 1e-7));
    ema_update(t, s, 3, 1.0); /* tau = 1: frozen */
    CHECK(NEAR(t[0], 1.5, 1e-7));
}

static void test_targets(void) {
    printf("-- targets\n");
    enum { B = 1, T = 3, C = 2 };
    /* two layers, instance norm over time per channel (eps ~0): channel 0 of layer 0 is (1, 2, 3)
     * ->
     * (-1.2247, 0, 1.2247) (biased variance 2/3, eps 0); channel 1 constant -> 0 */
    float l0[B * T * C] = {1, 5, 2, 5, 3, 5}, l1[B * T * C] = {3, 0, 2, 1, 1, 2};
    float *layers[2] = {l0, l1};
    uint8_t sel[3] = {1, 0, 1};
    float y[6], scratch[B * T * C + 2 * B * C];
    int M = targets_build(y, layers, 2, B, T, C, TARGET_NORM_INSTANCE, 0, 1e-12f, sel, scratch);
    double r = sqrt(1.5); /* 1 / sqrt(2/3) */
    /* layer 1, channel 0 = (3, 2, 1) -> (+r, 0, -r); channel 1 = (0, 1, 2) -> (-r, 0, r) */
    CHECK(M == 2);
    CHECK(NEAR(y[0], (-r + r) / 2, 1e-6) && NEAR(y[1], (0 - r) / 2, 1e-6));
    CHECK(NEAR(y[2], (r - r) / 2, 1e-6) && NEAR(y[3], (0 + r) / 2, 1e-6));
    /* layer norm over C per row: (1, 5) -> (-1, 1); then a final LN leaves (-1, 1) */
    M = targets_build(y, layers, 1, B, T, C, TARGET_NORM_LAYER, 1, 0.0f, sel, scratch);
    CHECK(M == 2 && NEAR(y[0], -1, 1e-6) && NEAR(y[1], 1, 1e-6));
    /* no normalisation: plain average of the selected rows */
    M = targets_build(y, layers, 2, B, T, C, TARGET_NORM_NONE, 0, 0.0f, sel, scratch);
    CHECK(NEAR(y[0], 2, 1e-7) && NEAR(y[1], 2.5, 1e-7) && NEAR(y[2], 2, 1e-7) &&
          NEAR(y[3], 3.5, 1e-7));
}

/* The eps passed to targets_build is the one of both the per-layer and the final layer norm: a row
 * (a, -a) with a^2 = eps normalises to +-1/sqrt(2), and to +-1/sqrt(1.1) with eps a^2 / 10. */
static void test_target_eps(void) {
    printf("-- target layer-norm eps\n");
    float a = sqrtf(1e-5f), l0[2] = {a, -a}, *layers[1] = {l0}, y[2], scratch[2 + 2 * 2];
    uint8_t sel[1] = {1};
    double h = 1 / sqrt(2.0), t = 1 / sqrt(1.1);
    targets_build(y, layers, 1, 1, 1, 2, TARGET_NORM_LAYER, 0, 1e-5f, sel, scratch);
    check_record(NEAR(y[0], h, 1e-5) && NEAR(y[1], -h, 1e-5), "per-layer LN uses eps (1e-5)");
    targets_build(y, layers, 1, 1, 1, 2, TARGET_NORM_NONE, 1, 1e-5f, sel, scratch);
    check_record(NEAR(y[0], h, 1e-5) && NEAR(y[1], -h, 1e-5), "final LN uses eps (1e-5)");
    targets_build(y, layers, 1, 1, 1, 2, TARGET_NORM_LAYER, 0, 1e-6f, sel, scratch);
    check_record(NEAR(y[0], t, 1e-5), "per-layer LN with eps 1e-6 differs as it should");
    targets_build(y, layers, 1, 1, 1, 2, TARGET_NORM_NONE, 1, 1e-6f, sel, scratch);
    check_record(NEAR(y[0], t, 1e-5), "final LN with eps 1e-6 differs as it should");
}

static void test_loss(void) {
    printf("-- loss\n");
    float p[4] = {0, 1, 5, -3}, y[4] = {0.5, 0, 0, 0}, d[4];
    /* smooth L1, beta 2: |d| = 0.5 -> 0.0625; 1 -> 0.25; 5 -> 4; 3 -> 2 */
    double L = regression_loss(d, p, y, 2, 2, 2.0f, 1.0f, 1.0f);
    CHECK(NEAR(L, 0.0625 + 0.25 + 4 + 2, 1e-9));
    CHECK(NEAR(d[0], -0.25, 1e-7) && NEAR(d[1], 0.5, 1e-7) && NEAR(d[2], 1, 1e-7) &&
          NEAR(d[3], -1, 1e-7));
    /* L2 (beta 0) with scale 1/sqrt(C) and a gradient scale of 1/M */
    L = regression_loss(d, p, y, 2, 2, 0.0f, (float)(1 / sqrt(2.0)), 0.5f);
    CHECK(NEAR(L, (0.25 + 1 + 25 + 9) / sqrt(2.0), 1e-7));
    CHECK(NEAR(d[2], 2 * 5 / sqrt(2.0) * 0.5, 1e-6));
    /* gradient against a finite difference of the loss */
    float q[4] = {0.3f, -0.7f, 2.5f, 0.1f};
    regression_loss(d, q, y, 2, 2, 1.0f, 0.5f, 1.0f);
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        float h = 1e-3f, q0 = q[i];
        q[i] = q0 + h;
        double lp = regression_loss(NULL, q, y, 2, 2, 1.0f, 0.5f, 1.0f);
        q[i] = q0 - h;
        double lm = regression_loss(NULL, q, y, 2, 2, 1.0f, 0.5f, 1.0f);
        q[i] = q0;
        ok &= NEAR((lp - lm) / (2 * h), d[i], 1e-3);
    }
    check_record(ok, "loss gradient matches finite differences");
}

static void test_var(void) {
    printf("-- variance statistics\n");
    float x[6] = {1, 10, 2, 10, 3, 10}; /* channel 0: var 1; channel 1: 0 */
    double st[5] = {0};
    var_stats_accumulate(st, x, 2, 2); /* split over two "ranks" */
    var_stats_accumulate(st, x + 4, 1, 2);
    CHECK(NEAR(var_from_stats(st, 2), (sqrt(1 + 1e-6) + sqrt(1e-6)) / 2, 1e-9));
}

static void test_adamw(void) {
    printf("-- AdamW\n");
    float p[2] = {1.0f, -2.0f}, m[2] = {0}, v[2] = {0}, g[2] = {0.5f, -0.1f};
    uint8_t decay[2] = {1, 0};
    AdamW o = {0.9, 0.98, 1e-6, 0.1, ADAM_EPS_TORCH};
    adamw_step(p, m, v, g, decay, 2, &o, 0.01, 1);
    /* step 1: mhat = g, vhat = g^2 -> update = lr * g / (|g| + eps) = 0.01 * sign(g)
     * (+ decay 0.01 * 0.1 * p on the first parameter only, applied to the pre-update value) */
    CHECK(NEAR(p[0], 1.0 - 0.001 - 0.01 * 0.5 / (0.5 + 1e-6), 1e-6));
    CHECK(NEAR(p[1], -2.0 + 0.01 * 0.1 / (0.1 + 1e-6), 1e-6));
    CHECK(NEAR(m[0], 0.05, 1e-7) && NEAR(v[0], 0.02 * 0.25, 1e-7));
    /* step 2 with the same gradient, by hand */
    double m2 = 0.9 * 0.05 + 0.1 * 0.5, v2 = 0.98 * 0.005 + 0.02 * 0.25;
    double want =
        p[0] - 0.01 * 0.1 * p[0] - 0.01 * (m2 / (1 - 0.81)) / (sqrt(v2 / (1 - 0.98 * 0.98)) + 1e-6);
    adamw_step(p, m, v, g, decay, 2, &o, 0.01, 2);
    CHECK(NEAR(p[0], want, 1e-6));
}

/* eps placement (optim.eps_mode): torch.optim.AdamW divides by sqrt(v / bc2) + eps with step
 * lr / bc1; fairseq's Adam by sqrt(v) + eps with step lr sqrt(bc2) / bc1. Two steps of each by
 * hand, on a gradient of the order of eps where the two differ most. */
static void test_adamw_eps_mode(void) {
    printf("-- AdamW eps placement: torch and fairseq\n");
    const double b1 = 0.9, b2 = 0.98, eps = 1e-6, wd = 0.1, lr = 0.01;
    const double g[2] = {2e-6, -0.3}, p0[2] = {1.0, -2.0};
    float out[2][2];
    for (int mode = 0; mode < 2; mode++) {
        float p[2] = {(float)p0[0], (float)p0[1]}, m[2] = {0}, v[2] = {0};
        float gf[2] = {(float)g[0], (float)g[1]};
        uint8_t decay[2] = {1, 0};
        AdamW o = {b1, b2, eps, wd, mode ? ADAM_EPS_FAIRSEQ : ADAM_EPS_TORCH};
        double hp[2] = {p0[0], p0[1]}, hm[2] = {0, 0}, hv[2] = {0, 0};
        for (int t = 1; t <= 2; t++) {
            adamw_step(p, m, v, gf, decay, 2, &o, lr, t);
            double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
            for (int i = 0; i < 2; i++) {
                double gi = (double)gf[i];
                if (decay[i]) hp[i] -= lr * wd * hp[i]; /* decoupled, on the pre-update value */
                hm[i] = b1 * hm[i] + (1 - b1) * gi, hv[i] = b2 * hv[i] + (1 - b2) * gi * gi;
                if (mode == 0) /* torch: lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps) */
                    hp[i] -= lr / bc1 * hm[i] / (sqrt(hv[i]) / sqrt(bc2) + eps);
                else /* fairseq: lr sqrt(bc2) / bc1 * m / (sqrt(v) + eps) */
                    hp[i] -= lr * sqrt(bc2) / bc1 * hm[i] / (sqrt(hv[i]) + eps);
            }
            char label[96];
            snprintf(label, sizeof label, "%s step %d: p = %.7f, %.7f (by hand %.7f, %.7f)",
                     mode ? "fairseq" : "torch  ", t, p[0], p[1], hp[0], hp[1]);
            check_record(NEAR(p[0], hp[0], 2e-7) && NEAR(p[1], hp[1], 2e-7), label);
        }
        out[mode][0] = p[0], out[mode][1] = p[1];
    }
    /* step 1 in closed form: update = lr g / (|g| + eps') with eps' = eps (torch) or
     * eps / sqrt(1 - b2) (fairseq); g = 2 eps: lr * 2/3 against lr * 2 / (2 + 1/sqrt(0.02)) */
    float p[2] = {1.0f, -2.0f}, m[2] = {0}, v[2] = {0}, gf[2] = {2e-6f, -0.3f};
    AdamW f = {b1, b2, eps, 0.0, ADAM_EPS_FAIRSEQ};
    adamw_step(p, m, v, gf, NULL, 2, &f, lr, 1);
    CHECK(NEAR(p[0], 1.0 - lr * 2.0 / (2.0 + 1.0 / sqrt(0.02)), 2e-7));
    /* the two placements really differ here (the test could not pass with one formula) */
    CHECK(fabs((double)out[0][0] - out[1][0]) > 1e-3);
}

static void test_schedules(void) {
    printf("-- LR schedules\n");
    LrSchedule c = {LR_COSINE, 1.0, 0.1, 10, 110, 0.0, 0, 0};
    CHECK(NEAR(lr_at(&c, 0), 0, 1e-12) && NEAR(lr_at(&c, 5), 0.5, 1e-12));
    CHECK(NEAR(lr_at(&c, 10), 1.0, 1e-12) && NEAR(lr_at(&c, 60), 0.55, 1e-12));
    CHECK(NEAR(lr_at(&c, 110), 0.1, 1e-12) && NEAR(lr_at(&c, 500), 0.1, 1e-12));
    LrSchedule l = {LR_LINEAR, 1.0, 0.0, 0, 100, 0.0, 0, 0};
    CHECK(NEAR(lr_at(&l, 0), 1.0, 1e-12) && NEAR(lr_at(&l, 25), 0.75, 1e-12));
    /* tri-stage 10% / 40% / 50% of 100 updates: warmup from 0.01 lr, hold, exponential decay to
     * 0.01 lr (fairseq), then flat */
    LrSchedule t = {LR_TRI_STAGE, 1.0, 0.01, 10, 100, 0.01, 0.4, 0.5};
    CHECK(NEAR(lr_at(&t, 0), 0.01, 1e-12) && NEAR(lr_at(&t, 10), 1.0, 1e-12));
    CHECK(NEAR(lr_at(&t, 49), 1.0, 1e-12) && NEAR(lr_at(&t, 50), 1.0, 1e-12));
    CHECK(NEAR(lr_at(&t, 75), 0.1, 1e-9)); /* halfway through the decay: sqrt(0.01) */
    CHECK(NEAR(lr_at(&t, 100), 0.01, 1e-12) && NEAR(lr_at(&t, 1000), 0.01, 1e-12));
    LrSchedule k = {LR_CONSTANT, 0.3, 0, 0, 0, 0, 0, 0};
    CHECK(NEAR(lr_at(&k, 12345), 0.3, 1e-12));
}

static void test_clip(void) {
    printf("-- clipping\n");
    float g[2] = {3, 4};
    double n = grad_norm(g, 2);
    CHECK(NEAR(n, 5, 1e-12));
    CHECK(clip_grad_norm(g, 2, n, 10) == 1.0 && g[0] == 3); /* under the limit: untouched */
    clip_grad_norm(g, 2, n, 1.0);
    CHECK(NEAR(grad_norm(g, 2), 1.0, 1e-6) && NEAR(g[0] / g[1], 0.75, 1e-6));
}

int main(void) {
    test_ema();
    test_targets();
    test_target_eps();
    test_loss();
    test_var();
    test_adamw();
    test_adamw_eps_mode();
    test_schedules();
    test_clip();
    return check_summary();
}
