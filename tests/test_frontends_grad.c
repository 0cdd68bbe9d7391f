/* test_frontends_grad.c: finite-difference gradient checks of the text, image and speech input
 * encoders' backward passes (dropout on for text and for the speech encoder input; masks on for
 * image and speech). */
#include <math.h>
#include <string.h>

#include "check.h"
#include "d2v/frontends.h"
#include "d2v/kernels.h"
#include "d2v/util.h"
#include "fd.h"

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static void perturb(float *x, size_t n, float scale, uint64_t seed) {
    uint64_t k = rng_key(seed, 1, 2, 3);
    for (size_t i = 0; i < n; i++)
        x[i] += scale * rng_normal(k, i);
}

/* ---- text ---- */
typedef struct {
    TextEmbed *t;
    TextEmbedParams *p;
    const int32_t *ids;
    const float *r;
    int B, T;
    DropKey k;
} TextCtx;

static double text_loss(void *v) {
    TextCtx *c = v;
    text_embed_forward(c->t, c->p, c->ids, c->B, c->T, 1, c->k);
    return dot(c->t->out, c->r, (size_t)c->B * c->T * c->t->cfg.C);
}

static void test_text(void) {
    printf("-- text embedding (dropout 0.2)\n");
    TextEmbedConfig cfg = {
        .V = 30, .C = 12, .max_positions = 10, .pad_id = 4, .ln_eps = 1e-5f, .dropout = 0.2f};
    TextEmbedParams p, g;
    size_t np = text_embed_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    text_embed_params_layout(&p, pm, &cfg), text_embed_params_layout(&g, gm, &cfg);
    text_embed_params_init(&p, &cfg, 3);
    perturb(pm, np, 0.3f, 4);
    enum { B = 2, T = 7 };
    int32_t ids[B * T] = {0, 5, 9, 5, 12, 2, 4, 0, 7, 7, 2, 4, 4, 4}; /* repeats and padding (4) */
    int64_t sids[B] = {100, 101};
    float *r = xalloc(B * T * 12 * 4, "r");
    perturb(r, B * T * 12, 1.0f, 5);
    TextEmbed t;
    text_embed_init(&t, &cfg, B, T);
    DropKey k = {9, 1, 40, sids};
    TextCtx c = {&t, &p, ids, r, B, T, k};
    text_loss(&c);
    text_embed_backward(&t, &g, &p, r, 1, k);
    fd_tensor("tok", text_loss, &c, p.tok, g.tok, (size_t)cfg.V * cfg.C, 200, 0);
    fd_tensor("pos", text_loss, &c, p.pos, g.pos, (size_t)(cfg.max_positions + 2) * cfg.C, 200, 0);
    fd_tensor("ln_w", text_loss, &c, p.ln_w, g.ln_w, cfg.C, 100, 0);
    fd_tensor("ln_b", text_loss, &c, p.ln_b, g.ln_b, cfg.C, 100, 0);
    CHECK(g.tok[cfg.pad_id * cfg.C] == 0 && g.pos[TEXT_POS_PAD_ROW * cfg.C] == 0); /* pad rows */
    for (int i = 0; i < cfg.C; i++)
        g.ln_w[i] *= 1.1f;
    CHECK(!fd_tensor("control", text_loss, &c, p.ln_w, g.ln_w, cfg.C, 100, 1));
    text_embed_free(&t);
    free(pm), free(gm), free(r);
}

/* ---- image ---- */
typedef struct {
    ImageEmbed *e;
    ImageEmbedParams *p;
    const float *img, *r;
    const uint8_t *mask;
    int B;
} ImageCtx;

static double image_loss(void *v) {
    ImageCtx *c = v;
    image_embed_forward(c->e, c->p, c->img, c->mask, c->B);
    return dot(c->e->out, c->r, (size_t)c->B * image_embed_tokens(&c->e->cfg) * c->e->cfg.C);
}

static void test_image(int pos, int Cin) {
    printf("-- image embedding (pos %d, %d channel(s))\n", pos, Cin);
    ImageEmbedConfig cfg = {.H = 8, .W = 12, .Cin = Cin, .P = 4, .C = 8, .cls = 1, .pos = pos};
    ImageEmbedParams p, g;
    size_t np = image_embed_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    image_embed_params_layout(&p, pm, &cfg), image_embed_params_layout(&g, gm, &cfg);
    image_embed_params_init(&p, &cfg, 3);
    perturb(pm, np, 0.3f, 4);
    enum { B = 2 };
    int Np = image_embed_num_patches(&cfg), tok = image_embed_tokens(&cfg);
    float *img = xalloc((size_t)B * 8 * 12 * Cin * 4, "img");
    perturb(img, (size_t)B * 8 * 12 * Cin, 1.0f, 6);
    uint8_t mask[2 * 6] = {0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0};
    float *r = xalloc((size_t)B * tok * cfg.C * 4, "r");
    perturb(r, (size_t)B * tok * cfg.C, 1.0f, 7);
    ImageEmbed e;
    image_embed_init(&e, &cfg, B);
    ImageCtx c = {&e, &p, img, r, mask, B};
    CHECK(Np == 6);
    image_loss(&c);
    image_embed_backward(&e, &g, r);
    fd_tensor("patch_w", image_loss, &c, p.patch_w, g.patch_w, (size_t)cfg.C * Cin * 16, 200, 0);
    fd_tensor("patch_b", image_loss, &c, p.patch_b, g.patch_b, cfg.C, 100, 0);
    fd_tensor("cls", image_loss, &c, p.cls, g.cls, cfg.C, 100, 0);
    fd_tensor("mask_token", image_loss, &c, p.mask_token, g.mask_token, cfg.C, 100, 0);
    if (p.pos) fd_tensor("pos", image_loss, &c, p.pos, g.pos, (size_t)tok * cfg.C, 200, 0);
    g.patch_w[5] = -g.patch_w[5] + 0.5f;
    CHECK(!fd_tensor("control", image_loss, &c, p.patch_w, g.patch_w, (size_t)cfg.C * Cin * 16, 200,
                     1));
    image_embed_free(&e);
    free(pm), free(gm), free(img), free(r);
}

/* ---- image: relative position bias through attention ---- */
typedef struct {
    ImageEmbed *e;
    ImageEmbedParams *p;
    float *bias, *att, *out, *scratch, *qkv, *r;
    int B, T, C, NH;
} RelCtx;

static double rel_loss(void *v) {
    RelCtx *c = v;
    DropKey k = {0, 0, 0, NULL};
    image_rel_bias_forward(c->e, c->bias, c->p);
    attention_forward(c->out, c->att, c->scratch, c->qkv, NULL, c->bias, c->B, c->T, c->C, c->NH, 0,
                      k);
    return dot(c->out, c->r, (size_t)c->B * c->T * c->C);
}

static void test_image_relative(void) {
    printf("-- image relative position bias (3x4 grid + cls, 2 heads)\n");
    ImageEmbedConfig cfg = {.H = 12,
                            .W = 16,
                            .Cin = 1,
                            .P = 4,
                            .C = 8,
                            .cls = 1,
                            .pos = IMAGE_POS_RELATIVE,
                            .heads = 2};
    ImageEmbedParams p, g;
    size_t np = image_embed_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    image_embed_params_layout(&p, pm, &cfg), image_embed_params_layout(&g, gm, &cfg);
    int R = image_rel_table_rows(&cfg), T = image_embed_tokens(&cfg), B = 2, NH = 2;
    CHECK(R == 5 * 7 + 3 && T == 13);
    perturb(p.rel_table, (size_t)R * NH, 1.0f, 11);
    ImageEmbed e;
    image_embed_init(&e, &cfg, B);
    /* the index by hand: patch 0 (row 0, col 0) to patch 5 (row 1, col 1) is offset (-1, -1) */
    CHECK(e.rel_index[1 * T + 6] == (-1 + 2) * 7 + (-1 + 3));
    CHECK(e.rel_index[0] == R - 1 && e.rel_index[3] == R - 3 && e.rel_index[3 * T] == R - 2);
    size_t n = (size_t)B * T * 8;
    RelCtx c = {&e,
                &p,
                xalloc((size_t)NH * T * T * 4, "bias"),
                xalloc((size_t)B * NH * T * T * 4, "att"),
                xalloc(n * 4, "out"),
                xalloc(attention_scratch_size(T) * 4, "scratch"),
                xalloc(3 * n * 4, "qkv"),
                xalloc(n * 4, "r"),
                B,
                T,
                8,
                NH};
    perturb(c.qkv, 3 * n, 1.0f, 12), perturb(c.r, n, 1.0f, 13);
    rel_loss(&c);
    float *dqkv = xalloc(3 * n * 4, "dqkv"), *dbias = xalloc((size_t)NH * T * T * 4, "dbias");
    DropKey k = {0, 0, 0, NULL};
    attention_backward(dqkv, dbias, c.scratch, c.r, c.qkv, c.att, NULL, c.bias, B, T, 8, NH, 0, k);
    image_rel_bias_backward(&e, &g, dbias);
    fd_tensor("rel_pos_table", rel_loss, &c, p.rel_table, g.rel_table, (size_t)R * NH, 200, 0);
    g.rel_table[7] *= -1.0f;
    CHECK(!fd_tensor("control", rel_loss, &c, p.rel_table, g.rel_table, (size_t)R * NH, 200, 1));
    image_embed_free(&e);
    free(pm), free(gm), free(c.bias), free(c.att), free(c.out), free(c.scratch), free(c.qkv);
    free(c.r), free(dqkv), free(dbias);
}

/* ---- speech ---- */
typedef struct {
    SpeechFeatures *f;
    SpeechContext *s;
    SpeechEmbedParams *p;
    const float *wav, *r;
    const uint8_t *mask;
    int B, S, train;
    DropKey k;
} SpeechCtx;

static double speech_loss(void *v) {
    SpeechCtx *c = v;
    speech_features_forward(c->f, c->p, c->wav, c->B, c->S);
    speech_context_forward(c->s, c->p, c->f->features, c->mask, c->B, c->f->T, c->train, c->k);
    return dot(c->s->out, c->r, (size_t)c->B * c->f->T * c->f->cfg.C);
}

static void test_speech(void) {
    printf("-- speech feature extractor + positional conv\n");
    SpeechEmbedConfig cfg = {.n_conv = 3,
                             .conv_dim = {6, 6, 8},
                             .conv_k = {10, 3, 2},
                             .conv_s = {5, 2, 2},
                             .C = 8,
                             .pos_layers = 2,
                             .pos_k = 5,
                             .pos_groups = 2,
                             .ln_eps = 1e-5f};
    SpeechEmbedParams p, g;
    size_t np = speech_embed_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    speech_embed_params_layout(&p, pm, &cfg), speech_embed_params_layout(&g, gm, &cfg);
    speech_embed_params_init(&p, &cfg, 3);
    perturb(pm, np, 0.2f, 4);
    enum { B = 2, S = 130 };
    int T = speech_num_frames(&cfg, S);
    CHECK(T == 6); /* (130-10)/5+1 = 25, (25-3)/2+1 = 12, (12-2)/2+1 = 6 */
    float wav[B * S];
    perturb(memset(wav, 0, sizeof wav), B * S, 1.0f, 8);
    SpeechFeatures f;
    SpeechContext s;
    speech_features_init(&f, &cfg, B, S);
    speech_context_init(&s, &cfg, B, f.Tmax, 1);
    uint8_t mask[2 * 6] = {0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1}; /* (B, T) */
    float *r = xalloc((size_t)B * f.Tmax * cfg.C * 4, "r");
    perturb(r, (size_t)B * f.Tmax * cfg.C, 1.0f, 9);
    DropKey k = {9, 1, 2, NULL};
    SpeechCtx c = {&f, &s, &p, wav, r, mask, B, S, 0, k};
    speech_loss(&c);
    float *dfeat = xalloc((size_t)B * f.Tmax * cfg.C * 4, "dfeat");
    speech_context_backward(&s, &g, &p, r, dfeat, 0, k);
    speech_features_backward(&f, &g, &p, dfeat);
    char name[32];
    for (int i = 0; i < cfg.n_conv; i++) {
        size_t n = (size_t)cfg.conv_dim[i] * (i ? cfg.conv_dim[i - 1] : 1) * cfg.conv_k[i];
        snprintf(name, sizeof name, "conv_w[%d]", i);
        fd_tensor(name, speech_loss, &c, p.conv_w[i], g.conv_w[i], n, 150, 0);
        snprintf(name, sizeof name, "conv_ln_w[%d]", i);
        fd_tensor(name, speech_loss, &c, p.conv_ln_w[i], g.conv_ln_w[i], cfg.conv_dim[i], 50, 0);
        snprintf(name, sizeof name, "conv_ln_b[%d]", i);
        fd_tensor(name, speech_loss, &c, p.conv_ln_b[i], g.conv_ln_b[i], cfg.conv_dim[i], 50, 0);
    }
    fd_tensor("feat_ln_w", speech_loss, &c, p.feat_ln_w, g.feat_ln_w, 8, 50, 0);
    fd_tensor("feat_ln_b", speech_loss, &c, p.feat_ln_b, g.feat_ln_b, 8, 50, 0);
    fd_tensor("proj_w", speech_loss, &c, p.proj_w, g.proj_w, 64, 64, 0);
    fd_tensor("proj_b", speech_loss, &c, p.proj_b, g.proj_b, 8, 8, 0);
    fd_tensor("mask_emb", speech_loss, &c, p.mask_emb, g.mask_emb, 8, 8, 0);
    for (int j = 0; j < cfg.pos_layers; j++) {
        snprintf(name, sizeof name, "pos_w[%d]", j);
        fd_tensor(name, speech_loss, &c, p.pos_w[j], g.pos_w[j], 8 * 4 * 5, 160, 0);
        snprintf(name, sizeof name, "pos_b[%d]", j);
        fd_tensor(name, speech_loss, &c, p.pos_b[j], g.pos_b[j], 8, 8, 0);
    }
    fd_tensor("enc_ln_w", speech_loss, &c, p.enc_ln_w, g.enc_ln_w, 8, 8, 0);
    fd_tensor("enc_ln_b", speech_loss, &c, p.enc_ln_b, g.enc_ln_b, 8, 8, 0);
    g.conv_w[0][3] *= -1.0f;
    CHECK(!fd_tensor("control", speech_loss, &c, p.conv_w[0], g.conv_w[0], 60, 60, 1));

    /* The encoder-input dropout (student only): the backward replays the forward's mask. */
    printf("-- speech encoder-input dropout 0.3\n");
    speech_context_free(&s);
    SpeechEmbedConfig dcfg = cfg;
    dcfg.dropout = 0.3f;
    speech_context_init(&s, &dcfg, B, f.Tmax, 1);
    c.train = 1;
    speech_loss(&c);
    size_t NC = (size_t)B * f.T * cfg.C;
    float *kept = xalloc(NC * 4, "dropout output");
    memcpy(kept, s.out, NC * 4);
    c.train = 0;
    speech_loss(&c); /* the same context without dropout: some elements zeroed, the rest x 1/0.7 */
    int zeros = 0, scaled = 1;
    for (size_t i = 0; i < NC; i++) {
        if (kept[i] == 0.0f && s.out[i] != 0.0f)
            zeros++;
        else
            scaled &= fabsf(kept[i] - s.out[i] / 0.7f) <= 1e-5f * (1 + fabsf(kept[i]));
    }
    CHECK(zeros > (int)NC / 10 && zeros < (int)NC / 2 && scaled);
    c.train = 1;
    memset(gm, 0, np * 4);
    memset(dfeat, 0, (size_t)B * f.Tmax * cfg.C * 4);
    speech_loss(&c);
    speech_context_backward(&s, &g, &p, r, dfeat, 1, k);
    speech_features_backward(&f, &g, &p, dfeat);
    fd_tensor("enc_ln_w", speech_loss, &c, p.enc_ln_w, g.enc_ln_w, 8, 8, 0);
    fd_tensor("enc_ln_b", speech_loss, &c, p.enc_ln_b, g.enc_ln_b, 8, 8, 0);
    fd_tensor("mask_emb", speech_loss, &c, p.mask_emb, g.mask_emb, 8, 8, 0);
    fd_tensor("proj_w", speech_loss, &c, p.proj_w, g.proj_w, 64, 64, 0);
    speech_context_free(&s), speech_features_free(&f);
    free(pm), free(gm), free(r), free(dfeat), free(kept);
}

int main(void) {
    gemm_init(0);
    test_text();
    test_image(IMAGE_POS_LEARNED, 3);
    test_image(IMAGE_POS_SINCOS, 1);
    test_image_relative();
    test_speech();
    return check_summary();
}
