/* frontend_image.c: the image front-end: BEiT block masks over the patch grid (docs/algorithm.md
 * §3.3), the ViT patch embedding with the mask token, and BEiT's shared relative position bias. */
#include <stdlib.h>
#include <string.h>

#include "d2v/masking.h"
#include "d2v/model.h"
#include "d2v/util.h"

/* data2vec 2.0's context of one network: [cls; x] -> layer norm (docs/algorithm.md §7.2) */
typedef struct {
    float *in, *out, *mean, *rstd; // (R, 1 + Tk, C), (R, 1 + Tk) x 2
    int R, Tk;
} V2Context;

typedef struct {
    ImageEmbedConfig cfg;
    BlockMaskConfig mask_cfg;
    ImageEmbed s, t;
    uint8_t *mask;                  // (B, Np) patches the student sees as the mask token
    float *bias_s, *bias_t, *dbias; // (NH, T, T) relative position bias, or NULL
    int T, NH;
    V2Context cs, ct; // v2: the student's (clones x kept) and the teacher's (whole images)
    float ln_eps;
} ImageFront;

static void declare(ParamTable *t, ModelParams *p, const ModelConfig *c) {
    int ema = c->ema_frontend ? EMA_AVERAGE : EMA_SHARED;
    image_embed_declare(t, &p->image, &c->image, ema);
    if (!c->v2) return;
    int64_t C = c->image.C; /* fairseq: extra_tokens nn.init.normal_ (std 1); LayerNorm 1, 0 */
    ptab_add(t, &p->image.v2_cls, "image.v2_cls", SHAPE1(C), PINIT(INIT_NORMAL, 1.0f, 0), DECAY_1D,
             ema);
    ptab_add(t, &p->image.v2_ln_w, "image.v2_ln_w", SHAPE1(C), PINIT_ONE, DECAY_1D, ema);
    ptab_add(t, &p->image.v2_ln_b, "image.v2_ln_b", SHAPE1(C), PINIT_ZERO, DECAY_1D, ema);
}

static void context_alloc(V2Context *x, size_t rows, size_t C) {
    x->in = xalloc(4 * rows * C, "v2 context input"), x->out = xalloc(4 * rows * C, "v2 context");
    x->mean = xalloc(4 * rows, "v2 context mean"), x->rstd = xalloc(4 * rows, "v2 context rstd");
}

static void context_free(V2Context *x) { free(x->in), free(x->out), free(x->mean), free(x->rstd); }

static void *create(const ModelConfig *c, int Bmax, int len, int *Tmax) {
    (void)len;
    ImageFront *f = xalloc(sizeof *f, "image front-end");
    f->cfg = c->image, f->mask_cfg = c->image_mask, f->NH = c->enc.NH;
    f->T = *Tmax = image_embed_tokens(&c->image);
    image_embed_init(&f->s, &c->image, Bmax);
    image_embed_init(&f->t, &c->image, Bmax);
    f->mask = xalloc((size_t)Bmax * image_embed_num_patches(&c->image), "patch mask");
    if (c->image.pos == IMAGE_POS_RELATIVE) {
        size_t nb = (size_t)f->NH * f->T * f->T * sizeof(float);
        f->bias_s = xalloc(nb, "relative bias"), f->bias_t = xalloc(nb, "relative bias");
        f->dbias = xalloc(nb, "relative bias gradient");
    }
    if (c->v2) {
        V2MaskConfig mc = c->v2c.mask;
        size_t kept = (size_t)(f->T - v2_mask_count(&mc)), C = c->image.C;
        context_alloc(&f->cs, (size_t)Bmax * c->v2c.clones * (1 + kept), C);
        context_alloc(&f->ct, (size_t)Bmax * (1 + f->T), C);
        f->ln_eps = c->enc.ln_eps;
    }
    return f;
}

static void destroy(void *fe) {
    ImageFront *f = fe;
    image_embed_free(&f->s), image_embed_free(&f->t);
    if (f->cs.in) context_free(&f->cs), context_free(&f->ct);
    free(f->mask), free(f->bias_s), free(f->bias_t), free(f->dbias), free(f);
}

static int begin(void *fe, const ModelParams *s, const Batch *b) {
    (void)s, (void)b;
    return ((ImageFront *)fe)->T;
}

static void mask(void *fe, const Batch *b, uint64_t seed, uint8_t *sel) {
    ImageFront *f = fe;
    int gh = f->cfg.H / f->cfg.P, gw = f->cfg.W / f->cfg.P, Np = gh * gw, off = !!f->cfg.cls;
    for (int i = 0; i < b->B; i++) {
        RngStream r = rng_stream(seed, (uint64_t)b->epoch, (uint64_t)b->ids[i], RNG_MASK_IMAGE);
        uint8_t *mk = f->mask + (size_t)i * Np;
        block_mask_sample(mk, gh, gw, &f->mask_cfg, &r);
        memcpy(sel + (size_t)i * f->T + off, mk, Np); /* the cls token is never a target */
    }
}

static FrontOut forward(void *fe, const ModelParams *p, const Batch *b, int student, DropKey dk) {
    (void)dk;
    ImageFront *f = fe;
    ImageEmbed *e = student ? &f->s : &f->t;
    image_embed_forward(e, &p->image, b->images, student ? f->mask : NULL, b->B);
    float *bias = student ? f->bias_s : f->bias_t; /* one per network: its own table */
    if (bias) image_rel_bias_forward(e, bias, &p->image);
    return (FrontOut){e->out, NULL, bias, student ? f->dbias : NULL, NULL, NULL};
}

static void backward(void *fe, ModelParams *g, const ModelParams *s, const float *dx, DropKey dk) {
    (void)s, (void)dk;
    ImageFront *f = fe;
    image_embed_backward(&f->s, &g->image, dx);
    if (f->dbias) image_rel_bias_backward(&f->s, &g->image, f->dbias);
}

static int pool_first(const ModelConfig *c) { return c->v2 ? 1 : !!c->image.cls; }

/* v2: patch embedding + fixed sin-cos, no mask token, no cls (the context adds it) */
static FrontOut v2_local(void *fe, const ModelParams *p, const Batch *b, int student, DropKey dk) {
    (void)dk;
    ImageFront *f = fe;
    ImageEmbed *e = student ? &f->s : &f->t;
    image_embed_forward(e, &p->image, b->images, NULL, b->B);
    return (FrontOut){e->out, NULL, NULL, NULL, NULL, NULL};
}

static const float *v2_context(void *fe, const ModelParams *p, const float *x, int R, int Tk,
                               int student) {
    ImageFront *f = fe;
    V2Context *k = student ? &f->cs : &f->ct;
    size_t C = f->cfg.C, n = (size_t)Tk + 1;
    k->R = R, k->Tk = Tk;
#pragma omp parallel for
    for (int r = 0; r < R; r++) {
        memcpy(k->in + (size_t)r * n * C, p->image.v2_cls, sizeof(float) * C);
        memcpy(k->in + ((size_t)r * n + 1) * C, x + (size_t)r * Tk * C, sizeof(float) * Tk * C);
    }
    layernorm_forward(k->out, k->mean, k->rstd, k->in, p->image.v2_ln_w, p->image.v2_ln_b,
                      (int)(R * n), (int)C, f->ln_eps);
    return k->out;
}

static void v2_context_backward(void *fe, ModelParams *g, const ModelParams *p, const float *dout,
                                float *dx) {
    ImageFront *f = fe;
    V2Context *k = &f->cs;
    size_t C = f->cfg.C, n = (size_t)k->Tk + 1, rows = (size_t)k->R * n;
    float *din = k->out; /* the forward's output is not needed any more: reuse it */
    memset(din, 0, sizeof(float) * rows * C);
    layernorm_backward(din, g->image.v2_ln_w, g->image.v2_ln_b, dout, k->in, p->image.v2_ln_w,
                       k->mean, k->rstd, (int)rows, (int)C);
    for (int r = 0; r < k->R; r++) { /* the cls token's gradient sums over every row */
        const float *dc = din + (size_t)r * n * C;
        for (size_t c = 0; c < C; c++)
            g->image.v2_cls[c] += dc[c];
        memcpy(dx + (size_t)r * k->Tk * C, dc + C, sizeof(float) * k->Tk * C);
    }
}

static int trace(const void *fe, const Batch *b, TraceArray *out) {
    const ImageFront *f = fe;
    out[0] = (TraceArray){"batch_images", TRACE_F32, 4, {b->B, b->H, b->W, b->C}, b->images};
    out[1] =
        (TraceArray){"patch_mask", TRACE_U8, 2, {b->B, image_embed_num_patches(&f->cfg)}, f->mask};
    return 2;
}

const FrontendOps frontend_image = {"image",
                                    declare,
                                    create,
                                    destroy,
                                    begin,
                                    mask,
                                    forward,
                                    backward,
                                    pool_first,
                                    trace,
                                    v2_local,
                                    v2_context,
                                    v2_context_backward,
                                    1,
                                    NULL,
                                    NULL};
