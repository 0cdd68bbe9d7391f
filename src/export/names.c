/* names.c: d2v's parameter table under HF transformers' Data2Vec{Text,Vision,Audio}Model names
 * and under fairseq's (data2vec_text.py, data2vec_audio.py; the BEiT-based vision code's), every
 * target tensor a contiguous slice of one d2v tensor (docs/export.md). The stacked encoder
 * tensors (L, ...) split per block, enc.qkv_w into query, key and value rows (HF), the image cls,
 * mask token and positions get BEiT's leading (1, 1) / (1) dimensions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/export.h"
#include "d2v/util.h"

static void add(ExportPlan *p, const char *name, float *src, size_t count, int rank, int64_t d0,
                int64_t d1, int64_t d2, int64_t d3) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 256;
        ExportEntry *e = xalloc(sizeof *e * (size_t)p->cap, "export plan");
        if (p->n) memcpy(e, p->e, sizeof *e * (size_t)p->n);
        free(p->e);
        p->e = e;
    }
    ExportEntry *e = &p->e[p->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->src = src, e->count = count, e->rank = rank;
    int64_t d[4] = {d0, d1, d2, d3};
    size_t check = 1;
    for (int i = 0; i < rank; i++)
        e->shape[i] = d[i], check *= (size_t)d[i];
    if (check != count)
        die("export: %s: shape holds %zu values, the slice %zu", name, check, count);
}

#define ADD1(nm, src, a) add(p, nm, src, (size_t)(a), 1, a, 0, 0, 0)
#define ADD2(nm, src, a, b) add(p, nm, src, (size_t)(a) * (size_t)(b), 2, a, b, 0, 0)
#define ADD3(nm, src, a, b, c)                                                                     \
    add(p, nm, src, (size_t)(a) * (size_t)(b) * (size_t)(c), 3, a, b, c, 0)
#define ADD4(nm, src, a, b, c, d)                                                                  \
    add(p, nm, src, (size_t)(a) * (size_t)(b) * (size_t)(c) * (size_t)(d), 4, a, b, c, d)

/* Per-block names of one target: the attention's q/k/v/out, the two norms, the FFN, the layer
 * scales. NULL: the target has no such tensor (k_b: BEiT's key has no bias). */
typedef struct {
    const char *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *qkv_w; // qkv_w: fused (BEiT's attn.qkv)
    const char *o_w, *o_b, *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const char *f1_w, *f1_b, *f2_w, *f2_b, *g1, *g2;
} BlockNames;

/* fairseq's TransformerSentenceEncoderLayer names (text and audio blocks alike) */
static const BlockNames fairseq_post_ln = {"self_attn.q_proj.weight",
                                           "self_attn.q_proj.bias",
                                           "self_attn.k_proj.weight",
                                           "self_attn.k_proj.bias",
                                           "self_attn.v_proj.weight",
                                           "self_attn.v_proj.bias",
                                           NULL,
                                           "self_attn.out_proj.weight",
                                           "self_attn.out_proj.bias",
                                           "self_attn_layer_norm.weight",
                                           "self_attn_layer_norm.bias",
                                           "final_layer_norm.weight",
                                           "final_layer_norm.bias",
                                           "fc1.weight",
                                           "fc1.bias",
                                           "fc2.weight",
                                           "fc2.bias",
                                           NULL,
                                           NULL};

static void add_blocks(ExportPlan *p, const char *prefix, const BlockNames *bn,
                       const EncoderParams *e, const EncoderConfig *c) {
    int64_t C = c->C, F = c->F;
    char nm[160];
#define NAME(fmt) (snprintf(nm, sizeof nm, "%s%d.%s", prefix, l, fmt), nm)
    for (int l = 0; l < c->L; l++) {
        float *qkv = e->qkv_w + (size_t)l * 3 * C * C, *qkvb = e->qkv_b + (size_t)l * 3 * C;
        if (bn->ln1_w && c->pre_ln) { /* pre-LN: the norm comes first in the block */
            ADD1(NAME(bn->ln1_w), e->ln1_w + l * C, C);
            ADD1(NAME(bn->ln1_b), e->ln1_b + l * C, C);
        }
        if (bn->qkv_w) {
            ADD2(NAME(bn->qkv_w), qkv, 3 * C, C);
        } else {
            ADD2(NAME(bn->q_w), qkv, C, C);
            ADD2(NAME(bn->k_w), qkv + C * C, C, C);
            ADD2(NAME(bn->v_w), qkv + 2 * C * C, C, C);
        }
        ADD1(NAME(bn->q_b), qkvb, C);
        if (bn->k_b) ADD1(NAME(bn->k_b), qkvb + C, C);
        ADD1(NAME(bn->v_b), qkvb + 2 * C, C);
        ADD2(NAME(bn->o_w), e->proj_w + (size_t)l * C * C, C, C);
        ADD1(NAME(bn->o_b), e->proj_b + l * C, C);
        if (!c->pre_ln) {
            ADD1(NAME(bn->ln1_w), e->ln1_w + l * C, C);
            ADD1(NAME(bn->ln1_b), e->ln1_b + l * C, C);
        }
        if (c->pre_ln) {
            ADD1(NAME(bn->ln2_w), e->ln2_w + l * C, C);
            ADD1(NAME(bn->ln2_b), e->ln2_b + l * C, C);
        }
        ADD2(NAME(bn->f1_w), e->fc1_w + (size_t)l * F * C, F, C);
        ADD1(NAME(bn->f1_b), e->fc1_b + l * F, F);
        ADD2(NAME(bn->f2_w), e->fc2_w + (size_t)l * C * F, C, F);
        ADD1(NAME(bn->f2_b), e->fc2_b + l * C, C);
        if (!c->pre_ln) {
            ADD1(NAME(bn->ln2_w), e->ln2_w + l * C, C);
            ADD1(NAME(bn->ln2_b), e->ln2_b + l * C, C);
        }
        if (e->gamma1 && bn->g1) {
            ADD1(NAME(bn->g1), e->gamma1 + l * C, C);
            ADD1(NAME(bn->g2), e->gamma2 + l * C, C);
        }
    }
#undef NAME
}

static void plan_text(ExportPlan *p, const ModelConfig *mc, const ModelParams *v, int fmt) {
    const TextEmbedConfig *t = &mc->text;
    int64_t C = t->C, P = text_embed_pos_rows(t);
    if (fmt == EXPORT_HF) {
        ADD2("embeddings.word_embeddings.weight", v->text.tok, t->V, C);
        ADD2("embeddings.position_embeddings.weight", v->text.pos, P, C);
        ADD2("embeddings.token_type_embeddings.weight", NULL, 1, C); /* RoBERTa: one type, 0 */
        ADD1("embeddings.LayerNorm.weight", v->text.ln_w, C);
        ADD1("embeddings.LayerNorm.bias", v->text.ln_b, C);
        static const BlockNames bn = {"attention.self.query.weight",
                                      "attention.self.query.bias",
                                      "attention.self.key.weight",
                                      "attention.self.key.bias",
                                      "attention.self.value.weight",
                                      "attention.self.value.bias",
                                      NULL,
                                      "attention.output.dense.weight",
                                      "attention.output.dense.bias",
                                      "attention.output.LayerNorm.weight",
                                      "attention.output.LayerNorm.bias",
                                      "output.LayerNorm.weight",
                                      "output.LayerNorm.bias",
                                      "intermediate.dense.weight",
                                      "intermediate.dense.bias",
                                      "output.dense.weight",
                                      "output.dense.bias",
                                      NULL,
                                      NULL};
        add_blocks(p, "encoder.layer.", &bn, &v->enc, &mc->enc);
        return;
    }
    ADD2("encoder.sentence_encoder.embed_tokens.weight", v->text.tok, t->V, C);
    ADD2("encoder.sentence_encoder.embed_positions.weight", v->text.pos, P, C);
    ADD1("encoder.sentence_encoder.layernorm_embedding.weight", v->text.ln_w, C);
    ADD1("encoder.sentence_encoder.layernorm_embedding.bias", v->text.ln_b, C);
    add_blocks(p, "encoder.sentence_encoder.layers.", &fairseq_post_ln, &v->enc, &mc->enc);
    /* fairseq's regression_head: Linear [-> GELU -> Linear] in a Sequential (data2vec_text.py) */
    const HeadConfig *h = &mc->head;
    int64_t H = h->layers == 2 ? 2 * C : C;
    if (!h->final_norm) {
        ADD2("encoder.regression_head.0.weight", v->head.w1, H, C);
        ADD1("encoder.regression_head.0.bias", v->head.b1, H);
        if (h->layers == 2) {
            ADD2("encoder.regression_head.2.weight", v->head.w2, C, H);
            ADD1("encoder.regression_head.2.bias", v->head.b2, C);
        }
    }
}

static void plan_speech(ExportPlan *p, const ModelConfig *mc, const ModelParams *v, int fmt) {
    const SpeechEmbedConfig *s = &mc->speech;
    int64_t C = s->C, D = s->conv_dim[s->n_conv - 1];
    char nm[160];
    int hf = fmt == EXPORT_HF;
    for (int i = 0; i < s->n_conv; i++) {
        int64_t dim = s->conv_dim[i], in = i ? s->conv_dim[i - 1] : 1;
        snprintf(nm, sizeof nm,
                 hf ? "feature_extractor.conv_layers.%d.conv.weight"
                    : "feature_extractor.conv_layers.%d.0.weight",
                 i);
        ADD3(nm, v->speech.conv_w[i], dim, in, s->conv_k[i]);
        /* fairseq: Sequential(conv, dropout, Sequential(TransposeLast, LayerNorm, TransposeLast),
         * GELU) */
        snprintf(nm, sizeof nm,
                 hf ? "feature_extractor.conv_layers.%d.layer_norm.weight"
                    : "feature_extractor.conv_layers.%d.2.1.weight",
                 i);
        ADD1(nm, v->speech.conv_ln_w[i], dim);
        snprintf(nm, sizeof nm,
                 hf ? "feature_extractor.conv_layers.%d.layer_norm.bias"
                    : "feature_extractor.conv_layers.%d.2.1.bias",
                 i);
        ADD1(nm, v->speech.conv_ln_b[i], dim);
    }
    ADD1(hf ? "feature_projection.layer_norm.weight" : "layer_norm.weight", v->speech.feat_ln_w, D);
    ADD1(hf ? "feature_projection.layer_norm.bias" : "layer_norm.bias", v->speech.feat_ln_b, D);
    ADD2(hf ? "feature_projection.projection.weight" : "post_extract_proj.weight", v->speech.proj_w,
         C, D);
    ADD1(hf ? "feature_projection.projection.bias" : "post_extract_proj.bias", v->speech.proj_b, C);
    ADD1(hf ? "masked_spec_embed" : "mask_emb", v->speech.mask_emb, C);
    p->e[p->n - 1].optional = 1; /* HF drops it when mask_time_prob = mask_feature_prob = 0 */
    for (int j = 0; j < s->pos_layers; j++) {
        /* data2vec's deep positional conv has no weight norm (HF Data2VecAudioPositionalConvLayer,
         * fairseq's pos_conv_depth > 1 branch): plain weight and bias */
        snprintf(nm, sizeof nm,
                 hf ? "encoder.pos_conv_embed.layers.%d.conv.weight"
                    : "encoder.pos_conv.%d.0.weight",
                 j);
        ADD3(nm, v->speech.pos_w[j], C, C / s->pos_groups, s->pos_k);
        snprintf(nm, sizeof nm,
                 hf ? "encoder.pos_conv_embed.layers.%d.conv.bias" : "encoder.pos_conv.%d.0.bias",
                 j);
        ADD1(nm, v->speech.pos_b[j], C);
    }
    ADD1("encoder.layer_norm.weight", v->speech.enc_ln_w, C);
    ADD1("encoder.layer_norm.bias", v->speech.enc_ln_b, C);
    static const BlockNames hfb = {"attention.q_proj.weight",
                                   "attention.q_proj.bias",
                                   "attention.k_proj.weight",
                                   "attention.k_proj.bias",
                                   "attention.v_proj.weight",
                                   "attention.v_proj.bias",
                                   NULL,
                                   "attention.out_proj.weight",
                                   "attention.out_proj.bias",
                                   "layer_norm.weight",
                                   "layer_norm.bias",
                                   "final_layer_norm.weight",
                                   "final_layer_norm.bias",
                                   "feed_forward.intermediate_dense.weight",
                                   "feed_forward.intermediate_dense.bias",
                                   "feed_forward.output_dense.weight",
                                   "feed_forward.output_dense.bias",
                                   NULL,
                                   NULL};
    add_blocks(p, "encoder.layers.", hf ? &hfb : &fairseq_post_ln, &v->enc, &mc->enc);
    if (!hf && mc->head.layers == 1 && !mc->head.final_norm) { /* fairseq's final_proj */
        ADD2("final_proj.weight", v->head.w1, C, C);
        ADD1("final_proj.bias", v->head.b1, C);
    }
}

static void plan_image(ExportPlan *p, const ModelConfig *mc, const ModelParams *v, int fmt) {
    const ImageEmbedConfig *im = &mc->image;
    int64_t C = im->C, T = image_embed_tokens(im);
    int hf = fmt == EXPORT_HF;
    ADD3(hf ? "embeddings.cls_token" : "cls_token", v->image.cls, 1, 1, C);
    ADD3(hf ? "embeddings.mask_token" : "mask_token", v->image.mask_token, 1, 1, C);
    p->e[p->n - 1].optional = 1; /* pretraining only; HF's use_mask_token defaults to false */
    ADD4(hf ? "embeddings.patch_embeddings.projection.weight" : "patch_embed.proj.weight",
         v->image.patch_w, C, im->Cin, im->P, im->P);
    ADD1(hf ? "embeddings.patch_embeddings.projection.bias" : "patch_embed.proj.bias",
         v->image.patch_b, C);
    if (im->pos == IMAGE_POS_LEARNED)
        ADD3(hf ? "embeddings.position_embeddings" : "pos_embed", v->image.pos, 1, T, C);
    if (im->pos == IMAGE_POS_RELATIVE)
        ADD2(hf ? "encoder.relative_position_bias.relative_position_bias_table"
                : "rel_pos_bias.relative_position_bias_table",
             v->image.rel_table, image_rel_table_rows(im), im->heads);
    static const BlockNames hfb = {"attention.attention.query.weight",
                                   "attention.attention.query.bias",
                                   "attention.attention.key.weight",
                                   NULL,
                                   "attention.attention.value.weight",
                                   "attention.attention.value.bias",
                                   NULL,
                                   "attention.output.dense.weight",
                                   "attention.output.dense.bias",
                                   "layernorm_before.weight",
                                   "layernorm_before.bias",
                                   "layernorm_after.weight",
                                   "layernorm_after.bias",
                                   "intermediate.dense.weight",
                                   "intermediate.dense.bias",
                                   "output.dense.weight",
                                   "output.dense.bias",
                                   "lambda_1",
                                   "lambda_2"};
    static const BlockNames fsb = {NULL,
                                   "attn.q_bias",
                                   NULL,
                                   NULL,
                                   NULL,
                                   "attn.v_bias",
                                   "attn.qkv.weight",
                                   "attn.proj.weight",
                                   "attn.proj.bias",
                                   "norm1.weight",
                                   "norm1.bias",
                                   "norm2.weight",
                                   "norm2.bias",
                                   "mlp.fc1.weight",
                                   "mlp.fc1.bias",
                                   "mlp.fc2.weight",
                                   "mlp.fc2.bias",
                                   "gamma_1",
                                   "gamma_2"};
    add_blocks(p, hf ? "encoder.layer." : "blocks.", hf ? &hfb : &fsb, &v->enc, &mc->enc);
    if (mc->head.final_norm) {
        ADD1(hf ? "layernorm.weight" : "norm.weight", v->head.ln_w, C);
        ADD1(hf ? "layernorm.bias" : "norm.bias", v->head.ln_b, C);
    }
    if (!hf && mc->head.layers == 1) { /* the BEiT-based recipe's lm_head */
        ADD2("lm_head.weight", v->head.w1, C, C);
        ADD1("lm_head.bias", v->head.b1, C);
    }
}

void export_plan(ExportPlan *p, const ModelConfig *mc, const ModelParams *v, int fmt) {
    memset(p, 0, sizeof *p);
    if (mc->modality == D2V_TEXT)
        plan_text(p, mc, v, fmt);
    else if (mc->modality == D2V_SPEECH)
        plan_speech(p, mc, v, fmt);
    else
        plan_image(p, mc, v, fmt);
    /* what the target lacks: every d2v tensor no entry reads from */
    ParamTable t;
    model_declare(&t, mc);
    p->left_out = xalloc(sizeof *p->left_out * (size_t)(t.n + 1), "left-out names");
    for (int i = 0; i < t.n; i++) {
        const float *base = *(float *const *)((const char *)v + t.t[i].field);
        int used = 0;
        for (int k = 0; k < p->n && !used; k++)
            used = p->e[k].src && p->e[k].src >= base && p->e[k].src < base + t.t[i].count;
        if (!used) snprintf(p->left_out[p->n_left++], 48, "%s", t.t[i].name);
    }
    ptab_free(&t);
}

void export_plan_free(ExportPlan *p) {
    free(p->e), free(p->left_out);
    memset(p, 0, sizeof *p);
}
