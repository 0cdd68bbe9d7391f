/* model.c: the data2vec student and EMA teacher around one modality (spec §0): masking, the
 * student's forward and backward, the teacher's forward-only pass on the unmasked input, top-K
 * targets, the regression head and the loss. */
#include "d2v/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/objective.h"
#include "d2v/util.h"

int model_width(const ModelConfig *c) { return c->enc.C; }

static int head_hidden(const ModelConfig *c) {
    return c->head_layers == 2 ? 2 * c->enc.C : c->enc.C;
}

/* ---- parameters ---- */

static size_t frontend_layout(ModelParams *p, float *mem, const ModelConfig *c) {
    if (c->modality == D2V_TEXT) return text_embed_params_layout(&p->text, mem, &c->text);
    if (c->modality == D2V_IMAGE) return image_embed_params_layout(&p->image, mem, &c->image);
    return speech_embed_params_layout(&p->speech, mem, &c->speech);
}

size_t model_params_layout(ModelParams *p, float *memory, const ModelConfig *c) {
    ModelParams dummy;
    if (!p) p = &dummy;
    size_t C = c->enc.C, H = head_hidden(c), n = 0;
    n += frontend_layout(p, memory ? memory + n : NULL, c);
    n += encoder_params_layout(&p->enc, memory ? memory + n : NULL, &c->enc);
    float **ptrs[6] = {&p->final_ln_w, &p->final_ln_b, &p->head_w1,
                       &p->head_b1,    &p->head_w2,    &p->head_b2};
    size_t sizes[6] = {c->final_norm ? C : 0,           c->final_norm ? C : 0,      H * C, H,
                       c->head_layers == 2 ? C * H : 0, c->head_layers == 2 ? C : 0};
    for (int i = 0; i < 6; i++) {
        if (memory) *ptrs[i] = sizes[i] ? memory + n : NULL;
        n += sizes[i];
    }
    return n;
}

void model_params_init(ModelParams *p, const ModelConfig *c, uint64_t seed) {
    if (c->modality == D2V_TEXT)
        text_embed_params_init(&p->text, &c->text, seed + 1);
    else if (c->modality == D2V_IMAGE)
        image_embed_params_init(&p->image, &c->image, seed + 1);
    else
        speech_embed_params_init(&p->speech, &c->speech, seed + 1);
    encoder_params_init(&p->enc, &c->enc, seed + 2);
    size_t C = c->enc.C, H = head_hidden(c);
    if (p->final_ln_w)
        for (size_t i = 0; i < C; i++)
            p->final_ln_w[i] = 1, p->final_ln_b[i] = 0;
    /* heads: nn.Linear default init, uniform +-1/sqrt(fan_in) */
    uint64_t k = rng_key(seed, 0x4ead, 0, 0);
    float a = 1.0f / sqrtf((float)C);
    for (size_t i = 0; i < H * C; i++)
        p->head_w1[i] = a * (2 * rng_uniform(k, i) - 1);
    for (size_t i = 0; i < H; i++)
        p->head_b1[i] = a * (2 * rng_uniform(k, H * C + i) - 1);
    if (p->head_w2) {
        float b = 1.0f / sqrtf((float)H);
        k = rng_key(seed, 0x4ead, 1, 0);
        for (size_t i = 0; i < C * H; i++)
            p->head_w2[i] = b * (2 * rng_uniform(k, i) - 1);
        for (size_t i = 0; i < C; i++)
            p->head_b2[i] = b * (2 * rng_uniform(k, C * H + i) - 1);
    }
}

void model_decay_mask(uint8_t *mask, const ModelConfig *c, int exempt_1d) {
    size_t n = model_params_layout(NULL, NULL, c);
    memset(mask, 1, n);
    if (!exempt_1d) return;
    /* 1-D tensors: every bias, norm weight/bias, layer scale, token and the mask embedding. The
     * arena is walked by re-laying it out over a fake base and testing each tensor's shape. */
    ModelParams p;
    float *base = (float *)(uintptr_t)64; /* never dereferenced: offsets only */
    model_params_layout(&p, base, c);
    size_t C = c->enc.C, L = c->enc.L;
#define EXEMPT(ptr, count)                                                                         \
    do {                                                                                           \
        if (ptr) memset(mask + ((ptr)-base), 0, (count));                                          \
    } while (0)
    EncoderParams *e = &p.enc;
    EXEMPT(e->ln1_w, L * C);
    EXEMPT(e->ln1_b, L * C);
    EXEMPT(e->qkv_b, L * 3 * C);
    EXEMPT(e->proj_b, L * C);
    EXEMPT(e->ln2_w, L * C);
    EXEMPT(e->ln2_b, L * C);
    EXEMPT(e->fc1_b, L * (size_t)c->enc.F);
    EXEMPT(e->fc2_b, L * C);
    EXEMPT(e->gamma1, L * C);
    EXEMPT(e->gamma2, L * C);
    EXEMPT(p.final_ln_w, C);
    EXEMPT(p.final_ln_b, C);
    EXEMPT(p.head_b1, (size_t)head_hidden(c));
    EXEMPT(p.head_b2, C);
    if (c->modality == D2V_TEXT) {
        EXEMPT(p.text.ln_w, C);
        EXEMPT(p.text.ln_b, C);
    } else if (c->modality == D2V_IMAGE) {
        EXEMPT(p.image.patch_b, C);
        EXEMPT(p.image.cls, C);
        EXEMPT(p.image.mask_token, C);
        EXEMPT(p.image.pos, (size_t)image_embed_tokens(&c->image) * C);
        EXEMPT(p.image.rel_table,
               (size_t)image_rel_table_rows(&c->image) * c->image.heads); /* timm: pos_embed */
    } else {
        const SpeechEmbedConfig *s = &c->speech;
        for (int i = 0; i < s->n_conv; i++) {
            EXEMPT(p.speech.conv_ln_w[i], s->conv_dim[i]);
            EXEMPT(p.speech.conv_ln_b[i], s->conv_dim[i]);
        }
        EXEMPT(p.speech.feat_ln_w, s->conv_dim[s->n_conv - 1]);
        EXEMPT(p.speech.feat_ln_b, s->conv_dim[s->n_conv - 1]);
        EXEMPT(p.speech.proj_b, C);
        EXEMPT(p.speech.mask_emb, C);
        for (int j = 0; j < s->pos_layers; j++)
            EXEMPT(p.speech.pos_b[j], C);
        EXEMPT(p.speech.enc_ln_w, C);
        EXEMPT(p.speech.enc_ln_b, C);
    }
#undef EXEMPT
}

typedef struct {
    ParamInfo *out;
    int n, max;
    const float *base;
} Table;

static void add(Table *t, const char *name, const float *ptr, int rank, int64_t d0, int64_t d1,
                int64_t d2, int64_t d3) {
    if (!ptr) return; /* absent tensor (e.g. no layer scale) */
    if (t->n == t->max) die("model: parameter table overflow (%d tensors)", t->max);
    ParamInfo *p = &t->out[t->n++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->offset = (size_t)(ptr - t->base), p->rank = rank;
    int64_t d[4] = {d0, d1, d2, d3};
    p->count = 1;
    for (int i = 0; i < 4; i++)
        p->shape[i] = i < rank ? d[i] : 0, p->count *= i < rank ? d[i] : 1;
}

int model_param_table(ParamInfo *out, int max, const ModelConfig *c) {
    ModelParams p;
    float *base = (float *)(uintptr_t)64; /* offsets only, never dereferenced */
    model_params_layout(&p, base, c);
    Table t = {out, 0, max, base};
    int64_t C = c->enc.C, L = c->enc.L, F = c->enc.F, H = head_hidden(c);
    char name[48];
    if (c->modality == D2V_TEXT) {
        add(&t, "text.tok", p.text.tok, 2, c->text.V, C, 0, 0);
        add(&t, "text.pos", p.text.pos, 2, text_embed_pos_rows(&c->text), C, 0, 0);
        add(&t, "text.ln_w", p.text.ln_w, 1, C, 0, 0, 0);
        add(&t, "text.ln_b", p.text.ln_b, 1, C, 0, 0, 0);
    } else if (c->modality == D2V_IMAGE) {
        const ImageEmbedConfig *im = &c->image;
        add(&t, "image.patch_w", p.image.patch_w, 4, C, im->Cin, im->P, im->P);
        add(&t, "image.patch_b", p.image.patch_b, 1, C, 0, 0, 0);
        add(&t, "image.cls", p.image.cls, 1, C, 0, 0, 0);
        add(&t, "image.mask_token", p.image.mask_token, 1, C, 0, 0, 0);
        add(&t, "image.pos", p.image.pos, 2, image_embed_tokens(im), C, 0, 0);
        add(&t, "image.rel_pos_table", p.image.rel_table, 2, image_rel_table_rows(im), im->heads, 0,
            0);
    } else {
        const SpeechEmbedConfig *sp = &c->speech;
        for (int i = 0; i < sp->n_conv; i++) {
            int in = i ? sp->conv_dim[i - 1] : 1;
            snprintf(name, sizeof name, "speech.conv_w.%d", i);
            add(&t, name, p.speech.conv_w[i], 3, sp->conv_dim[i], in, sp->conv_k[i], 0);
            snprintf(name, sizeof name, "speech.conv_ln_w.%d", i);
            add(&t, name, p.speech.conv_ln_w[i], 1, sp->conv_dim[i], 0, 0, 0);
            snprintf(name, sizeof name, "speech.conv_ln_b.%d", i);
            add(&t, name, p.speech.conv_ln_b[i], 1, sp->conv_dim[i], 0, 0, 0);
        }
        int64_t D = sp->conv_dim[sp->n_conv - 1];
        add(&t, "speech.feat_ln_w", p.speech.feat_ln_w, 1, D, 0, 0, 0);
        add(&t, "speech.feat_ln_b", p.speech.feat_ln_b, 1, D, 0, 0, 0);
        add(&t, "speech.proj_w", p.speech.proj_w, 2, C, D, 0, 0);
        add(&t, "speech.proj_b", p.speech.proj_b, 1, C, 0, 0, 0);
        add(&t, "speech.mask_emb", p.speech.mask_emb, 1, C, 0, 0, 0);
        for (int j = 0; j < sp->pos_layers; j++) {
            snprintf(name, sizeof name, "speech.pos_w.%d", j);
            add(&t, name, p.speech.pos_w[j], 3, C, C / sp->pos_groups, sp->pos_k, 0);
            snprintf(name, sizeof name, "speech.pos_b.%d", j);
            add(&t, name, p.speech.pos_b[j], 1, C, 0, 0, 0);
        }
        add(&t, "speech.enc_ln_w", p.speech.enc_ln_w, 1, C, 0, 0, 0);
        add(&t, "speech.enc_ln_b", p.speech.enc_ln_b, 1, C, 0, 0, 0);
    }
    const EncoderParams *e = &p.enc;
    add(&t, "enc.ln1_w", e->ln1_w, 2, L, C, 0, 0), add(&t, "enc.ln1_b", e->ln1_b, 2, L, C, 0, 0);
    add(&t, "enc.qkv_w", e->qkv_w, 3, L, 3 * C, C, 0);
    add(&t, "enc.qkv_b", e->qkv_b, 2, L, 3 * C, 0, 0);
    add(&t, "enc.proj_w", e->proj_w, 3, L, C, C, 0);
    add(&t, "enc.proj_b", e->proj_b, 2, L, C, 0, 0);
    add(&t, "enc.ln2_w", e->ln2_w, 2, L, C, 0, 0), add(&t, "enc.ln2_b", e->ln2_b, 2, L, C, 0, 0);
    add(&t, "enc.fc1_w", e->fc1_w, 3, L, F, C, 0), add(&t, "enc.fc1_b", e->fc1_b, 2, L, F, 0, 0);
    add(&t, "enc.fc2_w", e->fc2_w, 3, L, C, F, 0), add(&t, "enc.fc2_b", e->fc2_b, 2, L, C, 0, 0);
    add(&t, "enc.gamma1", e->gamma1, 2, L, C, 0, 0);
    add(&t, "enc.gamma2", e->gamma2, 2, L, C, 0, 0);
    add(&t, "final_ln_w", p.final_ln_w, 1, C, 0, 0, 0);
    add(&t, "final_ln_b", p.final_ln_b, 1, C, 0, 0, 0);
    add(&t, "head_w1", p.head_w1, 2, H, C, 0, 0), add(&t, "head_b1", p.head_b1, 1, H, 0, 0, 0);
    add(&t, "head_w2", p.head_w2, 2, C, H, 0, 0), add(&t, "head_b2", p.head_b2, 1, C, 0, 0, 0);
    return t.n;
}

int model_ema_ranges(ParamRange *r, const ModelConfig *c) {
    ModelParams p;
    float *base = (float *)(uintptr_t)64;
    model_params_layout(&p, base, c);
    size_t fe = frontend_layout(&p, NULL, c);
    size_t enc = encoder_params_layout(&p.enc, NULL, &c->enc);
    model_params_layout(&p, base, c);
    int n = 0;
    if (c->ema_frontend)
        r[n++] = (ParamRange){0, fe};
    else if (c->modality == D2V_SPEECH) /* v1 audio: the encoder LN is EMA'd, pos_conv shared */
        r[n++] = (ParamRange){(size_t)(p.speech.enc_ln_w - base), 2 * (size_t)c->enc.C};
    r[n++] = (ParamRange){fe, enc};
    return n;
}

void model_teacher_view(ModelParams *t, const ModelParams *student, float *teacher_memory,
                        const ModelConfig *c) {
    model_params_layout(t, teacher_memory, c);
    if (c->ema_frontend) return;
    if (c->modality == D2V_TEXT) t->text = student->text;
    if (c->modality == D2V_IMAGE) t->image = student->image;
    if (c->modality == D2V_SPEECH) {
        float *ln_w = t->speech.enc_ln_w, *ln_b = t->speech.enc_ln_b;
        t->speech = student->speech;
        t->speech.enc_ln_w = ln_w, t->speech.enc_ln_b = ln_b;
    }
}

/* ---- activations ---- */

struct Model {
    ModelConfig c;
    int Bmax, Tmax, B, T, M;
    TextEmbed text_s, text_t;
    ImageEmbed image_s, image_t;
    SpeechFeatures feat;
    SpeechContext ctx_s, ctx_t;
    Encoder enc_s, enc_t;
    int32_t *tokens_in;  // (B, T) text: the student's masked input
    uint8_t *sel, *mask; // (B, T) loss positions; input mask (image: per patch)
    int *scratch_i;      // masking scratch
    float *targets, *gathered, *normed, *fn_mean, *fn_rstd; // (M, C) rows
    float *hid, *hid_act, *pred;               // head activations: (M, H), (M, H), (M, C)
    float *dpred, *dhid, *dnormed, *dgathered; // head gradients
    float *dout;                               // (B, T, C) gradient of the student's encoder output
    float *dfront;                  // (B, T, C) gradient of the encoder input / speech features
    float *tscratch;                // targets_build scratch
    float *layers[64];              // teacher top-K layer pointers
    float *bias_s, *bias_t, *dbias; // (NH, T, T) image relative position bias, or NULL
    double phase[PHASE_NUM];        // seconds per phase
};

const char *const model_phase_names[PHASE_NUM] = {
    "teacher encoder + targets", "front-ends + student forward", "head + loss", "student backward"};
void model_phase_times(const Model *m, double out[PHASE_NUM]) {
    memcpy(out, m->phase, sizeof m->phase);
}
void model_phase_reset(Model *m) { memset(m->phase, 0, sizeof m->phase); }

Model *model_create(const ModelConfig *c, int Bmax, int T_or_Smax) {
    Model *m = xalloc(sizeof *m, "model");
    m->c = *c, m->Bmax = Bmax;
    int C = c->enc.C;
    if (c->top_k <= 0 || c->top_k > c->enc.L || c->top_k > 64)
        die("model: top_k %d must be in 1..L (L = %d)", c->top_k, c->enc.L);
    if (c->modality == D2V_TEXT) {
        m->Tmax = T_or_Smax;
        text_embed_init(&m->text_s, &c->text, Bmax, m->Tmax);
        text_embed_init(&m->text_t, &c->text, Bmax, m->Tmax);
    } else if (c->modality == D2V_IMAGE) {
        m->Tmax = image_embed_tokens(&c->image);
        image_embed_init(&m->image_s, &c->image, Bmax);
        image_embed_init(&m->image_t, &c->image, Bmax);
        if (c->image.pos == IMAGE_POS_RELATIVE) {
            size_t nb = (size_t)c->enc.NH * m->Tmax * m->Tmax * sizeof(float);
            m->bias_s = xalloc(nb, "relative bias"), m->bias_t = xalloc(nb, "relative bias");
            m->dbias = xalloc(nb, "relative bias gradient");
        }
    } else {
        speech_features_init(&m->feat, &c->speech, Bmax, T_or_Smax);
        m->Tmax = m->feat.Tmax;
        speech_context_init(&m->ctx_s, &c->speech, Bmax, m->Tmax, 1);
        speech_context_init(&m->ctx_t, &c->speech, Bmax, m->Tmax, 0);
    }
    encoder_init(&m->enc_s, &c->enc, Bmax, m->Tmax, 1);
    encoder_init(&m->enc_t, &c->enc, Bmax, m->Tmax, 0);
    size_t N = (size_t)Bmax * m->Tmax, NC = N * C, NH = N * head_hidden(c);
    m->tokens_in = xalloc(N * sizeof(int32_t), "student tokens");
    m->sel = xalloc(N, "loss positions"), m->mask = xalloc(N, "input mask");
    m->scratch_i = xalloc(sizeof(int) * 2 * (m->Tmax + 16), "mask scratch");
    m->targets = xalloc(NC * 4, "targets"), m->gathered = xalloc(NC * 4, "masked outputs");
    m->normed = xalloc(NC * 4, "final norm"), m->fn_mean = xalloc(N * 4, "final norm mean");
    m->fn_rstd = xalloc(N * 4, "final norm rstd");
    m->hid = xalloc(NH * 4, "head hidden"), m->hid_act = xalloc(NH * 4, "head GELU");
    m->pred = xalloc(NC * 4, "predictions"), m->dpred = xalloc(NC * 4, "d predictions");
    m->dhid = xalloc(NH * 4, "d head hidden"), m->dnormed = xalloc(NC * 4, "d final norm");
    m->dgathered = xalloc(NC * 4, "d masked outputs"), m->dout = xalloc(NC * 4, "d encoder out");
    m->dfront = xalloc(NC * 4, "d encoder in");
    m->tscratch = xalloc((NC + 2 * (size_t)Bmax * C) * 4, "target scratch");
    return m;
}

void model_destroy(Model *m) {
    if (!m) return;
    if (m->c.modality == D2V_TEXT) text_embed_free(&m->text_s), text_embed_free(&m->text_t);
    if (m->c.modality == D2V_IMAGE) image_embed_free(&m->image_s), image_embed_free(&m->image_t);
    if (m->c.modality == D2V_SPEECH) {
        speech_features_free(&m->feat);
        speech_context_free(&m->ctx_s), speech_context_free(&m->ctx_t);
    }
    encoder_free(&m->enc_s), encoder_free(&m->enc_t);
    float *f[] = {m->targets, m->gathered,  m->normed, m->fn_mean, m->fn_rstd,
                  m->hid,     m->hid_act,   m->pred,   m->dpred,   m->dhid,
                  m->dnormed, m->dgathered, m->dout,   m->dfront,  m->tscratch};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        free(f[i]);
    free(m->bias_s), free(m->bias_t), free(m->dbias);
    free(m->tokens_in), free(m->sel), free(m->mask), free(m->scratch_i), free(m);
}

double model_act_mib(const Model *m) {
    return encoder_act_mib(&m->enc_s) + encoder_act_mib(&m->enc_t);
}

/* ---- one micro-batch ---- */

/* Masks for the batch: fills m->mask (student input), m->sel (loss positions, (B, T)) and,
 * for text, the student's input ids. Keys: (seed, epoch, global sample id). */
static void make_masks(Model *m, const Batch *b, uint64_t seed) {
    const ModelConfig *c = &m->c;
    int B = b->B, T = m->T;
    memset(m->sel, 0, (size_t)B * T);
    if (c->modality == D2V_TEXT) {
        for (int i = 0; i < B; i++) {
            const int32_t *row = b->tokens + (size_t)i * T;
            int len = T;
            while (len > 0 && row[len - 1] == c->text.pad_id)
                len--;
            MaskRng r =
                mask_rng(seed, (uint64_t)b->epoch, (uint64_t)b->ids[i], D2V_MASK_STREAM_TEXT);
            memcpy(m->tokens_in + (size_t)i * T, row, sizeof(int32_t) * T);
            text_mask_sample(m->tokens_in + (size_t)i * T, m->sel + (size_t)i * T, row, len,
                             &c->text_mask, &r, m->scratch_i);
        }
    } else if (c->modality == D2V_IMAGE) {
        int gh = c->image.H / c->image.P, gw = c->image.W / c->image.P, Np = gh * gw;
        int off = !!c->image.cls;
        for (int i = 0; i < B; i++) {
            MaskRng r =
                mask_rng(seed, (uint64_t)b->epoch, (uint64_t)b->ids[i], D2V_MASK_STREAM_IMAGE);
            uint8_t *mk = m->mask + (size_t)i * Np;
            block_mask_sample(mk, gh, gw, &c->image_mask, &r);
            memcpy(m->sel + (size_t)i * T + off, mk, Np); /* the cls token is never a target */
        }
    } else {
        span_mask_batch(m->mask, B, T, &c->speech_mask, seed, (uint64_t)b->epoch, b->ids,
                        m->scratch_i);
        memcpy(m->sel, m->mask, (size_t)B * T);
    }
}

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
    const ModelConfig *c = &m->c;
    int B = b->B, C = c->enc.C, H = head_hidden(c);
    /* front-end dropout sites: text 1, speech 2 (encoder.c's per-block sites start at 16) */
    DropKey dk = {seed, step, 1, b->ids}, dk_speech = {seed, step, 2, b->ids};
    const float *x_s, *x_t;
    const uint8_t *pad = NULL;
    double t0 = now_seconds(), t1;
    /* 1. masks and both front-ends: the student sees the masked input, the teacher the full one */
    if (c->modality == D2V_TEXT) {
        m->T = b->T;
        make_masks(m, b, seed);
        text_embed_forward(&m->text_s, &s->text, m->tokens_in, B, m->T, 1, dk);
        text_embed_forward(&m->text_t, &t->text, b->tokens, B, m->T, 0, dk);
        x_s = m->text_s.out, x_t = m->text_t.out, pad = m->text_s.pad;
    } else if (c->modality == D2V_IMAGE) {
        m->T = image_embed_tokens(&c->image);
        make_masks(m, b, seed);
        image_embed_forward(&m->image_s, &s->image, b->images, m->mask, B);
        image_embed_forward(&m->image_t, &t->image, b->images, NULL, B);
        x_s = m->image_s.out, x_t = m->image_t.out;
        if (m->bias_s) { /* BEiT's shared relative position bias, one per network */
            image_rel_bias_forward(&m->image_s, m->bias_s, &s->image);
            image_rel_bias_forward(&m->image_t, m->bias_t, &t->image);
        }
    } else {
        speech_features_forward(&m->feat, &s->speech, b->audio, B, b->S);
        m->T = m->feat.T;
        make_masks(m, b, seed);
        speech_context_forward(&m->ctx_s, &s->speech, m->feat.features, m->mask, B, m->T, 1,
                               dk_speech);
        speech_context_forward(&m->ctx_t, &t->speech, m->feat.features, NULL, B, m->T, 0,
                               dk_speech);
        x_s = m->ctx_s.out, x_t = m->ctx_t.out;
    }
    int T = m->T;
    size_t N = (size_t)B * T;
    t1 = now_seconds();
    m->phase[PHASE_STUDENT_FWD] += t1 - t0;
    t0 = t1; /* both front-ends */
    /* 2. teacher: forward only, no dropout; top-K targets at the loss positions */
    /* the teacher's padding comes from its own (unmasked) input */
    EncoderRun rt = {
        B, T, c->modality == D2V_TEXT ? m->text_t.pad : NULL, m->bias_t, 0, seed, step, b->ids};
    encoder_forward(&m->enc_t, &t->enc, x_t, &rt);
    for (int k = 0; k < c->top_k; k++) {
        BlockActs a = encoder_block(&m->enc_t, c->enc.L - c->top_k + k);
        m->layers[k] = c->target_ffn ? a.ffn_out : a.out;
    }
    int M = targets_build(m->targets, m->layers, c->top_k, B, T, C, c->target_norm,
                          c->target_final_norm, c->target_eps, m->sel, m->tscratch);
    m->M = M, m->B = B;
    t1 = now_seconds();
    m->phase[PHASE_TEACHER] += t1 - t0;
    t0 = t1;
    /* 3. student: encoder, final norm and head on the masked positions only */
    EncoderRun rs = {B, T, pad, m->bias_s, 1, seed, step, b->ids};
    encoder_forward(&m->enc_s, &s->enc, x_s, &rs);
    gather_rows(m->gathered, encoder_output(&m->enc_s), m->sel, N, C);
    const float *h = m->gathered;
    if (c->final_norm) {
        layernorm_forward(m->normed, m->fn_mean, m->fn_rstd, h, s->final_ln_w, s->final_ln_b, M, C,
                          c->final_norm_eps);
        h = m->normed;
    }
    if (c->head_layers == 2) {
        linear_forward(m->hid, h, s->head_w1, s->head_b1, M, C, H);
        gelu_forward(m->hid_act, m->hid, (size_t)M * H);
        linear_forward(m->pred, m->hid_act, s->head_w2, s->head_b2, M, H, C);
    } else {
        linear_forward(m->pred, h, s->head_w1, s->head_b1, M, C, C);
    }
    t1 = now_seconds();
    m->phase[PHASE_STUDENT_FWD] += t1 - t0;
    t0 = t1;
    /* 4. loss, summed: the trainer divides the gradient by the masked count over all ranks */
    float scale = c->loss_scale > 0 ? c->loss_scale : 1.0f / sqrtf((float)C);
    out->loss_sum = regression_loss(m->dpred, m->pred, m->targets, M, C, c->loss_beta, scale, 1);
    out->masked = M;
    if (out->pred_stats) var_stats_accumulate(out->pred_stats, m->pred, M, C);
    if (out->target_stats) var_stats_accumulate(out->target_stats, m->targets, M, C);
    t1 = now_seconds();
    m->phase[PHASE_LOSS] += t1 - t0;
    t0 = t1;
    if (!g) return;
    /* 5. student backward */
    float *dh = m->dgathered;
    memset(dh, 0, sizeof(float) * M * C);
    if (c->final_norm) memset(m->dnormed, 0, sizeof(float) * M * C), dh = m->dnormed;
    if (c->head_layers == 2) {
        memset(m->dhid, 0, sizeof(float) * M * H);
        linear_backward(m->dhid, g->head_w2, g->head_b2, m->dpred, m->hid_act, s->head_w2, M, H, C);
        memset(m->hid_act, 0, sizeof(float) * M * H); /* reused for d(GELU input) */
        gelu_backward(m->hid_act, m->hid, m->dhid, (size_t)M * H);
        linear_backward(dh, g->head_w1, g->head_b1, m->hid_act, h, s->head_w1, M, C, H);
    } else {
        linear_backward(dh, g->head_w1, g->head_b1, m->dpred, h, s->head_w1, M, C, C);
    }
    if (c->final_norm)
        layernorm_backward(m->dgathered, g->final_ln_w, g->final_ln_b, m->dnormed, m->gathered,
                           s->final_ln_w, m->fn_mean, m->fn_rstd, M, C);
    memset(m->dout, 0, sizeof(float) * N * C);
    scatter_rows(m->dout, m->dgathered, m->sel, N, C);
    memset(m->dfront, 0, sizeof(float) * N * C);
    if (m->dbias) memset(m->dbias, 0, sizeof(float) * c->enc.NH * T * T);
    encoder_backward(&m->enc_s, &g->enc, m->dfront, m->dbias, &s->enc, x_s, &rs, m->dout);
    if (c->modality == D2V_TEXT) {
        text_embed_backward(&m->text_s, &g->text, &s->text, m->dfront, 1, dk);
    } else if (c->modality == D2V_IMAGE) {
        image_embed_backward(&m->image_s, &g->image, m->dfront);
        if (m->dbias) image_rel_bias_backward(&m->image_s, &g->image, m->dbias);
    } else {
        memset(m->dout, 0, sizeof(float) * N * C); /* reused for d(features) */
        speech_context_backward(&m->ctx_s, &g->speech, &s->speech, m->dfront, m->dout, 1,
                                dk_speech);
        speech_features_backward(&m->feat, &g->speech, &s->speech, m->dout);
    }
    m->phase[PHASE_BACKWARD] += now_seconds() - t0;
}

void model_features(Model *m, const ModelParams *p, const Batch *b, float *out) {
    const ModelConfig *c = &m->c;
    int B = b->B, C = c->enc.C, first = 0;
    const float *x;
    const uint8_t *pad = NULL;
    DropKey dk = {0, 0, 1, b->ids};
    if (c->modality == D2V_TEXT) {
        m->T = b->T;
        text_embed_forward(&m->text_t, &p->text, b->tokens, B, m->T, 0, dk);
        x = m->text_t.out, pad = m->text_t.pad;
    } else if (c->modality == D2V_IMAGE) {
        m->T = image_embed_tokens(&c->image), first = !!c->image.cls;
        image_embed_forward(&m->image_t, &p->image, b->images, NULL, B);
        x = m->image_t.out;
        if (m->bias_t) image_rel_bias_forward(&m->image_t, m->bias_t, &p->image);
    } else {
        speech_features_forward(&m->feat, &p->speech, b->audio, B, b->S);
        m->T = m->feat.T;
        speech_context_forward(&m->ctx_t, &p->speech, m->feat.features, NULL, B, m->T, 0, dk);
        x = m->ctx_t.out;
    }
    int T = m->T;
    EncoderRun r = {B, T, pad, c->modality == D2V_IMAGE ? m->bias_t : NULL, 0, 0, 0, b->ids};
    encoder_forward(&m->enc_t, &p->enc, x, &r);
    const float *h = encoder_output(&m->enc_t);
    for (int i = 0; i < B; i++) {
        float *o = out + (size_t)i * C;
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
}

ModelTrace model_trace(const Model *m) {
    ModelTrace t = {m->B,
                    m->T,
                    m->c.enc.C,
                    m->M,
                    m->sel,
                    m->mask,
                    m->c.modality == D2V_TEXT ? m->tokens_in : NULL,
                    m->targets,
                    m->pred,
                    m->layers};
    return t;
}
