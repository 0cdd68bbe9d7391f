/* hfconfig.c: what HF transformers' Data2Vec* models can represent of a d2v model, their
 * config.json (json-c) with the fields modeling_data2vec_{text,vision,audio}.py read, and the
 * check of an HF config.json against a d2v configuration (d2v-import). docs/export.md. */
#define _POSIX_C_SOURCE 200809L
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/export.h"
#include "d2v/util.h"

#define FAIL(...) (snprintf(err, errlen, __VA_ARGS__), -1)

int export_supported(const TrainConfig *cfg, const ModelConfig *mc, int format, char *err,
                     size_t errlen) {
    const char *to = format == EXPORT_HF ? "HF transformers" : "fairseq's names";
    if (mc->v2)
        return FAIL("a data2vec 2.0 model (model.mode = \"v2\"): HF transformers has no port of "
                    "2.0 and this exporter writes 1.0 layouts only");
    const EncoderConfig *e = &mc->enc;
    if (mc->modality == D2V_IMAGE) {
        if (!e->pre_ln)
            return FAIL("an image model with post-LN blocks (model.pre_ln = false): %s's vision "
                        "model is BEiT's pre-LN block",
                        to);
        if (!mc->image.cls)
            return FAIL("an image model without cls token (image.cls = false): BEiT's layout "
                        "always has one");
        if (mc->image.pos == IMAGE_POS_SINCOS)
            return FAIL("image.pos = \"sincos\": BEiT's layout has learned absolute positions "
                        "or the shared relative bias, not fixed sin-cos ones");
        if (e->k_bias) return FAIL("model.k_bias = true: BEiT's key projection has no bias");
        /* transformers' BEiT code (since the MiDaS 3.1 change) reshapes the relative-bias table
         * as (2 Ww - 1, 2 Wh - 1) before resampling it to (2 Wh - 1, 2 Ww - 1), and its
         * interpolate_pos_encoding assumes a square grid of learned positions: a non-square
         * model would load and compute something else, or fail */
        if (format == EXPORT_HF && mc->image.H != mc->image.W)
            return FAIL("a non-square image model (image.height %d, image.width %d): HF's "
                        "Data2VecVision resamples its positions as if the patch grid were square",
                        mc->image.H, mc->image.W);
        if (format == EXPORT_HF && mc->head.final_norm &&
            fabs(cfg->final_norm_eps - cfg->ln_eps) > 1e-12 * cfg->ln_eps)
            return FAIL("model.final_norm_eps %g differs from model.ln_eps %g: HF uses one "
                        "layer_norm_eps for both",
                        cfg->final_norm_eps, cfg->ln_eps);
        return 0;
    }
    if (e->pre_ln)
        return FAIL("a %s model with pre-LN blocks: %s's %s model is post-LN",
                    d2v_modality_names[mc->modality], to, d2v_modality_names[mc->modality]);
    if (e->layer_scale_init > 0)
        return FAIL("model.layer_scale > 0: the %s model has no layer scale",
                    d2v_modality_names[mc->modality]);
    if (mc->modality == D2V_TEXT) {
        if (format == EXPORT_HF && mc->text.pad_id != TEXT_POS_PAD_ROW)
            return FAIL("the vocabulary's <pad> is id %d: HF numbers positions from "
                        "pad_token_id + 1, which equals d2v's numbering only when <pad> is %d",
                        mc->text.pad_id, TEXT_POS_PAD_ROW);
        if (format == EXPORT_HF && fabs(cfg->text_ln_eps - cfg->ln_eps) > 1e-12 * cfg->ln_eps)
            return FAIL("text.ln_eps %g differs from model.ln_eps %g: HF uses one layer_norm_eps",
                        cfg->text_ln_eps, cfg->ln_eps);
        return 0;
    }
    if (mc->speech.pos_layers < 1)
        return FAIL("speech.pos_layers = 0: data2vec's audio model has the convolutional "
                    "positional encoder");
    if (format == EXPORT_HF && fabs(cfg->speech_ln_eps - 1e-5) > 1e-17)
        return FAIL("speech.ln_eps %g: HF's conv and positional-conv layer norms use PyTorch's "
                    "default 1e-5",
                    cfg->speech_ln_eps);
    if (format == EXPORT_HF && fabs(cfg->ln_eps - cfg->speech_ln_eps) > 1e-12 * cfg->ln_eps)
        return FAIL("model.ln_eps %g differs from speech.ln_eps %g: HF uses one layer_norm_eps for "
                    "the feature projection, encoder and block norms",
                    cfg->ln_eps, cfg->speech_ln_eps);
    return 0;
}

/* The shortest %g that reads back as the same double, so config.json shows 1e-05, not
 * 1.0000000000000001e-05 (json-c's default). */
static json_object *jdouble(double v) {
    char s[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(s, sizeof s, "%.*g", prec, v);
        if (strtod(s, NULL) == v) break;
    }
    if (!strpbrk(s, ".eEn")) strcat(s, ".0"); /* a float in Python, as transformers writes */
    return json_object_new_double_s(v, s);
}

static json_object *jint_array(const int *v, int n, int stride) {
    json_object *a = json_object_new_array();
    for (int i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_int(v[i * stride]));
    return a;
}

#define SET(k, v) json_object_object_add(o, k, v)
static json_object *config_object(const TrainConfig *cfg, const ModelConfig *mc, const Dataset *d) {
    const EncoderConfig *e = &mc->enc;
    json_object *o = json_object_new_object(), *arch = json_object_new_array();
    static const char *const cls[3] = {"Data2VecTextModel", "Data2VecVisionModel",
                                       "Data2VecAudioModel"};
    static const char *const type[3] = {"data2vec-text", "data2vec-vision", "data2vec-audio"};
    json_object_array_add(arch, json_object_new_string(cls[mc->modality]));
    SET("architectures", arch);
    SET("model_type", json_object_new_string(type[mc->modality]));
    SET("hidden_size", json_object_new_int(e->C));
    SET("num_hidden_layers", json_object_new_int(e->L));
    SET("num_attention_heads", json_object_new_int(e->NH));
    SET("intermediate_size", json_object_new_int(e->F));
    SET("hidden_act", json_object_new_string("gelu")); /* erf GELU, as d2v's */
    SET("layer_norm_eps", jdouble(cfg->ln_eps));
    SET("initializer_range", jdouble(0.02));
    if (mc->modality == D2V_TEXT) {
        SET("vocab_size", json_object_new_int(mc->text.V));
        SET("max_position_embeddings", json_object_new_int(text_embed_pos_rows(&mc->text)));
        SET("type_vocab_size", json_object_new_int(1));
        SET("position_embedding_type", json_object_new_string("absolute"));
        SET("pad_token_id", json_object_new_int(d ? d->pad_id : mc->text.pad_id));
        SET("bos_token_id", json_object_new_int(d ? d->bos_id : 0));
        SET("eos_token_id", json_object_new_int(d ? d->eos_id : 2));
        SET("hidden_dropout_prob", jdouble(cfg->dropout));
        SET("attention_probs_dropout_prob", jdouble(cfg->attn_dropout));
    } else if (mc->modality == D2V_IMAGE) {
        const ImageEmbedConfig *im = &mc->image;
        SET("image_size", json_object_new_int(im->H)); /* square: export_supported */
        SET("patch_size", json_object_new_int(im->P));
        SET("num_channels", json_object_new_int(im->Cin));
        SET("use_mask_token", json_object_new_boolean(1));
        SET("use_absolute_position_embeddings",
            json_object_new_boolean(im->pos == IMAGE_POS_LEARNED));
        SET("use_relative_position_bias", json_object_new_boolean(0));
        SET("use_shared_relative_position_bias",
            json_object_new_boolean(im->pos == IMAGE_POS_RELATIVE));
        SET("layer_scale_init_value", jdouble(cfg->layer_scale));
        /* a final norm is HF's `layernorm`; without one, mean pooling leaves the output as is */
        SET("use_mean_pooling", json_object_new_boolean(!mc->head.final_norm));
        SET("hidden_dropout_prob", jdouble(cfg->dropout));
        SET("attention_probs_dropout_prob", jdouble(cfg->attn_dropout));
        SET("drop_path_rate", jdouble(cfg->drop_path));
    } else {
        const SpeechEmbedConfig *s = &mc->speech;
        SET("feat_extract_activation", json_object_new_string("gelu"));
        SET("conv_dim", jint_array(s->conv_dim, s->n_conv, 1));
        SET("conv_kernel", jint_array(s->conv_k, s->n_conv, 1));
        SET("conv_stride", jint_array(s->conv_s, s->n_conv, 1));
        SET("conv_bias", json_object_new_boolean(0));
        SET("num_conv_pos_embeddings", json_object_new_int(s->pos_layers));
        SET("conv_pos_kernel_size", json_object_new_int(s->pos_k));
        SET("num_conv_pos_embedding_groups", json_object_new_int(s->pos_groups));
        /* > 0 keeps masked_spec_embed in the model (SpecAugment while fine-tuning) */
        SET("mask_time_prob", jdouble(0.05));
        SET("hidden_dropout", jdouble(cfg->dropout));
        SET("attention_dropout", jdouble(cfg->attn_dropout));
        SET("activation_dropout", jdouble(cfg->act_dropout));
        SET("feat_proj_dropout", jdouble(0.0));
        SET("layerdrop", jdouble(cfg->layerdrop));
    }
    SET("torch_dtype", json_object_new_string("float32"));
    return o;
}

static char *to_text(json_object *o) {
    const char *s = json_object_to_json_string_ext(
        o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t n = strlen(s);
    char *out = xalloc(n + 2, "config.json");
    memcpy(out, s, n);
    out[n] = '\n', out[n + 1] = 0;
    return out;
}

char *export_hf_config(const TrainConfig *cfg, const ModelConfig *mc, const Dataset *d) {
    json_object *o = config_object(cfg, mc, d);
    char *s = to_text(o);
    json_object_put(o);
    return s;
}

/* The HF fields that fix the tensors' shapes or what they compute, and the d2v key of each. */
static const struct {
    const char *hf, *d2v;
} arch_fields[] = {
    {"model_type", "modality"},
    {"hidden_size", "model.width"},
    {"num_hidden_layers", "model.layers"},
    {"num_attention_heads", "model.heads"},
    {"intermediate_size", "model.ffn"},
    {"hidden_act", "(d2v's GELU)"},
    {"layer_norm_eps", "model.ln_eps"},
    {"vocab_size", "the dataset's vocab_size"},
    {"max_position_embeddings", "text.max_positions + 2"},
    {"type_vocab_size", "(one token type)"},
    {"position_embedding_type", "(learned absolute positions)"},
    {"pad_token_id", "the dataset's pad_id"},
    {"image_size", "image.height, image.width"},
    {"patch_size", "image.patch"},
    {"num_channels", "image.channels"},
    {"use_absolute_position_embeddings", "image.pos"},
    {"use_relative_position_bias", "image.pos"},
    {"use_shared_relative_position_bias", "image.pos"},
    {"use_mean_pooling", "model.final_norm"},
    {"feat_extract_activation", "(d2v's GELU)"},
    {"conv_dim", "speech.conv"},
    {"conv_kernel", "speech.conv"},
    {"conv_stride", "speech.conv"},
    {"conv_bias", "(no conv bias)"},
    {"num_conv_pos_embeddings", "speech.pos_layers"},
    {"conv_pos_kernel_size", "speech.pos_kernel"},
    {"num_conv_pos_embedding_groups", "speech.pos_groups"},
    {NULL, NULL},
};

/* Values compared as JSON text, numbers as numbers (1e-5 == 1e-05 == 0.00001). */
static int same_value(json_object *a, json_object *b) {
    int na = json_object_is_type(a, json_type_double) || json_object_is_type(a, json_type_int);
    int nb = json_object_is_type(b, json_type_double) || json_object_is_type(b, json_type_int);
    if (na && nb) return json_object_get_double(a) == json_object_get_double(b);
    if (json_object_is_type(a, json_type_array) && json_object_is_type(b, json_type_array)) {
        size_t n = json_object_array_length(a);
        if (n != json_object_array_length(b)) return 0;
        for (size_t i = 0; i < n; i++)
            if (!same_value(json_object_array_get_idx(a, i), json_object_array_get_idx(b, i)))
                return 0;
        return 1;
    }
    return !strcmp(json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN),
                   json_object_to_json_string_ext(b, JSON_C_TO_STRING_PLAIN));
}

int export_hf_config_check(const char *path, const TrainConfig *cfg, const ModelConfig *mc,
                           const Dataset *d, char *err, size_t errlen) {
    json_object *got = json_object_from_file(path);
    if (!got || !json_object_is_type(got, json_type_object)) {
        if (got) json_object_put(got);
        return FAIL("%s: not a readable JSON object (%s)", path, json_util_get_last_err());
    }
    json_object *want = config_object(cfg, mc, d);
    int rc = 0;
    /* an absent boolean or activation takes transformers' default, as from_pretrained does */
    for (int i = 0; arch_fields[i].hf && !rc; i++) {
        json_object *w, *g;
        if (!json_object_object_get_ex(want, arch_fields[i].hf, &w)) continue;
        if (!json_object_object_get_ex(got, arch_fields[i].hf, &g)) {
            rc = FAIL("%s: no %s (the d2v config has %s = %s)", path, arch_fields[i].hf,
                      arch_fields[i].d2v, json_object_to_json_string_ext(w, 0));
            break;
        }
        if (!same_value(w, g)) {
            char pr[128];
            rc =
                FAIL("%s: %s is %s, the d2v config gives %s (%s)", path, arch_fields[i].hf,
                     str_printable(json_object_to_json_string_ext(g, JSON_C_TO_STRING_PLAIN), pr,
                                   sizeof pr),
                     json_object_to_json_string_ext(w, JSON_C_TO_STRING_PLAIN), arch_fields[i].d2v);
        }
    }
    json_object_put(want), json_object_put(got);
    return rc;
}
