/* speech_embed.c: the data2vec speech input encoder (docs/algorithm.md §2.1): wav2vec 2.0's conv
 * feature extractor in layer-norm mode (conv without bias -> LN over channels -> GELU per layer),
 * feature LN and projection, then the learned mask embedding, the deep convolutional positional
 * encoder (conv -> parameter-less LN -> GELU per layer, added residually), the encoder layer norm
 * and the encoder's input dropout. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/frontends.h"
#include "d2v/util.h"

static int conv_in_dim(const SpeechEmbedConfig *c, int i) { return i ? c->conv_dim[i - 1] : 1; }
static int feat_dim(const SpeechEmbedConfig *c) { return c->conv_dim[c->n_conv - 1]; }

static void check_config(const SpeechEmbedConfig *c) {
    if (c->n_conv <= 0 || c->n_conv > SPEECH_MAX_CONV)
        die("speech encoder: %d conv layers (1..%d supported)", c->n_conv, SPEECH_MAX_CONV);
    for (int i = 0; i < c->n_conv; i++)
        if (c->conv_dim[i] <= 0 || c->conv_k[i] <= 0 || c->conv_s[i] <= 0)
            die("speech encoder: conv layer %d has dim %d, kernel %d, stride %d", i, c->conv_dim[i],
                c->conv_k[i], c->conv_s[i]);
    if (c->pos_layers < 0 || c->pos_layers > SPEECH_MAX_CONV || c->C <= 0)
        die("speech encoder: bad pos_conv depth %d or width %d", c->pos_layers, c->C);
    if (c->pos_layers &&
        (c->pos_k <= 0 || c->pos_k % 2 == 0 || c->pos_groups <= 0 || c->C % c->pos_groups))
        die("speech encoder: pos_conv kernel %d must be odd and groups %d must divide width %d",
            c->pos_k, c->pos_groups, c->C);
}

void speech_embed_declare(ParamTable *t, SpeechEmbedParams *p, const SpeechEmbedConfig *c,
                          int ema) {
    int64_t C = c->C, D = feat_dim(c);
    char name[48];
    /* conv weights kaiming_normal_ (fan_in, ReLU gain), LNs (1, 0), projection and positional
     * convs nn.Linear / nn.Conv1d defaults, mask embedding uniform_() (wav2vec2) */
    for (int i = 0; i < c->n_conv; i++) {
        int64_t dim = c->conv_dim[i], fan_in = (int64_t)conv_in_dim(c, i) * c->conv_k[i];
        snprintf(name, sizeof name, "speech.conv_w.%d", i);
        ptab_add(t, &p->conv_w[i], name, SHAPE3(dim, conv_in_dim(c, i), c->conv_k[i]),
                 PINIT(INIT_NORMAL, sqrtf(2.0f / (float)fan_in), 0), DECAY_YES, ema);
        snprintf(name, sizeof name, "speech.conv_ln_w.%d", i);
        ptab_add(t, &p->conv_ln_w[i], name, SHAPE1(dim), PINIT_ONE, DECAY_1D, ema);
        snprintf(name, sizeof name, "speech.conv_ln_b.%d", i);
        ptab_add(t, &p->conv_ln_b[i], name, SHAPE1(dim), PINIT_ZERO, DECAY_1D, ema);
    }
    float a = 1.0f / sqrtf((float)D);
    ptab_add(t, &p->feat_ln_w, "speech.feat_ln_w", SHAPE1(D), PINIT_ONE, DECAY_1D, ema);
    ptab_add(t, &p->feat_ln_b, "speech.feat_ln_b", SHAPE1(D), PINIT_ZERO, DECAY_1D, ema);
    ptab_add(t, &p->proj_w, "speech.proj_w", SHAPE2(C, D), PINIT(INIT_UNIFORM, -a, a), DECAY_YES,
             ema);
    ptab_add(t, &p->proj_b, "speech.proj_b", SHAPE1(C), PINIT(INIT_UNIFORM, -a, a), DECAY_1D, ema);
    if (!c->v2) /* data2vec 2.0's student never sees masked frames: no mask embedding */
        ptab_add(t, &p->mask_emb, "speech.mask_emb", SHAPE1(C), PINIT(INIT_UNIFORM, 0, 1), DECAY_1D,
                 ema);
    /* v2: the teacher is the whole model but the local encoder and decoder (fairseq
     * make_target_model with ema_local_encoder false), so it averages the positional convs */
    int pos_ema = c->v2 ? EMA_AVERAGE : ema;
    for (int j = 0; j < c->pos_layers; j++) {
        int64_t fan_in = (C / c->pos_groups) * c->pos_k;
        float b = 1.0f / sqrtf((float)fan_in);
        snprintf(name, sizeof name, "speech.pos_w.%d", j);
        ptab_add(t, &p->pos_w[j], name, SHAPE3(C, C / c->pos_groups, c->pos_k),
                 PINIT(INIT_UNIFORM, -b, b), DECAY_YES, pos_ema);
        snprintf(name, sizeof name, "speech.pos_b.%d", j);
        ptab_add(t, &p->pos_b[j], name, SHAPE1(C), PINIT(INIT_UNIFORM, -b, b), DECAY_1D, pos_ema);
    }
    /* v1 audio: the teacher averages the encoder's input layer norm even when it shares the
     * rest of the front-end (docs/algorithm.md §4.1) */
    ptab_add(t, &p->enc_ln_w, "speech.enc_ln_w", SHAPE1(C), PINIT_ONE, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->enc_ln_b, "speech.enc_ln_b", SHAPE1(C), PINIT_ZERO, DECAY_1D, EMA_AVERAGE);
    /* v2 ALiBi: fairseq's alibi_scale (learned_alibi_scale_per_head), init alibi_scale = 1,
     * exempt from decay, averaged by the teacher */
    if (c->v2 && c->alibi_heads > 0)
        ptab_add(t, &p->alibi_scale, "speech.alibi_scale", SHAPE1(c->alibi_heads), PINIT_ONE,
                 DECAY_1D, EMA_AVERAGE);
}

static void declare_shared(ParamTable *t, void *p, const void *c) {
    speech_embed_declare(t, p, c, EMA_SHARED);
}

size_t speech_embed_params_layout(SpeechEmbedParams *p, float *memory, const SpeechEmbedConfig *c) {
    return ptab_module_layout(declare_shared, p, sizeof *p, c, memory);
}

void speech_embed_params_init(SpeechEmbedParams *p, const SpeechEmbedConfig *c, uint64_t seed) {
    ptab_module_init(declare_shared, p, sizeof *p, c, seed);
}

int speech_num_frames(const SpeechEmbedConfig *c, int S) {
    int L = S;
    for (int i = 0; i < c->n_conv; i++) {
        if (L < c->conv_k[i]) return 0;
        L = (L - c->conv_k[i]) / c->conv_s[i] + 1;
    }
    return L;
}

static void set_lengths(int *Lin, const SpeechEmbedConfig *c, int S) {
    Lin[0] = S;
    for (int i = 0; i < c->n_conv; i++)
        Lin[i + 1] = Lin[i] < c->conv_k[i] ? 0 : (Lin[i] - c->conv_k[i]) / c->conv_s[i] + 1;
}

/* ---- stage 1: waveform -> projected features --------------------------------------------------
 */

void speech_features_init(SpeechFeatures *f, const SpeechEmbedConfig *c, int Bmax, int Smax) {
    memset(f, 0, sizeof *f);
    check_config(c);
    f->cfg = *c, f->Bmax = Bmax, f->Smax = Smax;
    set_lengths(f->Lin, c, Smax);
    f->Tmax = f->Lin[c->n_conv];
    if (f->Tmax <= 0)
        die("speech encoder: %d samples are too short for the conv feature extractor", Smax);
    size_t B = Bmax, big = 0, cols = 0, before = xalloc_total();
    f->wav = xalloc(B * Smax * sizeof(float), "speech waveform");
    for (int i = 0; i < c->n_conv; i++) {
        size_t n = B * f->Lin[i + 1] * c->conv_dim[i];
        /* only the conv outputs of layers >= 1 are kept: LN and GELU are recomputed from them in
         * the backward, and layer 0's (the largest, from a 1-channel input: cheap) from the
         * waveform (docs/performance.md) */
        if (i > 0) f->conv_out[i] = xalloc(n * sizeof(float), "speech conv outputs");
        f->conv_mean[i] = xalloc(B * f->Lin[i + 1] * sizeof(float), "speech conv LN mean");
        f->conv_rstd[i] = xalloc(B * f->Lin[i + 1] * sizeof(float), "speech conv LN rstd");
        size_t k = conv1d_cols_size(Bmax, f->Lin[i], conv_in_dim(c, i), c->conv_dim[i],
                                    c->conv_k[i], c->conv_s[i], 0, 1);
        if (n > big) big = n;
        if (k > cols) cols = k;
    }
    size_t NT = B * f->Tmax, D = feat_dim(c);
    f->feat_ln = xalloc(NT * D * sizeof(float), "speech feature LN");
    f->feat_mean = xalloc(NT * sizeof(float), "speech feature LN mean");
    f->feat_rstd = xalloc(NT * sizeof(float), "speech feature LN rstd");
    f->features = xalloc(NT * c->C * sizeof(float), "speech features");
    f->cols = xalloc(cols * sizeof(float), "speech im2col");
    for (int i = 0; i < 2; i++)
        f->dbuf[i] = xalloc(big * sizeof(float), "speech backward scratch");
    f->act = xalloc(big * sizeof(float), "speech conv activations (one layer)");
    log0("speech feature extractor arena (B=%d, S=%d -> T=%d frames): %.1f MiB\n", Bmax, Smax,
         f->Tmax, (xalloc_total() - before) / 1048576.0);
}

void speech_features_free(SpeechFeatures *f) {
    for (int i = 0; i < f->cfg.n_conv; i++) {
        free(f->conv_out[i]), free(f->conv_mean[i]), free(f->conv_rstd[i]);
    }
    free(f->act);
    free(f->wav), free(f->feat_ln), free(f->feat_mean), free(f->feat_rstd), free(f->features);
    free(f->cols), free(f->dbuf[0]), free(f->dbuf[1]);
    memset(f, 0, sizeof *f);
}

/* y = LN(x) (gelu: then GELU(y)) of conv layer i, in place when y == x. The statistics are
 * recomputed: the same arithmetic on the same input, so the same values as the forward's. */
static void conv_activation(SpeechFeatures *f, const SpeechEmbedParams *p, int i, float *y,
                            const float *x, int gelu) { /* gelu = 0: the LN output alone */
    const SpeechEmbedConfig *c = &f->cfg;
    int rows = f->B * f->Lin[i + 1], dim = c->conv_dim[i];
    layernorm_forward(y, f->conv_mean[i], f->conv_rstd[i], x, p->conv_ln_w[i], p->conv_ln_b[i],
                      rows, dim, c->ln_eps);
    if (gelu) gelu_forward(y, y, (size_t)rows * dim);
}

/* Layer 0's conv output again, from the kept waveform. */
static void conv0_recompute(SpeechFeatures *f, const SpeechEmbedParams *p, float *out) {
    const SpeechEmbedConfig *c = &f->cfg;
    conv1d_forward(out, f->cols, f->wav, p->conv_w[0], NULL, f->B, f->Lin[0], 1, c->conv_dim[0],
                   c->conv_k[0], c->conv_s[0], 0, 1);
}

/* The input of conv layer i (i >= 1), recomputed into f->act. */
static void conv_input(SpeechFeatures *f, const SpeechEmbedParams *p, int i) {
    if (i == 1) {
        conv0_recompute(f, p, f->act);
        conv_activation(f, p, 0, f->act, f->act, 1);
    } else {
        conv_activation(f, p, i - 1, f->act, f->conv_out[i - 1], 1);
    }
}

void speech_features_forward(SpeechFeatures *f, const SpeechEmbedParams *p, const float *wav, int B,
                             int S) {
    const SpeechEmbedConfig *c = &f->cfg;
    if (B > f->Bmax || S > f->Smax)
        die("speech encoder: batch %d x %d samples exceeds the arena sized for %d x %d", B, S,
            f->Bmax, f->Smax);
    set_lengths(f->Lin, c, S);
    if (f->Lin[c->n_conv] <= 0)
        die("speech encoder: %d samples are too short for the conv feature extractor", S);
    f->B = B, f->S = S, f->T = f->Lin[c->n_conv];
    memcpy(f->wav, wav, (size_t)B * S * sizeof(float));
    for (int i = 0; i < c->n_conv; i++) {
        /* conv (into its kept output, or f->act for layer 0), then LN and GELU into f->act: the
         * previous layer's activations are dead once this conv has read them */
        conv1d_forward(i ? f->conv_out[i] : f->act, f->cols, i ? f->act : f->wav, p->conv_w[i],
                       NULL, B, f->Lin[i], conv_in_dim(c, i), c->conv_dim[i], c->conv_k[i],
                       c->conv_s[i], 0, 1);
        conv_activation(f, p, i, f->act, i ? f->conv_out[i] : f->act, 1);
    }
    int N = B * f->T, D = feat_dim(c);
    layernorm_forward(f->feat_ln, f->feat_mean, f->feat_rstd, f->act, p->feat_ln_w, p->feat_ln_b, N,
                      D, c->ln_eps);
    linear_forward(f->features, f->feat_ln, p->proj_w, p->proj_b, N, D, c->C);
}

static void zero(float *x, size_t n) { memset(x, 0, n * sizeof(float)); }

void speech_features_backward(SpeechFeatures *f, SpeechEmbedParams *g, const SpeechEmbedParams *p,
                              const float *dfeatures) {
    const SpeechEmbedConfig *c = &f->cfg;
    int B = f->B, N = B * f->T, D = feat_dim(c), n = c->n_conv;
    float *cur = f->dbuf[0], *other = f->dbuf[1], *t;
    zero(other, (size_t)N * D);
    linear_backward(other, g->proj_w, g->proj_b, dfeatures, f->feat_ln, p->proj_w, N, D, c->C);
    zero(cur, (size_t)N * D);
    conv_input(f, p, n); /* the last layer's activations: the feature LN's input */
    layernorm_backward(cur, g->feat_ln_w, g->feat_ln_b, other, f->act, p->feat_ln_w, f->feat_mean,
                       f->feat_rstd, N, D);
    for (int i = n - 1; i >= 0; i--) { /* cur = dLoss / d(GELU output of layer i) */
        int L = f->Lin[i + 1], dim = c->conv_dim[i];
        size_t m = (size_t)B * L * dim;
        /* the conv output (kept, or recomputed for layer 0); LN's output is recomputed a row at
         * a time inside the GELU backward */
        const float *y = i ? f->conv_out[i] : f->act;
        if (!i) conv0_recompute(f, p, f->act);
        zero(other, m);
        layernorm_gelu_backward(other, cur, y, p->conv_ln_w[i], p->conv_ln_b[i], f->conv_mean[i],
                                f->conv_rstd[i], B * L, dim);
        zero(cur, m);
        layernorm_backward(cur, g->conv_ln_w[i], g->conv_ln_b[i], other, y, p->conv_ln_w[i],
                           f->conv_mean[i], f->conv_rstd[i], B * L, dim);
        float *din = NULL;
        if (i) {
            conv_input(f, p, i);
            zero(other, (size_t)B * f->Lin[i] * conv_in_dim(c, i)), din = other;
        }
        conv1d_backward(din, g->conv_w[i], NULL, f->cols, cur, i ? f->act : f->wav, p->conv_w[i], B,
                        f->Lin[i], conv_in_dim(c, i), dim, c->conv_k[i], c->conv_s[i], 0, 1);
        t = cur, cur = other, other = t;
    }
}

/* ---- stage 2: mask embedding, positional convolution, encoder layer norm --------------------- */

void speech_context_init(SpeechContext *s, const SpeechEmbedConfig *c, int Bmax, int Tmax,
                         int keep_caches) {
    memset(s, 0, sizeof *s);
    check_config(c);
    s->cfg = *c, s->Bmax = Bmax, s->Tmax = Tmax, s->keep_caches = keep_caches;
    size_t N = (size_t)Bmax * Tmax, NC = N * c->C;
    s->masked = xalloc(NC * sizeof(float), "speech masked features");
    s->mask = xalloc(N, "speech mask");
    /* Forward-only: one set of per-layer buffers serves every layer (in and out never alias). */
    int sets = keep_caches ? c->pos_layers : 1;
    for (int j = 0; j < c->pos_layers; j++) {
        if (j < sets) {
            s->pos_out[j] = xalloc(NC * sizeof(float), "speech pos conv");
            s->pos_ln[j] = xalloc(NC * sizeof(float), "speech pos LN");
            s->pos_act[j] = xalloc(NC * sizeof(float), "speech pos GELU");
            s->pos_mean[j] = xalloc(N * sizeof(float), "speech pos LN mean");
            s->pos_rstd[j] = xalloc(N * sizeof(float), "speech pos LN rstd");
        } else {
            s->pos_out[j] = s->pos_out[0], s->pos_ln[j] = s->pos_ln[0];
            s->pos_act[j] = s->pos_act[0], s->pos_mean[j] = s->pos_mean[0];
            s->pos_rstd[j] = s->pos_rstd[0];
        }
    }
    s->sum = xalloc(NC * sizeof(float), "speech context sum");
    s->ln_mean = xalloc(N * sizeof(float), "speech encoder LN mean");
    s->ln_rstd = xalloc(N * sizeof(float), "speech encoder LN rstd");
    s->out = xalloc(NC * sizeof(float), "speech context output");
    if (c->pos_layers)
        s->cols = xalloc(
            conv1d_cols_size(Bmax, Tmax, c->C, c->C, c->pos_k, 1, c->pos_k / 2, c->pos_groups) *
                sizeof(float),
            "speech pos im2col");
    if (keep_caches)
        for (int i = 0; i < 3; i++)
            s->dbuf[i] = xalloc(NC * sizeof(float), "speech scratch");
}

void speech_context_free(SpeechContext *s) {
    int sets = s->keep_caches ? s->cfg.pos_layers : (s->cfg.pos_layers ? 1 : 0);
    for (int j = 0; j < sets; j++) {
        free(s->pos_out[j]), free(s->pos_ln[j]), free(s->pos_act[j]);
        free(s->pos_mean[j]), free(s->pos_rstd[j]);
    }
    free(s->masked), free(s->mask), free(s->sum), free(s->ln_mean), free(s->ln_rstd);
    free(s->out), free(s->cols);
    for (int i = 0; i < 3; i++)
        free(s->dbuf[i]);
    memset(s, 0, sizeof *s);
}

void speech_context_forward(SpeechContext *s, const SpeechEmbedParams *p, const float *features,
                            const uint8_t *mask, int B, int T, int train, DropKey k) {
    const SpeechEmbedConfig *c = &s->cfg;
    if (B > s->Bmax || T > s->Tmax)
        die("speech encoder: batch %d x %d frames exceeds the arena sized for %d x %d", B, T,
            s->Bmax, s->Tmax);
    s->B = B, s->T = T;
    size_t N = (size_t)B * T, C = c->C;
    memcpy(s->masked, features, N * C * sizeof(float));
    if (mask)
        memcpy(s->mask, mask, N);
    else
        memset(s->mask, 0, N);
    for (size_t n = 0; n < N; n++) /* wav2vec2: masked frames are replaced, not added to */
        if (s->mask[n]) memcpy(s->masked + n * C, p->mask_emb, C * sizeof(float));
    const float *h = s->masked;
    for (int j = 0; j < c->pos_layers; j++) {
        conv1d_forward(s->pos_out[j], s->cols, h, p->pos_w[j], p->pos_b[j], B, T, (int)C, (int)C,
                       c->pos_k, 1, c->pos_k / 2, c->pos_groups);
        layernorm_forward(s->pos_ln[j], s->pos_mean[j], s->pos_rstd[j], s->pos_out[j], NULL, NULL,
                          (int)N, (int)C, c->ln_eps);
        gelu_forward(s->pos_act[j], s->pos_ln[j], N * C);
        h = s->pos_act[j];
    }
    if (c->pos_layers)
        residual_forward(s->sum, s->masked, h, N * C);
    else
        memcpy(s->sum, s->masked, N * C * sizeof(float));
    layernorm_forward(s->out, s->ln_mean, s->ln_rstd, s->sum, p->enc_ln_w, p->enc_ln_b, (int)N,
                      (int)C, c->ln_eps);
    /* wav2vec2 TransformerEncoder.extract_features: F.dropout(x, p=dropout) right after the
     * post-LN encoder's layer_norm, in training mode only (the EMA teacher runs in eval mode). */
    if (train && c->dropout > 0) dropout_forward(s->out, s->out, B, (size_t)T * C, c->dropout, k);
}

void speech_context_backward(SpeechContext *s, SpeechEmbedParams *g, const SpeechEmbedParams *p,
                             const float *dout, float *dfeatures, int train, DropKey k) {
    const SpeechEmbedConfig *c = &s->cfg;
    if (!s->keep_caches) die("speech encoder: backward called on a forward-only context");
    size_t N = (size_t)s->B * s->T, C = c->C, NC = N * C;
    float *cur = s->dbuf[0], *other = s->dbuf[1], *dmasked = s->dbuf[2], *t;
    const float *dln = dout;
    if (train && c->dropout > 0) { /* the forward's mask, regenerated from the key */
        zero(other, NC);
        dropout_backward(other, dout, s->B, (size_t)s->T * C, c->dropout, k);
        dln = other;
    }
    zero(cur, NC);
    layernorm_backward(cur, g->enc_ln_w, g->enc_ln_b, dln, s->sum, p->enc_ln_w, s->ln_mean,
                       s->ln_rstd, (int)N, (int)C);
    memcpy(dmasked, cur, NC * sizeof(float));      /* the residual branch */
    for (int j = c->pos_layers - 1; j >= 0; j--) { /* cur = dLoss / d pos_act[j] */
        zero(other, NC);
        gelu_backward(other, s->pos_ln[j], cur, NC);
        zero(cur, NC);
        layernorm_backward(cur, NULL, NULL, other, s->pos_out[j], NULL, s->pos_mean[j],
                           s->pos_rstd[j], (int)N, (int)C);
        float *din = dmasked;
        if (j) zero(other, NC), din = other;
        conv1d_backward(din, g->pos_w[j], g->pos_b[j], s->cols, cur,
                        j ? s->pos_act[j - 1] : s->masked, p->pos_w[j], s->B, s->T, (int)C, (int)C,
                        c->pos_k, 1, c->pos_k / 2, c->pos_groups);
        t = cur, cur = other, other = t;
    }
    for (size_t n = 0; n < N; n++) {
        const float *d = dmasked + n * C;
        float *dst = s->mask[n] ? g->mask_emb : dfeatures + n * C;
        for (size_t i = 0; i < C; i++)
            dst[i] += d[i];
    }
}
