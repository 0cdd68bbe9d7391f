/* config.c: libconfig -> TrainConfig through one schema table: every key's path, type, range
 * and field. Reading walks the file's setting tree against the table, so unknown keys are
 * errors (libconfig itself accepts anything), and overrides and the resolved dump use the same
 * table. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/config.h"

#include <libconfig.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/objective.h"
#include "d2v/optim.h"
#include "d2v/util.h"

enum { T_INT, T_I64, T_FLOAT, T_BOOL, T_STRING, T_ENUM, T_FLOAT3, T_CONV };

typedef struct {
    const char *key;
    int type;
    size_t offset;
    double min, max;
    const char *const *names; // T_ENUM: value names, index = stored int
} KeySpec;

static const char *const modality_names[] = {"text", "image", "speech", NULL};
static const char *const pos_names[] = {"none", "learned", "sincos", "relative", NULL};
static const char *const tensor_names[] = {"end", "ffn", NULL};
static const char *const norm_names[] = {"none", "instance", "layer", NULL};
static const char *const schedule_names[] = {"cosine", "tri_stage", "linear", "constant", NULL};
static const char *const eps_mode_names[] = {"torch", "fairseq", NULL};  /* ADAM_EPS_* order */
static const char *const interp_names[] = {"bilinear", "bicubic", NULL}; /* LOADER_INTERP_* */

#define F(field) offsetof(TrainConfig, field)
static const KeySpec schema[] = {
    {"modality", T_ENUM, F(modality), 0, 0, modality_names},
    {"model.layers", T_INT, F(layers), 1, 128, NULL},
    {"model.width", T_INT, F(width), 4, 16384, NULL},
    {"model.heads", T_INT, F(heads), 1, 256, NULL},
    {"model.ffn", T_INT, F(ffn), 1, 65536, NULL},
    {"model.pre_ln", T_BOOL, F(pre_ln), 0, 1, NULL},
    {"model.layer_scale", T_FLOAT, F(layer_scale), 0, 10, NULL},
    {"model.k_bias", T_BOOL, F(k_bias), 0, 1, NULL},
    {"model.ln_eps", T_FLOAT, F(ln_eps), 1e-12, 1e-2, NULL},
    {"model.attn_dropout", T_FLOAT, F(attn_dropout), 0, 0.9, NULL},
    {"model.act_dropout", T_FLOAT, F(act_dropout), 0, 0.9, NULL},
    {"model.dropout", T_FLOAT, F(dropout), 0, 0.9, NULL},
    {"model.layerdrop", T_FLOAT, F(layerdrop), 0, 0.9, NULL},
    {"model.drop_path", T_FLOAT, F(drop_path), 0, 0.9, NULL},
    {"model.final_norm", T_BOOL, F(final_norm), 0, 1, NULL},
    {"model.final_norm_eps", T_FLOAT, F(final_norm_eps), 1e-12, 1e-2, NULL},
    {"model.head_layers", T_INT, F(head_layers), 1, 2, NULL},
    {"text.max_positions", T_INT, F(text_max_positions), 2, 65536, NULL},
    {"text.dropout", T_FLOAT, F(text_dropout), 0, 0.9, NULL},
    {"text.ln_eps", T_FLOAT, F(text_ln_eps), 1e-12, 1e-2, NULL},
    {"image.height", T_INT, F(image_height), 1, 8192, NULL},
    {"image.width", T_INT, F(image_width), 1, 8192, NULL},
    {"image.channels", T_INT, F(image_channels), 1, 3, NULL},
    {"image.patch", T_INT, F(image_patch), 1, 1024, NULL},
    {"image.cls", T_BOOL, F(image_cls), 0, 1, NULL},
    {"image.pos", T_ENUM, F(image_pos), 0, 0, pos_names},
    {"speech.conv", T_CONV, F(speech_n_conv), 1, CFG_MAX_CONV, NULL},
    {"speech.pos_layers", T_INT, F(speech_pos_layers), 0, CFG_MAX_CONV, NULL},
    {"speech.pos_kernel", T_INT, F(speech_pos_kernel), 1, 1023, NULL},
    {"speech.pos_groups", T_INT, F(speech_pos_groups), 1, 4096, NULL},
    {"speech.ln_eps", T_FLOAT, F(speech_ln_eps), 1e-12, 1e-2, NULL},
    {"mask.text_prob", T_FLOAT, F(mask_text_prob), 0, 1, NULL},
    {"mask.text_span", T_INT, F(mask_text_span), 1, 64, NULL},
    {"mask.text_leave_unmasked", T_FLOAT, F(mask_text_leave), 0, 1, NULL},
    {"mask.text_random_token", T_FLOAT, F(mask_text_random), 0, 1, NULL},
    {"mask.text_loss_on_all_selected", T_BOOL, F(mask_text_loss_all), 0, 1, NULL},
    {"mask.image_patches", T_INT, F(mask_image_patches), 0, 1 << 20, NULL},
    {"mask.image_min_patches", T_INT, F(mask_image_min_patches), 1, 1 << 20, NULL},
    {"mask.image_max_patches", T_INT, F(mask_image_max_patches), 0, 1 << 20, NULL},
    {"mask.image_min_aspect", T_FLOAT, F(mask_image_min_aspect), 0.01, 1, NULL},
    {"mask.speech_prob", T_FLOAT, F(mask_speech_prob), 0, 1, NULL},
    {"mask.speech_length", T_INT, F(mask_speech_length), 1, 1000, NULL},
    {"mask.speech_min_masks", T_INT, F(mask_speech_min_masks), 0, 1000, NULL},
    {"mask.speech_same_count", T_BOOL, F(mask_speech_same), 0, 1, NULL},
    {"mask.speech_dropout", T_FLOAT, F(mask_speech_dropout), 0, 1, NULL},
    {"target.top_k", T_INT, F(target_top_k), 1, 128, NULL},
    {"target.tensor", T_ENUM, F(target_tensor), 0, 0, tensor_names},
    {"target.layer_norm", T_ENUM, F(target_layer_norm), 0, 0, norm_names},
    {"target.final_norm", T_BOOL, F(target_final_norm), 0, 1, NULL},
    {"target.eps", T_FLOAT, F(target_eps), 1e-12, 1e-2, NULL},
    {"loss.beta", T_FLOAT, F(loss_beta), 0, 100, NULL},
    {"loss.scale", T_FLOAT, F(loss_scale), -1, 1e6, NULL},
    {"ema.tau0", T_FLOAT, F(ema_tau0), 0, 1, NULL},
    {"ema.tau_end", T_FLOAT, F(ema_tau_end), 0, 1, NULL},
    {"ema.tau_steps", T_I64, F(ema_tau_steps), 0, 1e12, NULL},
    {"ema.frontend", T_BOOL, F(ema_frontend), 0, 1, NULL},
    {"optim.lr", T_FLOAT, F(lr), 0, 10, NULL},
    {"optim.lr_min", T_FLOAT, F(lr_min), 0, 10, NULL},
    {"optim.warmup_init", T_FLOAT, F(warmup_init), 0, 10, NULL},
    {"optim.beta1", T_FLOAT, F(beta1), 0, 0.999999, NULL},
    {"optim.beta2", T_FLOAT, F(beta2), 0, 0.999999, NULL},
    {"optim.eps", T_FLOAT, F(adam_eps), 1e-20, 1, NULL},
    {"optim.eps_mode", T_ENUM, F(adam_eps_mode), 0, 0, eps_mode_names},
    {"optim.weight_decay", T_FLOAT, F(weight_decay), 0, 10, NULL},
    {"optim.exempt_1d", T_BOOL, F(exempt_1d), 0, 1, NULL},
    {"optim.schedule", T_ENUM, F(schedule), 0, 0, schedule_names},
    {"optim.warmup", T_I64, F(warmup), 0, 1e12, NULL},
    {"optim.tri_hold", T_FLOAT, F(tri_hold), 0, 1, NULL},
    {"optim.tri_decay", T_FLOAT, F(tri_decay), 0, 1, NULL},
    {"optim.clip", T_FLOAT, F(clip), 0, 1e9, NULL},
    {"optim.update_freq", T_INT, F(update_freq), 1, 4096, NULL},
    {"data.train", T_STRING, F(train_path), 0, 0, NULL},
    {"data.batch_size", T_INT, F(batch_size), 1, 1 << 20, NULL},
    {"data.text_block", T_INT, F(text_block), 2, 65536, NULL},
    {"data.text_stream", T_BOOL, F(text_stream), 0, 1, NULL},
    {"data.augment", T_BOOL, F(augment), 0, 1, NULL},
    {"data.crop_scale_min", T_FLOAT, F(crop_scale_min), 0.001, 1, NULL},
    {"data.crop_scale_max", T_FLOAT, F(crop_scale_max), 0.001, 1, NULL},
    {"data.flip_prob", T_FLOAT, F(flip_prob), 0, 1, NULL},
    {"data.color_jitter", T_FLOAT, F(color_jitter), 0, 1, NULL},
    {"data.interpolation", T_ENUM, F(interpolation), 0, 0, interp_names},
    {"data.mean", T_FLOAT3, F(mean), -10, 10, NULL},
    {"data.std", T_FLOAT3, F(std), 1e-6, 10, NULL},
    {"data.speech_max_samples", T_INT, F(speech_max_samples), 1, 1 << 28, NULL},
    {"data.speech_min_samples", T_INT, F(speech_min_samples), 0, 1 << 28, NULL},
    {"data.speech_normalize", T_BOOL, F(speech_normalize), 0, 1, NULL},
    {"data.prefetch", T_INT, F(prefetch), 0, 64, NULL},
    {"run.max_updates", T_I64, F(max_updates), 1, 1e12, NULL},
    {"run.log_every", T_INT, F(log_every), 1, 1 << 30, NULL},
    {"run.seed", T_I64, F(seed), 0, 9e15, NULL},
    {"run.skip_nonfinite", T_BOOL, F(skip_nonfinite), 0, 1, NULL},
    {"run.threads", T_INT, F(threads), 0, 4096, NULL},
    {"run.collapse_after", T_I64, F(collapse_after), 0, 1e12, NULL},
    {"run.checkpoint_every", T_I64, F(checkpoint_every), 0, 1e12, NULL},
    {"run.keep_last", T_INT, F(keep_last), 0, 1 << 20, NULL},
    {"run.min_target_var", T_FLOAT, F(min_target_var), 0, 1e6, NULL},
    {"run.min_pred_var", T_FLOAT, F(min_pred_var), 0, 1e6, NULL},
};
#undef F
#define N_KEYS (sizeof schema / sizeof schema[0])

void train_config_defaults(TrainConfig *c) {
    memset(c, 0, sizeof *c);
    c->modality = D2V_IMAGE;
    c->layers = 12, c->width = 768, c->heads = 12, c->ffn = 3072, c->k_bias = 1;
    c->ln_eps = 1e-5, c->final_norm_eps = 1e-6, c->head_layers = 1;
    c->attn_dropout = 0.1, c->dropout = 0.1;
    c->text_max_positions = 512, c->text_dropout = 0.1, c->text_ln_eps = 1e-5;
    c->image_height = c->image_width = 224, c->image_channels = 3, c->image_patch = 16;
    c->image_cls = 1, c->image_pos = IMAGE_POS_LEARNED;
    int conv[7][3] = {{512, 10, 5}, {512, 3, 2}, {512, 3, 2}, {512, 3, 2},
                      {512, 3, 2},  {512, 2, 2}, {512, 2, 2}};
    c->speech_n_conv = 7;
    memcpy(c->speech_conv, conv, sizeof conv);
    c->speech_pos_layers = 5, c->speech_pos_kernel = 19, c->speech_pos_groups = 16;
    c->speech_ln_eps = 1e-5;
    c->mask_text_prob = 0.35, c->mask_text_span = 4;
    c->mask_image_patches = 120, c->mask_image_min_patches = 16, c->mask_image_min_aspect = 0.3;
    c->mask_speech_prob = 0.65, c->mask_speech_length = 10, c->mask_speech_min_masks = 1;
    c->mask_speech_same = 1;
    c->target_top_k = 8, c->target_tensor = 1, c->target_layer_norm = TARGET_NORM_INSTANCE;
    c->target_eps = 1e-5, c->loss_beta = 0, c->loss_scale = -1;
    c->ema_tau0 = 0.999, c->ema_tau_end = 0.9999, c->ema_tau_steps = 30000;
    c->lr = 5e-4, c->beta1 = 0.9, c->beta2 = 0.98, c->adam_eps = 1e-6, c->weight_decay = 0.01;
    c->adam_eps_mode = ADAM_EPS_TORCH; /* what d2v did before the key existed */
    c->schedule = LR_COSINE, c->warmup = 10000, c->tri_hold = 0.9, c->tri_decay = 0.07;
    c->update_freq = 1;
    c->batch_size = 8, c->text_block = 512, c->prefetch = 2;
    c->crop_scale_min = 0.08, c->crop_scale_max = 1, c->flip_prob = 0.5;
    /* no colour jitter, bilinear crops: the loader's behaviour before these keys existed */
    c->color_jitter = 0, c->interpolation = LOADER_INTERP_BILINEAR;
    c->mean[0] = 0.485, c->mean[1] = 0.456, c->mean[2] = 0.406; /* ImageNet */
    c->std[0] = 0.229, c->std[1] = 0.224, c->std[2] = 0.225;
    c->speech_max_samples = 320000, c->speech_min_samples = 32000, c->speech_normalize = 1;
    c->max_updates = 400000, c->log_every = 100, c->seed = 1;
    c->collapse_after = 5000, c->min_target_var = 0.1, c->min_pred_var = 0.01;
    c->checkpoint_every = 1000, c->keep_last = 3;
}

static const KeySpec *find_key(const char *key) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(schema[i].key, key)) return &schema[i];
    return NULL;
}

static int errf(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errf(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

static int check_range(const KeySpec *k, double v, const char *where, char *err, size_t n) {
    if (!(v >= k->min && v <= k->max))
        return errf(err, n, "%s: key '%s' = %g is out of range [%g, %g]", where, k->key, v, k->min,
                    k->max);
    return 0;
}

static int set_enum(TrainConfig *c, const KeySpec *k, const char *s, const char *where, char *err,
                    size_t n) {
    for (int i = 0; k->names[i]; i++)
        if (!strcmp(k->names[i], s)) return *(int *)((char *)c + k->offset) = i, 0;
    char opts[256] = "";
    for (int i = 0; k->names[i]; i++)
        strncat(opts, i ? ", " : "", sizeof opts - strlen(opts) - 1),
            strncat(opts, k->names[i], sizeof opts - strlen(opts) - 1);
    return errf(err, n, "%s: key '%s' = \"%s\" is not one of: %s", where, k->key, s, opts);
}

/* Store one libconfig setting into c according to its schema entry. */
static int store(TrainConfig *c, const KeySpec *k, const config_setting_t *s, const char *where,
                 char *err, size_t n) {
    void *dst = (char *)c + k->offset;
    int t = config_setting_type(s);
    int num = t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64 || t == CONFIG_TYPE_FLOAT;
    switch (k->type) {
    case T_INT:
    case T_I64: {
        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
            return errf(err, n, "%s: key '%s' should be an integer", where, k->key);
        long long v = config_setting_get_int64(s);
        if (check_range(k, (double)v, where, err, n)) return -1;
        if (k->type == T_INT)
            *(int *)dst = (int)v;
        else
            *(int64_t *)dst = v;
        return 0;
    }
    case T_FLOAT: {
        if (!num) return errf(err, n, "%s: key '%s' should be a number", where, k->key);
        double v = t == CONFIG_TYPE_FLOAT ? config_setting_get_float(s)
                                          : (double)config_setting_get_int64(s);
        if (check_range(k, v, where, err, n)) return -1;
        *(double *)dst = v;
        return 0;
    }
    case T_BOOL:
        if (t != CONFIG_TYPE_BOOL)
            return errf(err, n, "%s: key '%s' should be true or false", where, k->key);
        *(int *)dst = config_setting_get_bool(s);
        return 0;
    case T_STRING:
    case T_ENUM: {
        if (t != CONFIG_TYPE_STRING)
            return errf(err, n, "%s: key '%s' should be a string", where, k->key);
        const char *v = config_setting_get_string(s);
        if (k->type == T_ENUM) return set_enum(c, k, v, where, err, n);
        if (strlen(v) >= PATH_MAX) return errf(err, n, "%s: key '%s' is too long", where, k->key);
        snprintf((char *)dst, PATH_MAX, "%s", v);
        return 0;
    }
    case T_FLOAT3: {
        int len = config_setting_length(s);
        if ((t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) || len < 1 || len > 3)
            return errf(err, n, "%s: key '%s' should be an array of 1 to 3 numbers", where, k->key);
        for (int i = 0; i < 3; i++) {
            const config_setting_t *e = config_setting_get_elem(s, i < len ? i : len - 1);
            int et = config_setting_type(e);
            if (et != CONFIG_TYPE_FLOAT && et != CONFIG_TYPE_INT)
                return errf(err, n, "%s: key '%s' should hold numbers", where, k->key);
            double v = et == CONFIG_TYPE_FLOAT ? config_setting_get_float(e)
                                               : (double)config_setting_get_int(e);
            if (check_range(k, v, where, err, n)) return -1;
            ((double *)dst)[i] = v;
        }
        return 0;
    }
    case T_CONV: {
        int len = config_setting_length(s);
        if (t != CONFIG_TYPE_LIST || len < 1 || len > CFG_MAX_CONV)
            return errf(err, n, "%s: key '%s' should be a list of 1 to %d [dim, kernel, stride]",
                        where, k->key, CFG_MAX_CONV);
        for (int i = 0; i < len; i++) {
            const config_setting_t *e = config_setting_get_elem(s, i);
            if (config_setting_length(e) != 3 || config_setting_type(e) != CONFIG_TYPE_ARRAY)
                return errf(err, n, "%s: key '%s' entry %d should be [dim, kernel, stride]", where,
                            k->key, i);
            for (int j = 0; j < 3; j++) {
                int v = config_setting_get_int_elem(e, j);
                if (v <= 0 || v > 65536)
                    return errf(err, n, "%s: key '%s' entry %d has %d (1..65536 expected)", where,
                                k->key, i, v);
                c->speech_conv[i][j] = v;
            }
        }
        c->speech_n_conv = len;
        return 0;
    }
    }
    return errf(err, n, "%s: key '%s': internal schema error", where, k->key);
}

/* Depth-first walk: groups recurse, every other setting must be a schema key. */
static int walk(TrainConfig *c, const config_setting_t *g, const char *prefix, const char *file,
                char *err, size_t n) {
    for (int i = 0; i < config_setting_length(g); i++) {
        const config_setting_t *s = config_setting_get_elem(g, i);
        const char *name = config_setting_name(s);
        char key[256], where[PATH_MAX + 32];
        snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", name ? name : "?");
        snprintf(where, sizeof where, "%s:%d", file, config_setting_source_line(s));
        const KeySpec *k = find_key(key);
        if (!k && config_setting_type(s) == CONFIG_TYPE_GROUP) {
            if (walk(c, s, key, file, err, n)) return -1;
            continue;
        }
        if (!k) return errf(err, n, "%s: unknown key '%s'", where, key);
        if (store(c, k, s, where, err, n)) return -1;
    }
    return 0;
}

int train_config_load(TrainConfig *c, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f) return errf(err, errlen, "%s: cannot read the config file", path);
    fclose(f);
    config_t cf;
    config_init(&cf);
    int rc = 0;
    if (!config_read_file(&cf, path))
        rc = errf(err, errlen, "%s:%d: %s", path, config_error_line(&cf), config_error_text(&cf));
    else
        rc = walk(c, config_root_setting(&cf), "", path, err, errlen);
    config_destroy(&cf);
    return rc;
}

int train_config_set(TrainConfig *c, const char *assignment, char *err, size_t errlen) {
    const char *eq = strchr(assignment, '=');
    if (!eq) return errf(err, errlen, "--set %s: expected key=value", assignment);
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(eq - assignment), assignment);
    const KeySpec *k = find_key(key);
    if (!k) return errf(err, errlen, "--set: unknown key '%s'", key);
    /* Parse the value with libconfig itself, so overrides accept exactly the file syntax. */
    char text[PATH_MAX + 300];
    const char *v = eq + 1;
    int quote = (k->type == T_STRING || k->type == T_ENUM) && v[0] != '"';
    snprintf(text, sizeof text, "v = %s%s%s;", quote ? "\"" : "", v, quote ? "\"" : "");
    config_t cf;
    config_init(&cf);
    int rc;
    char where[300];
    snprintf(where, sizeof where, "--set %s", key);
    if (!config_read_string(&cf, text))
        rc =
            errf(err, errlen, "%s: cannot parse value '%s' (%s)", where, v, config_error_text(&cf));
    else
        rc = store(c, k, config_lookup(&cf, "v"), where, err, errlen);
    config_destroy(&cf);
    return rc;
}

int train_config_validate(const TrainConfig *c, char *err, size_t n) {
    if (c->width % c->heads)
        return errf(err, n, "config: model.width %d is not a multiple of model.heads %d", c->width,
                    c->heads);
    if (c->target_top_k > c->layers)
        return errf(err, n, "config: target.top_k %d exceeds model.layers %d", c->target_top_k,
                    c->layers);
    if (!c->train_path[0]) return errf(err, n, "config: data.train (the dataset path) is not set");
    if (c->modality == D2V_IMAGE) {
        if (c->image_height % c->image_patch || c->image_width % c->image_patch)
            return errf(err, n, "config: image %dx%d is not a multiple of image.patch %d",
                        c->image_height, c->image_width, c->image_patch);
        int np = (c->image_height / c->image_patch) * (c->image_width / c->image_patch);
        if (c->mask_image_patches > np)
            return errf(err, n, "config: mask.image_patches %d exceeds the %d patches",
                        c->mask_image_patches, np);
        if (c->image_pos == IMAGE_POS_SINCOS && c->width % 4)
            return errf(err, n, "config: sin-cos positions need model.width divisible by 4");
    }
    if (c->modality == D2V_SPEECH && c->speech_pos_layers &&
        (c->speech_pos_kernel % 2 == 0 || c->width % c->speech_pos_groups))
        return errf(err, n,
                    "config: speech.pos_kernel must be odd and speech.pos_groups must "
                    "divide model.width");
    if (c->modality == D2V_SPEECH && c->ema_frontend) /* model_micro_step: shared stage 1 */
        return errf(err, n,
                    "config: ema.frontend = true is not supported for speech: the teacher always "
                    "reads the student's conv feature extractor (spec §6); set it to false");
    if (c->modality == D2V_TEXT && c->text_block > c->text_max_positions)
        return errf(err, n, "config: data.text_block %d exceeds text.max_positions %d",
                    c->text_block, c->text_max_positions);
    if (c->ema_tau0 > c->ema_tau_end)
        return errf(err, n, "config: ema.tau0 %g is above ema.tau_end %g", c->ema_tau0,
                    c->ema_tau_end);
    if (c->crop_scale_min > c->crop_scale_max)
        return errf(err, n, "config: data.crop_scale_min is above data.crop_scale_max");
    if (c->lr_min > c->lr) return errf(err, n, "config: optim.lr_min is above optim.lr");
    if (c->schedule == LR_TRI_STAGE && !(c->lr_min > 0))
        return errf(err, n,
                    "config: the tri_stage schedule decays exponentially to optim.lr_min, "
                    "which must be positive (fairseq: 0.01 * optim.lr)");
    return 0;
}

/* libconfig string syntax: quotes and backslashes escaped */
static void write_escaped(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int train_config_write(const TrainConfig *c, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "# resolved d2v-train configuration (every key, defaults included)\n");
    const char *group = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const KeySpec *k = &schema[i];
        const char *dot = strchr(k->key, '.');
        char g[64] = "";
        if (dot) snprintf(g, sizeof g, "%.*s", (int)(dot - k->key), k->key);
        if (strcmp(g, group)) {
            if (*group) fprintf(f, "};\n");
            if (*g) fprintf(f, "%s: {\n", g);
            group = dot ? k->key : "";
            static char keep[64];
            snprintf(keep, sizeof keep, "%s", g);
            group = keep;
        }
        const char *name = dot ? dot + 1 : k->key;
        const void *src = (const char *)c + k->offset;
        fprintf(f, "%s%s = ", *group ? "  " : "", name);
        switch (k->type) {
        case T_INT:
            fprintf(f, "%d", *(const int *)src);
            break;
        case T_I64:
            fprintf(f, "%lldL", (long long)*(const int64_t *)src);
            break;
        case T_FLOAT:
            fprintf(f, "%.17g", *(const double *)src);
            break;
        case T_BOOL:
            fprintf(f, "%s", *(const int *)src ? "true" : "false");
            break;
        case T_STRING:
            write_escaped(f, (const char *)src);
            break;
        case T_ENUM:
            fprintf(f, "\"%s\"", k->names[*(const int *)src]);
            break;
        case T_FLOAT3: {
            const double *v = src;
            fprintf(f, "[%.17g, %.17g, %.17g]", v[0], v[1], v[2]);
            break;
        }
        case T_CONV:
            fprintf(f, "(");
            for (int j = 0; j < c->speech_n_conv; j++)
                fprintf(f, "%s[%d, %d, %d]", j ? ", " : "", c->speech_conv[j][0],
                        c->speech_conv[j][1], c->speech_conv[j][2]);
            fprintf(f, ")");
            break;
        }
        fprintf(f, ";\n");
    }
    if (*group) fprintf(f, "};\n");
    return fclose(f) == 0 ? 0 : -1;
}

void train_config_to_model(ModelConfig *m, const TrainConfig *c, const Dataset *d) {
    memset(m, 0, sizeof *m);
    m->modality = c->modality;
    EncoderConfig e = {c->layers,
                       c->width,
                       c->heads,
                       c->ffn,
                       c->pre_ln,
                       (float)c->layer_scale,
                       c->k_bias,
                       (float)c->ln_eps,
                       (float)c->attn_dropout,
                       (float)c->act_dropout,
                       (float)c->dropout,
                       (float)c->layerdrop,
                       (float)c->drop_path};
    m->enc = e;
    if (c->modality == D2V_TEXT) {
        TextEmbedConfig t = {d->vocab_size,         c->width,
                             c->text_max_positions, d->pad_id,
                             (float)c->text_ln_eps, (float)c->text_dropout};
        m->text = t;
        TextMaskConfig tm = {(float)c->mask_text_prob,
                             c->mask_text_span,
                             (float)c->mask_text_leave,
                             (float)c->mask_text_random,
                             c->mask_text_loss_all,
                             d->mask_id,
                             d->vocab_size,
                             0,
                             {d->bos_id, d->pad_id, d->eos_id, d->unk_id, d->mask_id},
                             5}; /* random tokens are never special ones, wherever they sit */
        m->text_mask = tm;
    } else if (c->modality == D2V_IMAGE) {
        ImageEmbedConfig im = {c->image_height, c->image_width, c->image_channels, c->image_patch,
                               c->width,        c->image_cls,   c->image_pos,      c->heads};
        m->image = im;
        BlockMaskConfig bm = {c->mask_image_patches, c->mask_image_min_patches,
                              c->mask_image_max_patches, (float)c->mask_image_min_aspect};
        m->image_mask = bm;
    } else {
        SpeechEmbedConfig s = {0};
        s.n_conv = c->speech_n_conv;
        for (int i = 0; i < s.n_conv; i++)
            s.conv_dim[i] = c->speech_conv[i][0], s.conv_k[i] = c->speech_conv[i][1],
            s.conv_s[i] = c->speech_conv[i][2];
        s.C = c->width, s.pos_layers = c->speech_pos_layers, s.pos_k = c->speech_pos_kernel;
        s.pos_groups = c->speech_pos_groups, s.ln_eps = (float)c->speech_ln_eps;
        s.dropout = (float)c->dropout; /* wav2vec2: the encoder's dropout on its input too */
        m->speech = s;
        SpanMaskConfig sm = {(float)c->mask_speech_prob, c->mask_speech_length,
                             c->mask_speech_min_masks, c->mask_speech_same,
                             (float)c->mask_speech_dropout};
        m->speech_mask = sm;
    }
    m->final_norm = c->final_norm, m->final_norm_eps = (float)c->final_norm_eps;
    m->head_layers = c->head_layers;
    m->top_k = c->target_top_k, m->target_ffn = c->target_tensor == 1;
    m->target_norm = c->target_layer_norm, m->target_final_norm = c->target_final_norm;
    m->target_eps = (float)c->target_eps;
    m->loss_beta = (float)c->loss_beta, m->loss_scale = (float)c->loss_scale;
    m->ema_frontend = c->ema_frontend;
}
