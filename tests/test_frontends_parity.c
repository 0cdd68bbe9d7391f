/* test_frontends_parity.c: the input encoders match the PyTorch reference's outputs and grads. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/frontends.h"
#include "d2v/kernels.h"
#include "d2v/util.h"
#include "fixture.h"

#define OUT_TOL 1e-5  /* forward tensors: atol = OUT_TOL * max|want|, rtol = OUT_TOL */
#define GRAD_TOL 1e-4 /* gradients */
#define NUDGE 1e-2f   /* negative controls: one weight moved by this much */

/* Worst normalised error max|got - want| / max|want| seen over all outputs / all gradients. */
static double worst_out_ = 0, worst_grad_ = 0;

static int compare(const Fixture *fx, const char *label, const float *got, const float *want,
                   size_t n, double tol, int quiet) {
    double *worst = tol >= GRAD_TOL ? &worst_grad_ : &worst_out_;
    return fx_compare(fx->name, label, got, want, n, tol, worst, quiet);
}

/* ---- parameter tensors ------------------------------------------------------------------------
 */

/* One parameter tensor: fixture name, shape, and its slices of the params / grads arenas. */
typedef struct {
    char name[32];
    float *p, *g;
    int nd;
    hsize_t dims[4];
} Tensor;

#define MAX_TENSORS 64
typedef struct {
    int n;
    Tensor t[MAX_TENSORS];
    float *params, *grads; /* arenas laid out by the modality's *_params_layout */
    size_t count;          /* floats in each arena */
} ParamSet;

static void ps_init(ParamSet *s, size_t count) {
    memset(s, 0, sizeof *s);
    s->count = count;
    s->params = xalloc(count * sizeof(float) + 1, "fixture params");
    s->grads = xalloc(count * sizeof(float) + 1, "fixture grads");
}

static void ps_free(ParamSet *s) { free(s->params), free(s->grads); }

static size_t tensor_size(const Tensor *t) {
    size_t n = 1;
    for (int i = 0; i < t->nd; i++)
        n *= (size_t)t->dims[i];
    return n;
}

static void add(ParamSet *s, float *p, float *g, int nd, const hsize_t *dims, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void add(ParamSet *s, float *p, float *g, int nd, const hsize_t *dims, const char *fmt,
                ...) {
    if (s->n >= MAX_TENSORS) die("test: too many parameter tensors");
    Tensor *t = &s->t[s->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->p = p, t->g = g, t->nd = nd;
    memcpy(t->dims, dims, nd * sizeof(hsize_t));
}

/* Copy every parameter in from the fixture; the listed tensors must tile the arena exactly. */
static void load_params(const Fixture *fx, ParamSet *s) {
    size_t total = 0;
    for (int i = 0; i < s->n; i++) {
        Tensor *t = &s->t[i];
        float *v = fx_load_f32(fx, t->name, t->nd, t->dims);
        memcpy(t->p, v, tensor_size(t) * sizeof(float));
        free(v);
        total += tensor_size(t);
    }
    if (total != s->count)
        die("test: %s tensors cover %zu of the %zu parameters", fx->name, total, s->count);
}

static int compare_grads(const Fixture *fx, const ParamSet *s, int quiet) {
    int ok = 1;
    for (int i = 0; i < s->n; i++) {
        const Tensor *t = &s->t[i];
        char name[48];
        snprintf(name, sizeof name, "grad_%s", t->name);
        float *want = fx_load_f32(fx, name, t->nd, t->dims);
        ok &= compare(fx, name, t->g, want, tensor_size(t), GRAD_TOL, quiet);
        free(want);
    }
    return ok;
}

/* One forward + backward of a case against the fixture: sets whether outputs / grads matched. */
typedef void (*PassFn)(void *k, int quiet, int *fwd_ok, int *grad_ok);

/* Negative control: w += NUDGE must make the forward comparison fail, and the gradient one too
 * when `grads_move` (not for a weight of a map that is affine in its parameters, whose gradients
 * do not depend on them); restoring w must make both pass again. */
static void negative_control(const char *what, float *w, int grads_move, PassFn pass, void *k) {
    float saved = *w;
    int fwd_ok, grad_ok;
    *w += NUDGE;
    pass(k, 1, &fwd_ok, &grad_ok);
    printf("     negative control (%s += %g): forward %s, grads %s\n", what, (double)NUDGE,
           fwd_ok ? "MATCH (bad)" : "differ",
           !grads_move ? (grad_ok ? "match (affine map)" : "DIFFER (bad)")
                       : (grad_ok ? "MATCH (bad)" : "differ"));
    CHECK(!fwd_ok);
    CHECK(grads_move ? !grad_ok : grad_ok);
    *w = saved;
    pass(k, 1, &fwd_ok, &grad_ok);
    CHECK(fwd_ok && grad_ok); /* restored weights reproduce the reference again */
}

/* ---- text ------------------------------------------------------------------------------------ */

typedef struct {
    Fixture fx;
    TextEmbedConfig c;
    int B, T;
    int32_t *tokens, *positions;
    float *R, *out;
    ParamSet ps;
    TextEmbedParams p, g;
    TextEmbed t;
} TextCase;

static void text_pass(void *kv, int quiet, int *fwd_ok, int *grad_ok) {
    TextCase *k = kv;
    size_t NC = (size_t)k->B * k->T * k->c.C;
    DropKey dk = {0, 0, 0, NULL};
    text_embed_forward(&k->t, &k->p, k->tokens, k->B, k->T, 0, dk);
    *fwd_ok = compare(&k->fx, "out", k->t.out, k->out, NC, OUT_TOL, quiet);
    memset(k->ps.grads, 0, k->ps.count * sizeof(float));
    text_embed_backward(&k->t, &k->g, &k->p, k->R, 0, dk);
    *grad_ok = compare_grads(&k->fx, &k->ps, quiet);
}

static void test_text(hid_t file, const char *path) {
    TextCase k;
    memset(&k, 0, sizeof k);
    k.fx = fx_group(file, path, "text");
    printf("-- text\n");
    Fixture *fx = &k.fx;
    TextEmbedConfig *c = &k.c;
    c->V = (int)fx_attr(fx, "V"), c->C = (int)fx_attr(fx, "C");
    c->max_positions = (int)fx_attr(fx, "max_positions"), c->pad_id = (int)fx_attr(fx, "pad_id");
    c->ln_eps = (float)fx_attr(fx, "eps"), c->dropout = (float)fx_attr(fx, "dropout");
    k.B = (int)fx_attr(fx, "B"), k.T = (int)fx_attr(fx, "T");
    hsize_t V = c->V, C = c->C, B = k.B, T = k.T, rows = c->max_positions + 2;
    hsize_t bt[2] = {B, T}, btc[3] = {B, T, C};
    k.tokens = fx_load_i32(fx, "tokens", 2, bt);
    k.positions = fx_load_i32(fx, "positions", 2, bt);
    k.R = fx_load_f32(fx, "R", 3, btc);
    k.out = fx_load_f32(fx, "out", 3, btc);

    ps_init(&k.ps, text_embed_params_layout(&k.p, NULL, c));
    text_embed_params_layout(&k.p, k.ps.params, c);
    text_embed_params_layout(&k.g, k.ps.grads, c);
    add(&k.ps, k.p.tok, k.g.tok, 2, (hsize_t[]){V, C}, "tok");
    add(&k.ps, k.p.pos, k.g.pos, 2, (hsize_t[]){rows, C}, "pos");
    add(&k.ps, k.p.ln_w, k.g.ln_w, 1, (hsize_t[]){C}, "ln_w");
    add(&k.ps, k.p.ln_b, k.g.ln_b, 1, (hsize_t[]){C}, "ln_b");
    load_params(fx, &k.ps);

    int npad = 0;
    for (size_t i = 0; i < B * T; i++)
        npad += k.tokens[i] == c->pad_id;
    CHECK(npad > 0); /* the padding path is exercised */

    text_embed_init(&k.t, c, k.B + 1, k.T + 2); /* arena larger than the batch */
    int fwd_ok, grad_ok;
    text_pass(&k, 0, &fwd_ok, &grad_ok);
    int pos_same = 1, pad_same = 1;
    for (size_t i = 0; i < B * T; i++) {
        pos_same &= k.t.pos_ids[i] == k.positions[i];
        pad_same &= k.t.pad[i] == (k.tokens[i] == c->pad_id);
    }
    CHECK(pos_same); /* fairseq make_positions with padding_idx 1 */
    CHECK(pad_same);

    /* a token row that sample 0 uses at position 1 */
    int32_t row = k.tokens[1];
    char what[64];
    snprintf(what, sizeof what, "tok[%d][3]", (int)row);
    negative_control(what, &k.p.tok[(size_t)row * c->C + 3], 1, text_pass, &k);

    text_embed_free(&k.t);
    ps_free(&k.ps);
    free(k.tokens), free(k.positions), free(k.R), free(k.out);
    fx_close(&k.fx);
}

/* ---- image ----------------------------------------------------------------------------------- */

typedef struct {
    Fixture fx;
    ImageEmbedConfig c;
    int B, Np, tok;
    float *img, *R, *out;
    uint8_t *mask;
    ParamSet ps;
    ImageEmbedParams p, g;
    ImageEmbed e;
} ImageCase;

static void image_pass(void *kv, int quiet, int *fwd_ok, int *grad_ok) {
    ImageCase *k = kv;
    size_t n = (size_t)k->B * k->tok * k->c.C;
    image_embed_forward(&k->e, &k->p, k->img, k->mask, k->B);
    *fwd_ok = compare(&k->fx, "out", k->e.out, k->out, n, OUT_TOL, quiet);
    memset(k->ps.grads, 0, k->ps.count * sizeof(float));
    image_embed_backward(&k->e, &k->g, k->R);
    *grad_ok = compare_grads(&k->fx, &k->ps, quiet);
}

static void test_image(hid_t file, const char *path, const char *name, int want_pos) {
    ImageCase k;
    memset(&k, 0, sizeof k);
    k.fx = fx_group(file, path, name);
    printf("-- %s\n", name);
    Fixture *fx = &k.fx;
    ImageEmbedConfig *c = &k.c;
    c->H = (int)fx_attr(fx, "H"), c->W = (int)fx_attr(fx, "W"), c->Cin = (int)fx_attr(fx, "Cin");
    c->P = (int)fx_attr(fx, "P"), c->C = (int)fx_attr(fx, "C");
    c->cls = (int)fx_attr(fx, "cls"), c->pos = (int)fx_attr(fx, "pos");
    CHECK(c->pos == want_pos);
    k.B = (int)fx_attr(fx, "B");
    k.Np = image_embed_num_patches(c), k.tok = image_embed_tokens(c);
    CHECK(k.tok == k.Np + c->cls);
    hsize_t B = k.B, C = c->C, Cin = c->Cin, P = c->P, Np = k.Np, tok = k.tok;
    k.img = fx_load_f32(fx, "img", 4, (hsize_t[]){B, c->H, c->W, Cin});
    k.mask = fx_load_u8(fx, "mask", 2, (hsize_t[]){B, Np});
    k.R = fx_load_f32(fx, "R", 3, (hsize_t[]){B, tok, C});
    k.out = fx_load_f32(fx, "out", 3, (hsize_t[]){B, tok, C});

    ps_init(&k.ps, image_embed_params_layout(&k.p, NULL, c));
    image_embed_params_layout(&k.p, k.ps.params, c);
    image_embed_params_layout(&k.g, k.ps.grads, c);
    add(&k.ps, k.p.patch_w, k.g.patch_w, 4, (hsize_t[]){C, Cin, P, P}, "patch_w");
    add(&k.ps, k.p.patch_b, k.g.patch_b, 1, (hsize_t[]){C}, "patch_b");
    if (c->cls) add(&k.ps, k.p.cls, k.g.cls, 1, (hsize_t[]){C}, "cls");
    add(&k.ps, k.p.mask_token, k.g.mask_token, 1, (hsize_t[]){C}, "mask_token");
    if (c->pos == IMAGE_POS_LEARNED) add(&k.ps, k.p.pos, k.g.pos, 2, (hsize_t[]){tok, C}, "pos");
    load_params(fx, &k.ps);

    int nmask = 0;
    for (size_t i = 0; i < B * Np; i++)
        nmask += k.mask[i] != 0;
    CHECK(nmask > 0 && nmask < (int)(B * Np)); /* both paths exercised */

    if (c->pos == IMAGE_POS_SINCOS) { /* the fixed table on its own */
        float *want = fx_load_f32(fx, "sincos", 2, (hsize_t[]){Np, C});
        float *got = xalloc(Np * C * sizeof(float), "sincos table");
        image_sincos_table(got, c->H / c->P, c->W / c->P, c->C);
        compare(fx, "sincos table", got, want, Np * C, OUT_TOL, 0);
        free(got), free(want);
    }

    image_embed_init(&k.e, c, k.B + 1);
    int fwd_ok, grad_ok;
    image_pass(&k, 0, &fwd_ok, &grad_ok);

    /* channel 1, input channel Cin-1, pixel (1, 2) of every patch */
    size_t widx = ((1 * Cin + (Cin - 1)) * P + 1) * P + 2;
    negative_control("patch_w[1][Cin-1][1][2]", &k.p.patch_w[widx], 0, image_pass, &k);
    negative_control("mask_token[0]", &k.p.mask_token[0], 0, image_pass, &k);
    /* The embedding is affine in its parameters, so the gradient check is exercised through the
     * input instead: the last pixel of image 0 (its last patch is never masked). */
    CHECK(k.mask[Np - 1] == 0);
    size_t pix = ((size_t)(c->H - 1) * c->W + (c->W - 1)) * Cin;
    negative_control("img[0][H-1][W-1][0]", &k.img[pix], 1, image_pass, &k);

    image_embed_free(&k.e);
    ps_free(&k.ps);
    free(k.img), free(k.mask), free(k.R), free(k.out);
    fx_close(&k.fx);
}

/* ---- speech ---------------------------------------------------------------------------------- */

static const DropKey no_drop = {0, 0, 0, NULL}; /* the fixture has no dropout (train = 0) */

typedef struct {
    Fixture fx;
    SpeechEmbedConfig c;
    int B, S, T;
    float *wav, *R, *features, *out, *dfeatures;
    uint8_t *mask;
    ParamSet ps;
    SpeechEmbedParams p, g;
    SpeechFeatures f;
    SpeechContext s;
    float *dfeat; /* (B, T, C) gradient from stage 2 into stage 1 */
} SpeechCase;

static void speech_pass(void *kv, int quiet, int *fwd_ok, int *grad_ok) {
    SpeechCase *k = kv;
    size_t NC = (size_t)k->B * k->T * k->c.C;
    speech_features_forward(&k->f, &k->p, k->wav, k->B, k->S);
    int ok = k->f.T == k->T;
    if (!quiet) CHECK(k->f.T == k->T);
    ok = ok && compare(&k->fx, "features", k->f.features, k->features, NC, OUT_TOL, quiet);
    speech_context_forward(&k->s, &k->p, k->f.features, k->mask, k->B, k->T, 0, no_drop);
    ok &= compare(&k->fx, "out", k->s.out, k->out, NC, OUT_TOL, quiet);
    *fwd_ok = ok;
    memset(k->ps.grads, 0, k->ps.count * sizeof(float));
    memset(k->dfeat, 0, NC * sizeof(float));
    speech_context_backward(&k->s, &k->g, &k->p, k->R, k->dfeat, 0, no_drop);
    ok = compare(&k->fx, "dfeatures", k->dfeat, k->dfeatures, NC, GRAD_TOL, quiet);
    speech_features_backward(&k->f, &k->g, &k->p, k->dfeat);
    ok &= compare_grads(&k->fx, &k->ps, quiet);
    *grad_ok = ok;
}

/* speech_num_frames of the default wav2vec 2.0 extractor against the reference's conv stacks. */
static void test_frames(const Fixture *fx) {
    hsize_t n = fx_len(fx, "frame_lengths"), nk = fx_len(fx, "frame_conv_k");
    int32_t *len = fx_load_i32(fx, "frame_lengths", 1, &n);
    int32_t *want = fx_load_i32(fx, "frame_counts", 1, &n);
    int32_t *ks = fx_load_i32(fx, "frame_conv_k", 1, &nk);
    int32_t *ss = fx_load_i32(fx, "frame_conv_s", 1, &nk);
    if (nk > SPEECH_MAX_CONV) die("test: %llu conv layers", (unsigned long long)nk);
    SpeechEmbedConfig d;
    memset(&d, 0, sizeof d);
    d.n_conv = (int)nk, d.C = 768, d.ln_eps = 1e-5f;
    for (int i = 0; i < d.n_conv; i++)
        d.conv_dim[i] = 512, d.conv_k[i] = ks[i], d.conv_s[i] = ss[i];
    int bad = 0;
    for (hsize_t i = 0; i < n; i++) {
        int got = speech_num_frames(&d, len[i]);
        if (got != want[i]) {
            printf("     speech_num_frames(%d samples) = %d, PyTorch %d\n", len[i], got, want[i]);
            bad++;
        }
    }
    char label[96];
    snprintf(label, sizeof label, "speech speech_num_frames over %llu lengths",
             (unsigned long long)n);
    check_record(bad == 0, label);
    free(len), free(want), free(ks), free(ss);
}

static void test_speech(hid_t file, const char *path) {
    SpeechCase k;
    memset(&k, 0, sizeof k);
    k.fx = fx_group(file, path, "speech");
    printf("-- speech\n");
    Fixture *fx = &k.fx;
    SpeechEmbedConfig *c = &k.c;
    c->n_conv = (int)fx_attr(fx, "n_conv"), c->C = (int)fx_attr(fx, "C");
    c->pos_layers = (int)fx_attr(fx, "pos_layers"), c->pos_k = (int)fx_attr(fx, "pos_k");
    c->pos_groups = (int)fx_attr(fx, "pos_groups"), c->ln_eps = (float)fx_attr(fx, "eps");
    k.B = (int)fx_attr(fx, "B"), k.S = (int)fx_attr(fx, "S"), k.T = (int)fx_attr(fx, "T");
    if (c->n_conv <= 0 || c->n_conv > SPEECH_MAX_CONV || c->pos_layers > SPEECH_MAX_CONV)
        die("test: speech fixture has %d conv and %d pos layers", c->n_conv, c->pos_layers);
    hsize_t nconv = c->n_conv;
    int32_t *dim = fx_load_i32(fx, "conv_dim", 1, &nconv);
    int32_t *ks = fx_load_i32(fx, "conv_k", 1, &nconv);
    int32_t *ss = fx_load_i32(fx, "conv_s", 1, &nconv);
    for (int i = 0; i < c->n_conv; i++)
        c->conv_dim[i] = dim[i], c->conv_k[i] = ks[i], c->conv_s[i] = ss[i];
    free(dim), free(ks), free(ss);
    CHECK(speech_num_frames(c, k.S) == k.T);

    hsize_t B = k.B, S = k.S, T = k.T, C = c->C, D = c->conv_dim[c->n_conv - 1];
    hsize_t btc[3] = {B, T, C};
    k.wav = fx_load_f32(fx, "wav", 2, (hsize_t[]){B, S});
    k.mask = fx_load_u8(fx, "mask", 2, (hsize_t[]){B, T});
    k.R = fx_load_f32(fx, "R", 3, btc);
    k.features = fx_load_f32(fx, "features", 3, btc);
    k.out = fx_load_f32(fx, "out", 3, btc);
    k.dfeatures = fx_load_f32(fx, "dfeatures", 3, btc);

    ps_init(&k.ps, speech_embed_params_layout(&k.p, NULL, c));
    speech_embed_params_layout(&k.p, k.ps.params, c);
    speech_embed_params_layout(&k.g, k.ps.grads, c);
    ParamSet *ps = &k.ps;
    for (int i = 0; i < c->n_conv; i++) {
        hsize_t dm = c->conv_dim[i], cin = i ? c->conv_dim[i - 1] : 1, kk = c->conv_k[i];
        add(ps, k.p.conv_w[i], k.g.conv_w[i], 3, (hsize_t[]){dm, cin, kk}, "conv_w%d", i);
        add(ps, k.p.conv_ln_w[i], k.g.conv_ln_w[i], 1, (hsize_t[]){dm}, "conv_ln_w%d", i);
        add(ps, k.p.conv_ln_b[i], k.g.conv_ln_b[i], 1, (hsize_t[]){dm}, "conv_ln_b%d", i);
    }
    add(ps, k.p.feat_ln_w, k.g.feat_ln_w, 1, (hsize_t[]){D}, "feat_ln_w");
    add(ps, k.p.feat_ln_b, k.g.feat_ln_b, 1, (hsize_t[]){D}, "feat_ln_b");
    add(ps, k.p.proj_w, k.g.proj_w, 2, (hsize_t[]){C, D}, "proj_w");
    add(ps, k.p.proj_b, k.g.proj_b, 1, (hsize_t[]){C}, "proj_b");
    add(ps, k.p.mask_emb, k.g.mask_emb, 1, (hsize_t[]){C}, "mask_emb");
    for (int j = 0; j < c->pos_layers; j++) {
        hsize_t gin = c->C / c->pos_groups, kk = c->pos_k;
        add(ps, k.p.pos_w[j], k.g.pos_w[j], 3, (hsize_t[]){C, gin, kk}, "pos_w%d", j);
        add(ps, k.p.pos_b[j], k.g.pos_b[j], 1, (hsize_t[]){C}, "pos_b%d", j);
    }
    add(ps, k.p.enc_ln_w, k.g.enc_ln_w, 1, (hsize_t[]){C}, "enc_ln_w");
    add(ps, k.p.enc_ln_b, k.g.enc_ln_b, 1, (hsize_t[]){C}, "enc_ln_b");
    load_params(fx, ps);

    int nmask = 0;
    for (size_t i = 0; i < B * T; i++)
        nmask += k.mask[i] != 0;
    CHECK(nmask > 0 && nmask < (int)(B * T));

    /* Arenas larger than the batch: the strides must follow the actual sizes. */
    speech_features_init(&k.f, c, k.B + 1, k.S + 37);
    CHECK(k.f.Tmax >= k.T);
    speech_context_init(&k.s, c, k.B + 1, k.f.Tmax, 1);
    k.dfeat = xalloc(B * T * C * sizeof(float), "dfeatures");
    int fwd_ok, grad_ok;
    speech_pass(&k, 0, &fwd_ok, &grad_ok);

    /* The forward-only context (the teacher's) gives the same output. */
    SpeechContext s0;
    speech_context_init(&s0, c, k.B, k.T, 0);
    speech_context_forward(&s0, &k.p, k.f.features, k.mask, k.B, k.T, 0, no_drop);
    size_t NC = B * T * C;
    compare(fx, "forward-only out", s0.out, k.out, NC, OUT_TOL, 0);
    compare(fx, "forward-only out vs cached", s0.out, k.s.out, NC, 1e-6, 0);
    /* ... and without the mask it differs: the mask path is what the fixture tests. */
    speech_context_forward(&s0, &k.p, k.f.features, NULL, k.B, k.T, 0, no_drop);
    CHECK(!compare(fx, "unmasked out", s0.out, k.out, NC, OUT_TOL, 1));
    speech_context_free(&s0);

    negative_control("conv_w0[2][0][4]", &k.p.conv_w[0][2 * c->conv_k[0] + 4], 1, speech_pass, &k);
    negative_control("mask_emb[5]", &k.p.mask_emb[5], 1, speech_pass, &k);
    char what[64];
    snprintf(what, sizeof what, "pos_w%d[0][1][2]", c->pos_layers - 1);
    negative_control(what, &k.p.pos_w[c->pos_layers - 1][1 * c->pos_k + 2], 1, speech_pass, &k);

    test_frames(fx);

    speech_context_free(&k.s);
    speech_features_free(&k.f);
    ps_free(&k.ps);
    free(k.wav), free(k.mask), free(k.R), free(k.features), free(k.out), free(k.dfeatures);
    free(k.dfeat);
    fx_close(&k.fx);
}

int main(int argc, char **argv) {
    gemm_init(0);
    const char *path = argc > 1 ? argv[1] : "build/fixtures/frontends_ref.h5";
    hid_t file = fx_open(path);
    test_text(file, path);
    test_image(file, path, "image_learned", IMAGE_POS_LEARNED);
    test_image(file, path, "image_sincos", IMAGE_POS_SINCOS);
    test_image(file, path, "image_sincos_rect", IMAGE_POS_SINCOS);
    test_speech(file, path);
    H5Fclose(file);
    printf("worst max|got-want|/max|want|: outputs %.2e, gradients %.2e\n", worst_out_,
           worst_grad_);
    return check_summary();
}
