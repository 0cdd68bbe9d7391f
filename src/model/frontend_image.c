/* frontend_image.c: the image front-end: BEiT block masks over the patch grid (docs/algorithm.md
 * §3.3), the ViT patch embedding with the mask token, and BEiT's shared relative position bias. */
#include <stdlib.h>
#include <string.h>

#include "d2v/masking.h"
#include "d2v/model.h"
#include "d2v/util.h"

typedef struct {
    ImageEmbedConfig cfg;
    BlockMaskConfig mask_cfg;
    ImageEmbed s, t;
    uint8_t *mask;                  // (B, Np) patches the student sees as the mask token
    float *bias_s, *bias_t, *dbias; // (NH, T, T) relative position bias, or NULL
    int T, NH;
} ImageFront;

static void declare(ParamTable *t, ModelParams *p, const ModelConfig *c) {
    image_embed_declare(t, &p->image, &c->image, c->ema_frontend ? EMA_AVERAGE : EMA_SHARED);
}

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
    return f;
}

static void destroy(void *fe) {
    ImageFront *f = fe;
    image_embed_free(&f->s), image_embed_free(&f->t);
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
    return (FrontOut){e->out, NULL, bias, student ? f->dbias : NULL};
}

static void backward(void *fe, ModelParams *g, const ModelParams *s, const float *dx, DropKey dk) {
    (void)s, (void)dk;
    ImageFront *f = fe;
    image_embed_backward(&f->s, &g->image, dx);
    if (f->dbias) image_rel_bias_backward(&f->s, &g->image, f->dbias);
}

static int pool_first(const ModelConfig *c) { return !!c->image.cls; }

static int trace(const void *fe, const Batch *b, TraceArray *out) {
    const ImageFront *f = fe;
    out[0] = (TraceArray){"batch_images", TRACE_F32, 4, {b->B, b->H, b->W, b->C}, b->images};
    out[1] =
        (TraceArray){"patch_mask", TRACE_U8, 2, {b->B, image_embed_num_patches(&f->cfg)}, f->mask};
    return 2;
}

const FrontendOps frontend_image = {"image", declare, create,   destroy,    begin,
                                    mask,    forward, backward, pool_first, trace, NULL};
