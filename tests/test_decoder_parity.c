/* test_decoder_parity.c: the data2vec 2.0 conv decoder (1-D and 2-D, input dropout on the
 * encoder rows only) matches tests/ref/decoder_ref.py's outputs and gradients. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/decoder.h"
#include "d2v/kernels.h"
#include "d2v/util.h"
#include "fixture.h"

#define OUT_TOL 1e-5  /* forward: atol = OUT_TOL * max|want|, rtol = OUT_TOL */
#define GRAD_TOL 1e-4 /* gradients, as the other parity tests */
#define NUDGE 1e-2f   /* negative control: one weight moved by this much */

static double worst_out_ = 0, worst_grad_ = 0;

typedef struct {
    char name[24];
    float *p, *g;
    int nd;
    hsize_t dims[4];
} Tensor;

typedef struct {
    Fixture fx;
    DecoderConfig c;
    int B, T, n;
    float *x, *R, *dx, *params, *grads;
    uint8_t *masked;
    int64_t sample_ids[8];
    DropKey dk;
    DecoderParams p, g;
    Decoder d;
    Tensor t[2 * DECODER_MAX_LAYERS + 4];
} Case;

static size_t tsize(const Tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->nd; i++)
        n *= (size_t)t->dims[i];
    return n;
}

static void add(Case *k, const char *name, float *p, float *g, int nd, const int64_t *dims) {
    Tensor *t = &k->t[k->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->p = p, t->g = g, t->nd = nd;
    for (int i = 0; i < nd; i++)
        t->dims[i] = (hsize_t)dims[i];
}

/* One forward + backward against the fixture; quiet only computes. */
static void pass(Case *k, int quiet, int *fwd_ok, int *grad_ok) {
    size_t n = (size_t)k->B * k->T * k->c.C;
    memset(k->grads, 0, decoder_params_layout(&k->g, NULL, &k->c) * sizeof(float));
    memset(k->dx, 0, n * sizeof(float));
    const float *y = decoder_forward_masked(&k->d, &k->p, k->x, k->masked, k->B, k->T, k->dk, 1);
    decoder_backward(&k->d, &k->g, &k->p, k->R, k->dx);
    const char *grp = k->fx.name;
    float *want = fx_load_f32(&k->fx, "y", 3, (hsize_t[]){k->B, k->T, k->c.C});
    *fwd_ok = fx_compare(grp, "y", y, want, n, OUT_TOL, &worst_out_, quiet);
    free(want);
    want = fx_load_f32(&k->fx, "dx", 3, (hsize_t[]){k->B, k->T, k->c.C});
    *grad_ok = fx_compare(grp, "dx", k->dx, want, n, GRAD_TOL, &worst_grad_, quiet);
    free(want);
    for (int i = 0; i < k->n; i++) {
        char name[32];
        snprintf(name, sizeof name, "grad_%s", k->t[i].name);
        want = fx_load_f32(&k->fx, name, k->t[i].nd, k->t[i].dims);
        *grad_ok &=
            fx_compare(grp, name, k->t[i].g, want, tsize(&k->t[i]), GRAD_TOL, &worst_grad_, quiet);
        free(want);
    }
}

static void test_case(hid_t file, const char *path, const char *name) {
    printf("-- %s\n", name);
    Case *k = calloc(1, sizeof *k);
    if (!k) die("out of memory");
    k->fx = fx_group(file, path, name);
    const Fixture *fx = &k->fx;
    DecoderConfig *c = &k->c;
    c->dims = (int)fx_attr(fx, "dims"), c->C = (int)fx_attr(fx, "C"), c->D = (int)fx_attr(fx, "D");
    c->K = (int)fx_attr(fx, "K"), c->groups = (int)fx_attr(fx, "groups");
    c->layers = (int)fx_attr(fx, "layers"), c->residual = (int)fx_attr(fx, "residual");
    c->proj_hidden = (int)fx_attr(fx, "proj_hidden");
    c->input_dropout = (float)fx_attr(fx, "input_dropout");
    c->H = (int)fx_attr(fx, "H"), c->W = (int)fx_attr(fx, "W");
    k->B = (int)fx_attr(fx, "B"), k->T = (int)fx_attr(fx, "T");
    if (k->B > 8) die("test: fixture batch %d > 8", k->B);
    CHECK((int)fx_attr(fx, "site") == RNG_SITE_DEC_INPUT);
    hsize_t xd[3] = {k->B, k->T, c->C}, bt[2] = {k->B, k->T}, bd[1] = {k->B};
    k->x = fx_load_f32(fx, "x", 3, xd);
    k->R = fx_load_f32(fx, "R", 3, xd);
    k->masked = fx_load_u8(fx, "masked", 2, bt);
    int32_t *ids = fx_load_i32(fx, "sample_ids", 1, bd);
    for (int b = 0; b < k->B; b++)
        k->sample_ids[b] = ids[b];
    free(ids);
    k->dk = (DropKey){(uint64_t)fx_attr(fx, "seed"), (uint64_t)fx_attr(fx, "step"),
                      RNG_SITE_DEC_INPUT, k->sample_ids};
    size_t np = decoder_params_layout(&k->p, NULL, c);
    k->params = xalloc(np * sizeof(float), "params"), k->grads = xalloc(np * sizeof(float), "g");
    decoder_params_layout(&k->p, k->params, c), decoder_params_layout(&k->g, k->grads, c);
    k->dx = xalloc((size_t)k->B * k->T * c->C * sizeof(float), "dx");
    int64_t K = c->K, D = c->D, P = c->proj_hidden, C = c->C;
    for (int i = 0; i < c->layers; i++) {
        char wn[24], bn[24];
        int64_t cg = (i ? D : C) / c->groups;
        snprintf(wn, sizeof wn, "conv_w%d", i), snprintf(bn, sizeof bn, "conv_b%d", i);
        add(k, wn, k->p.conv_w[i], k->g.conv_w[i], c->dims + 2, (int64_t[]){D, cg, K, K});
        add(k, bn, k->p.conv_b[i], k->g.conv_b[i], 1, (int64_t[]){D});
    }
    add(k, "proj_w", k->p.proj_w, k->g.proj_w, 2, (int64_t[]){P ? P : C, D});
    add(k, "proj_b", k->p.proj_b, k->g.proj_b, 1, (int64_t[]){P ? P : C});
    if (P) {
        add(k, "proj2_w", k->p.proj2_w, k->g.proj2_w, 2, (int64_t[]){C, P});
        add(k, "proj2_b", k->p.proj2_b, k->g.proj2_b, 1, (int64_t[]){C});
    }
    size_t total = 0;
    for (int i = 0; i < k->n; i++) {
        float *v = fx_load_f32(fx, k->t[i].name, k->t[i].nd, k->t[i].dims);
        memcpy(k->t[i].p, v, tsize(&k->t[i]) * sizeof(float));
        free(v);
        total += tsize(&k->t[i]);
    }
    CHECK(total == np);                       /* the fixture's tensors tile the arena */
    decoder_create(&k->d, c, k->B + 1, k->T); /* an arena larger than the batch */

    int fwd_ok, grad_ok;
    pass(k, 0, &fwd_ok, &grad_ok);
    /* negative control: a weight of the last block nudged must break outputs and gradients */
    float *w = k->p.conv_w[c->layers - 1] + 3, saved = *w;
    *w += NUDGE;
    pass(k, 1, &fwd_ok, &grad_ok);
    printf("     negative control (conv_w%d[3] += %g): forward %s, grads %s\n", c->layers - 1,
           (double)NUDGE, fwd_ok ? "MATCH (bad)" : "differ", grad_ok ? "MATCH (bad)" : "differ");
    CHECK(!fwd_ok && !grad_ok);
    *w = saved;
    if (c->input_dropout > 0) { /* another update's dropout mask must not reproduce it */
        k->dk.step++;
        pass(k, 1, &fwd_ok, &grad_ok);
        printf("     negative control (dropout step + 1): forward %s\n",
               fwd_ok ? "MATCH (bad)" : "differs");
        CHECK(!fwd_ok);
        k->dk.step--;
        /* nor the mask applied to the noise rows as well */
        uint8_t *none = xalloc((size_t)k->B * k->T, "no masked rows"), *masked = k->masked;
        k->masked = none;
        pass(k, 1, &fwd_ok, &grad_ok);
        printf("     negative control (dropout on the masked rows too): forward %s\n",
               fwd_ok ? "MATCH (bad)" : "differs");
        CHECK(!fwd_ok);
        k->masked = masked, free(none);
    }
    pass(k, 1, &fwd_ok, &grad_ok);
    CHECK(fwd_ok && grad_ok); /* restored: the reference again */
    decoder_destroy(&k->d);
    fx_close(&k->fx);
    free(k->x), free(k->R), free(k->masked), free(k->params), free(k->grads), free(k->dx);
    free(k);
}

int main(int argc, char **argv) {
    gemm_init(0);
    const char *path = argc > 1 ? argv[1] : "build/fixtures/decoder_ref.h5";
    hid_t file = fx_open(path);
    test_case(file, path, "audio");
    test_case(file, path, "text");
    test_case(file, path, "image");
    test_case(file, path, "image_k5");
    H5Fclose(file);
    printf("worst max|got-want|/max|want|: outputs %.2e, gradients %.2e\n", worst_out_,
           worst_grad_);
    return check_summary();
}
