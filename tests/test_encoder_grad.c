/* test_encoder_grad.c: finite-difference gradient check of a whole 2-block encoder (post-LN and
 * pre-LN + layer scale), in training mode with every dropout, drop path and layerdrop active. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "d2v/encoder.h"
#include "d2v/kernels.h"
#include "d2v/util.h"
#include "fd.h"

typedef struct {
    Encoder *e;
    EncoderParams *p;
    float *x, *bias, *r;
    EncoderRun *run;
    size_t n_out;
} Ctx;

static double loss_of(void *v) {
    Ctx *c = v;
    encoder_forward(c->e, c->p, c->x, c->run);
    const float *out = encoder_output(c->e);
    double s = 0;
    for (size_t i = 0; i < c->n_out; i++)
        s += (double)out[i] * c->r[i];
    return s;
}

static void run_case(const char *name, EncoderConfig cfg, int B, int T) {
    printf("-- %s\n", name);
    EncoderParams p, g;
    size_t np = encoder_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * sizeof(float), "params"), *gm = xalloc(np * sizeof(float), "grads");
    encoder_params_layout(&p, pm, &cfg);
    encoder_params_layout(&g, gm, &cfg);
    encoder_params_init(&p, &cfg, 11);
    /* Larger than BERT init so every path carries a visible gradient. */
    uint64_t key = rng_key(5, 0, 0, 0);
    for (size_t i = 0; i < np; i++)
        pm[i] += 0.3f * rng_normal(key, i);
    encoder_params_constrain(&p, &cfg);
    size_t n = (size_t)B * T * cfg.C;
    float *x = xalloc(n * 4, "x"), *r = xalloc(n * 4, "r"), *dx = xalloc(n * 4, "dx");
    float *bias = xalloc((size_t)cfg.NH * T * T * 4, "bias");
    float *dbias = xalloc((size_t)cfg.NH * T * T * 4, "dbias");
    for (size_t i = 0; i < n; i++)
        x[i] = rng_normal(key, np + i), r[i] = rng_normal(key, 2 * np + i);
    for (int i = 0; i < cfg.NH * T * T; i++)
        bias[i] = 0.5f * rng_normal(key, 3 * np + i);
    uint8_t pad[64] = {0};
    pad[1 * T + T - 1] = pad[1 * T + T - 2] = 1; /* sample 1 has two padding keys */
    int64_t ids[8] = {40, 41, 42, 43, 44, 45, 46, 47};
    EncoderRun run = {.B = B,
                      .T = T,
                      .key_pad = pad,
                      .attn_bias = bias,
                      .train = 1,
                      .seed = 1234,
                      .step = 9,
                      .sample_ids = ids};
    Encoder e;
    encoder_init(&e, &cfg, B, T, 1);
    Ctx c = {&e, &p, x, bias, r, &run, n};
    loss_of(&c);
    int dropped = 0;
    for (int l = 0; l < cfg.L; l++)
        dropped += e.dropped[l];
    printf("   blocks dropped by layerdrop this step: %d of %d\n", dropped, cfg.L);
    encoder_backward(&e, &g, dx, dbias, &p, x, &run, r);
    /* Accumulation: a second backward adds the same amount again. */
    float *g1 = xalloc(np * 4, "g1");
    memcpy(g1, gm, np * 4);
    encoder_backward(&e, &g, NULL, NULL, &p, x, &run, r);
    int acc_ok = 1;
    for (size_t i = 0; i < np; i++)
        if (fabsf(gm[i] - 2 * g1[i]) > 1e-5f * (1 + fabsf(g1[i]))) acc_ok = 0;
    check_record(acc_ok, "backward accumulates into gradients");
    memcpy(gm, g1, np * 4);
    { /* stored attention probabilities: the same gradients, bit for bit */
        EncoderConfig sc = cfg;
        sc.store_attention = !cfg.store_attention;
        Encoder es;
        encoder_init(&es, &sc, B, T, 1);
        float *g2m = xalloc(np * 4, "g2"), *dx2 = xalloc(n * 4, "dx2");
        EncoderParams g2;
        encoder_params_layout(&g2, g2m, &cfg);
        encoder_forward(&es, &p, x, &run);
        encoder_backward(&es, &g2, dx2, NULL, &p, x, &run, r);
        check_record(memcmp(g2m, g1, np * 4) == 0 && memcmp(dx2, dx, n * 4) == 0,
                     "store_attention = 1 gives the recomputing backward's gradients bit for bit");
        encoder_free(&es);
        free(g2m), free(dx2);
    }

    size_t sizes[ENCODER_NUM_PARAMS];
    encoder_param_sizes(sizes, &cfg);
    const char *names[ENCODER_NUM_PARAMS] = {"ln1_w",  "ln1_b", "qkv_w",  "qkv_b", "proj_w",
                                             "proj_b", "ln2_w", "ln2_b",  "fc1_w", "fc1_b",
                                             "fc2_w",  "fc2_b", "gamma1", "gamma2"};
    size_t off = 0;
    for (int t = 0; t < ENCODER_NUM_PARAMS; t++) {
        if (sizes[t]) fd_tensor(names[t], loss_of, &c, pm + off, gm + off, sizes[t], 60, 0);
        off += sizes[t];
    }
    fd_tensor("input x", loss_of, &c, x, dx, n, 80, 0);
    fd_tensor("attention bias", loss_of, &c, bias, dbias, (size_t)cfg.NH * T * T, 60, 0);

    /* Negative control: the same checker must reject a gradient that is off by 10 %. */
    for (size_t i = 0; i < n; i++)
        dx[i] *= 1.1f;
    int ok = fd_tensor("control", loss_of, &c, x, dx, n, 80, 1);
    check_record(!ok, "negative control: a 10% wrong gradient is rejected");

    /* Determinism: same key, same output; another step, another dropout mask. */
    float *o1 = xalloc(n * 4, "o1");
    encoder_forward(&e, &p, x, &run);
    memcpy(o1, encoder_output(&e), n * 4);
    encoder_forward(&e, &p, x, &run);
    CHECK(memcmp(o1, encoder_output(&e), n * 4) == 0);
    run.step++;
    encoder_forward(&e, &p, x, &run);
    CHECK(memcmp(o1, encoder_output(&e), n * 4) != 0);
    encoder_free(&e);
    free(pm), free(gm), free(g1), free(x), free(r), free(dx), free(bias), free(dbias), free(o1);
}

int main(void) {
    gemm_init(0);
    EncoderConfig post = {.L = 2,
                          .C = 12,
                          .NH = 3,
                          .F = 20,
                          .pre_ln = 0,
                          .k_bias = 1,
                          .ln_eps = 1e-5f,
                          .attn_dropout = 0.1f,
                          .act_dropout = 0.1f,
                          .resid_dropout = 0.1f};
    run_case("post-LN, dropouts on", post, 2, 6);
    EncoderConfig pre = {.L = 2,
                         .C = 12,
                         .NH = 3,
                         .F = 20,
                         .pre_ln = 1,
                         .layer_scale_init = 0.7f,
                         .k_bias = 0,
                         .ln_eps = 1e-6f,
                         .attn_dropout = 0.1f,
                         .resid_dropout = 0.1f,
                         .drop_path = 0.5f};
    run_case("pre-LN, layer scale, no key bias, drop path", pre, 2, 6);
    EncoderConfig ld = post;
    ld.L = 4, ld.layerdrop = 0.5f;
    run_case("post-LN, layerdrop 0.5", ld, 2, 5);
    return check_summary();
}
