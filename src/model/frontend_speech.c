/* frontend_speech.c: the speech front-end: the shared wav2vec 2.0 conv feature extractor, span
 * masks over its frames (docs/algorithm.md §3.1), and the context stage (mask embedding,
 * convolutional positions, encoder layer norm) per network; data2vec 2.0's local features,
 * zero-filled positional context and ALiBi slopes (§7.3). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/masking.h"
#include "d2v/model.h"
#include "d2v/util.h"

typedef struct {
    SpeechEmbedConfig cfg;
    SpanMaskConfig mask_cfg;
    SpeechFeatures feat; // stage 1, shared: the teacher reads the student's features
    SpeechContext s, t;  // stage 2 per network (the teacher's is forward-only)
    uint8_t *mask;       // (B, T) masked frames
    float *dfeat;        // (B, T, C) gradient of the features
    int *scratch;
    int T;
    /* data2vec 2.0 */
    int v2, heads;
    SpeechContextV2 v2s;      // the student's clones
    float *slopes;            // (heads) fairseq get_alibi slopes
    float *alibi_s, *alibi_t; // (heads) slope x clamp_min(scale, 0): student, teacher
    float *dalibi;            // (heads) the encoder's gradient of alibi_s
} SpeechFront;

static void declare(ParamTable *t, ModelParams *p, const ModelConfig *c) {
    speech_embed_declare(t, &p->speech, &c->speech, c->ema_frontend ? EMA_AVERAGE : EMA_SHARED);
}

static void *create(const ModelConfig *c, int Bmax, int len, int *Tmax) {
    SpeechFront *f = xalloc(sizeof *f, "speech front-end");
    f->cfg = c->speech, f->mask_cfg = c->speech_mask;
    speech_features_init(&f->feat, &c->speech, Bmax, len);
    *Tmax = f->feat.Tmax;
    speech_context_init(&f->s, &c->speech, Bmax, *Tmax, 1);
    speech_context_init(&f->t, &c->speech, Bmax, *Tmax, 0);
    size_t N = (size_t)Bmax * *Tmax;
    f->mask = xalloc(N, "frame mask");
    f->dfeat = xalloc(N * c->speech.C * sizeof(float), "d speech features");
    f->scratch = xalloc(sizeof(int) * 2 * ((size_t)*Tmax + 16), "mask scratch");
    if (c->v2) {
        f->v2 = 1, f->heads = c->speech.alibi_heads;
        V2MaskConfig mc = c->v2c.mask;
        mc.T = *Tmax;
        speech_v2_context_init(&f->v2s, &c->speech, Bmax * c->v2c.clones, *Tmax,
                               *Tmax - v2_mask_count(&mc));
        if (f->heads > 0) {
            f->slopes = xalloc(sizeof(float) * 4 * f->heads, "ALiBi slopes");
            f->alibi_s = f->slopes + f->heads, f->alibi_t = f->alibi_s + f->heads;
            f->dalibi = f->alibi_t + f->heads;
            alibi_slopes(f->slopes, f->heads);
        }
    }
    return f;
}

static void destroy(void *fe) {
    SpeechFront *f = fe;
    speech_features_free(&f->feat);
    speech_context_free(&f->s), speech_context_free(&f->t);
    if (f->v2) speech_v2_context_free(&f->v2s);
    free(f->mask), free(f->dfeat), free(f->scratch), free(f->slopes), free(f);
}

static int begin(void *fe, const ModelParams *s, const Batch *b) {
    SpeechFront *f = fe;
    speech_features_forward(&f->feat, &s->speech, b->audio, b->B, b->S);
    return f->T = f->feat.T;
}

static void mask(void *fe, const Batch *b, uint64_t seed, uint8_t *sel) {
    SpeechFront *f = fe;
    span_mask_batch(f->mask, b->B, f->T, &f->mask_cfg, seed, (uint64_t)b->epoch, b->ids,
                    f->scratch);
    memcpy(sel, f->mask, (size_t)b->B * f->T);
}

static FrontOut forward(void *fe, const ModelParams *p, const Batch *b, int student, DropKey dk) {
    SpeechFront *f = fe;
    SpeechContext *x = student ? &f->s : &f->t;
    dk.site = RNG_SITE_SPEECH_INPUT; /* wav2vec2: dropout after the encoder LN, student only */
    speech_context_forward(x, &p->speech, f->feat.features, student ? f->mask : NULL, b->B, f->T,
                           student, dk);
    return (FrontOut){x->out, NULL, NULL, NULL, NULL, NULL};
}

static void backward(void *fe, ModelParams *g, const ModelParams *s, const float *dx, DropKey dk) {
    SpeechFront *f = fe;
    if (f->v2) { /* v2: dx is the local features' gradient (the context's is v2_context_full's) */
        speech_features_backward(&f->feat, &g->speech, &s->speech, dx);
        return;
    }
    memset(f->dfeat, 0, sizeof(float) * (size_t)f->s.B * f->T * f->cfg.C);
    dk.site = RNG_SITE_SPEECH_INPUT;
    speech_context_backward(&f->s, &g->speech, &s->speech, dx, f->dfeat, 1, dk);
    speech_features_backward(&f->feat, &g->speech, &s->speech, f->dfeat);
}

static int trace(const void *fe, const Batch *b, TraceArray *out) {
    const SpeechFront *f = fe;
    out[0] = (TraceArray){"batch_audio", TRACE_F32, 2, {b->B, b->S}, b->audio};
    if (f->v2) return 1; /* v2's masks are the model's v2_masks */
    out[1] = (TraceArray){"frame_mask", TRACE_U8, 2, {b->B, f->T}, f->mask};
    return 2;
}

/* v2 local features: the conv extractor, its LN and projection (fairseq local_features: the
 * local encoder and project_features), no dropout; computed by begin for the student and shared
 * by the teacher (ema_local_encoder false) */
static FrontOut v2_local(void *fe, const ModelParams *p, const Batch *b, int student, DropKey dk) {
    SpeechFront *f = fe;
    (void)p, (void)b, (void)dk;
    if (!student) die("speech v2: the teacher shares the student's local features");
    return (FrontOut){f->feat.features, NULL, NULL, NULL, NULL, NULL};
}

/* slope_h x clamp_min(alibi_scale_h, 0) (fairseq contextualized_features folds a per-head scale
 * into the bias once, for every block) */
static const float *alibi_of(SpeechFront *f, const ModelParams *p, float *out) {
    if (f->heads <= 0) return NULL;
    for (int h = 0; h < f->heads; h++)
        out[h] = f->slopes[h] * fmaxf(p->speech.alibi_scale[h], 0.0f);
    return out;
}

static FrontOut v2_context_full(void *fe, const ModelParams *p, const float *x, const int32_t *keep,
                                int B, int M, int T, int Tk, int student, DropKey dk) {
    SpeechFront *f = fe;
    FrontOut o = {0};
    dk.site = RNG_SITE_SPEECH_INPUT; /* the context encoder's dropout, after its layer norm */
    if (student) {
        o.x = speech_v2_context_forward(&f->v2s, &p->speech, x, keep, B, M, T, Tk, 1, dk);
        o.alibi = alibi_of(f, p, f->alibi_s);
        if (o.alibi) memset(f->dalibi, 0, sizeof(float) * f->heads), o.dalibi = f->dalibi;
        return o;
    }
    /* teacher and features: the unmasked sequence, x + pos(x), layer norm (eval: no dropout) */
    speech_context_forward(&f->t, &p->speech, x, NULL, B, T, 0, dk);
    o.x = f->t.out;
    o.alibi = alibi_of(f, p, f->alibi_t);
    return o;
}

static void v2_context_full_backward(void *fe, ModelParams *g, const ModelParams *p,
                                     const float *dout, float *dx) {
    SpeechFront *f = fe;
    speech_v2_context_backward(&f->v2s, &g->speech, &p->speech, dout, dx);
    for (int h = 0; h < f->heads; h++) /* clamp_min passes the gradient where scale >= 0 */
        if (p->speech.alibi_scale[h] >= 0) g->speech.alibi_scale[h] += f->slopes[h] * f->dalibi[h];
}

const FrontendOps frontend_speech = {
    "speech", declare, create,   destroy, begin, mask, forward,         backward,
    NULL,     trace,   v2_local, NULL,    NULL,  0,    v2_context_full, v2_context_full_backward};
