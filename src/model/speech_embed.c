/* speech_embed.c: the data2vec speech input encoder (spec §1.1): wav2vec 2.0's conv feature
 * extractor in layer-norm mode (conv without bias -> LN over channels -> GELU per layer), feature
 * LN and projection, then the learned mask embedding, the deep convolutional positional encoder
 * (conv -> parameter-less LN -> GELU per layer, added residually), the encoder layer norm and
 * the encoder's input dropout. */
#include <math.h>
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

size_t speech_embed_params_layout(SpeechEmbedParams *p, float *memory, const SpeechEmbedConfig *c) {
    size_t n = 0, C = c->C, D = feat_dim(c);
#define TAKE(ptr, count)                                                                           \
    do {                                                                                           \
        if (memory) (ptr) = memory + n;                                                            \
        n += (count);                                                                              \
    } while (0)
    for (int i = 0; i < c->n_conv; i++) {
        size_t dim = c->conv_dim[i];
        TAKE(p->conv_w[i], dim * conv_in_dim(c, i) * c->conv_k[i]);
        TAKE(p->conv_ln_w[i], dim);
        TAKE(p->conv_ln_b[i], dim);
    }
    TAKE(p->feat_ln_w, D);
    TAKE(p->feat_ln_b, D);
    TAKE(p->proj_w, C * D);
    TAKE(p->proj_b, C);
    TAKE(p->mask_emb, C);
    for (int j = 0; j < c->pos_layers; j++) {
        TAKE(p->pos_w[j], C * (C / c->pos_groups) * c->pos_k);
        TAKE(p->pos_b[j], C);
    }
    TAKE(p->enc_ln_w, C);
    TAKE(p->enc_ln_b, C);
#undef TAKE
    return n;
}

static void fill_uniform(float *x, size_t n, float lo, float hi, uint64_t key) {
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * rng_uniform(key, i);
}

static void fill_ln(float *w, float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        w[i] = 1.0f, b[i] = 0.0f;
}

void speech_embed_params_init(SpeechEmbedParams *p, const SpeechEmbedConfig *c, uint64_t seed) {
    size_t C = c->C, D = feat_dim(c);
    for (int i = 0; i < c->n_conv; i++) {
        size_t fan_in = (size_t)conv_in_dim(c, i) * c->conv_k[i];
        size_t n = c->conv_dim[i] * fan_in;
        float std = sqrtf(2.0f / fan_in); /* kaiming_normal_, fan_in, ReLU gain */
        uint64_t key = rng_key(seed, 0x5bee, (uint64_t)i, 0);
        for (size_t k = 0; k < n; k++)
            p->conv_w[i][k] = std * rng_normal(key, k);
        fill_ln(p->conv_ln_w[i], p->conv_ln_b[i], c->conv_dim[i]);
    }
    fill_ln(p->feat_ln_w, p->feat_ln_b, D);
    float a = 1.0f / sqrtf((float)D); /* nn.Linear default init */
    fill_uniform(p->proj_w, C * D, -a, a, rng_key(seed, 0x5bee, 100, 0));
    fill_uniform(p->proj_b, C, -a, a, rng_key(seed, 0x5bee, 101, 0));
    fill_uniform(p->mask_emb, C, 0.0f, 1.0f, rng_key(seed, 0x5bee, 102, 0)); /* uniform_() */
    for (int j = 0; j < c->pos_layers; j++) {
        size_t fan_in = (C / c->pos_groups) * c->pos_k;
        float b = 1.0f / sqrtf((float)fan_in); /* nn.Conv1d default init */
        fill_uniform(p->pos_w[j], C * fan_in, -b, b, rng_key(seed, 0x5bee, 200 + j, 0));
        fill_uniform(p->pos_b[j], C, -b, b, rng_key(seed, 0x5bee, 300 + j, 0));
    }
    fill_ln(p->enc_ln_w, p->enc_ln_b, C);
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
    size_t B = Bmax, big = 0, cols = 0;
    f->wav = xalloc(B * Smax * sizeof(float), "speech waveform");
    for (int i = 0; i < c->n_conv; i++) {
        size_t n = B * f->Lin[i + 1] * c->conv_dim[i];
        f->conv_out[i] = xalloc(n * sizeof(float), "speech conv outputs");
        f->conv_ln[i] = xalloc(n * sizeof(float), "speech conv LN");
        f->conv_act[i] = xalloc(n * sizeof(float), "speech conv GELU");
        f->conv_mean[i] = xalloc(B * f->Lin[i + 1] * sizeof(float), "speech conv LN mean");
        f->conv_rstd[i] = xalloc(B * f->Lin[i + 1] * sizeof(float), "speech conv LN rstd");
        size_t k =
            conv1d_cols_size(Bmax, f->Lin[i], conv_in_dim(c, i), c->conv_k[i], c->conv_s[i], 0, 1);
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
    log0("speech feature extractor arena (B=%d, S=%d -> T=%d frames): %.1f MiB\n", Bmax, Smax,
         f->Tmax,
         (B * Smax + 5.0 * big * c->n_conv + NT * (D + c->C) + cols + 2.0 * big) * 4 / 1048576.0);
}

void speech_features_free(SpeechFeatures *f) {
    for (int i = 0; i < f->cfg.n_conv; i++) {
        free(f->conv_out[i]), free(f->conv_ln[i]), free(f->conv_act[i]);
        free(f->conv_mean[i]), free(f->conv_rstd[i]);
    }
    free(f->wav), free(f->feat_ln), free(f->feat_mean), free(f->feat_rstd), free(f->features);
    free(f->cols), free(f->dbuf[0]), free(f->dbuf[1]);
    memset(f, 0, sizeof *f);
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
    const float *in = f->wav;
    for (int i = 0; i < c->n_conv; i++) {
        int L = f->Lin[i + 1], dim = c->conv_dim[i];
        conv1d_forward(f->conv_out[i], f->cols, in, p->conv_w[i], NULL, B, f->Lin[i],
                       conv_in_dim(c, i), dim, c->conv_k[i], c->conv_s[i], 0, 1);
        layernorm_forward(f->conv_ln[i], f->conv_mean[i], f->conv_rstd[i], f->conv_out[i],
                          p->conv_ln_w[i], p->conv_ln_b[i], B * L, dim, c->ln_eps);
        gelu_forward(f->conv_act[i], f->conv_ln[i], (size_t)B * L * dim);
        in = f->conv_act[i];
    }
    int N = B * f->T, D = feat_dim(c);
    layernorm_forward(f->feat_ln, f->feat_mean, f->feat_rstd, in, p->feat_ln_w, p->feat_ln_b, N, D,
                      c->ln_eps);
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
    layernorm_backward(cur, g->feat_ln_w, g->feat_ln_b, other, f->conv_act[n - 1], p->feat_ln_w,
                       f->feat_mean, f->feat_rstd, N, D);
    for (int i = n - 1; i >= 0; i--) { /* cur = dLoss / d conv_act[i] */
        int L = f->Lin[i + 1], dim = c->conv_dim[i];
        size_t m = (size_t)B * L * dim;
        zero(other, m);
        gelu_backward(other, f->conv_ln[i], cur, m);
        zero(cur, m);
        layernorm_backward(cur, g->conv_ln_w[i], g->conv_ln_b[i], other, f->conv_out[i],
                           p->conv_ln_w[i], f->conv_mean[i], f->conv_rstd[i], B * L, dim);
        const float *in = i ? f->conv_act[i - 1] : f->wav;
        float *din = NULL;
        if (i) zero(other, (size_t)B * f->Lin[i] * conv_in_dim(c, i)), din = other;
        conv1d_backward(din, g->conv_w[i], NULL, f->cols, cur, in, p->conv_w[i], B, f->Lin[i],
                        conv_in_dim(c, i), dim, c->conv_k[i], c->conv_s[i], 0, 1);
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
        s->cols =
            xalloc(conv1d_cols_size(Bmax, Tmax, c->C, c->pos_k, 1, c->pos_k / 2, c->pos_groups) *
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
