/* encoder.c: the transformer encoder stack. Post-LN blocks follow fairseq's
 * TransformerSentenceEncoderLayer (data2vec speech/text); pre-LN blocks with layer scale and drop
 * path follow BEiT (data2vec vision, docs/algorithm.md §2.4). Each block exposes the FFN branch
 * before the last residual and the end-of-block output, the two candidate teacher targets (§1.3).
 */
#include "d2v/encoder.h"

#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

/* ---- profiling (off unless the benchmark turns it on) ---- */

const char *const encoder_prof_names[PROF_NUM] = {"linear (GEMM)", "attention",        "layernorm",
                                                  "gelu",          "residual+dropout", "zero/copy"};
double encoder_prof_seconds[PROF_NUM];
int encoder_prof_on;

#define TIMED(cat, call)                                                                           \
    do {                                                                                           \
        double t0_ = encoder_prof_on ? now_seconds() : 0;                                          \
        call;                                                                                      \
        if (encoder_prof_on) encoder_prof_seconds[cat] += now_seconds() - t0_;                     \
    } while (0)

/* ---- parameters ------------------------------------------------------------------------------ */

void encoder_param_sizes(size_t s[ENCODER_NUM_PARAMS], const EncoderConfig *cfg) {
    size_t L = cfg->L, C = cfg->C, F = cfg->F;
    size_t ls = cfg->layer_scale_init > 0 ? L * C : 0;
    size_t v[ENCODER_NUM_PARAMS] = {L * C, L * C, L * 3 * C * C, L * 3 * C, L * C * C, L * C,
                                    L * C, L * C, L * F * C,     L * F,     L * C * F, L * C,
                                    ls,    ls};
    memcpy(s, v, sizeof v);
}

void encoder_declare(ParamTable *t, EncoderParams *p, const EncoderConfig *c) {
    int64_t L = c->L, C = c->C, F = c->F;
    /* init_bert_params: Linear weights N(0, 0.02), zero biases, LN (1, 0); BEiT: trunc_normal_
     * cut at one std, then attn.proj and mlp.fc2 of block l divided by sqrt(2 l) (1-based,
     * fix_init_weight). docs/algorithm.md §6.5. */
    ParamInit w =
        c->init_beit ? PINIT(INIT_TRUNC_NORMAL, 0.02f, 0.02f) : PINIT(INIT_NORMAL, 0.02f, 0);
    ParamInit wr = w;
    wr.layer_rescale = c->init_beit;
    ptab_add(t, &p->ln1_w, "enc.ln1_w", SHAPE2(L, C), PINIT_ONE, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->ln1_b, "enc.ln1_b", SHAPE2(L, C), PINIT_ZERO, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->qkv_w, "enc.qkv_w", SHAPE3(L, 3 * C, C), w, DECAY_YES, EMA_AVERAGE);
    ptab_add(t, &p->qkv_b, "enc.qkv_b", SHAPE2(L, 3 * C), PINIT_ZERO, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->proj_w, "enc.proj_w", SHAPE3(L, C, C), wr, DECAY_YES, EMA_AVERAGE);
    ptab_add(t, &p->proj_b, "enc.proj_b", SHAPE2(L, C), PINIT_ZERO, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->ln2_w, "enc.ln2_w", SHAPE2(L, C), PINIT_ONE, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->ln2_b, "enc.ln2_b", SHAPE2(L, C), PINIT_ZERO, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->fc1_w, "enc.fc1_w", SHAPE3(L, F, C), w, DECAY_YES, EMA_AVERAGE);
    ptab_add(t, &p->fc1_b, "enc.fc1_b", SHAPE2(L, F), PINIT_ZERO, DECAY_1D, EMA_AVERAGE);
    ptab_add(t, &p->fc2_w, "enc.fc2_w", SHAPE3(L, C, F), wr, DECAY_YES, EMA_AVERAGE);
    ptab_add(t, &p->fc2_b, "enc.fc2_b", SHAPE2(L, C), PINIT_ZERO, DECAY_1D, EMA_AVERAGE);
    if (c->layer_scale_init > 0) {
        ParamInit g = PINIT(INIT_CONST, c->layer_scale_init, 0);
        ptab_add(t, &p->gamma1, "enc.gamma1", SHAPE2(L, C), g, DECAY_1D, EMA_AVERAGE);
        ptab_add(t, &p->gamma2, "enc.gamma2", SHAPE2(L, C), g, DECAY_1D, EMA_AVERAGE);
    }
}

static void declare_any(ParamTable *t, void *p, const void *c) { encoder_declare(t, p, c); }

size_t encoder_params_layout(EncoderParams *p, float *memory, const EncoderConfig *cfg) {
    return ptab_module_layout(declare_any, p, sizeof *p, cfg, memory);
}

void encoder_params_init(EncoderParams *p, const EncoderConfig *cfg, uint64_t seed) {
    ptab_module_init(declare_any, p, sizeof *p, cfg, seed);
    encoder_params_constrain(p, cfg);
}

void encoder_params_constrain(EncoderParams *p, const EncoderConfig *cfg) {
    if (cfg->k_bias) return;
    for (int l = 0; l < cfg->L; l++) /* BEiT: the key projection has no bias */
        memset(p->qkv_b + (size_t)l * 3 * cfg->C + cfg->C, 0, sizeof(float) * cfg->C);
}

/* ---- activation arena ------------------------------------------------------------------------ */

enum {
    A_LN1,
    A_LN1_MEAN,
    A_LN1_RSTD,
    A_QKV,
    A_ATT,
    A_ATTY,
    A_ATTPROJ,
    A_RES1,
    A_LN2,
    A_LN2_MEAN,
    A_LN2_RSTD,
    A_FCH,
    A_FCG,
    A_FFN,
    A_FFN_OUT,
    A_RES2,
    A_ATT_OUT,
    A_NUM
};
enum { G_OUT, G_IN, G_A, G_B, G_C, G_QKV, G_F1, G_F2, G_NUM };

/* Dropout sites per block: hash inputs, so they only need to be distinct. */
#define SITE(l, k) ((uint64_t)RNG_SITE_BLOCKS * ((l) + 1) + (k))
enum { SITE_ATT = 0, SITE_BR1 = 2, SITE_ACT = 4, SITE_BR2 = 6, SITE_LAYERDROP = 8 };

void encoder_init(Encoder *e, const EncoderConfig *cfg, int Bmax, int Tmax, int keep_caches) {
    memset(e, 0, sizeof *e);
    if (cfg->L <= 0 || cfg->C <= 0 || cfg->NH <= 0 || cfg->F <= 0 || cfg->C % cfg->NH)
        die("encoder: bad shape L=%d C=%d NH=%d F=%d (C must be a multiple of NH)", cfg->L, cfg->C,
            cfg->NH, cfg->F);
    e->cfg = *cfg, e->Bmax = Bmax, e->Tmax = Tmax, e->keep_caches = keep_caches;
    size_t N = (size_t)Bmax * Tmax, C = cfg->C, F = cfg->F, L = cfg->L;
    int ls = cfg->layer_scale_init > 0;
    size_t att = cfg->store_attention && keep_caches ? (size_t)Bmax * cfg->NH * Tmax * Tmax : 0;
    size_t size[A_NUM] = {N * C,
                          N,
                          N,
                          3 * N * C,
                          att,
                          N * C,
                          N * C,
                          N * C,
                          N * C,
                          N,
                          N,
                          N * F,
                          N * F,
                          N * C,
                          ls ? N * C : 0,
                          N * C,
                          ls && cfg->keep_attn_out ? N * C : 0};
    /* Without caches every field is one shared layer of scratch, except the per-block outputs
     * the teacher targets are built from (the attention branch only when it is the target). */
    int kept_out = cfg->pre_ln ? A_RES2 : A_LN2, kept_ffn = ls ? A_FFN_OUT : A_FFN;
    int kept_att = !cfg->keep_attn_out ? -1 : ls ? A_ATT_OUT : A_ATTPROJ;
    size_t off = 0;
    for (int f = 0; f < A_NUM; f++) {
        int per_layer = keep_caches || f == kept_out || f == kept_ffn || f == kept_att;
        e->field_size[f] = size[f];
        e->field_stride[f] = per_layer ? size[f] : 0;
        e->field_offset[f] = off;
        off += per_layer ? L * size[f] : size[f];
    }
    e->act_count = off;
    e->act_memory = xalloc(off * sizeof(float), "encoder activations");
    if (keep_caches) {
        e->grad_count = 5 * N * C + 3 * N * C + 2 * N * F;
        e->grad_memory = xalloc(e->grad_count * sizeof(float), "encoder backward scratch");
    }
    e->att_scratch_count = attention_scratch_size(Tmax);
    e->att_scratch = xalloc(e->att_scratch_count * sizeof(float), "attention scratch");
    e->dropped = xalloc(L, "layerdrop flags");
    e->alibi_dm = xalloc(sizeof(double) * (size_t)Bmax * cfg->NH, "ALiBi slope gradients");
    log0("encoder %s arena (B=%d, T=%d): activations %.1f MiB, backward scratch %.1f MiB, "
         "attention scratch %.1f MiB\n",
         keep_caches ? "training" : "forward-only", Bmax, Tmax, e->act_count * 4 / 1048576.0,
         e->grad_count * 4 / 1048576.0, e->att_scratch_count * 4 / 1048576.0);
}

void encoder_free(Encoder *e) {
    free(e->act_memory), free(e->grad_memory), free(e->att_scratch), free(e->dropped);
    free(e->alibi_dm), e->alibi_dm = NULL;
    e->act_memory = e->grad_memory = e->att_scratch = NULL;
    e->dropped = NULL;
}

double encoder_act_mib(const Encoder *e) {
    return (e->act_count + e->grad_count + e->att_scratch_count) * sizeof(float) / 1048576.0;
}

BlockActs encoder_block(const Encoder *e, int l) {
    float *f[A_NUM];
    for (int i = 0; i < A_NUM; i++)
        f[i] = e->act_memory + e->field_offset[i] + (size_t)l * e->field_stride[i];
    BlockActs a = {f[A_LN1],      f[A_LN1_MEAN], f[A_LN1_RSTD], f[A_QKV], f[A_ATT],
                   f[A_ATTY],     f[A_ATTPROJ],  f[A_RES1],     f[A_LN2], f[A_LN2_MEAN],
                   f[A_LN2_RSTD], f[A_FCH],      f[A_FCG],      f[A_FFN], f[A_FFN],
                   f[A_RES2],     NULL,          f[A_ATTPROJ]};
    if (e->field_size[A_FFN_OUT]) a.ffn_out = f[A_FFN_OUT];
    if (e->field_size[A_ATT_OUT]) a.attn_out = f[A_ATT_OUT];
    if (!e->field_size[A_ATT]) a.att = NULL; /* recomputed in the backward */
    a.out = e->cfg.pre_ln ? a.res2 : a.ln2;
    return a;
}

const float *encoder_output(const Encoder *e) { return encoder_block(e, e->cfg.L - 1).out; }

/* ---- forward --------------------------------------------------------------------------------- */

/* One view of a layer's parameters. */
typedef struct {
    const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *ln2_w, *ln2_b;
    const float *fc1_w, *fc1_b, *fc2_w, *fc2_b, *gamma1, *gamma2;
} LayerParams;

static LayerParams layer_params(const EncoderParams *p, const EncoderConfig *c, int l) {
    size_t C = c->C, F = c->F;
    LayerParams lp = {p->ln1_w + l * C,
                      p->ln1_b + l * C,
                      p->qkv_w + l * 3 * C * C,
                      p->qkv_b + l * 3 * C,
                      p->proj_w + l * C * C,
                      p->proj_b + l * C,
                      p->ln2_w + l * C,
                      p->ln2_b + l * C,
                      p->fc1_w + l * F * C,
                      p->fc1_b + l * F,
                      p->fc2_w + l * C * F,
                      p->fc2_b + l * C,
                      p->gamma1 ? p->gamma1 + l * C : NULL,
                      p->gamma2 ? p->gamma2 + l * C : NULL};
    return lp;
}

static float drop_path_at(const EncoderConfig *c, int l) { /* timm: linspace(0, rate, depth) */
    return c->L > 1 ? c->drop_path * l / (c->L - 1) : c->drop_path;
}

static DropKey drop_key(const EncoderRun *r, uint64_t site) {
    DropKey k = {r->seed, r->step, site, r->sample_ids};
    return k;
}

static void block_forward(const Encoder *e, BlockActs a, LayerParams w, const float *in,
                          const EncoderRun *r, int l) {
    const EncoderConfig *c = &e->cfg;
    int B = r->B, T = r->T, N = B * T, C = c->C, F = c->F;
    float pd = r->train ? c->resid_dropout : 0, pp = r->train ? drop_path_at(c, l) : 0;
    const float *h;
    if (c->pre_ln) {
        TIMED(PROF_LAYERNORM, layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, in, w.ln1_w, w.ln1_b,
                                                N, C, c->ln_eps));
        TIMED(PROF_LINEAR, linear_forward(a.qkv, a.ln1, w.qkv_w, w.qkv_b, N, C, 3 * C));
    } else {
        TIMED(PROF_LINEAR, linear_forward(a.qkv, in, w.qkv_w, w.qkv_b, N, C, 3 * C));
    }
    AttnAlibi al = {r->alibi, r->alibi_pos, NULL};
    TIMED(PROF_ATTENTION,
          attention_forward_ex(a.atty, a.att, e->att_scratch, a.qkv, r->key_pad, r->attn_bias,
                               r->alibi ? &al : NULL, B, T, C, c->NH,
                               r->train ? c->attn_dropout : 0, drop_key(r, SITE(l, SITE_ATT))));
    TIMED(PROF_LINEAR, linear_forward(a.attproj, a.atty, w.proj_w, w.proj_b, N, C, C));
    if (a.attn_out != a.attproj) { /* keep_attn_out with layer scale: BEiT's gamma_1 */
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int i = 0; i < C; i++)
                a.attn_out[(size_t)n * C + i] = w.gamma1[i] * a.attproj[(size_t)n * C + i];
    }
    TIMED(PROF_RESIDUAL, branch_add_forward(a.res1, in, a.attproj, w.gamma1, B, T, C, pd, pp,
                                            drop_key(r, SITE(l, SITE_BR1))));
    if (c->pre_ln) {
        TIMED(PROF_LAYERNORM, layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res1, w.ln2_w,
                                                w.ln2_b, N, C, c->ln_eps));
        h = a.ln2;
    } else {
        TIMED(PROF_LAYERNORM, layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, a.res1, w.ln1_w,
                                                w.ln1_b, N, C, c->ln_eps));
        h = a.ln1;
    }
    TIMED(PROF_LINEAR, linear_forward(a.fch, h, w.fc1_w, w.fc1_b, N, C, F));
    TIMED(PROF_GELU, gelu_forward(a.fcg, a.fch, (size_t)N * F));
    if (r->train && c->act_dropout > 0)
        TIMED(PROF_RESIDUAL, dropout_forward(a.fcg, a.fcg, B, (size_t)T * F, c->act_dropout,
                                             drop_key(r, SITE(l, SITE_ACT))));
    TIMED(PROF_LINEAR, linear_forward(a.ffn, a.fcg, w.fc2_w, w.fc2_b, N, F, C));
    if (a.ffn_out != a.ffn) { /* the target tensor includes the layer scale (BEiT "fc") */
#pragma omp parallel for
        for (int n = 0; n < N; n++)
            for (int i = 0; i < C; i++)
                a.ffn_out[(size_t)n * C + i] = w.gamma2[i] * a.ffn[(size_t)n * C + i];
    }
    const float *base = c->pre_ln ? a.res1 : a.ln1;
    TIMED(PROF_RESIDUAL, branch_add_forward(a.res2, base, a.ffn, w.gamma2, B, T, C, pd, pp,
                                            drop_key(r, SITE(l, SITE_BR2))));
    if (!c->pre_ln)
        TIMED(PROF_LAYERNORM, layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.res2, w.ln2_w,
                                                w.ln2_b, N, C, c->ln_eps));
}

static int layer_dropped(const EncoderConfig *c, const EncoderRun *r, int l) {
    if (!r->train || c->layerdrop <= 0) return 0;
    /* One draw per (step, block), identical on every rank (fairseq LayerDropModuleList). */
    return rng_uniform(rng_key(r->seed, r->step, UINT64_MAX, SITE(l, SITE_LAYERDROP)), 0) <
           c->layerdrop;
}

void encoder_forward(Encoder *e, const EncoderParams *p, const float *x, const EncoderRun *r) {
    if (r->B <= 0 || r->T <= 0 || r->B > e->Bmax || r->T > e->Tmax)
        die("encoder: batch %d x %d exceeds the arena sized for %d x %d", r->B, r->T, e->Bmax,
            e->Tmax);
    e->B = r->B, e->T = r->T;
    size_t n = (size_t)r->B * r->T * e->cfg.C;
    const float *in = x;
    for (int l = 0; l < e->cfg.L; l++) {
        BlockActs a = encoder_block(e, l);
        e->dropped[l] = (uint8_t)layer_dropped(&e->cfg, r, l);
        if (e->dropped[l]) {
            TIMED(PROF_MEMORY, memcpy(a.out, in, n * sizeof(float)));
            TIMED(PROF_MEMORY, memset(a.ffn_out, 0, n * sizeof(float)));
            if (e->cfg.keep_attn_out) TIMED(PROF_MEMORY, memset(a.attn_out, 0, n * sizeof(float)));
        } else {
            block_forward(e, a, layer_params(p, &e->cfg, l), in, r, l);
        }
        in = a.out;
    }
}

/* ---- backward -------------------------------------------------------------------------------- */

typedef struct {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *ln2_w, *ln2_b;
    float *fc1_w, *fc1_b, *fc2_w, *fc2_b, *gamma1, *gamma2;
} LayerGrads;

static LayerGrads layer_grads(EncoderParams *g, const EncoderConfig *c, int l) {
    LayerParams v = layer_params(g, c, l);
    LayerGrads lg; /* same offsets as the parameters: the gradient arena mirrors them */
    memcpy(&lg, &v, sizeof lg);
    return lg;
}

static void zero(float *x, size_t n) { memset(x, 0, n * sizeof(float)); }

/* gin = dL/d(in) from gout = dL/d(out); both (N, C); g holds the other scratch buffers. */
static void block_backward(const Encoder *e, BlockActs a, LayerParams w, LayerGrads dw,
                           float *g[G_NUM], float *dattn_bias, const float *in, const EncoderRun *r,
                           int l) {
    const EncoderConfig *c = &e->cfg;
    int B = r->B, T = r->T, N = B * T, C = c->C, F = c->F;
    size_t NC = (size_t)N * C, NF = (size_t)N * F;
    float pd = r->train ? c->resid_dropout : 0, pp = r->train ? drop_path_at(c, l) : 0;
    float *gout = g[G_OUT], *gin = g[G_IN];
    float *dbase; /* gradient of the last residual's skip input: x1 (post-LN) or res1 (pre-LN) */
    const float *gres2;
    if (c->pre_ln) {
        gres2 = gout;
        TIMED(PROF_MEMORY, zero(g[G_A], NC));
        dbase = g[G_A];
    } else {
        TIMED(PROF_MEMORY, zero(g[G_A], NC));
        TIMED(PROF_LAYERNORM, layernorm_backward(g[G_A], dw.ln2_w, dw.ln2_b, gout, a.res2, w.ln2_w,
                                                 a.ln2_mean, a.ln2_rstd, N, C));
        gres2 = g[G_A];
        TIMED(PROF_MEMORY, zero(g[G_B], NC));
        dbase = g[G_B];
    }
    TIMED(PROF_MEMORY, zero(g[G_C], NC));
    TIMED(PROF_RESIDUAL, branch_add_backward(dbase, g[G_C], dw.gamma2, gres2, a.ffn, w.gamma2, B, T,
                                             C, pd, pp, drop_key(r, SITE(l, SITE_BR2))));
    TIMED(PROF_MEMORY, zero(g[G_F1], NF));
    TIMED(PROF_LINEAR,
          linear_backward(g[G_F1], dw.fc2_w, dw.fc2_b, g[G_C], a.fcg, w.fc2_w, N, F, C));
    float *dfch;
    if (r->train && c->act_dropout > 0) {
        TIMED(PROF_MEMORY, zero(g[G_F2], NF));
        TIMED(PROF_RESIDUAL, dropout_backward(g[G_F2], g[G_F1], B, (size_t)T * F, c->act_dropout,
                                              drop_key(r, SITE(l, SITE_ACT))));
        TIMED(PROF_MEMORY, zero(g[G_F1], NF));
        TIMED(PROF_GELU, gelu_backward(g[G_F1], a.fch, g[G_F2], NF));
        dfch = g[G_F1];
    } else {
        TIMED(PROF_MEMORY, zero(g[G_F2], NF));
        TIMED(PROF_GELU, gelu_backward(g[G_F2], a.fch, g[G_F1], NF));
        dfch = g[G_F2];
    }
    float *dres1;
    if (c->pre_ln) {
        TIMED(PROF_MEMORY, zero(g[G_B], NC));
        TIMED(PROF_LINEAR,
              linear_backward(g[G_B], dw.fc1_w, dw.fc1_b, dfch, a.ln2, w.fc1_w, N, C, F));
        TIMED(PROF_LAYERNORM, layernorm_backward(g[G_A], dw.ln2_w, dw.ln2_b, g[G_B], a.res1,
                                                 w.ln2_w, a.ln2_mean, a.ln2_rstd, N, C));
        dres1 = g[G_A];
    } else {
        TIMED(PROF_LINEAR,
              linear_backward(g[G_B], dw.fc1_w, dw.fc1_b, dfch, a.ln1, w.fc1_w, N, C, F));
        TIMED(PROF_MEMORY, zero(g[G_A], NC));
        TIMED(PROF_LAYERNORM, layernorm_backward(g[G_A], dw.ln1_w, dw.ln1_b, g[G_B], a.res1,
                                                 w.ln1_w, a.ln1_mean, a.ln1_rstd, N, C));
        dres1 = g[G_A];
    }
    TIMED(PROF_MEMORY, zero(gin, NC));
    TIMED(PROF_MEMORY, zero(g[G_C], NC));
    TIMED(PROF_RESIDUAL, branch_add_backward(gin, g[G_C], dw.gamma1, dres1, a.attproj, w.gamma1, B,
                                             T, C, pd, pp, drop_key(r, SITE(l, SITE_BR1))));
    TIMED(PROF_MEMORY, zero(g[G_B], NC));
    TIMED(PROF_LINEAR,
          linear_backward(g[G_B], dw.proj_w, dw.proj_b, g[G_C], a.atty, w.proj_w, N, C, C));
    TIMED(PROF_MEMORY, zero(g[G_QKV], 3 * NC));
    AttnAlibi al = {r->alibi, r->alibi_pos, r->dalibi ? e->alibi_dm : NULL};
    TIMED(PROF_ATTENTION,
          attention_backward_ex(g[G_QKV], dattn_bias, e->att_scratch, g[G_B], a.qkv, a.att,
                                r->key_pad, r->attn_bias, r->alibi ? &al : NULL, B, T, C, c->NH,
                                r->train ? c->attn_dropout : 0, drop_key(r, SITE(l, SITE_ATT))));
    if (r->alibi && r->dalibi) /* rows in order: the same sum on any thread count */
        for (int h = 0; h < c->NH; h++) {
            double acc = 0;
            for (int b = 0; b < B; b++)
                acc += e->alibi_dm[(size_t)b * c->NH + h];
            r->dalibi[h] += (float)acc;
        }
    if (c->pre_ln) {
        TIMED(PROF_MEMORY, zero(g[G_A], NC));
        TIMED(PROF_LINEAR,
              linear_backward(g[G_A], dw.qkv_w, dw.qkv_b, g[G_QKV], a.ln1, w.qkv_w, N, C, 3 * C));
        TIMED(PROF_LAYERNORM, layernorm_backward(gin, dw.ln1_w, dw.ln1_b, g[G_A], in, w.ln1_w,
                                                 a.ln1_mean, a.ln1_rstd, N, C));
    } else {
        TIMED(PROF_LINEAR,
              linear_backward(gin, dw.qkv_w, dw.qkv_b, g[G_QKV], in, w.qkv_w, N, C, 3 * C));
    }
}

void encoder_backward(Encoder *e, EncoderParams *grads, float *dx, float *dattn_bias,
                      const EncoderParams *p, const float *x, const EncoderRun *r,
                      const float *dout) {
    if (!e->keep_caches) die("encoder: backward called on a forward-only (teacher) encoder");
    if (r->B != e->B || r->T != e->T) die("encoder: backward shape differs from the forward's");
    size_t N = (size_t)r->B * r->T, NC = N * e->cfg.C, NF = N * e->cfg.F;
    size_t NCmax = (size_t)e->Bmax * e->Tmax * e->cfg.C,
           NFmax = (size_t)e->Bmax * e->Tmax * e->cfg.F;
    float *g[G_NUM], *m = e->grad_memory;
    size_t sizes[G_NUM] = {NCmax, NCmax, NCmax, NCmax, NCmax, 3 * NCmax, NFmax, NFmax};
    for (int i = 0; i < G_NUM; i++)
        g[i] = m, m += sizes[i];
    (void)NF;
    TIMED(PROF_MEMORY, memcpy(g[G_OUT], dout, NC * sizeof(float)));
    for (int l = e->cfg.L - 1; l >= 0; l--) {
        if (!e->dropped[l]) { /* a dropped block is the identity: the gradient passes through */
            const float *in = l == 0 ? x : encoder_block(e, l - 1).out;
            block_backward(e, encoder_block(e, l), layer_params(p, &e->cfg, l),
                           layer_grads(grads, &e->cfg, l), g, dattn_bias, in, r, l);
            float *t = g[G_OUT];
            g[G_OUT] = g[G_IN], g[G_IN] = t;
        }
        if (!e->cfg.k_bias) /* BEiT: no key bias, so no gradient for it (before any reduction) */
            memset(grads->qkv_b + (size_t)l * 3 * e->cfg.C + e->cfg.C, 0, sizeof(float) * e->cfg.C);
        if (r->block_done) r->block_done(r->block_ctx, l);
    }
    if (dx) residual_backward(dx, NULL, g[G_OUT], NC);
}
