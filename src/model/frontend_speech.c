/* frontend_speech.c: the speech front-end: the shared wav2vec 2.0 conv feature extractor, span
 * masks over its frames (docs/algorithm.md §3.1), and the context stage (mask embedding,
 * convolutional positions, encoder layer norm) per network. */
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
    return f;
}

static void destroy(void *fe) {
    SpeechFront *f = fe;
    speech_features_free(&f->feat);
    speech_context_free(&f->s), speech_context_free(&f->t);
    free(f->mask), free(f->dfeat), free(f->scratch), free(f);
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
    return (FrontOut){x->out, NULL, NULL, NULL};
}

static void backward(void *fe, ModelParams *g, const ModelParams *s, const float *dx, DropKey dk) {
    SpeechFront *f = fe;
    memset(f->dfeat, 0, sizeof(float) * (size_t)f->s.B * f->T * f->cfg.C);
    dk.site = RNG_SITE_SPEECH_INPUT;
    speech_context_backward(&f->s, &g->speech, &s->speech, dx, f->dfeat, 1, dk);
    speech_features_backward(&f->feat, &g->speech, &s->speech, f->dfeat);
}

static int trace(const void *fe, const Batch *b, TraceArray *out) {
    const SpeechFront *f = fe;
    out[0] = (TraceArray){"batch_audio", TRACE_F32, 2, {b->B, b->S}, b->audio};
    out[1] = (TraceArray){"frame_mask", TRACE_U8, 2, {b->B, f->T}, f->mask};
    return 2;
}

const FrontendOps frontend_speech = {"speech", declare, create, destroy, begin, mask, forward,
                                     backward, NULL,    trace,  NULL,    NULL,  NULL, 0};
