/* test_decoder.c: the grouped "same" conv2d kernel against a direct loop and finite differences,
 * and finite differences through the whole data2vec 2.0 decoder (1-D and 2-D, residual on and
 * off, groups, one- and two-layer projections, keyed input dropout), with negative controls; the
 * decoder's parameter-table rules and dropout keying. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/decoder.h"
#include "d2v/kernels.h"
#include "d2v/params.h"
#include "d2v/util.h"
#include "fd.h"

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

static float *fill(size_t n, float scale, uint64_t seed) {
    float *x = xalloc(n * sizeof(float) + 4, "test tensor");
    uint64_t k = rng_key(seed, 1, 2, 3);
    for (size_t i = 0; i < n; i++)
        x[i] = scale * rng_normal(k, i);
    return x;
}

/* ================================================================================================
 * conv2d kernel
 * ============================================================================================== */

typedef struct {
    float *out, *cols, *inp, *w, *bias, *r;
    int B, H, W, Cin, Cout, K, groups;
} ConvCtx;

static double conv_loss(void *v) {
    ConvCtx *c = v;
    conv2d_forward(c->out, c->cols, c->inp, c->w, c->bias, c->B, c->H, c->W, c->Cin, c->Cout, c->K,
                   c->groups);
    return dot(c->out, c->r, (size_t)c->B * c->H * c->W * c->Cout);
}

#define GUARD 32

static void test_conv2d_case(int B, int H, int W, int Cin, int Cout, int K, int groups,
                             int with_bias) {
    char tag[96], lab[160];
    snprintf(tag, sizeof tag, "conv2d B%d %dx%d Ci%d Co%d K%d g%d%s", B, H, W, Cin, Cout, K, groups,
             with_bias ? "" : " nobias");
    int Cg = Cin / groups, Og = Cout / groups, p = K / 2;
    size_t ni = (size_t)B * H * W * Cin, nw = (size_t)Cout * Cg * K * K,
           no = (size_t)B * H * W * Cout;
    size_t ncols = conv2d_cols_size(B, H, W, Cin, K, groups);
    float *inp = fill(ni, 1, 1), *w = fill(nw, 0.5f, 2), *r = fill(no, 1, 3);
    float *bias = with_bias ? fill(Cout, 1, 4) : NULL;
    float *out = fill(no, 1, 5), *want = fill(no, 0, 6), *cols = fill(ncols + GUARD, 0, 7);
    for (int i = 0; i < GUARD; i++)
        cols[ncols + i] = 4242.0f;
    conv2d_forward(out, cols, inp, w, bias, B, H, W, Cin, Cout, K, groups);
    for (int b = 0; b < B; b++) /* the definition: a direct loop in double */
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int o = 0; o < Cout; o++) {
                    int g = o / Og;
                    double s = bias ? bias[o] : 0.0;
                    for (int ci = 0; ci < Cg; ci++)
                        for (int ky = 0; ky < K; ky++)
                            for (int kx = 0; kx < K; kx++) {
                                int yi = y + ky - p, xi = x + kx - p;
                                if (yi < 0 || yi >= H || xi < 0 || xi >= W) continue;
                                s += (double)w[(((size_t)o * Cg + ci) * K + ky) * K + kx] *
                                     inp[(((size_t)b * H + yi) * W + xi) * Cin + g * Cg + ci];
                            }
                    want[(((size_t)b * H + y) * W + x) * Cout + o] = (float)s;
                }
    snprintf(lab, sizeof lab, "%s fwd = direct loop", tag);
    check_tensor(lab, out, want, no, 1e-5, 1e-4);

    float *dinp = fill(ni, 0, 8), *dw = fill(nw, 0, 9), *db = fill(Cout, 0, 10);
    conv2d_backward(dinp, dw, bias ? db : NULL, cols, r, inp, w, B, H, W, Cin, Cout, K, groups);
    float *dinp2 = fill(ni, 0, 8), *dw2 = fill(nw, 0, 9), *db2 = fill(Cout, 0, 10);
    memcpy(dinp2, dinp, ni * 4), memcpy(dw2, dw, nw * 4), memcpy(db2, db, Cout * 4);
    conv2d_backward(dinp2, dw2, bias ? db2 : NULL, cols, r, inp, w, B, H, W, Cin, Cout, K, groups);
    int acc = 1;
    for (size_t i = 0; i < ni; i++)
        acc &= fabsf(dinp2[i] - 2 * dinp[i]) <= 1e-5f * (1 + fabsf(dinp[i]));
    for (size_t i = 0; i < nw; i++)
        acc &= fabsf(dw2[i] - 2 * dw[i]) <= 1e-5f * (1 + fabsf(dw[i]));
    snprintf(lab, sizeof lab, "%s backward accumulates (2 calls = 2x)", tag);
    check_record(acc, lab);
    /* only the weight gradient (a first layer): the same dw */
    float *dw_only = fill(nw, 0, 11);
    conv2d_backward(NULL, dw_only, NULL, cols, r, inp, w, B, H, W, Cin, Cout, K, groups);
    snprintf(lab, sizeof lab, "%s dw with dinp = dbias = NULL", tag);
    check_tensor(lab, dw_only, dw, nw, 1e-6, 1e-5);
    int guard = 1;
    for (int i = 0; i < GUARD; i++)
        guard &= cols[ncols + i] == 4242.0f;
    snprintf(lab, sizeof lab, "%s scratch stays within conv2d_cols_size() = %zu", tag, ncols);
    check_record(guard, lab);

    ConvCtx c = {out, cols, inp, w, bias, r, B, H, W, Cin, Cout, K, groups};
    snprintf(lab, sizeof lab, "%s dinp", tag);
    fd_tensor(lab, conv_loss, &c, inp, dinp, ni, 80, 0);
    snprintf(lab, sizeof lab, "%s dw", tag);
    fd_tensor(lab, conv_loss, &c, w, dw, nw, 80, 0);
    if (bias) {
        snprintf(lab, sizeof lab, "%s dbias", tag);
        fd_tensor(lab, conv_loss, &c, bias, db, Cout, 80, 0);
    }
    /* negative control: one wrong weight-gradient element must be rejected */
    dw[1] = -dw[1] + 0.5f;
    snprintf(lab, sizeof lab, "%s negative control (a wrong dw) rejected", tag);
    check_record(!fd_tensor(lab, conv_loss, &c, w, dw, nw, 80, 1), lab);
    free(inp), free(w), free(r), free(bias), free(out), free(want), free(cols);
    free(dinp), free(dw), free(db), free(dinp2), free(dw2), free(db2), free(dw_only);
}

static void test_conv2d(void) {
    printf("-- conv2d kernel\n");
    //               B  H  W  Cin Cout K  g  bias
    test_conv2d_case(2, 4, 5, 6, 4, 3, 2, 1); // non-square grid, grouped
    test_conv2d_case(1, 3, 2, 4, 8, 5, 4, 0); // windows wider than the grid, no bias
    test_conv2d_case(2, 3, 3, 3, 6, 1, 3, 1); // 1 x 1
    test_conv2d_case(1, 5, 4, 8, 8, 3, 8, 1); // depthwise
    test_conv2d_case(2, 2, 3, 5, 3, 3, 1, 1); // ungrouped
}

/* ================================================================================================
 * The decoder
 * ============================================================================================== */

typedef struct {
    Decoder *d;
    DecoderParams *p;
    const float *x, *r;
    const uint8_t *masked;
    int B, T;
    DropKey dk;
} DecCtx;

static double dec_loss(void *v) {
    DecCtx *c = v;
    const float *y = decoder_forward_masked(c->d, c->p, c->x, c->masked, c->B, c->T, c->dk, 1);
    return dot(y, c->r, (size_t)c->B * c->T * c->d->cfg.C);
}

static size_t spec_count(const ParamTable *t, const char *name) {
    const ParamSpec *s = ptab_find(t, name);
    return s ? s->count : 0;
}

static void test_decoder_case(const char *tag, DecoderConfig cfg, int B, int T, int Tmax,
                              int use_masked) {
    printf("-- decoder %s: dims %d C %d D %d K %d groups %d layers %d residual %d proj_hidden %d "
           "dropout %g%s\n",
           tag, cfg.dims, cfg.C, cfg.D, cfg.K, cfg.groups, cfg.layers, cfg.residual,
           cfg.proj_hidden, (double)cfg.input_dropout, use_masked ? " (masked rows kept)" : "");
    DecoderParams p, g;
    size_t np = decoder_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    decoder_params_layout(&p, pm, &cfg), decoder_params_layout(&g, gm, &cfg);
    decoder_params_init(&p, &cfg, 5);
    { /* larger than the init so LN, GELU and the residuals all matter */
        float *e = fill(np, 0.3f, 6);
        for (size_t i = 0; i < np; i++)
            pm[i] += e[i];
        free(e);
    }
    size_t n = (size_t)B * T * cfg.C;
    float *x = fill(n, 1, 7), *r = fill(n, 1, 8), *dx = fill(n, 0, 9);
    uint8_t masked[256] = {0};
    for (int i = 0; i < B * T; i++)
        masked[i] = use_masked && i % 3 == 1;
    int64_t ids[4] = {300, 301, 302, 303};
    DropKey dk = {77, 5, RNG_SITE_DEC_INPUT, ids};
    Decoder d;
    decoder_create(&d, &cfg, B + 1, Tmax); /* an arena larger than the batch */
    DecCtx c = {&d, &p, x, r, use_masked ? masked : NULL, B, T, dk};
    dec_loss(&c);
    decoder_backward(&d, &g, &p, r, dx);

    char lab[64];
    for (int i = 0; i < cfg.layers; i++) {
        size_t nw = (size_t)cfg.D * ((i ? cfg.D : cfg.C) / cfg.groups) * cfg.K *
                    (cfg.dims == 2 ? cfg.K : 1);
        snprintf(lab, sizeof lab, "conv_w.%d", i);
        fd_tensor(lab, dec_loss, &c, p.conv_w[i], g.conv_w[i], nw, 40, 0);
        snprintf(lab, sizeof lab, "conv_b.%d", i);
        fd_tensor(lab, dec_loss, &c, p.conv_b[i], g.conv_b[i], cfg.D, 40, 0);
    }
    int P = cfg.proj_hidden, O = P ? P : cfg.C;
    fd_tensor("proj_w", dec_loss, &c, p.proj_w, g.proj_w, (size_t)O * cfg.D, 40, 0);
    fd_tensor("proj_b", dec_loss, &c, p.proj_b, g.proj_b, O, 40, 0);
    if (P) {
        fd_tensor("proj2_w", dec_loss, &c, p.proj2_w, g.proj2_w, (size_t)cfg.C * P, 40, 0);
        fd_tensor("proj2_b", dec_loss, &c, p.proj2_b, g.proj2_b, cfg.C, 40, 0);
    }
    fd_tensor("input (dx)", dec_loss, &c, (float *)x, dx, n, 60, 0);

    /* dx = NULL: the same parameter gradients, nothing else written */
    float *gm2 = xalloc(np * 4, "g2");
    DecoderParams g2;
    decoder_params_layout(&g2, gm2, &cfg);
    dec_loss(&c);
    decoder_backward(&d, &g2, &p, r, NULL);
    check_tensor("param grads with dx = NULL", gm2, gm, np, 1e-6, 1e-5);
    free(gm2);

    /* negative controls: a wrong block-0 weight gradient and a wrong input gradient */
    size_t nw0 = (size_t)cfg.D * (cfg.C / cfg.groups) * cfg.K * (cfg.dims == 2 ? cfg.K : 1);
    for (size_t i = 0; i < nw0; i++)
        g.conv_w[0][i] *= 1.1f;
    check_record(!fd_tensor("control", dec_loss, &c, p.conv_w[0], g.conv_w[0], nw0, 40, 1),
                 "negative control: conv_w.0 gradient x 1.1 rejected");
    for (size_t i = 0; i < n; i += 5)
        dx[i] *= 1.5f;
    check_record(!fd_tensor("control dx", dec_loss, &c, (float *)x, dx, n, 60, 1),
                 "negative control: every fifth dx x 1.5 rejected");
    decoder_destroy(&d);
    free(pm), free(gm), free(x), free(r), free(dx);
}

/* Input dropout is a function of the key: equal keys, equal outputs; another update or sample
 * id, another mask; train = 0 or p = 0, none; masked rows pass through unscaled. */
static void test_dropout_keying(void) {
    printf("-- decoder input dropout keying\n");
    DecoderConfig cfg = {.dims = 1,
                         .C = 8,
                         .D = 8,
                         .K = 3,
                         .groups = 2,
                         .layers = 1,
                         .residual = 1,
                         .input_dropout = 0.3f};
    DecoderParams p;
    size_t np = decoder_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p");
    decoder_params_layout(&p, pm, &cfg);
    decoder_params_init(&p, &cfg, 1);
    enum { B = 2, T = 6 };
    size_t n = (size_t)B * T * 8;
    float *x = fill(n, 1, 3), *y1 = fill(n, 0, 4), *y0 = fill(n, 0, 5);
    int64_t ids[B] = {10, 11}, ids2[B] = {10, 12};
    DropKey k = {1, 2, RNG_SITE_DEC_INPUT, ids};
    Decoder d;
    decoder_create(&d, &cfg, B, T);
    memcpy(y1, decoder_forward(&d, &p, x, B, T, k, 1), n * 4);
    CHECK(memcmp(y1, decoder_forward(&d, &p, x, B, T, k, 1), n * 4) == 0);
    int zeros = 0; /* about 30% of the dropped input is zero, the rest scaled by 1/0.7 */
    int scaled = 1;
    for (size_t i = 0; i < n; i++) {
        if (d.x0[i] == 0.0f)
            zeros++;
        else
            scaled &= fabsf(d.x0[i] - x[i] / 0.7f) <= 1e-6f * (1 + fabsf(x[i]));
    }
    printf("     %d of %zu inputs dropped\n", zeros, n);
    CHECK(zeros > 0.15 * n && zeros < 0.45 * n && scaled);
    DropKey k2 = k;
    k2.step = 3;
    CHECK(memcmp(y1, decoder_forward(&d, &p, x, B, T, k2, 1), n * 4) != 0);
    k2 = k, k2.sample_ids = ids2; /* sample 0 keeps its mask, sample 1 gets another */
    const float *y2 = decoder_forward(&d, &p, x, B, T, k2, 1);
    CHECK(memcmp(y1, y2, n / 2 * 4) == 0 && memcmp(y1 + n / 2, y2 + n / 2, n / 2 * 4) != 0);
    memcpy(y0, decoder_forward(&d, &p, x, B, T, k, 0), n * 4); /* eval: no dropout */
    DecoderConfig nodrop = cfg;
    nodrop.input_dropout = 0;
    Decoder d0;
    decoder_create(&d0, &nodrop, B, T);
    CHECK(memcmp(y0, decoder_forward(&d0, &p, x, B, T, k, 1), n * 4) == 0);
    decoder_destroy(&d0);
    uint8_t masked[B * T] = {1, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1};
    decoder_forward_masked(&d, &p, x, masked, B, T, k, 1);
    int pass_through = 1, others_dropped = 0;
    for (int row = 0; row < B * T; row++)
        for (int j = 0; j < 8; j++) {
            float v = d.x0[row * 8 + j], in = x[row * 8 + j];
            if (masked[row])
                pass_through &= v == in;
            else
                others_dropped += v == 0.0f;
        }
    CHECK(pass_through && others_dropped > 0);
    decoder_destroy(&d);
    free(pm), free(x), free(y1), free(y0);
}

/* The parameter table: names, shapes, fairseq's init, decay groups, never averaged. */
static void test_declare(void) {
    printf("-- decoder parameter table\n");
    DecoderConfig cfg = {.dims = 2,
                         .C = 32,
                         .D = 16,
                         .K = 3,
                         .groups = 4,
                         .layers = 2,
                         .residual = 1,
                         .H = 2,
                         .W = 2};
    DecoderParams p;
    ParamTable t;
    ptab_begin(&t, &p, sizeof p);
    decoder_declare(&t, &p, &cfg);
    CHECK(t.n == 6);
    const ParamSpec *w0 = ptab_find(&t, "dec.conv_w.0"), *w1 = ptab_find(&t, "dec.conv_w.1");
    CHECK(w0 && w0->rank == 4 && w0->shape[0] == 16 && w0->shape[1] == 8 && w0->shape[3] == 3);
    CHECK(w1 && w1->shape[1] == 4);
    CHECK(spec_count(&t, "dec.proj_w") == 32 * 16 && spec_count(&t, "dec.proj_b") == 32);
    CHECK(!ptab_find(&t, "dec.proj2_w"));
    int shared = 1, decay = 1;
    for (int i = 0; i < t.n; i++) {
        shared &= t.t[i].ema == EMA_SHARED;
        decay &= t.t[i].decay == (t.t[i].rank == 1 ? DECAY_1D : DECAY_YES);
        CHECK(strncmp(t.t[i].name, "dec.", 4) == 0);
    }
    CHECK(shared && decay);
    /* nn.Conv2d's default: U(+-1/sqrt(fan_in)), fan_in = Cin/groups * K * K */
    CHECK(w0->init.kind == INIT_UNIFORM && fabsf(w0->init.b - 1.0f / sqrtf(8 * 9)) < 1e-7f);
    CHECK(w1->init.kind == INIT_UNIFORM && fabsf(w1->init.b - 1.0f / sqrtf(4 * 9)) < 1e-7f);
    const ParamSpec *pw = ptab_find(&t, "dec.proj_w"), *pb = ptab_find(&t, "dec.proj_b");
    CHECK(pw->init.kind == INIT_UNIFORM && fabsf(pw->init.b - 0.25f) < 1e-7f); /* 1/sqrt(16) */
    CHECK(pb->init.kind == INIT_UNIFORM);
    ptab_free(&t);

    /* text: two-layer projection, init_bert_params */
    DecoderConfig tc = {.dims = 1,
                        .C = 24,
                        .D = 24,
                        .K = 9,
                        .groups = 1,
                        .layers = 5,
                        .proj_hidden = 48,
                        .proj_init = DECODER_INIT_BERT};
    ptab_begin(&t, &p, sizeof p);
    decoder_declare(&t, &p, &tc);
    CHECK(t.n == 14);
    CHECK(spec_count(&t, "dec.conv_w.4") == 24 * 24 * 9);
    pw = ptab_find(&t, "dec.proj_w"), pb = ptab_find(&t, "dec.proj_b");
    const ParamSpec *p2 = ptab_find(&t, "dec.proj2_w");
    CHECK(pw->shape[0] == 48 && pw->shape[1] == 24 && p2->shape[0] == 24 && p2->shape[1] == 48);
    CHECK(pw->init.kind == INIT_NORMAL && fabsf(pw->init.a - 0.02f) < 1e-9f);
    CHECK(pb->init.kind == INIT_ZERO);
    ptab_free(&t);

    /* the drawn values follow the rules */
    size_t np = decoder_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p");
    decoder_params_layout(&p, pm, &cfg);
    decoder_params_init(&p, &cfg, 9);
    float bound = 1.0f / sqrtf(72), mx = 0;
    for (size_t i = 0; i < (size_t)16 * 8 * 9; i++)
        mx = fmaxf(mx, fabsf(p.conv_w[0][i]));
    CHECK(mx <= bound && mx > 0.9f * bound);
    /* residual rule: not into block 0 when C != D */
    CHECK(!decoder_block_residual(&cfg, 0) && decoder_block_residual(&cfg, 1));
    free(pm);
}

int main(void) {
    gemm_init(0);
    test_conv2d();
    test_declare();
    test_dropout_keying();
    /* speech-like: C != D (block 0 without residual), grouped, dropout with noise rows kept */
    test_decoder_case("1d-residual",
                      (DecoderConfig){.dims = 1,
                                      .C = 8,
                                      .D = 12,
                                      .K = 3,
                                      .groups = 4,
                                      .layers = 3,
                                      .residual = 1,
                                      .input_dropout = 0.2f},
                      2, 7, 9, 1);
    /* text-like: no residual (block outputs recomputed in the backward), two-layer projection */
    test_decoder_case("1d-text",
                      (DecoderConfig){.dims = 1,
                                      .C = 8,
                                      .D = 8,
                                      .K = 5,
                                      .groups = 2,
                                      .layers = 2,
                                      .residual = 0,
                                      .proj_hidden = 10,
                                      .input_dropout = 0.1f,
                                      .proj_init = DECODER_INIT_BERT},
                      2, 6, 6, 0);
    /* image-like: residual from block 0 on (C == D), no dropout */
    test_decoder_case("2d-residual",
                      (DecoderConfig){.dims = 2,
                                      .C = 8,
                                      .D = 8,
                                      .K = 3,
                                      .groups = 2,
                                      .layers = 2,
                                      .residual = 1,
                                      .H = 3,
                                      .W = 4},
                      2, 12, 12, 0);
    /* 2-D, residual off, groups 3, C != D, projection with a hidden layer, dropout */
    test_decoder_case("2d-plain",
                      (DecoderConfig){.dims = 2,
                                      .C = 6,
                                      .D = 9,
                                      .K = 3,
                                      .groups = 3,
                                      .layers = 3,
                                      .residual = 0,
                                      .proj_hidden = 7,
                                      .input_dropout = 0.25f,
                                      .H = 4,
                                      .W = 3},
                      2, 12, 12, 1);
    /* 2-D, 5 x 5 windows over a 2 x 3 grid, ungrouped, residual everywhere */
    test_decoder_case("2d-k5",
                      (DecoderConfig){.dims = 2,
                                      .C = 4,
                                      .D = 4,
                                      .K = 5,
                                      .groups = 1,
                                      .layers = 2,
                                      .residual = 1,
                                      .proj_hidden = 5,
                                      .input_dropout = 0.1f,
                                      .H = 2,
                                      .W = 3},
                      1, 6, 6, 1);
    return check_summary();
}
