/* config.c: libconfig -> TrainConfig through one schema table: every key's path, type, range
 * and field. Reading walks the file's setting tree against the table, so unknown keys are
 * errors (libconfig itself accepts anything), and overrides and the resolved dump use the same
 * table. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/config.h"

#include <libconfig.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    const char *def;          // the default, in the file's syntax (strings unquoted)
} KeySpec;

static const char *const modality_names[] = {"text", "image", "speech", NULL};
static const char *const pos_names[] = {"none", "learned", "sincos", "relative", NULL};
static const char *const tensor_names[] = {"end", "ffn", "attn", NULL};
static const char *const norm_names[] = {"none", "instance", "layer", NULL};
static const char *const init_names[] = {"fairseq", "beit", "mae", NULL};
static const char *const schedule_names[] = {"cosine", "tri_stage", "linear", "constant", NULL};
static const char *const eps_mode_names[] = {"torch", "fairseq", NULL};  /* ADAM_EPS_* order */
static const char *const interp_names[] = {"bilinear", "bicubic", NULL}; /* LOADER_INTERP_* */
static const char *const mode_names[] = {"v1", "v2", NULL};

#define F(field) offsetof(TrainConfig, field)
static const KeySpec schema[] = {
    {"modality", T_ENUM, F(modality), 0, 0, modality_names, "image"},
    {"model.layers", T_INT, F(layers), 1, 128, NULL, "12"},
    {"model.width", T_INT, F(width), 4, 16384, NULL, "768"},
    {"model.heads", T_INT, F(heads), 1, 256, NULL, "12"},
    {"model.ffn", T_INT, F(ffn), 1, 65536, NULL, "3072"},
    {"model.pre_ln", T_BOOL, F(pre_ln), 0, 1, NULL, "false"},
    {"model.layer_scale", T_FLOAT, F(layer_scale), 0, 10, NULL, "0"},
    {"model.k_bias", T_BOOL, F(k_bias), 0, 1, NULL, "true"},
    {"model.ln_eps", T_FLOAT, F(ln_eps), 1e-12, 1e-2, NULL, "1e-5"},
    {"model.attn_dropout", T_FLOAT, F(attn_dropout), 0, 0.9, NULL, "0.1"},
    {"model.act_dropout", T_FLOAT, F(act_dropout), 0, 0.9, NULL, "0"},
    {"model.dropout", T_FLOAT, F(dropout), 0, 0.9, NULL, "0.1"},
    {"model.layerdrop", T_FLOAT, F(layerdrop), 0, 0.9, NULL, "0"},
    {"model.drop_path", T_FLOAT, F(drop_path), 0, 0.9, NULL, "0"},
    {"model.final_norm", T_BOOL, F(final_norm), 0, 1, NULL, "false"},
    {"model.final_norm_eps", T_FLOAT, F(final_norm_eps), 1e-12, 1e-2, NULL, "1e-6"},
    {"model.head_layers", T_INT, F(head_layers), 1, 2, NULL, "1"},
    {"model.init", T_ENUM, F(model_init), 0, 0, init_names, "fairseq"},
    {"model.mode", T_ENUM, F(mode), 0, 0, mode_names, "v1"},
    {"v2.clones", T_INT, F(v2_clones), 1, V2_MAX_CLONES, NULL, "8"},
    {"v2.mask_prob", T_FLOAT, F(v2_mask_prob), 0, 0.99, NULL, "0.48"},
    {"v2.mask_length", T_INT, F(v2_mask_length), 1, 64, NULL, "1"},
    {"v2.mask_adjust", T_FLOAT, F(v2_mask_adjust), 0, 1, NULL, "0"},
    {"v2.noise_std", T_FLOAT, F(v2_noise_std), 0, 10, NULL, "0.01"},
    {"v2.cls_loss", T_FLOAT, F(v2_cls_loss), 0, 100, NULL, "0"},
    {"decoder.dim", T_INT, F(dec_dim), 0, 16384, NULL, "0"},
    {"decoder.kernel", T_INT, F(dec_kernel), 1, 63, NULL, "9"},
    {"decoder.groups", T_INT, F(dec_groups), 1, 4096, NULL, "1"},
    {"decoder.layers", T_INT, F(dec_layers), 1, DECODER_MAX_LAYERS, NULL, "5"},
    {"decoder.residual", T_BOOL, F(dec_residual), 0, 1, NULL, "false"},
    {"decoder.proj_hidden", T_INT, F(dec_proj_hidden), 0, 65536, NULL, "0"},
    {"decoder.input_dropout", T_FLOAT, F(dec_input_dropout), 0, 0.9, NULL, "0.1"},
    {"text.max_positions", T_INT, F(text_max_positions), 2, 65536, NULL, "512"},
    {"text.dropout", T_FLOAT, F(text_dropout), 0, 0.9, NULL, "0.1"},
    {"text.ln_eps", T_FLOAT, F(text_ln_eps), 1e-12, 1e-2, NULL, "1e-5"},
    {"image.height", T_INT, F(image_height), 1, 8192, NULL, "224"},
    {"image.width", T_INT, F(image_width), 1, 8192, NULL, "224"},
    {"image.channels", T_INT, F(image_channels), 1, 3, NULL, "3"},
    {"image.patch", T_INT, F(image_patch), 1, 1024, NULL, "16"},
    {"image.cls", T_BOOL, F(image_cls), 0, 1, NULL, "true"},
    {"image.pos", T_ENUM, F(image_pos), 0, 0, pos_names, "learned"},
    {"speech.conv", T_CONV, F(speech_n_conv), 1, CFG_MAX_CONV, NULL,
     "([512, 10, 5], [512, 3, 2], [512, 3, 2], [512, 3, 2], [512, 3, 2], [512, 2, 2], [512, 2, "
     "2])"},
    {"speech.pos_layers", T_INT, F(speech_pos_layers), 0, CFG_MAX_CONV, NULL, "5"},
    {"speech.pos_kernel", T_INT, F(speech_pos_kernel), 1, 1023, NULL, "19"},
    {"speech.pos_groups", T_INT, F(speech_pos_groups), 1, 4096, NULL, "16"},
    {"speech.ln_eps", T_FLOAT, F(speech_ln_eps), 1e-12, 1e-2, NULL, "1e-5"},
    {"speech.alibi", T_BOOL, F(speech_alibi), 0, 1, NULL, "false"},
    {"mask.text_prob", T_FLOAT, F(mask_text_prob), 0, 1, NULL, "0.35"},
    {"mask.text_span", T_INT, F(mask_text_span), 1, 64, NULL, "4"},
    {"mask.text_leave_unmasked", T_FLOAT, F(mask_text_leave), 0, 1, NULL, "0"},
    {"mask.text_random_token", T_FLOAT, F(mask_text_random), 0, 1, NULL, "0"},
    {"mask.text_loss_on_all_selected", T_BOOL, F(mask_text_loss_all), 0, 1, NULL, "false"},
    {"mask.image_patches", T_INT, F(mask_image_patches), 0, 1 << 20, NULL, "120"},
    {"mask.image_min_patches", T_INT, F(mask_image_min_patches), 1, 1 << 20, NULL, "16"},
    {"mask.image_max_patches", T_INT, F(mask_image_max_patches), 0, 1 << 20, NULL, "0"},
    {"mask.image_min_aspect", T_FLOAT, F(mask_image_min_aspect), 0.01, 1, NULL, "0.3"},
    {"mask.speech_prob", T_FLOAT, F(mask_speech_prob), 0, 1, NULL, "0.65"},
    {"mask.speech_length", T_INT, F(mask_speech_length), 1, 1000, NULL, "10"},
    {"mask.speech_min_masks", T_INT, F(mask_speech_min_masks), 0, 1000, NULL, "1"},
    {"mask.speech_same_count", T_BOOL, F(mask_speech_same), 0, 1, NULL, "true"},
    {"mask.speech_dropout", T_FLOAT, F(mask_speech_dropout), 0, 1, NULL, "0"},
    {"target.top_k", T_INT, F(target_top_k), 1, 64, NULL, "8"},
    {"target.tensor", T_ENUM, F(target_tensor), 0, 0, tensor_names, "ffn"},
    {"target.layer_norm", T_ENUM, F(target_layer_norm), 0, 0, norm_names, "instance"},
    {"target.final_norm", T_BOOL, F(target_final_norm), 0, 1, NULL, "false"},
    {"target.eps", T_FLOAT, F(target_eps), 1e-12, 1e-2, NULL, "1e-5"},
    {"loss.beta", T_FLOAT, F(loss_beta), 0, 100, NULL, "0"},
    {"loss.scale", T_FLOAT, F(loss_scale), -1, 1e6, NULL, "-1"},
    {"ema.tau0", T_FLOAT, F(ema_tau0), 0, 1, NULL, "0.999"},
    {"ema.tau_end", T_FLOAT, F(ema_tau_end), 0, 1, NULL, "0.9999"},
    {"ema.tau_steps", T_I64, F(ema_tau_steps), 0, 1e12, NULL, "30000"},
    {"ema.frontend", T_BOOL, F(ema_frontend), 0, 1, NULL, "false"},
    {"optim.lr", T_FLOAT, F(lr), 0, 10, NULL, "5e-4"},
    {"optim.lr_min", T_FLOAT, F(lr_min), 0, 10, NULL, "0"},
    {"optim.warmup_init", T_FLOAT, F(warmup_init), 0, 10, NULL, "0"},
    {"optim.beta1", T_FLOAT, F(beta1), 0, 0.999999, NULL, "0.9"},
    {"optim.beta2", T_FLOAT, F(beta2), 0, 0.999999, NULL, "0.98"},
    {"optim.eps", T_FLOAT, F(adam_eps), 1e-20, 1, NULL, "1e-6"},
    {"optim.eps_mode", T_ENUM, F(adam_eps_mode), 0, 0, eps_mode_names, "torch"},
    {"optim.weight_decay", T_FLOAT, F(weight_decay), 0, 10, NULL, "0.01"},
    {"optim.exempt_1d", T_BOOL, F(exempt_1d), 0, 1, NULL, "false"},
    {"optim.schedule", T_ENUM, F(schedule), 0, 0, schedule_names, "cosine"},
    {"optim.warmup", T_I64, F(warmup), 0, 1e12, NULL, "10000"},
    {"optim.tri_hold", T_FLOAT, F(tri_hold), 0, 1, NULL, "0.9"},
    {"optim.tri_decay", T_FLOAT, F(tri_decay), 0, 1, NULL, "0.07"},
    {"optim.clip", T_FLOAT, F(clip), 0, 1e9, NULL, "0"},
    {"data.micro_batch", T_INT, F(micro_batch), 0, 1 << 20, NULL, "0"},
    {"data.train", T_STRING, F(train_path), 0, 0, NULL, ""},
    {"data.batch_size", T_INT, F(batch_size), 1, 1 << 20, NULL, "8"},
    {"data.text_block", T_INT, F(text_block), 2, 65536, NULL, "512"},
    {"data.text_stream", T_BOOL, F(text_stream), 0, 1, NULL, "false"},
    {"data.augment", T_BOOL, F(augment), 0, 1, NULL, "false"},
    {"data.crop_scale_min", T_FLOAT, F(crop_scale_min), 0.001, 1, NULL, "0.08"},
    {"data.crop_scale_max", T_FLOAT, F(crop_scale_max), 0.001, 1, NULL, "1"},
    {"data.flip_prob", T_FLOAT, F(flip_prob), 0, 1, NULL, "0.5"},
    {"data.color_jitter", T_FLOAT, F(color_jitter), 0, 1, NULL, "0"},
    {"data.interpolation", T_ENUM, F(interpolation), 0, 0, interp_names, "bilinear"},
    {"data.mean", T_FLOAT3, F(mean), -10, 10, NULL, "[0.485, 0.456, 0.406]"},
    {"data.std", T_FLOAT3, F(std), 1e-6, 10, NULL, "[0.229, 0.224, 0.225]"},
    {"data.speech_max_samples", T_INT, F(speech_max_samples), 1, 1 << 28, NULL, "320000"},
    {"data.speech_min_samples", T_INT, F(speech_min_samples), 0, 1 << 28, NULL, "32000"},
    {"data.speech_normalize", T_BOOL, F(speech_normalize), 0, 1, NULL, "true"},
    {"data.prefetch", T_INT, F(prefetch), 0, 64, NULL, "2"},
    {"run.max_updates", T_I64, F(max_updates), 1, 1e12, NULL, "400000"},
    {"run.max_time", T_FLOAT, F(max_time), 0, 1e9, NULL, "0"},
    {"run.log_every", T_INT, F(log_every), 1, 1 << 30, NULL, "100"},
    {"run.seed", T_I64, F(seed), 0, 9e15, NULL, "1"},
    {"run.skip_nonfinite", T_BOOL, F(skip_nonfinite), 0, 1, NULL, "false"},
    {"run.threads", T_INT, F(threads), 0, 4096, NULL, "0"},
    {"run.collapse_after", T_I64, F(collapse_after), 0, 1e12, NULL, "5000"},
    {"run.checkpoint_every", T_I64, F(checkpoint_every), 0, 1e12, NULL, "1000"},
    {"run.keep_last", T_INT, F(keep_last), 0, 1 << 20, NULL, "3"},
    {"run.keep_every", T_I64, F(keep_every), 0, 1e12, NULL, "0"},
    {"run.allreduce_bucket_kb", T_INT, F(allreduce_bucket_kb), 0, 1 << 22, NULL, "4096"},
    {"run.store_attention", T_BOOL, F(store_attention), 0, 1, NULL, "false"},
    {"run.watchdog_s", T_FLOAT, F(watchdog_s), 0, 1e7, NULL, "300"},
    {"run.consistency_every", T_I64, F(consistency_every), 0, 1e12, NULL, "500"},
    {"run.min_target_var", T_FLOAT, F(min_target_var), 0, 1e6, NULL, "0.1"},
    {"run.min_pred_var", T_FLOAT, F(min_pred_var), 0, 1e6, NULL, "0.01"},
};
#undef F
#define N_KEYS (sizeof schema / sizeof schema[0])

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
        *(double *)dst = v == 0 ? 0.0 : v; /* -0 is 0, so the resolved dump reads back as is */
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
            ((double *)dst)[i] = v == 0 ? 0.0 : v;
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

/* The line of the first `@include` directive (libconfig's: at the start of a line), or 0. */
static int include_line(const char *text) {
    int line = 1;
    for (const char *p = text; *p; line++) {
        p += strspn(p, " \t");
        if (!strncmp(p, "@include", 8)) return line;
        p += strcspn(p, "\n");
        if (*p) p++;
    }
    return 0;
}

int train_config_load_string(TrainConfig *c, const char *text, const char *name, char *err,
                             size_t errlen) {
    /* libconfig would read whatever file the text names: text kept inside another file (a
     * checkpoint's resolved configuration) must stand alone */
    int inc = include_line(text);
    if (inc) return errf(err, errlen, "%s:%d: @include is not allowed here", name, inc);
    config_t cf;
    config_init(&cf);
    int rc = 0;
    if (!config_read_string(&cf, text))
        rc = errf(err, errlen, "%s:%d: %s", name, config_error_line(&cf), config_error_text(&cf));
    else
        rc = walk(c, config_root_setting(&cf), "", name, err, errlen);
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

/* The defaults go through the same parser as a file, once (every checkpoint read asks for them
 * again: tests/fuzz/fuzz_ckpt made that the cost of a read). */
static TrainConfig g_defaults;
static pthread_once_t g_defaults_once = PTHREAD_ONCE_INIT;
static void build_defaults(void) {
    char err[512], kv[512];
    for (size_t i = 0; i < N_KEYS; i++) {
        snprintf(kv, sizeof kv, "%s=%s", schema[i].key, schema[i].def);
        if (train_config_set(&g_defaults, kv, err, sizeof err))
            die("config schema default: %s", err);
    }
}

/* model.mode = "v2": what data2vec 2.0 needs, and whether the student fits in memory. */
static int validate_v2(const TrainConfig *c, int ranks, char *err, size_t n) {
    if (c->modality == D2V_SPEECH && c->ema_frontend)
        return errf(err, n,
                    "config: ema.frontend = true: data2vec 2.0 speech feeds the teacher the "
                    "student's local features (fairseq ema_local_encoder false; "
                    "docs/algorithm.md §7.3)");
    if (c->modality != D2V_SPEECH && c->speech_alibi)
        return errf(err, n, "config: speech.alibi is a speech key");
    if (c->modality == D2V_IMAGE && (c->image_pos != IMAGE_POS_SINCOS || !c->image_cls))
        return errf(err, n,
                    "config: model.mode = \"v2\" images use fixed sin-cos positions and a cls "
                    "token (image.pos = \"sincos\", image.cls = true)");
    if (c->target_tensor != 1)
        return errf(err, n,
                    "config: target.tensor = \"%s\" is a data2vec 1.0 target (vision's, or an "
                    "ablation); model.mode = \"v2\" regresses the FFN outputs (target.tensor = "
                    "\"ffn\")",
                    tensor_names[c->target_tensor]);
    if (c->dec_kernel % 2 == 0)
        return errf(err, n, "config: decoder.kernel %d must be odd (same padding)", c->dec_kernel);
    int D = c->dec_dim > 0 ? c->dec_dim : c->width;
    if (c->width % c->dec_groups || D % c->dec_groups)
        return errf(err, n,
                    "config: decoder.groups %d must divide model.width %d and decoder.dim %d",
                    c->dec_groups, c->width, D);
    if (c->modality == D2V_TEXT && c->v2_mask_length != 1)
        return errf(
            err, n,
            "config: v2.mask_length %d: text v2 masks random tokens (fairseq mask_length 1)",
            c->v2_mask_length);
    /* the student's activations: micro-batch x clones x kept tokens, per layer about 10 C + 2 F
     * floats per token (encoder.c's arena); refuse what cannot fit in this node's memory */
    TrainSplit sp;
    if (train_config_split(c, ranks > 0 ? ranks : 1, &sp, err, n)) return -1;
    int T = c->modality == D2V_IMAGE
                ? (c->image_height / c->image_patch) * (c->image_width / c->image_patch) + 1
                : c->text_block;
    if (c->modality == D2V_SPEECH) /* frames of the longest crop */
        for (int i = 0, L = T = c->speech_max_samples; i < c->speech_n_conv; i++)
            T = L = L < c->speech_conv[i][1]
                        ? 0
                        : (L - c->speech_conv[i][1]) / c->speech_conv[i][2] + 1;
    double kept = T - floor(T * c->v2_mask_prob), tokens = (double)sp.micro * c->v2_clones * kept;
    double bytes = tokens * c->layers * (10.0 * c->width + 2.0 * c->ffn) * 4;
    double mem = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (mem > 0 && bytes > 0.8 * mem)
        return errf(
            err, n,
            "config: v2.clones %d x %d samples per micro-batch x %.0f kept tokens need "
            "about %.1f GiB of student activations, more than 80%% of this node's %.1f GiB: "
            "lower data.micro_batch (the batch stays, as gradient accumulation) or "
            "v2.clones",
            c->v2_clones, sp.micro, kept, bytes / 1073741824.0, mem / 1073741824.0);
    return 0;
}

void train_config_defaults(TrainConfig *c) {
    pthread_once(&g_defaults_once, build_defaults);
    *c = g_defaults;
}

int train_config_validate(const TrainConfig *c, int ranks, char *err, size_t n) {
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
        if (c->mask_image_patches > np && c->mode == 0) /* v1 block masks only */
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
        return errf(
            err, n,
            "config: ema.frontend = true is not supported for speech: the teacher always "
            "reads the student's conv feature extractor (docs/algorithm.md §4.1); set it to false");
    if (c->modality == D2V_TEXT && c->text_block > c->text_max_positions)
        return errf(err, n, "config: data.text_block %d exceeds text.max_positions %d",
                    c->text_block, c->text_max_positions);
    if (c->ema_tau0 > c->ema_tau_end)
        return errf(err, n, "config: ema.tau0 %g is above ema.tau_end %g", c->ema_tau0,
                    c->ema_tau_end);
    if (c->crop_scale_min > c->crop_scale_max)
        return errf(err, n, "config: data.crop_scale_min is above data.crop_scale_max");
    if (c->lr_min > c->lr) return errf(err, n, "config: optim.lr_min is above optim.lr");
    if (c->modality == D2V_SPEECH) { /* clips must give the extractor more frames than a span */
        ModelConfig m;
        Dataset none = {0};
        train_config_to_model(&m, c, &none);
        if (speech_num_frames(&m.speech, c->speech_max_samples) < c->mask_speech_length + 1)
            return errf(err, n,
                        "config: data.speech_max_samples %d gives the conv extractor fewer than "
                        "mask.speech_length + 1 = %d frames",
                        c->speech_max_samples, c->mask_speech_length + 1);
    }
    if (ranks > 0) {
        TrainSplit sp;
        if (train_config_split(c, ranks, &sp, err, n)) return -1;
    }
    if (c->mode == 1 && validate_v2(c, ranks, err, n)) return -1;
    if (c->schedule == LR_TRI_STAGE && !(c->lr_min > 0))
        return errf(err, n,
                    "config: the tri_stage schedule decays exponentially to optim.lr_min, "
                    "which must be positive (fairseq: 0.01 * optim.lr)");
    return 0;
}

/* libconfig string syntax: quotes and backslashes escaped */
int train_config_split(const TrainConfig *c, int ranks, TrainSplit *sp, char *err, size_t n) {
    if (ranks < 1 || c->batch_size % ranks)
        return errf(err, n,
                    "config: data.batch_size %d (samples per update, over all ranks) is not a "
                    "multiple of the %d ranks",
                    c->batch_size, ranks);
    int share = c->batch_size / ranks, freq = 1;
    if (c->micro_batch > 0 && share > c->micro_batch)
        freq = (share + c->micro_batch - 1) / c->micro_batch;
    while (share % freq) /* equal micro-batches: the smallest count that splits the share */
        freq++;
    sp->per_rank = share, sp->update_freq = freq, sp->micro = share / freq;
    return 0;
}

static void write_escaped(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void write_config(FILE *f, const TrainConfig *c) {
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
}

int train_config_write(const TrainConfig *c, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    write_config(f, c);
    return fclose(f) == 0 ? 0 : -1;
}

char *train_config_text(const TrainConfig *c) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) die("config: out of memory formatting the configuration");
    write_config(f, c);
    if (fclose(f) != 0) die("config: out of memory formatting the configuration");
    return text;
}

void train_config_to_model(ModelConfig *m, const TrainConfig *c, const Dataset *d) {
    memset(m, 0, sizeof *m);
    int beit = c->model_init == MODEL_INIT_BEIT;
    m->modality = c->modality;
    m->enc = (EncoderConfig){.L = c->layers,
                             .C = c->width,
                             .NH = c->heads,
                             .F = c->ffn,
                             .pre_ln = c->pre_ln,
                             .layer_scale_init = (float)c->layer_scale,
                             .k_bias = c->k_bias,
                             .ln_eps = (float)c->ln_eps,
                             .attn_dropout = (float)c->attn_dropout,
                             .act_dropout = (float)c->act_dropout,
                             .resid_dropout = (float)c->dropout,
                             .layerdrop = (float)c->layerdrop,
                             .drop_path = (float)c->drop_path,
                             .init_beit = beit,
                             .store_attention = c->store_attention};
    if (c->modality == D2V_TEXT) {
        m->text = (TextEmbedConfig){.V = d->vocab_size,
                                    .C = c->width,
                                    .max_positions = c->text_max_positions,
                                    .pad_id = d->pad_id,
                                    .ln_eps = (float)c->text_ln_eps,
                                    .dropout = (float)c->text_dropout};
        m->text_mask = (TextMaskConfig){
            .mask_prob = (float)c->mask_text_prob,
            .span = c->mask_text_span,
            .leave_unmasked_prob = (float)c->mask_text_leave,
            .random_token_prob = (float)c->mask_text_random,
            .loss_on_all_selected = c->mask_text_loss_all,
            .mask_id = d->mask_id,
            .vocab_size = d->vocab_size,
            .nspecial = 0,
            /* random tokens are never special ones, wherever they sit in the vocabulary */
            .exclude = {d->bos_id, d->pad_id, d->eos_id, d->unk_id, d->mask_id},
            .n_exclude = 5};
    } else if (c->modality == D2V_IMAGE) {
        m->image = (ImageEmbedConfig){.H = c->image_height,
                                      .W = c->image_width,
                                      .Cin = c->image_channels,
                                      .P = c->image_patch,
                                      .C = c->width,
                                      .cls = c->image_cls,
                                      .pos = c->image_pos,
                                      .heads = c->heads,
                                      .init_beit = beit};
        m->image_mask = (BlockMaskConfig){.num_masking_patches = c->mask_image_patches,
                                          .min_num_patches = c->mask_image_min_patches,
                                          .max_num_patches = c->mask_image_max_patches,
                                          .min_aspect = (float)c->mask_image_min_aspect};
    } else {
        SpeechEmbedConfig s = {.n_conv = c->speech_n_conv,
                               .C = c->width,
                               .pos_layers = c->speech_pos_layers,
                               .pos_k = c->speech_pos_kernel,
                               .pos_groups = c->speech_pos_groups,
                               .ln_eps = (float)c->speech_ln_eps,
                               /* wav2vec2: the encoder's dropout on its input too */
                               .dropout = (float)c->dropout,
                               .v2 = c->mode == 1,
                               .alibi_heads = c->mode == 1 && c->speech_alibi ? c->heads : 0};
        for (int i = 0; i < s.n_conv; i++)
            s.conv_dim[i] = c->speech_conv[i][0], s.conv_k[i] = c->speech_conv[i][1],
            s.conv_s[i] = c->speech_conv[i][2];
        m->speech = s;
        m->speech_mask = (SpanMaskConfig){.mask_prob = (float)c->mask_speech_prob,
                                          .mask_length = c->mask_speech_length,
                                          .min_masks = c->mask_speech_min_masks,
                                          .require_same_masks = c->mask_speech_same,
                                          .mask_dropout = (float)c->mask_speech_dropout};
    }
    /* the regression head's init follows the modality's reference code (docs/algorithm.md §6.5) */
    int head_init = beit                              ? HEAD_INIT_BEIT
                    : c->model_init == MODEL_INIT_MAE ? HEAD_INIT_TORCH
                    : c->modality == D2V_TEXT         ? HEAD_INIT_BERT
                                                      : HEAD_INIT_TORCH;
    m->head = (HeadConfig){.C = c->width,
                           .layers = c->head_layers,
                           .final_norm = c->final_norm,
                           .final_norm_eps = (float)c->final_norm_eps,
                           .init = head_init,
                           /* vision averages the whole model, head included */
                           .ema = c->ema_frontend ? EMA_AVERAGE : EMA_SHARED};
    m->top_k = c->target_top_k, m->target_ffn = c->target_tensor == 1;
    m->target_attn = c->target_tensor == 2; /* the self-attention ablation (paper §5.4) */
    m->enc.keep_attn_out = m->target_attn;  /* the teacher keeps every block's branch */
    m->target_norm = c->target_layer_norm, m->target_final_norm = c->target_final_norm;
    m->target_eps = (float)c->target_eps;
    m->loss_beta = (float)c->loss_beta, m->loss_scale = (float)c->loss_scale;
    m->ema_frontend = c->ema_frontend;
    if (c->mode == 1) { /* data2vec 2.0 (docs/algorithm.md §7) */
        V2Config *v = &m->v2c;
        m->v2 = 1;
        m->image.v2 = 1, m->image.cls = 0; /* the v2 context prepends the cls token */
        v->clones = c->v2_clones;
        v->noise_std = (float)c->v2_noise_std, v->cls_loss = (float)c->v2_cls_loss;
        int img = c->modality == D2V_IMAGE;
        int H = img ? c->image_height / c->image_patch : 0,
            W = img ? c->image_width / c->image_patch : 0;
        v->mask = (V2MaskConfig){.kind = img                         ? V2_MASK_BLOCK_2D_INVERSE
                                         : c->modality == D2V_SPEECH ? V2_MASK_BLOCK_1D
                                                                     : V2_MASK_RANDOM,
                                 .T = H * W,
                                 .H = H,
                                 .W = W,
                                 .mask_prob = (float)c->v2_mask_prob,
                                 .block = c->v2_mask_length,
                                 .adjust = (float)c->v2_mask_adjust};
        v->dec = (DecoderConfig){.dims = img ? 2 : 1,
                                 .C = c->width,
                                 .D = c->dec_dim > 0 ? c->dec_dim : c->width,
                                 .K = c->dec_kernel,
                                 .groups = c->dec_groups,
                                 .layers = c->dec_layers,
                                 .residual = c->dec_residual,
                                 .proj_hidden = c->dec_proj_hidden,
                                 .input_dropout = (float)c->dec_input_dropout,
                                 .H = H,
                                 .W = W,
                                 .proj_init = c->modality == D2V_TEXT ? DECODER_INIT_BERT
                                                                      : DECODER_INIT_TORCH};
    }
}

LoaderConfig train_config_to_loader(const TrainConfig *c, int micro_batch) {
    LoaderConfig l = {.modality = c->modality,
                      .batch_size = micro_batch,
                      .seed = (uint64_t)c->seed,
                      .shuffle = 1,
                      .text_T = c->text_block,
                      .text_stream = c->text_stream,
                      .image_augment = c->augment,
                      .crop_scale_min = (float)c->crop_scale_min,
                      .crop_scale_max = (float)c->crop_scale_max,
                      .crop_ratio_min = 0.75f,
                      .crop_ratio_max = 4.0f / 3.0f,
                      .flip_prob = (float)c->flip_prob,
                      .out_H = c->image_height,
                      .out_W = c->image_width,
                      .mean = {(float)c->mean[0], (float)c->mean[1], (float)c->mean[2]},
                      .std = {(float)c->std[0], (float)c->std[1], (float)c->std[2]},
                      .speech_max_samples = c->speech_max_samples,
                      .speech_min_samples = c->speech_min_samples,
                      .speech_normalize = c->speech_normalize,
                      .prefetch = c->prefetch,
                      .color_jitter = (float)c->color_jitter,
                      .interpolation = c->interpolation};
    if (c->modality == D2V_SPEECH) { /* shorter clips give fewer frames than one mask span */
        ModelConfig m;
        Dataset none = {0};
        train_config_to_model(&m, c, &none);
        /* the smallest length giving enough frames (frames never decrease with the length):
         * a binary search, as the lengths go up to 2^28 */
        int lo = l.speech_min_samples, hi = l.speech_max_samples;
        while (lo < hi) {
            int mid = lo + (hi - lo) / 2;
            if (speech_num_frames(&m.speech, mid) < c->mask_speech_length + 1)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo > l.speech_min_samples) l.speech_min_samples = lo;
    }
    return l;
}

AdamW train_config_to_optim(const TrainConfig *c) {
    return (AdamW){.beta1 = c->beta1,
                   .beta2 = c->beta2,
                   .eps = c->adam_eps,
                   .weight_decay = c->weight_decay,
                   .eps_mode = c->adam_eps_mode};
}

LrSchedule train_config_to_schedule(const TrainConfig *c) {
    LrSchedule s = {.kind = c->schedule,
                    .lr = c->lr,
                    .lr_min = c->lr_min,
                    .warmup = c->warmup,
                    .total = c->max_updates,
                    .warmup_init = c->warmup_init,
                    .tri_hold_frac = c->tri_hold,
                    .tri_decay_frac = c->tri_decay};
    if (c->schedule == LR_TRI_STAGE && c->warmup_init == 0) s.warmup_init = 0.01 * c->lr;
    return s;
}

/* ---- architecture comparison (d2v-train --init-from, d2v-import) ---- */

/* The keys that decide the parameter table's names and shapes or what the network computes
 * with the same tensors; optimiser, data, masking and run keys may differ. */
static const char *const arch_keys[] = {"modality",
                                        "model.mode",
                                        "model.layers",
                                        "model.width",
                                        "model.heads",
                                        "model.ffn",
                                        "model.pre_ln",
                                        "model.k_bias",
                                        "model.ln_eps",
                                        "model.final_norm",
                                        "model.final_norm_eps",
                                        "model.head_layers",
                                        "text.max_positions",
                                        "text.ln_eps",
                                        "image.height",
                                        "image.width",
                                        "image.channels",
                                        "image.patch",
                                        "image.cls",
                                        "image.pos",
                                        "speech.conv",
                                        "speech.pos_layers",
                                        "speech.pos_kernel",
                                        "speech.pos_groups",
                                        "speech.ln_eps",
                                        NULL};

static void key_value(const KeySpec *k, const TrainConfig *c, char *out, size_t n) {
    const void *src = (const char *)c + k->offset;
    switch (k->type) {
    case T_INT:
        snprintf(out, n, "%d", *(const int *)src);
        break;
    case T_BOOL:
        snprintf(out, n, "%s", *(const int *)src ? "true" : "false");
        break;
    case T_FLOAT:
        snprintf(out, n, "%.9g", *(const double *)src);
        break;
    case T_ENUM:
        snprintf(out, n, "\"%s\"", k->names[*(const int *)src]);
        break;
    case T_CONV: {
        size_t used = 0;
        out[0] = 0;
        for (int j = 0; j < c->speech_n_conv && used + 1 < n; j++)
            used +=
                (size_t)snprintf(out + used, n - used, "%s[%d, %d, %d]", j ? ", " : "",
                                 c->speech_conv[j][0], c->speech_conv[j][1], c->speech_conv[j][2]);
        break;
    }
    default:
        snprintf(out, n, "?");
    }
}

int train_config_arch_diff(const TrainConfig *a, const TrainConfig *b, char *key, size_t keylen,
                           char *va, char *vb, size_t vlen) {
    for (int i = 0; arch_keys[i]; i++) {
        const KeySpec *k = find_key(arch_keys[i]);
        if (!k) continue;
        /* front-end keys of another modality do not matter */
        if ((!strncmp(k->key, "text.", 5) && a->modality != D2V_TEXT) ||
            (!strncmp(k->key, "image.", 6) && a->modality != D2V_IMAGE) ||
            (!strncmp(k->key, "speech.", 7) && a->modality != D2V_SPEECH))
            continue;
        char x[256], y[256];
        key_value(k, a, x, sizeof x), key_value(k, b, y, sizeof y);
        if (strcmp(x, y)) {
            snprintf(key, keylen, "%s", k->key);
            snprintf(va, vlen, "%s", x), snprintf(vb, vlen, "%s", y);
            return 1;
        }
    }
    return 0;
}
