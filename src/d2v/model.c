/* model.c: the data2vec student and EMA teacher around one front-end (docs/algorithm.md §1.1):
 * masks, the teacher's forward-only pass on the unmasked input, top-K targets, the student's
 * forward, the regression head, the loss and the student's backward. Modality-specific work is
 * the front-end's (frontend.h); this file has none. */
#include "d2v/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/objective.h"
#include "d2v/util.h"
#include "model_internal.h"

int model_width(const ModelConfig *c) { return c->enc.C; }

/* ---- parameters: everything derives from the table ---- */

void model_declare(ParamTable *t, const ModelConfig *c) {
    static ModelParams view; /* field offsets only: the table never writes through it */
    ptab_begin(t, &view, sizeof view);
    frontend_ops(c->modality)->declare(t, &view, c);
    encoder_declare(t, &view.enc, &c->enc);
    if (c->v2)
        decoder_declare(t, &view.dec, &c->v2c.dec);
    else
        head_declare(t, &view.head, &c->head);
}

size_t model_params_layout(ModelParams *p, float *memory, const ModelConfig *c) {
    ParamTable t;
    model_declare(&t, c);
    if (p && memory) ptab_bind(&t, p, memory);
    size_t n = t.total;
    ptab_free(&t);
    return n;
}

void model_params_init(ModelParams *p, const ModelConfig *c, uint64_t seed) {
    ParamTable t;
    model_declare(&t, c);
    ptab_init_values(&t, p, seed);
    ptab_free(&t);
    encoder_params_constrain(&p->enc, &c->enc);
}

void model_decay_mask(uint8_t *mask, const ModelConfig *c, int exempt_1d) {
    ParamTable t;
    model_declare(&t, c);
    ptab_decay_mask(&t, mask, exempt_1d);
    ptab_free(&t);
}

int model_ema_ranges(ParamRange *r, int max, const ModelConfig *c) {
    ParamTable t;
    model_declare(&t, c);
    int n = ptab_ema_ranges(&t, r, max);
    ptab_free(&t);
    return n;
}

void model_teacher_view(ModelParams *tv, const ModelParams *student, float *teacher_memory,
                        const ModelConfig *c) {
    ParamTable t;
    model_declare(&t, c);
    /* the student's arena base, from its first tensor */
    float *base = *(float *const *)((const char *)student + t.t[0].field) - t.t[0].offset;
    ptab_bind_teacher(&t, tv, teacher_memory, base);
    ptab_free(&t);
}

int model_param_table(ParamInfo *out, int max, const ModelConfig *c) {
    ParamTable t;
    model_declare(&t, c);
    if (t.n > max) die("model: parameter table overflow (%d tensors, room for %d)", t.n, max);
    memcpy(out, t.t, sizeof *out * (size_t)t.n);
    int n = t.n;
    ptab_free(&t);
    return n;
}

/* ---- activations ---- */

void model_set_grad_hook(Model *m, GradHook fn, void *ctx) { m->hook = fn, m->hook_ctx = ctx; }

static void block_done(void *ctx, int layer) {
    Model *m = ctx;
    m->hook(m->hook_ctx, GRAD_BLOCK, layer);
}

const char *const model_phase_names[PHASE_NUM] = {
    "teacher encoder + targets", "front-ends + student forward", "head + loss", "student backward"};
void model_phase_times(const Model *m, double out[PHASE_NUM]) {
    memcpy(out, m->phase, sizeof m->phase);
}
void model_phase_reset(Model *m) { memset(m->phase, 0, sizeof m->phase); }

Model *model_create(const ModelConfig *c, int Bmax, int T_or_Smax) {
    Model *m = xalloc(sizeof *m, "model");
    m->c = *c, m->Bmax = Bmax, m->ops = frontend_ops(c->modality);
    int C = c->enc.C;
    if (c->top_k <= 0 || c->top_k > c->enc.L || c->top_k > 64)
        die("model: top_k %d must be in 1..L (L = %d)", c->top_k, c->enc.L);
    m->fe = m->ops->create(c, Bmax, T_or_Smax, &m->Tmax);
    if (c->v2) {
        v2_create(m, Bmax);
        return m;
    }
    encoder_init(&m->enc_s, &c->enc, Bmax, m->Tmax, 1);
    encoder_init(&m->enc_t, &c->enc, Bmax, m->Tmax, 0);
    size_t N = (size_t)Bmax * m->Tmax, NC = N * C;
    head_init(&m->head, &c->head, (int)N);
    m->sel = xalloc(N, "loss positions");
    m->targets = xalloc(NC * 4, "targets"), m->gathered = xalloc(NC * 4, "masked outputs");
    m->dpred = xalloc(NC * 4, "d predictions");
    m->dgathered = xalloc(NC * 4, "d masked outputs"), m->dout = xalloc(NC * 4, "d encoder out");
    m->dfront = xalloc(NC * 4, "d encoder in");
    m->tscratch = xalloc((NC + 2 * (size_t)Bmax * C) * 4, "target scratch");
    return m;
}

Model *model_create_features(const ModelConfig *c, int Bmax, int T_or_Smax) {
    Model *m = xalloc(sizeof *m, "model");
    m->c = *c, m->Bmax = Bmax, m->ops = frontend_ops(c->modality), m->features_only = 1;
    m->fe = m->ops->create(c, Bmax, T_or_Smax, &m->Tmax);
    int E = c->v2 && m->ops->v2_context ? m->ops->v2_extra : 0;
    encoder_init(&m->enc_t, &c->enc, Bmax, E + m->Tmax, 0);
    size_t N = (size_t)Bmax * (E + m->Tmax);
    if (model_final_norm(c)) /* mean_norm: normed rows, their mean and rstd */
        m->gathered = xalloc(N * c->enc.C * 4, "normed features"),
        m->tscratch = xalloc(2 * N * 4, "norm statistics");
    return m;
}

void model_destroy(Model *m) {
    if (!m) return;
    m->ops->destroy(m->fe);
    if (m->features_only) {
        encoder_free(&m->enc_t);
        free(m->gathered), free(m->tscratch), free(m);
        return;
    }
    if (m->v2) {
        v2_destroy(m);
        free(m);
        return;
    }
    encoder_free(&m->enc_s), encoder_free(&m->enc_t);
    head_free(&m->head);
    free(m->targets), free(m->gathered), free(m->dpred), free(m->dgathered), free(m->dout);
    free(m->dfront), free(m->tscratch), free(m->sel), free(m);
}

/* ---- one micro-batch ---- */

/* Rows of x (B*T, C) where sel is set, into out (M, C); scatter is the transpose (adds). */
static int gather_rows(float *out, const float *x, const uint8_t *sel, size_t N, int C) {
    int M = 0;
    for (size_t n = 0; n < N; n++)
        if (sel[n]) memcpy(out + (size_t)M++ * C, x + n * C, sizeof(float) * C);
    return M;
}

static void scatter_rows(float *x, const float *rows, const uint8_t *sel, size_t N, int C) {
    int M = 0;
    for (size_t n = 0; n < N; n++) {
        if (!sel[n]) continue;
        const float *src = rows + (size_t)M++ * C;
        for (int k = 0; k < C; k++)
            x[n * C + k] += src[k];
    }
}

void model_micro_step(Model *m, const ModelParams *s, const ModelParams *t, ModelParams *g,
                      const Batch *b, uint64_t seed, uint64_t step, MicroResult *out) {
    if (m->features_only) die("model: a model made for features cannot train");
    if (m->v2) {
        v2_micro_step(m, s, t, g, b, seed, step, out);
        return;
    }
    const ModelConfig *c = &m->c;
    int B = b->B, C = c->enc.C;
    DropKey dk = {seed, step, 0, b->ids}; /* each front-end sets its own site */
    double t0 = now_seconds(), t1;
    /* 1. masks and both front-ends: the student sees the masked input, the teacher the full one */
    int T = m->T = m->ops->begin(m->fe, s, b);
    size_t N = (size_t)B * T;
    memset(m->sel, 0, N);
    m->ops->mask(m->fe, b, seed, m->sel);
    FrontOut xs = m->ops->forward(m->fe, s, b, 1, dk);
    FrontOut xt = m->ops->forward(m->fe, t, b, 0, dk);
    t1 = now_seconds();
    m->phase[PHASE_STUDENT_FWD] += t1 - t0;
    t0 = t1;
    /* 2. teacher: forward only, no dropout; top-K targets at the loss positions */
    EncoderRun rt = {.B = B,
                     .T = T,
                     .key_pad = xt.pad,
                     .attn_bias = xt.bias,
                     .train = 0,
                     .seed = seed,
                     .step = step,
                     .sample_ids = b->ids};
    encoder_forward(&m->enc_t, &t->enc, xt.x, &rt);
    for (int k = 0; k < c->top_k; k++) {
        BlockActs a = encoder_block(&m->enc_t, c->enc.L - c->top_k + k);
        m->layers[k] = c->target_attn ? a.attn_out : c->target_ffn ? a.ffn_out : a.out;
    }
    int M = targets_build(m->targets, m->layers, c->top_k, B, T, C, c->target_norm,
                          c->target_final_norm, c->target_eps, m->sel, m->tscratch);
    m->M = M, m->B = B;
    t1 = now_seconds();
    m->phase[PHASE_TEACHER] += t1 - t0;
    t0 = t1;
    /* 3. student: encoder, then the head on the masked positions only */
    EncoderRun rs = rt; /* the student: its own input, dropout on, the gradient hook */
    rs.key_pad = xs.pad, rs.attn_bias = xs.bias, rs.train = 1;
    rs.block_done = m->hook ? block_done : NULL, rs.block_ctx = m;
    encoder_forward(&m->enc_s, &s->enc, xs.x, &rs);
    gather_rows(m->gathered, encoder_output(&m->enc_s), m->sel, N, C);
    const float *pred = head_forward(&m->head, &s->head, m->gathered, M);
    t1 = now_seconds();
    m->phase[PHASE_STUDENT_FWD] += t1 - t0;
    t0 = t1;
    /* 4. loss, summed: the trainer divides the gradient by the masked count over all ranks */
    float scale = c->loss_scale > 0 ? c->loss_scale : 1.0f / sqrtf((float)C);
    out->loss_sum = regression_loss(m->dpred, pred, m->targets, M, C, c->loss_beta, scale, 1);
    out->masked = M;
    if (out->pred_stats) var_stats_accumulate(out->pred_stats, pred, M, C);
    if (out->target_stats) var_stats_accumulate(out->target_stats, m->targets, M, C);
    t1 = now_seconds();
    m->phase[PHASE_LOSS] += t1 - t0;
    t0 = t1;
    if (!g) return;
    /* 5. student backward */
    memset(m->dgathered, 0, sizeof(float) * M * C);
    head_backward(&m->head, &g->head, &s->head, m->dpred, m->dgathered);
    if (m->hook) m->hook(m->hook_ctx, GRAD_HEAD, -1);
    memset(m->dout, 0, sizeof(float) * N * C);
    scatter_rows(m->dout, m->dgathered, m->sel, N, C);
    memset(m->dfront, 0, sizeof(float) * N * C);
    if (xs.dbias) memset(xs.dbias, 0, sizeof(float) * c->enc.NH * T * T);
    encoder_backward(&m->enc_s, &g->enc, m->dfront, xs.dbias, &s->enc, xs.x, &rs, m->dout);
    m->ops->backward(m->fe, g, s, m->dfront, dk);
    if (m->hook) m->hook(m->hook_ctx, GRAD_FRONT, -1);
    m->phase[PHASE_BACKWARD] += now_seconds() - t0;
}

int model_final_norm(const ModelConfig *c) { return !c->v2 && c->head.final_norm; }

/* Mean over the pooled tokens of sample i of h (B, T, C), in the order and precision
 * model_features has always used (float sums, one division). */
static void pool_mean(float *o, const float *h, const uint8_t *pad, int i, int first, int T,
                      int C) {
    memset(o, 0, sizeof(float) * C);
    int n = 0;
    for (int t = first; t < T; t++) {
        if (pad && pad[(size_t)i * T + t]) continue;
        const float *row = h + ((size_t)i * T + t) * C;
        for (int k = 0; k < C; k++)
            o[k] += row[k];
        n++;
    }
    for (int k = 0; k < C; k++)
        o[k] /= n > 0 ? n : 1;
}

void model_features_multi(Model *m, const ModelParams *p, const Batch *b, const ModelFeatures *f) {
    const ModelConfig *c = &m->c;
    int B = b->B, C = c->enc.C, L = c->enc.L,
        first = m->ops->pool_first ? m->ops->pool_first(c) : 0;
    if (f->mean_lastk && (f->last_k < 1 || f->last_k > L))
        die("model: features of the last %d blocks of %d", f->last_k, L);
    if (f->mean_norm && !model_final_norm(c))
        die("model: mean_norm asked of a model without a final norm");
    DropKey dk = {0, 0, 0, b->ids};
    int T = m->T = m->ops->begin(m->fe, p, b);
    FrontOut x;
    if (c->v2 && m->ops->v2_context_full) { /* speech: x + pos(x), LN, ALiBi */
        x = m->ops->v2_local(m->fe, p, b, 1, dk);
        x = m->ops->v2_context_full(m->fe, p, x.x, NULL, B, 1, T, T, 0, dk);
    } else if (c->v2) { /* v2: the local features through the context (images: cls + LN) */
        x = m->ops->v2_local(m->fe, p, b, 0, dk);
        if (m->ops->v2_context) {
            x.x = m->ops->v2_context(m->fe, p, x.x, B, T, 0);
            T += m->ops->v2_extra, x.pad = NULL;
        }
    } else {
        x = m->ops->forward(m->fe, p, b, 0, dk);
    }
    EncoderRun r = {.B = B,
                    .T = T,
                    .key_pad = x.pad,
                    .attn_bias = x.bias,
                    .sample_ids = b->ids,
                    .alibi = x.alibi};
    encoder_forward(&m->enc_t, &p->enc, x.x, &r);
    const float *h = encoder_output(&m->enc_t);
    size_t N = (size_t)B * T;
    if (f->mean_norm) /* the micro-step's scratch, idle here: normed rows, then mean and rstd */
        layernorm_forward(m->gathered, m->tscratch, m->tscratch + N, h, p->head.ln_w, p->head.ln_b,
                          (int)N, C, c->head.final_norm_eps);
    /* (C) scratch for the last-k sums: v1's idle head gradient, or (v2 has none) its own */
    float *acc = m->dpred ? m->dpred : xalloc(sizeof(float) * C, "feature sums");
    for (int i = 0; i < B; i++) {
        size_t o = (size_t)i * C;
        if (f->mean_final) pool_mean(f->mean_final + o, h, x.pad, i, first, T, C);
        if (f->mean_norm) pool_mean(f->mean_norm + o, m->gathered, x.pad, i, first, T, C);
        if (f->first) memcpy(f->first + o, h + (size_t)i * T * C, sizeof(float) * C);
        if (f->mean_lastk) { /* the mean of the pooled means is the pool of the mean */
            memset(f->mean_lastk + o, 0, sizeof(float) * C);
            for (int l = L - f->last_k; l < L; l++) {
                pool_mean(acc, encoder_block(&m->enc_t, l).out, x.pad, i, first, T, C);
                for (int k = 0; k < C; k++)
                    f->mean_lastk[o + k] += acc[k];
            }
            for (int k = 0; k < C; k++)
                f->mean_lastk[o + k] /= (float)f->last_k;
        }
    }
    if (acc != m->dpred) free(acc);
}

void model_features(Model *m, const ModelParams *p, const Batch *b, float *out) {
    ModelFeatures f = {.mean_final = out};
    model_features_multi(m, p, b, &f);
}

ModelTrace model_trace(const Model *m, const Batch *b) {
    if (m->v2) return v2_trace(m, b);
    ModelTrace t = {m->B,         m->T,      m->c.enc.C, m->M,  m->sel, m->targets,
                    m->head.pred, m->layers, 0,          {{0}}, m->B};
    t.n_arrays = m->ops->trace(m->fe, b, t.arrays);
    return t;
}
