/* model_v2.c: one data2vec 2.0 micro-step (docs/algorithm.md §7.2, fairseq data2vec2.py): the
 * student's local features of the unmasked batch, M masks per sample, the encoder on each
 * clone's kept tokens only, the conv decoder over the full length with noise in the masked
 * slots, one teacher pass per sample whose instance-normalised top-K targets serve all clones,
 * the L2 loss on masked positions, and the backward back through the gather. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/objective.h"
#include "d2v/util.h"
#include "model_internal.h"

typedef struct V2State {
    int M;                   // clones
    int T, Tk, masked;       // the last batch: tokens, kept and masked per row
    int Tmax, Tk_max;        // capacity
    uint8_t *masks;          // (B M, T) 1 = masked
    int32_t *keep;           // (B M, Tk) kept positions, ascending
    int64_t *row_ids;        // (B M) dropout and noise keys: sample id * V2_MAX_CLONES + clone
    uint8_t *all;            // (B, T) ones: targets at every position
    uint8_t *pad;            // (B M, Tk) the kept tokens' padding flags (fairseq gathers them)
    int *mask_scratch;       // v2_mask_batch
    int E;                   // tokens the front-end's context prepends (images: cls)
    float *xs, *dxs;         // (B M, Tk, C) gathered local features and their gradient
    float *dh, *dxin;        // (B M, E + Tk, C) d encoder output, d encoder input
    float *tl;               // (B, T, C) one teacher layer without its extra tokens
    float *cls_p, *cls_t;    // (B M, C) cls predictions and targets (images)
    float *dcls;             // (B M, C)
    float *dec_in, *ddec_in; // (B M, T, C)
    float *ddec_out;         // (B M, T, C)
    float *y;                // (B T, C) targets at every position
    float *pred, *tgt, *dp;  // (B M masked, C) rows in the loss
    float *dlocal;           // (B, T, C) gradient of the local features
    float *trace_noise;      // (B M, T, C) for step dumps, made on demand
    float *trace_layers[64]; // top-K (B, T, C) teacher layers without extra tokens, for dumps
    Decoder dec;
} V2State;

/* Kept tokens per row at length T (every row masks the same count). */
static int kept_at(const ModelConfig *c, int T) {
    V2MaskConfig mc = c->v2c.mask;
    if (mc.kind == V2_MASK_BLOCK_2D_INVERSE) return T - v2_mask_count(&mc);
    mc.T = T;
    return T - v2_mask_count(&mc);
}

void v2_create(Model *m, int Bmax) {
    const ModelConfig *c = &m->c;
    if (!m->ops->v2_local)
        die("model.mode = \"v2\" is not implemented for %s yet", d2v_modality_names[c->modality]);
    V2State *v = xalloc(sizeof *v, "v2 state");
    m->v2 = v;
    int M = v->M = c->v2c.clones, T = v->Tmax = m->Tmax, C = c->enc.C;
    v->Tk_max = kept_at(c, T);
    int E = v->E = m->ops->v2_context ? m->ops->v2_extra : 0;
    size_t R = (size_t)Bmax * M, N = (size_t)Bmax * T;
    /* the student encodes only kept tokens: its arena scales with Tk x M, not T x M */
    encoder_init(&m->enc_s, &c->enc, (int)R, E + v->Tk_max, 1);
    encoder_init(&m->enc_t, &c->enc, Bmax, E + T, 0);
    decoder_create(&v->dec, &c->v2c.dec, (int)R, T);
    V2MaskConfig mc = c->v2c.mask;
    if (mc.kind != V2_MASK_BLOCK_2D_INVERSE) mc.T = T;
    v->masks = xalloc(R * T, "v2 masks");
    v->keep = xalloc(sizeof(int32_t) * R * v->Tk_max, "v2 kept positions");
    v->row_ids = xalloc(sizeof(int64_t) * R, "v2 row ids");
    v->all = xalloc(N, "v2 target positions");
    v->pad = xalloc(R * v->Tk_max, "v2 kept padding");
    memset(v->all, 1, N);
    v->mask_scratch = xalloc(sizeof(int) * (v2_mask_scratch(&mc) + 16), "v2 mask scratch");
    size_t RK = R * v->Tk_max * C, RT = R * T * C;
    size_t RE = R * (E + v->Tk_max) * C;
    v->xs = xalloc(4 * RK, "v2 student input"), v->dxs = xalloc(4 * RK, "v2 d student input");
    v->dh = xalloc(4 * RE, "v2 d encoder output"), v->dxin = xalloc(4 * RE, "v2 d encoder input");
    v->tl = xalloc(4 * N * C, "v2 teacher layer");
    v->cls_p = xalloc(4 * R * C, "v2 cls"), v->cls_t = xalloc(4 * R * C, "v2 cls targets");
    v->dcls = xalloc(4 * R * C, "v2 d cls");
    v->dec_in = xalloc(4 * RT, "v2 decoder input"), v->ddec_in = xalloc(4 * RT, "v2 d decoder in");
    v->ddec_out = xalloc(4 * RT, "v2 d decoder output");
    v->y = xalloc(4 * N * C, "v2 targets");
    size_t rows = R * (size_t)(T - v->Tk_max) * C;
    v->pred = xalloc(4 * rows, "v2 predictions"), v->tgt = xalloc(4 * rows, "v2 target rows");
    v->dp = xalloc(4 * rows, "v2 d predictions");
    v->dlocal = xalloc(4 * N * C, "v2 d local features");
    m->tscratch = xalloc((N * C + 2 * (size_t)Bmax * C) * 4, "target scratch");
    log0("v2: %d clones x %d of %d tokens kept: the student encodes %zu tokens per micro-batch "
         "(%.1f MiB of activations, %.1f MiB the decoder)\n",
         M, v->Tk_max, T, R * v->Tk_max, encoder_act_mib(&m->enc_s),
         decoder_act_bytes(&v->dec) / 1048576.0);
}

void v2_destroy(Model *m) {
    V2State *v = m->v2;
    encoder_free(&m->enc_s), encoder_free(&m->enc_t);
    decoder_destroy(&v->dec);
    free(v->masks), free(v->keep), free(v->row_ids), free(v->all), free(v->mask_scratch);
    free(v->pad), free(v->dxin), free(v->tl), free(v->cls_p), free(v->cls_t), free(v->dcls);
    free(v->xs), free(v->dxs), free(v->dh), free(v->dec_in), free(v->ddec_in), free(v->ddec_out);
    free(v->y), free(v->pred), free(v->tgt), free(v->dp), free(v->dlocal), free(v->trace_noise);
    for (int k = 0; k < 64; k++)
        free(v->trace_layers[k]);
    free(m->tscratch), free(v);
    m->v2 = NULL;
}

/* Targets y (B, T, C): the top-K teacher layers without their first E (extra) tokens, each
 * instance- or layer-normalised, averaged, then the optional final LN (docs/algorithm.md §7.2). */
static void v2_targets(Model *m, int B, int T, int E) {
    const ModelConfig *c = &m->c;
    V2State *v = m->v2;
    int C = c->enc.C, K = c->top_k;
    size_t N = (size_t)B * T;
    float *norm = m->tscratch, *s1 = norm + N * C, *s2 = s1 + (size_t)B * C;
    memset(v->y, 0, sizeof(float) * N * C);
    for (int k = 0; k < K; k++) {
        const float *a = m->layers[k];
        if (E > 0) {
            for (int b = 0; b < B; b++)
                memcpy(v->tl + (size_t)b * T * C, a + ((size_t)b * (E + T) + E) * C,
                       sizeof(float) * T * C);
            a = v->tl;
        }
        if (c->target_norm == TARGET_NORM_INSTANCE)
            instancenorm_forward(norm, s1, s2, a, B, T, C, c->target_eps);
        else if (c->target_norm == TARGET_NORM_LAYER)
            layernorm_forward(norm, NULL, NULL, a, NULL, NULL, (int)N, C, c->target_eps);
        else
            memcpy(norm, a, sizeof(float) * N * C);
        for (size_t i = 0; i < N * C; i++)
            v->y[i] += norm[i] / K;
    }
    if (c->target_final_norm)
        layernorm_forward(v->y, NULL, NULL, v->y, NULL, NULL, (int)N, C, c->target_eps);
}

static void block_done_v2(void *ctx, int layer) {
    Model *m = ctx;
    m->hook(m->hook_ctx, GRAD_BLOCK, layer);
}

void v2_micro_step(Model *m, const ModelParams *s, const ModelParams *t, ModelParams *g,
                   const Batch *b, uint64_t seed, uint64_t step, MicroResult *out) {
    const ModelConfig *c = &m->c;
    V2State *v = m->v2;
    int B = b->B, C = c->enc.C, M = v->M, R = B * M;
    DropKey dk = {seed, step, 0, b->ids};
    double t0 = now_seconds(), t1;
    /* 1. local features of the unmasked batch (student, dropout on) */
    int T = m->T = v->T = m->ops->begin(m->fe, s, b);
    FrontOut x = m->ops->v2_local(m->fe, s, b, 1, dk);
    int E = v->E;
    /* 2. M masks per sample; every row keeps the same Tk tokens */
    V2MaskConfig mc = c->v2c.mask;
    if (mc.kind != V2_MASK_BLOCK_2D_INVERSE) mc.T = T;
    v2_mask_batch(v->masks, B, M, &mc, seed, step, b->ids, v->mask_scratch);
    int Tk = v->Tk = kept_at(c, T);
    v->masked = T - Tk;
    if (Tk > v->Tk_max || Tk < 1) die("v2: %d kept tokens of %d (room for %d)", Tk, T, v->Tk_max);
    for (int r = 0; r < R; r++) {
        v->row_ids[r] = b->ids[r / M] * V2_MAX_CLONES + r % M;
        if (v2_kept_indices(v->masks + (size_t)r * T, T, v->keep + (size_t)r * Tk) != Tk)
            die("v2: mask row %d keeps the wrong count", r);
    }
    /* 3. the student on each clone's kept tokens */
    const float *xin;
    FrontOut xc = {0};
    DropKey dkr = {seed, step, 0, v->row_ids}; /* the clones' own dropout keys */
    if (m->ops->v2_context_full) { /* speech: positions over the zero-filled sequence first */
        xc = m->ops->v2_context_full(m->fe, s, x.x, v->keep, B, M, T, Tk, 1, dkr);
        xin = xc.x;
    } else {
#pragma omp parallel for
        for (int r = 0; r < R; r++)
            for (int j = 0; j < Tk; j++) {
                size_t src = (size_t)(r / M) * T + v->keep[(size_t)r * Tk + j];
                memcpy(v->xs + ((size_t)r * Tk + j) * C, x.x + src * C, sizeof(float) * C);
                if (x.pad) v->pad[(size_t)r * Tk + j] = x.pad[src];
            }
        xin = E ? m->ops->v2_context(m->fe, s, v->xs, R, Tk, 1) : v->xs;
    }
    EncoderRun rs = {.B = R,
                     .T = E + Tk,
                     .key_pad = x.pad && !E ? v->pad : NULL, /* padding keys stay masked */
                     .train = 1,
                     .seed = seed,
                     .step = step,
                     .sample_ids = v->row_ids,
                     .block_done = m->hook ? block_done_v2 : NULL,
                     .block_ctx = m,
                     /* ALiBi at the kept frames' true distances (fairseq masked_alibi) */
                     .alibi = xc.alibi,
                     .alibi_pos = xc.alibi ? v->keep : NULL,
                     .dalibi = xc.dalibi};
    encoder_forward(&m->enc_s, &s->enc, xin, &rs);
    const float *h = encoder_output(&m->enc_s);
    /* 4. decoder input: the encoder output at the kept slots, noise at the masked ones */
    float sd = c->v2c.noise_std;
#pragma omp parallel for
    for (int r = 0; r < R; r++) {
        float *d = v->dec_in + (size_t)r * T * C;
        const uint8_t *mk = v->masks + (size_t)r * T;
        uint64_t key = rng_key(seed, step, (uint64_t)v->row_ids[r], RNG_SITE_V2_NOISE);
        for (int tt = 0; tt < T; tt++)
            if (mk[tt])
                for (int k = 0; k < C; k++)
                    d[(size_t)tt * C + k] = sd * rng_normal(key, (uint64_t)tt * C + k);
        for (int j = 0; j < Tk; j++) /* the encoder output without its extra tokens */
            memcpy(d + (size_t)v->keep[(size_t)r * Tk + j] * C,
                   h + ((size_t)r * (E + Tk) + E + j) * C, sizeof(float) * C);
    }
    DropKey dd = {seed, step, RNG_SITE_DEC_INPUT, v->row_ids};
    const float *p = decoder_forward_masked(&v->dec, &s->dec, v->dec_in, v->masks, R, T, dd, 1);
    t1 = now_seconds();
    m->phase[PHASE_STUDENT_FWD] += t1 - t0;
    t0 = t1;
    /* 5. the teacher once per sample: on the student's local features (text, speech) or its
     * own EMA front-end (images), through its own context */
    const float *xt = c->ema_frontend ? m->ops->v2_local(m->fe, t, b, 0, dk).x : x.x;
    FrontOut xct = {0};
    if (m->ops->v2_context_full) {
        xct = m->ops->v2_context_full(m->fe, t, xt, NULL, B, 1, T, T, 0, dk);
        xt = xct.x;
    } else if (E) {
        xt = m->ops->v2_context(m->fe, t, xt, B, T, 0);
    }
    EncoderRun rt = {.B = B,
                     .T = E + T,
                     .key_pad = E ? NULL : x.pad,
                     .seed = seed,
                     .step = step,
                     .sample_ids = b->ids,
                     .alibi = xct.alibi};
    encoder_forward(&m->enc_t, &t->enc, xt, &rt);
    for (int k = 0; k < c->top_k; k++) {
        BlockActs a = encoder_block(&m->enc_t, c->enc.L - c->top_k + k);
        m->layers[k] = a.ffn_out;
    }
    v2_targets(m, B, T, E);
    t1 = now_seconds();
    m->phase[PHASE_TEACHER] += t1 - t0;
    t0 = t1;
    /* 6. the loss on every clone's masked positions, targets shared by a sample's clones */
    int rows = 0;
    for (int r = 0; r < R; r++)
        for (int tt = 0; tt < T; tt++)
            if (v->masks[(size_t)r * T + tt]) {
                memcpy(v->pred + (size_t)rows * C, p + ((size_t)r * T + tt) * C, sizeof(float) * C);
                memcpy(v->tgt + (size_t)rows * C, v->y + ((size_t)(r / M) * T + tt) * C,
                       sizeof(float) * C);
                rows++;
            }
    m->M = rows, m->B = B;
    float scale = c->loss_scale > 0 ? c->loss_scale : 1.0f / sqrtf((float)C);
    out->loss_sum = regression_loss(v->dp, v->pred, v->tgt, rows, C, c->loss_beta, scale, 1);
    out->masked = rows;
    /* The cls loss, weighted by masked tokens per row so that after the trainer's division by
     * the masked count it is v2.cls_loss x its mean over rows, whatever the split into ranks
     * and micro-batches (fairseq weighs it by the per-GPU sample_size instead: its 0.01 is
     * 0.01 x the rows per GPU here; docs/algorithm.md §7.2) */
    float w_cls = E && c->v2c.cls_loss > 0 ? c->v2c.cls_loss * (float)(T - Tk) : 0;
    if (w_cls > 0) {
        for (int r = 0; r < R; r++) {
            const float *yb = v->y + (size_t)(r / M) * T * C;
            float *ct = v->cls_t + (size_t)r * C;
            for (int k = 0; k < C; k++) {
                double acc = 0;
                for (int tt = 0; tt < T; tt++)
                    acc += yb[(size_t)tt * C + k];
                ct[k] = (float)(acc / T);
            }
            memcpy(v->cls_p + (size_t)r * C, h + (size_t)r * (E + Tk) * C, sizeof(float) * C);
        }
        out->loss_sum +=
            w_cls * regression_loss(v->dcls, v->cls_p, v->cls_t, R, C, 0, scale, w_cls);
    }
    if (out->pred_stats) var_stats_accumulate(out->pred_stats, v->pred, rows, C);
    if (out->target_stats) var_stats_accumulate(out->target_stats, v->tgt, rows, C);
    t1 = now_seconds();
    m->phase[PHASE_LOSS] += t1 - t0;
    t0 = t1;
    if (!g) return;
    /* 7. backward: decoder, the kept rows, encoder, the gather (clones summed) */
    memset(v->ddec_out, 0, sizeof(float) * (size_t)R * T * C);
    rows = 0;
    for (int r = 0; r < R; r++)
        for (int tt = 0; tt < T; tt++)
            if (v->masks[(size_t)r * T + tt])
                memcpy(v->ddec_out + ((size_t)r * T + tt) * C, v->dp + (size_t)rows++ * C,
                       sizeof(float) * C);
    memset(v->ddec_in, 0, sizeof(float) * (size_t)R * T * C);
    decoder_backward(&v->dec, &g->dec, &s->dec, v->ddec_out, v->ddec_in);
    if (m->hook) m->hook(m->hook_ctx, GRAD_HEAD, -1);
#pragma omp parallel for
    for (int r = 0; r < R; r++) {
        float *dr = v->dh + (size_t)r * (E + Tk) * C;
        if (E) { /* the cls row: its own loss, or nothing */
            if (w_cls > 0)
                memcpy(dr, v->dcls + (size_t)r * C, sizeof(float) * C);
            else
                memset(dr, 0, sizeof(float) * (size_t)E * C);
        }
        for (int j = 0; j < Tk; j++)
            memcpy(dr + (size_t)(E + j) * C,
                   v->ddec_in + ((size_t)r * T + v->keep[(size_t)r * Tk + j]) * C,
                   sizeof(float) * C);
    }
    float *dxin = E ? v->dxin : v->dxs;
    memset(dxin, 0, sizeof(float) * (size_t)R * (E + Tk) * C);
    encoder_backward(&m->enc_s, &g->enc, dxin, NULL, &s->enc, xin, &rs, v->dh);
    memset(v->dlocal, 0, sizeof(float) * (size_t)B * T * C);
    if (m->ops->v2_context_full) /* the context's own scatter back into the local features */
        m->ops->v2_context_full_backward(m->fe, g, s, v->dxs, v->dlocal);
    if (E) m->ops->v2_context_backward(m->fe, g, s, dxin, v->dxs);
    int gather = !m->ops->v2_context_full; /* else the context scattered its own gradient */
#pragma omp parallel for if (gather) /* one sample per thread, clones in order: deterministic */
    for (int bb = 0; bb < (gather ? B : 0); bb++)
        for (int mm = 0; mm < M; mm++) {
            int r = bb * M + mm;
            for (int j = 0; j < Tk; j++) {
                float *dst = v->dlocal + ((size_t)bb * T + v->keep[(size_t)r * Tk + j]) * C;
                const float *src = v->dxs + ((size_t)r * Tk + j) * C;
                for (int k = 0; k < C; k++)
                    dst[k] += src[k];
            }
        }
    m->ops->backward(m->fe, g, s, v->dlocal, dk);
    if (m->hook) m->hook(m->hook_ctx, GRAD_FRONT, -1);
    m->phase[PHASE_BACKWARD] += now_seconds() - t0;
}

double model_masked_pct(const Model *m) {
    return m->v2 && m->v2->T > 0 ? (double)m->v2->masked / m->v2->T : 0;
}

ModelTrace v2_trace(const Model *m, const Batch *b) {
    V2State *v = m->v2;
    int R = m->B * v->M, T = v->T, C = m->c.enc.C;
    if (!v->trace_noise) /* room for the largest batch: speech batches vary in length */
        v->trace_noise =
            xalloc(sizeof(float) * (size_t)m->Bmax * v->M * v->Tmax * C, "v2 noise for dumps");
    for (size_t i = 0; i < (size_t)R * T; i++) /* the noise: the decoder input's masked slots */
        if (v->masks[i])
            memcpy(v->trace_noise + i * C, v->dec_in + i * C, sizeof(float) * C);
        else
            memset(v->trace_noise + i * C, 0, sizeof(float) * C);
    float *const *layers = (float *const *)m->layers;
    if (v->E) { /* the dump's teacher layers are (B, T, C): without the cls row */
        for (int k = 0; k < m->c.top_k; k++) {
            if (!v->trace_layers[k])
                v->trace_layers[k] =
                    xalloc(sizeof(float) * (size_t)m->Bmax * v->Tmax * C, "v2 layers for dumps");
            for (int b2 = 0; b2 < m->B; b2++)
                memcpy(v->trace_layers[k] + (size_t)b2 * T * C,
                       m->layers[k] + ((size_t)b2 * (v->E + T) + v->E) * C,
                       sizeof(float) * (size_t)T * C);
        }
        layers = v->trace_layers;
    }
    ModelTrace t = {m->B, T, C, m->M, v->masks, v->tgt, v->pred, layers, 0, {{0}}, R};
    t.n_arrays = m->ops->trace(m->fe, b, t.arrays);
    t.arrays[t.n_arrays++] = (TraceArray){"v2_masks", TRACE_U8, 2, {R, T}, v->masks};
    t.arrays[t.n_arrays++] = (TraceArray){"v2_noise", TRACE_F32, 3, {R, T, C}, v->trace_noise};
    if (v->E && m->c.v2c.cls_loss > 0 && t.n_arrays + 2 <= FRONT_MAX_TRACE) {
        t.arrays[t.n_arrays++] = (TraceArray){"cls_predictions", TRACE_F32, 2, {R, C}, v->cls_p};
        t.arrays[t.n_arrays++] = (TraceArray){"cls_targets", TRACE_F32, 2, {R, C}, v->cls_t};
    }
    return t;
}
