/* frontend_text.c: the text front-end: span/BERT masking of token ids (docs/algorithm.md §3.2)
 * and the token + position embedding, one instance for the student and one for the teacher. */
#include <stdlib.h>
#include <string.h>

#include "d2v/masking.h"
#include "d2v/model.h"
#include "d2v/util.h"

typedef struct {
    TextEmbedConfig cfg;
    TextMaskConfig mask;
    TextEmbed s, t;     // student (masked ids, dropout) and teacher (original ids)
    int32_t *tokens_in; // (B, T) the student's input ids
    int *scratch;       // masking scratch
    int T;
} TextFront;

static void declare(ParamTable *t, ModelParams *p, const ModelConfig *c) {
    text_embed_declare(t, &p->text, &c->text, c->ema_frontend ? EMA_AVERAGE : EMA_SHARED);
}

static void *create(const ModelConfig *c, int Bmax, int len, int *Tmax) {
    TextFront *f = xalloc(sizeof *f, "text front-end");
    f->cfg = c->text, f->mask = c->text_mask;
    text_embed_init(&f->s, &c->text, Bmax, len);
    text_embed_init(&f->t, &c->text, Bmax, len);
    f->tokens_in = xalloc(sizeof(int32_t) * (size_t)Bmax * len, "student tokens");
    f->scratch = xalloc(sizeof(int) * 2 * ((size_t)len + 16), "mask scratch");
    *Tmax = len;
    return f;
}

static void destroy(void *fe) {
    TextFront *f = fe;
    text_embed_free(&f->s), text_embed_free(&f->t);
    free(f->tokens_in), free(f->scratch), free(f);
}

static int begin(void *fe, const ModelParams *s, const Batch *b) {
    (void)s;
    return ((TextFront *)fe)->T = b->T;
}

/* Keys: (seed, epoch, global sample id): a sample's mask is the same on any rank count. */
static void mask(void *fe, const Batch *b, uint64_t seed, uint8_t *sel) {
    TextFront *f = fe;
    int T = f->T;
    for (int i = 0; i < b->B; i++) {
        const int32_t *row = b->tokens + (size_t)i * T;
        int len = T;
        while (len > 0 && row[len - 1] == f->cfg.pad_id)
            len--;
        RngStream r = rng_stream(seed, (uint64_t)b->epoch, (uint64_t)b->ids[i], RNG_MASK_TEXT);
        memcpy(f->tokens_in + (size_t)i * T, row, sizeof(int32_t) * T);
        text_mask_sample(f->tokens_in + (size_t)i * T, sel + (size_t)i * T, row, len, &f->mask, &r,
                         f->scratch);
    }
}

static FrontOut forward(void *fe, const ModelParams *p, const Batch *b, int student, DropKey dk) {
    TextFront *f = fe;
    TextEmbed *e = student ? &f->s : &f->t;
    dk.site = RNG_SITE_TEXT_EMBED;
    text_embed_forward(e, &p->text, student ? f->tokens_in : b->tokens, b->B, f->T, student, dk);
    return (FrontOut){e->out, e->pad, NULL,
                      NULL,   NULL,   NULL}; /* each network's padding from its own ids */
}

static void backward(void *fe, ModelParams *g, const ModelParams *s, const float *dx, DropKey dk) {
    TextFront *f = fe;
    dk.site = RNG_SITE_TEXT_EMBED;
    text_embed_backward(&f->s, &g->text, &s->text, dx, 1, dk);
}

/* v2: the unmasked ids through the student's embedding, dropout on (TextLocalEncoder) */
static FrontOut v2_local(void *fe, const ModelParams *p, const Batch *b, int student, DropKey dk) {
    /* training reads only the student's (the teacher gets them too: ema_encoder_only);
     * student 0 is the eval-mode embedding, for features */
    TextFront *f = fe;
    TextEmbed *e = student ? &f->s : &f->t;
    dk.site = RNG_SITE_TEXT_EMBED;
    /* the student's input is the unmasked text: the dumps' student_tokens say so */
    if (student) memcpy(f->tokens_in, b->tokens, sizeof(int32_t) * (size_t)b->B * f->T);
    text_embed_forward(e, &p->text, b->tokens, b->B, f->T, student, dk);
    return (FrontOut){e->out, e->pad, NULL, NULL, NULL, NULL};
}

static int trace(const void *fe, const Batch *b, TraceArray *out) {
    const TextFront *f = fe;
    out[0] = (TraceArray){"batch_tokens", TRACE_I32, 2, {b->B, f->T}, b->tokens};
    out[1] = (TraceArray){"student_tokens", TRACE_I32, 2, {b->B, f->T}, f->tokens_in};
    return 2;
}

const FrontendOps frontend_text = {"text",  declare,  create, destroy, begin,    mask,
                                   forward, backward, NULL,   trace,   v2_local, NULL,
                                   NULL,    0,        NULL,   NULL};
