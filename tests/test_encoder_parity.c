/* test_encoder_parity.c: the C encoder (post-LN and pre-LN + layer scale) matches the PyTorch
 * reference's outputs and gradients. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/encoder.h"
#include "d2v/kernels.h"
#include "d2v/util.h"
#include "fixture.h"

#define OUT_TOL 1e-5  /* forward tensors: atol = OUT_TOL * max|want|, rtol = OUT_TOL */
#define GRAD_TOL 1e-4 /* gradients */

static const char *const PARAM_NAMES[ENCODER_NUM_PARAMS] = {
    "ln1_w", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b", "ln2_w",
    "ln2_b", "fc1_w", "fc1_b", "fc2_w", "fc2_b",  "gamma1", "gamma2"};

/* Worst normalised error max|got - want| / max|want| seen over all outputs / all gradients. */
static double worst_out_ = 0, worst_grad_ = 0;

/* Shape of parameter i in EncoderParams order (stacked over layers, PyTorch (out, in)). */
static int param_shape(int i, const EncoderConfig *c, hsize_t dims[3]) {
    hsize_t L = c->L, C = c->C, F = c->F;
    switch (i) {
    case 2:
        dims[0] = L, dims[1] = 3 * C, dims[2] = C;
        return 3; /* qkv_w */
    case 3:
        dims[0] = L, dims[1] = 3 * C;
        return 2; /* qkv_b */
    case 4:
        dims[0] = L, dims[1] = C, dims[2] = C;
        return 3; /* proj_w */
    case 8:
        dims[0] = L, dims[1] = F, dims[2] = C;
        return 3; /* fc1_w */
    case 9:
        dims[0] = L, dims[1] = F;
        return 2; /* fc1_b */
    case 10:
        dims[0] = L, dims[1] = C, dims[2] = F;
        return 3; /* fc2_w */
    default:
        dims[0] = L, dims[1] = C;
        return 2; /* (L, C) vectors */
    }
}

static float **param_ptrs(EncoderParams *p, float *out[ENCODER_NUM_PARAMS]) {
    float *v[ENCODER_NUM_PARAMS] = {p->ln1_w,  p->ln1_b, p->qkv_w,  p->qkv_b, p->proj_w,
                                    p->proj_b, p->ln2_w, p->ln2_b,  p->fc1_w, p->fc1_b,
                                    p->fc2_w,  p->fc2_b, p->gamma1, p->gamma2};
    memcpy(out, v, sizeof v);
    return out;
}

/* ---- comparisons ----------------------------------------------------------------------------- */

/* Compare with atol = tol * max|want| and rtol = tol; quiet only computes. */
static int compare(const char *group, const char *label, const float *got, const float *want,
                   size_t n, double tol, int quiet) {
    double *worst = tol >= GRAD_TOL ? &worst_grad_ : &worst_out_;
    return fx_compare(group, label, got, want, n, tol, worst, quiet);
}

/* Everything one group of the fixture holds. */
typedef struct {
    EncoderConfig cfg;
    int B, T;
    float *x, *attn_bias, *R, *out, *ffn_out, *block_out, *attn_out, *dx, *d_attn_bias;
    uint8_t *key_pad;
    float *params, *grads; /* arenas laid out by encoder_params_layout */
    size_t nparams;
    EncoderParams p, g;
    size_t sizes[ENCODER_NUM_PARAMS];
} Case;

static void load_case(Case *k, const Fixture *fx) {
    memset(k, 0, sizeof *k);
    EncoderConfig *c = &k->cfg;
    c->L = (int)fx_attr(fx, "L"), c->C = (int)fx_attr(fx, "C");
    c->NH = (int)fx_attr(fx, "NH"), c->F = (int)fx_attr(fx, "F");
    c->pre_ln = (int)fx_attr(fx, "pre_ln");
    c->layer_scale_init = fx_attr(fx, "layer_scale") != 0 ? 0.1f : 0.0f;
    c->k_bias = 1;
    c->ln_eps = (float)fx_attr(fx, "eps");
    k->B = (int)fx_attr(fx, "B"), k->T = (int)fx_attr(fx, "T");
    hsize_t L = c->L, C = c->C, NH = c->NH, B = k->B, T = k->T;
    hsize_t btc[3] = {B, T, C}, lbtc[4] = {L, B, T, C}, htt[3] = {NH, T, T}, bt[2] = {B, T};
    k->x = fx_load_f32(fx, "x", 3, btc);
    k->R = fx_load_f32(fx, "R", 3, btc);
    k->out = fx_load_f32(fx, "out", 3, btc);
    k->dx = fx_load_f32(fx, "dx", 3, btc);
    k->ffn_out = fx_load_f32(fx, "ffn_out", 4, lbtc);
    k->block_out = fx_load_f32(fx, "block_out", 4, lbtc);
    k->attn_out = fx_load_f32(fx, "attn_out", 4, lbtc);
    k->attn_bias = fx_load_f32(fx, "attn_bias", 3, htt);
    k->d_attn_bias = fx_load_f32(fx, "d_attn_bias", 3, htt);
    k->key_pad = fx_load_u8(fx, "key_pad", 2, bt);

    EncoderParams counter;
    k->nparams = encoder_params_layout(&counter, NULL, c);
    k->params = xalloc(k->nparams * sizeof(float), "fixture params");
    k->grads = xalloc(k->nparams * sizeof(float), "fixture grads");
    encoder_params_layout(&k->p, k->params, c);
    encoder_params_layout(&k->g, k->grads, c);
    encoder_param_sizes(k->sizes, c);
    float *dst[ENCODER_NUM_PARAMS];
    param_ptrs(&k->p, dst);
    for (int i = 0; i < ENCODER_NUM_PARAMS; i++) {
        if (!k->sizes[i]) continue;
        hsize_t dims[3];
        int nd = param_shape(i, c, dims);
        float *v = fx_load_f32(fx, PARAM_NAMES[i], nd, dims);
        memcpy(dst[i], v, k->sizes[i] * sizeof(float));
        free(v);
    }
}

static void free_case(Case *k) {
    free(k->x), free(k->attn_bias), free(k->R), free(k->out), free(k->ffn_out);
    free(k->block_out), free(k->attn_out), free(k->dx), free(k->d_attn_bias), free(k->key_pad);
    free(k->params), free(k->grads);
}

static EncoderRun case_run(const Case *k) {
    EncoderRun r = {.B = k->B, .T = k->T, .key_pad = k->key_pad, .attn_bias = k->attn_bias};
    return r;
}

/* Forward + backward of p on encoder e (keep_caches = 1), gradients into k->g, dx, dbias. */
static void forward_backward(Encoder *e, Case *k, const EncoderParams *p, float *dx, float *dbias) {
    EncoderRun r = case_run(k);
    size_t NC = (size_t)k->B * k->T * k->cfg.C, HTT = (size_t)k->cfg.NH * k->T * k->T;
    memset(k->grads, 0, k->nparams * sizeof(float));
    memset(dx, 0, NC * sizeof(float));
    memset(dbias, 0, HTT * sizeof(float));
    encoder_forward(e, p, k->x, &r);
    encoder_backward(e, &k->g, dx, dbias, p, k->x, &r, k->R);
}

/* Compare every forward tensor; returns 1 if all within tolerance. */
static int compare_forward(const Encoder *e, const Case *k, const char *group, const char *tag,
                           int quiet) {
    size_t NC = (size_t)k->B * k->T * k->cfg.C;
    char label[96];
    int ok = 1;
    for (int l = 0; l < k->cfg.L; l++) {
        BlockActs a = encoder_block(e, l);
        snprintf(label, sizeof label, "%s block %d ffn_out", tag, l);
        ok &= compare(group, label, a.ffn_out, k->ffn_out + l * NC, NC, OUT_TOL, quiet);
        snprintf(label, sizeof label, "%s block %d out", tag, l);
        ok &= compare(group, label, a.out, k->block_out + l * NC, NC, OUT_TOL, quiet);
    }
    snprintf(label, sizeof label, "%s out", tag);
    ok &= compare(group, label, encoder_output(e), k->out, NC, OUT_TOL, quiet);
    return ok;
}

/* The self-attention branches (target.tensor = "attn") of every block, which an encoder keeps
 * under cfg.keep_attn_out; returns 1 if all within tolerance. */
static int compare_attn(const Encoder *e, const Case *k, const char *group, const char *tag,
                        int quiet) {
    size_t NC = (size_t)k->B * k->T * k->cfg.C;
    char label[96];
    int ok = 1;
    for (int l = 0; l < k->cfg.L; l++) {
        snprintf(label, sizeof label, "%s block %d attn_out", tag, l);
        ok &= compare(group, label, encoder_block(e, l).attn_out, k->attn_out + l * NC, NC, OUT_TOL,
                      quiet);
    }
    return ok;
}

/* Compare dx, d_attn_bias and every parameter gradient against the fixture's. */
static int compare_grads(const Fixture *fx, Case *k, const float *dx, const float *dbias,
                         int quiet) {
    size_t NC = (size_t)k->B * k->T * k->cfg.C, HTT = (size_t)k->cfg.NH * k->T * k->T;
    int ok = compare(fx->name, "dx", dx, k->dx, NC, GRAD_TOL, quiet);
    ok &= compare(fx->name, "d_attn_bias", dbias, k->d_attn_bias, HTT, GRAD_TOL, quiet);
    float *got[ENCODER_NUM_PARAMS];
    param_ptrs(&k->g, got);
    for (int i = 0; i < ENCODER_NUM_PARAMS; i++) {
        if (!k->sizes[i]) continue;
        char name[64];
        hsize_t dims[3];
        int nd = param_shape(i, &k->cfg, dims);
        snprintf(name, sizeof name, "grad_%s", PARAM_NAMES[i]);
        float *want = fx_load_f32(fx, name, nd, dims);
        ok &= compare(fx->name, name, got[i], want, k->sizes[i], GRAD_TOL, quiet);
        free(want);
    }
    return ok;
}

/* ---- the test ----------------------------------------------------------------------------------
 */

static void test_group(hid_t file, const char *path, const char *name, int want_pre_ln) {
    Fixture fx = fx_group(file, path, name);
    printf("-- %s\n", name);
    Case k;
    load_case(&k, &fx);
    CHECK(k.cfg.pre_ln == want_pre_ln);
    CHECK((k.cfg.layer_scale_init > 0) == want_pre_ln);
    int npad = 0;
    for (int i = 0; i < k.B * k.T; i++)
        npad += k.key_pad[i] != 0;
    CHECK(npad > 0); /* the mask path is exercised */

    size_t NC = (size_t)k.B * k.T * k.cfg.C, HTT = (size_t)k.cfg.NH * k.T * k.T;
    float *dx = xalloc(NC * sizeof(float), "dx"), *dbias = xalloc(HTT * sizeof(float), "dbias");

    /* Training encoder: forward, backward. */
    Encoder e;
    encoder_init(&e, &k.cfg, k.B, k.T, 1);
    forward_backward(&e, &k, &k.p, dx, dbias);
    compare_forward(&e, &k, name, "cached", 0);
    compare_grads(&fx, &k, dx, dbias, 0);

    /* Forward-only (teacher) encoder: same per-block targets. */
    Encoder t;
    encoder_init(&t, &k.cfg, k.B, k.T, 0);
    EncoderRun r = case_run(&k);
    encoder_forward(&t, &k.p, k.x, &r);
    compare_forward(&t, &k, name, "fwd-only", 0);
    encoder_free(&t);

    /* target.tensor = "attn": a forward-only encoder that keeps every block's attention branch
     * (after the layer scale), and a training one with the same flag. Negative controls: the
     * branch without its layer scale (pre-LN), and one out-projection weight nudged. */
    EncoderConfig ac = k.cfg;
    ac.keep_attn_out = 1;
    Encoder ta, tr;
    encoder_init(&ta, &ac, k.B, k.T, 0);
    encoder_init(&tr, &ac, k.B, k.T, 1);
    encoder_forward(&ta, &k.p, k.x, &r);
    encoder_forward(&tr, &k.p, k.x, &r);
    compare_attn(&ta, &k, name, "fwd-only keep_attn_out", 0);
    compare_attn(&tr, &k, name, "cached keep_attn_out", 0);
    CHECK(compare_forward(&ta, &k, name, "keep_attn_out", 1)); /* the other targets unchanged */
    if (k.cfg.layer_scale_init > 0) {
        int raw_ok = 1;
        for (int l = 0; l < k.cfg.L; l++)
            raw_ok &= compare(name, "attproj", encoder_block(&ta, l).attproj, k.attn_out + l * NC,
                              NC, OUT_TOL, 1);
        printf("     negative control (attention branch without gamma1): %s\n",
               raw_ok ? "MATCH (bad)" : "differs");
        CHECK(!raw_ok);
    }
    float pw = k.p.proj_w[0];
    k.p.proj_w[0] += 1e-2f;
    encoder_forward(&ta, &k.p, k.x, &r);
    int nudged_ok = compare_attn(&ta, &k, name, "perturbed", 1);
    printf("     negative control (proj_w[0][0][0] += 1e-2): attn_out %s\n",
           nudged_ok ? "MATCH (bad)" : "differs");
    CHECK(!nudged_ok);
    k.p.proj_w[0] = pw;
    encoder_free(&ta), encoder_free(&tr);

    /* Negative controls: one fc1 weight nudged by 1e-2 in the first, then the last block, must
     * make the comparison fail (the test can see a wrong weight). */
    float *saved = xalloc(k.nparams * sizeof(float), "saved params");
    memcpy(saved, k.params, k.nparams * sizeof(float));
    int layers[2] = {0, k.cfg.L - 1};
    for (int j = 0; j < 2; j++) {
        int l = layers[j];
        memcpy(k.params, saved, k.nparams * sizeof(float));
        k.p.fc1_w[(size_t)l * k.cfg.F * k.cfg.C] += 1e-2f;
        forward_backward(&e, &k, &k.p, dx, dbias);
        int fwd_ok = compare_forward(&e, &k, name, "perturbed", 1);
        int grad_ok = compare_grads(&fx, &k, dx, dbias, 1);
        BlockActs a = encoder_block(&e, l);
        int blk_ok =
            compare(name, "perturbed block out", a.out, k.block_out + l * NC, NC, OUT_TOL, 1);
        double dmax = 0;
        for (size_t i = 0; i < NC; i++)
            if (fabs((double)encoder_output(&e)[i] - k.out[i]) > dmax)
                dmax = fabs((double)encoder_output(&e)[i] - k.out[i]);
        printf("     negative control (fc1_w[%d][0][0] += 1e-2): max|d out| %.1e (atol %.1e), "
               "forward %s, grads %s\n",
               l, dmax, OUT_TOL * fx_max_abs(k.out, NC), fwd_ok ? "MATCH (bad)" : "differ",
               grad_ok ? "MATCH (bad)" : "differ");
        CHECK(!fwd_ok);
        CHECK(!grad_ok);
        CHECK(!blk_ok); /* the perturbed block's own output moves */
    }
    /* Restored weights reproduce the reference again (the control did not break the encoder). */
    memcpy(k.params, saved, k.nparams * sizeof(float));
    forward_backward(&e, &k, &k.p, dx, dbias);
    CHECK(compare_forward(&e, &k, name, "restored", 1));
    CHECK(compare_grads(&fx, &k, dx, dbias, 1));

    free(saved), free(dx), free(dbias);
    encoder_free(&e);
    free_case(&k);
    fx_close(&fx);
}

int main(int argc, char **argv) {
    gemm_init(0);
    const char *path = argc > 1 ? argv[1] : "build/fixtures/encoder_ref.h5";
    hid_t file = fx_open(path);
    test_group(file, path, "post_ln", 0);
    test_group(file, path, "pre_ln", 1);
    H5Fclose(file);
    printf("worst max|got-want|/max|want|: outputs %.2e, gradients %.2e\n", worst_out_,
           worst_grad_);
    return check_summary();
}
