/* speech_v2.c: data2vec 2.0's speech context for the student (docs/algorithm.md §7.3, fairseq
 * AudioEncoder / ModalitySpecificEncoder.contextualized_features with remove_masked): each clone's
 * features with its masked frames zeroed run through the positional conv stack over the whole
 * sequence, the result is added at the kept frames only, then the encoder layer norm and dropout;
 * and the ALiBi slopes the blocks add to their logits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/frontends.h"
#include "d2v/util.h"

static double slope_pow2(int n, int i) { /* fairseq get_slopes_power_of_2, in Python's doubles */
    double start = pow(2.0, -pow(2.0, -(log2((double)n) - 3)));
    return start * pow(start, i);
}

void alibi_slopes(float *out, int heads) {
    int p2 = 1;
    while (p2 * 2 <= heads)
        p2 *= 2;
    for (int i = 0; i < heads; i++) /* the power of two below, then every other of twice it */
        out[i] = (float)(i < p2 ? slope_pow2(p2, i) : slope_pow2(2 * p2, 2 * (i - p2)));
}

void speech_v2_context_init(SpeechContextV2 *s, const SpeechEmbedConfig *c, int Rmax, int Tmax,
                            int Tkmax) {
    memset(s, 0, sizeof *s);
    s->cfg = *c, s->Rmax = Rmax, s->Tmax = Tmax, s->Tkmax = Tkmax;
    size_t before = xalloc_total();
    size_t N = (size_t)Rmax * Tmax, NC = N * c->C, K = (size_t)Rmax * Tkmax;
    s->zin = xalloc(NC * sizeof(float), "speech v2 zero-filled features");
    for (int j = 0; j < c->pos_layers; j++) {
        s->pos_out[j] = xalloc(NC * sizeof(float), "speech v2 pos conv");
        s->pos_ln[j] = xalloc(NC * sizeof(float), "speech v2 pos LN");
        s->pos_act[j] = xalloc(NC * sizeof(float), "speech v2 pos GELU");
        s->pos_mean[j] = xalloc(N * sizeof(float), "speech v2 pos LN mean");
        s->pos_rstd[j] = xalloc(N * sizeof(float), "speech v2 pos LN rstd");
    }
    s->sum = xalloc(K * c->C * sizeof(float), "speech v2 context sum");
    s->ln_mean = xalloc(K * sizeof(float), "speech v2 LN mean");
    s->ln_rstd = xalloc(K * sizeof(float), "speech v2 LN rstd");
    s->out = xalloc(K * c->C * sizeof(float), "speech v2 context");
    s->dsum = xalloc(K * c->C * sizeof(float), "speech v2 d context");
    if (c->pos_layers)
        s->cols = xalloc(
            conv1d_cols_size(Rmax, Tmax, c->C, c->C, c->pos_k, 1, c->pos_k / 2, c->pos_groups) *
                sizeof(float),
            "speech v2 pos im2col");
    for (int i = 0; i < 3; i++)
        s->dbuf[i] = xalloc(NC * sizeof(float), "speech v2 scratch");
    /* the positional convs run over every clone's whole sequence: R x T, not R x Tk */
    log0("speech v2 context arena (%d clone rows x %d frames, %d kept): %.1f MiB\n", Rmax, Tmax,
         Tkmax, (xalloc_total() - before) / 1048576.0);
}

void speech_v2_context_free(SpeechContextV2 *s) {
    for (int j = 0; j < s->cfg.pos_layers; j++) {
        free(s->pos_out[j]), free(s->pos_ln[j]), free(s->pos_act[j]);
        free(s->pos_mean[j]), free(s->pos_rstd[j]);
    }
    free(s->zin), free(s->sum), free(s->ln_mean), free(s->ln_rstd), free(s->out), free(s->dsum);
    free(s->cols);
    for (int i = 0; i < 3; i++)
        free(s->dbuf[i]);
    memset(s, 0, sizeof *s);
}

const float *speech_v2_context_forward(SpeechContextV2 *s, const SpeechEmbedParams *p,
                                       const float *features, const int32_t *keep, int B, int M,
                                       int T, int Tk, int train, DropKey k) {
    const SpeechEmbedConfig *c = &s->cfg;
    int R = B * M;
    if (R > s->Rmax || T > s->Tmax || Tk > s->Tkmax || Tk > T)
        die("speech v2 context: %d rows x %d frames keeping %d exceed the arena (%d x %d, %d)", R,
            T, Tk, s->Rmax, s->Tmax, s->Tkmax);
    s->B = B, s->M = M, s->R = R, s->T = T, s->Tk = Tk, s->keep = keep, s->train = train, s->k = k;
    size_t C = c->C, N = (size_t)R * T;
    /* encoder_zero_mask: the masked frames are zeros in the positional encoder's input */
    memset(s->zin, 0, N * C * sizeof(float));
#pragma omp parallel for
    for (int r = 0; r < R; r++)
        for (int j = 0; j < Tk; j++) {
            size_t t = (size_t)keep[(size_t)r * Tk + j];
            memcpy(s->zin + ((size_t)r * T + t) * C, features + ((size_t)(r / M) * T + t) * C,
                   C * sizeof(float));
        }
    const float *h = s->zin;
    for (int j = 0; j < c->pos_layers; j++) {
        conv1d_forward(s->pos_out[j], s->cols, h, p->pos_w[j], p->pos_b[j], R, T, (int)C, (int)C,
                       c->pos_k, 1, c->pos_k / 2, c->pos_groups);
        layernorm_forward(s->pos_ln[j], s->pos_mean[j], s->pos_rstd[j], s->pos_out[j], NULL, NULL,
                          (int)N, (int)C, c->ln_eps);
        gelu_forward(s->pos_act[j], s->pos_ln[j], N * C);
        h = s->pos_act[j];
    }
    /* x_unmasked + gather_unmasked(x_pos): both at the kept frames */
#pragma omp parallel for
    for (int r = 0; r < R; r++)
        for (int j = 0; j < Tk; j++) {
            size_t t = (size_t)keep[(size_t)r * Tk + j];
            const float *a = s->zin + ((size_t)r * T + t) * C;
            float *o = s->sum + ((size_t)r * Tk + j) * C;
            if (c->pos_layers) {
                const float *q = h + ((size_t)r * T + t) * C;
                for (size_t i = 0; i < C; i++)
                    o[i] = a[i] + q[i];
            } else {
                memcpy(o, a, C * sizeof(float));
            }
        }
    size_t K = (size_t)R * Tk;
    /* the context encoder (no prenet blocks): its layer norm, then its dropout (prenet_dropout) */
    layernorm_forward(s->out, s->ln_mean, s->ln_rstd, s->sum, p->enc_ln_w, p->enc_ln_b, (int)K,
                      (int)C, c->ln_eps);
    if (train && c->dropout > 0) dropout_forward(s->out, s->out, R, (size_t)Tk * C, c->dropout, k);
    return s->out;
}

static void zero(float *x, size_t n) { memset(x, 0, n * sizeof(float)); }

void speech_v2_context_backward(SpeechContextV2 *s, SpeechEmbedParams *g,
                                const SpeechEmbedParams *p, const float *dout, float *dfeatures) {
    const SpeechEmbedConfig *c = &s->cfg;
    int R = s->R, T = s->T, Tk = s->Tk, M = s->M;
    size_t C = c->C, N = (size_t)R * T, NC = N * C, K = (size_t)R * Tk;
    const int32_t *keep = s->keep;
    const float *dln = dout;
    if (s->train && c->dropout > 0) { /* the forward's mask, regenerated from the key */
        zero(s->dbuf[0], K * C);
        dropout_backward(s->dbuf[0], dout, R, (size_t)Tk * C, c->dropout, s->k);
        dln = s->dbuf[0];
    }
    zero(s->dsum, K * C);
    layernorm_backward(s->dsum, g->enc_ln_w, g->enc_ln_b, dln, s->sum, p->enc_ln_w, s->ln_mean,
                       s->ln_rstd, (int)K, (int)C);
    /* dzin: the direct path at the kept frames, plus the positional stack's input gradient */
    float *dzin = s->dbuf[2];
    zero(dzin, NC);
    if (c->pos_layers) {
        float *cur = s->dbuf[0], *other = s->dbuf[1], *t;
        zero(cur, NC); /* d pos_act[last]: the kept frames' rows of dsum, zero elsewhere */
#pragma omp parallel for
        for (int r = 0; r < R; r++)
            for (int j = 0; j < Tk; j++)
                memcpy(cur + ((size_t)r * T + keep[(size_t)r * Tk + j]) * C,
                       s->dsum + ((size_t)r * Tk + j) * C, C * sizeof(float));
        for (int j = c->pos_layers - 1; j >= 0; j--) { /* cur = dLoss / d pos_act[j] */
            zero(other, NC);
            gelu_backward(other, s->pos_ln[j], cur, NC);
            zero(cur, NC);
            layernorm_backward(cur, NULL, NULL, other, s->pos_out[j], NULL, s->pos_mean[j],
                               s->pos_rstd[j], (int)N, (int)C);
            float *din = dzin;
            if (j) zero(other, NC), din = other;
            conv1d_backward(din, g->pos_w[j], g->pos_b[j], s->cols, cur,
                            j ? s->pos_act[j - 1] : s->zin, p->pos_w[j], R, T, (int)C, (int)C,
                            c->pos_k, 1, c->pos_k / 2, c->pos_groups);
            t = cur, cur = other, other = t;
        }
    }
    /* into the features: kept frames only (the masked ones were zeros), clones in order */
#pragma omp parallel for
    for (int b = 0; b < s->B; b++)
        for (int m = 0; m < M; m++) {
            int r = b * M + m;
            for (int j = 0; j < Tk; j++) {
                size_t t = (size_t)keep[(size_t)r * Tk + j];
                float *dst = dfeatures + ((size_t)b * T + t) * C;
                const float *d1 = s->dsum + ((size_t)r * Tk + j) * C;
                const float *d2 = dzin + ((size_t)r * T + t) * C;
                for (size_t i = 0; i < C; i++)
                    dst[i] += d1[i] + d2[i];
            }
        }
}
