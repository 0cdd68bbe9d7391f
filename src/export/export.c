/* export.c: d2v-export and d2v-import as a library. Export reads a checkpoint (student or EMA
 * teacher) and writes the HF or fairseq-named safetensors with HF's config and tokenizer or
 * preprocessor files, all into a temporary directory renamed when complete; import maps an HF
 * directory back onto the parameter table and writes an update-0 checkpoint. docs/export.md. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "d2v/ckpt.h"
#include "d2v/export.h"
#include "d2v/h5io.h"
#include "d2v/util.h"

/* ---- output directories: refuse to overwrite, build under a temporary name ---- */

static int dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
    closedir(d);
    return empty;
}

static void refuse_existing(const char *out) {
    struct stat sb;
    if (stat(out, &sb) != 0) return;
    if (!S_ISDIR(sb.st_mode)) die("%s: exists and is not a directory; not overwritten", out);
    if (!dir_is_empty(out)) die("%s: exists and is not empty; not overwritten", out);
}

static void remove_tree(void *arg) { /* the temporary directory (flat) of a failed export */
    const char *dir = arg;
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[PATH_MAX + 300];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f || fputs(text, f) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0)
        die("%s: cannot write (%s)", p, strerror(errno));
}

static void write_json(const char *dir, const char *name, json_object *o) {
    const char *s = json_object_to_json_string_ext(
        o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t n = strlen(s);
    char *t = xalloc(n + 2, "json");
    memcpy(t, s, n), t[n] = '\n';
    write_text(dir, name, t);
    free(t);
}

/* ---- checkpoint -> model ---- */

typedef struct {
    char ckpt[PATH_MAX + 64];
    TrainConfig cfg;
    ModelConfig mc;
    Dataset d;
    int has_d;
    size_t np;
    float *params, *teacher;
    ModelParams ps, pt;
    int64_t update;
} Loaded;

/* Text needs the dataset: vocabulary size and special ids shape the model, its tokenizer is the
 * HF tokenizer. */
static void open_text_data(Loaded *l, const char *data, const char *what) {
    if (l->cfg.modality != D2V_TEXT) return;
    const char *path = data ? data : l->cfg.train_path;
    char err[PATH_MAX + 512];
    if (access(path, F_OK) != 0)
        die("%s: no such dataset (a text model's vocabulary and tokenizer come from its dataset: "
            "pass --data DATASET with %s)",
            path, what);
    if (dataset_open(&l->d, path, D2V_TEXT, err, sizeof err) < 0) die("%s", err);
    l->has_d = 1;
}

static void load_checkpoint(Loaded *l, const char *path, const char *data, int format) {
    memset(l, 0, sizeof *l);
    char err[PATH_MAX + 1024];
    if (access(path, F_OK) != 0) die("%s: no such checkpoint or run directory", path);
    snprintf(l->ckpt, sizeof l->ckpt, "%s", path);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        char latest[PATH_MAX + 64];
        if (ckpt_find_latest(path, latest, sizeof latest) != 0)
            die("%s: a directory with no complete checkpoint (ckpt/step_*/DONE)", path);
        snprintf(l->ckpt, sizeof l->ckpt, "%s", latest);
    }
    if (ckpt_read_config(l->ckpt, &l->cfg, err, sizeof err)) die("%s", err);
    if (l->cfg.mode == 1)
        die("%s: a data2vec 2.0 checkpoint (model.mode = \"v2\"): not exported, HF transformers "
            "has no port of data2vec 2.0 and this exporter writes the 1.0 layouts only",
            l->ckpt);
    open_text_data(l, data, "d2v-export");
    train_config_to_model(&l->mc, &l->cfg, l->has_d ? &l->d : NULL);
    if (export_supported(&l->cfg, &l->mc, format, err, sizeof err))
        die("%s: cannot export to %s: %s", l->ckpt,
            format == EXPORT_HF ? "HF transformers" : "fairseq's names", err);
    l->np = model_params_layout(NULL, NULL, &l->mc);
    l->params = xalloc(l->np * 4, "params"), l->teacher = xalloc(l->np * 4, "teacher");
    float *m = xalloc(l->np * 4, "adam m"), *v = xalloc(l->np * 4, "adam v");
    TrainState st;
    if (ckpt_read(l->ckpt, &l->mc, l->params, l->teacher, m, v, l->np, &st, err, sizeof err) < 0)
        die("%s", err);
    free(m), free(v);
    l->update = st.update;
    model_params_layout(&l->ps, l->params, &l->mc);
    model_teacher_view(&l->pt, &l->ps, l->teacher, &l->mc);
}

static void free_loaded(Loaded *l) {
    free(l->params), free(l->teacher);
    if (l->has_d) dataset_close(&l->d);
}

/* ---- export ---- */

static void write_tokenizer(const char *dir, const Dataset *d, int max_len) {
    char err[PATH_MAX + 256];
    hid_t f = (hid_t)d->shards[0].file;
    size_t nv = 0, nm = 0;
    char **vocab = h5_read_strings(f, d->shards[0].path, "tokenizer/vocab", &nv, err, sizeof err);
    if (!vocab) die("%s", err);
    char **merges = h5_read_strings(f, d->shards[0].path, "tokenizer/merges", &nm, err, sizeof err);
    if (!merges) die("%s", err);
    if ((int64_t)nv != d->vocab_size)
        die("%s: /tokenizer/vocab has %zu tokens, vocab_size is %d", d->shards[0].path, nv,
            d->vocab_size);
    json_object *v = json_object_new_object();
    for (size_t i = 0; i < nv; i++) {
        if (json_object_object_get_ex(v, vocab[i], NULL))
            die("%s: token %zu of /tokenizer/vocab repeats an earlier one: vocab.json cannot hold "
                "it",
                d->shards[0].path, i);
        json_object_object_add(v, vocab[i], json_object_new_int((int)i));
    }
    const char *s =
        json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *t = xalloc(strlen(s) + 2, "vocab.json");
    sprintf(t, "%s\n", s);
    write_text(dir, "vocab.json", t);
    free(t);
    json_object_put(v);
    size_t total = 16;
    for (size_t i = 0; i < nm; i++)
        total += strlen(merges[i]) + 1;
    char *m = xalloc(total, "merges.txt"), *p = m;
    p += sprintf(p, "#version: 0.2\n"); /* GPT-2's merges.txt header */
    for (size_t i = 0; i < nm; i++)
        p += sprintf(p, "%s\n", merges[i]);
    write_text(dir, "merges.txt", m);
    free(m);
    /* RoBERTa's byte-level BPE, special tokens by their strings in vocab.json (datasets.md) */
    json_object *tc = json_object_new_object();
    json_object_object_add(tc, "tokenizer_class", json_object_new_string("RobertaTokenizer"));
    json_object_object_add(tc, "add_prefix_space", json_object_new_boolean(0));
    json_object_object_add(tc, "model_max_length", json_object_new_int(max_len));
    const char *sp[5][2] = {{"bos_token", vocab[d->bos_id]},
                            {"eos_token", vocab[d->eos_id]},
                            {"unk_token", vocab[d->unk_id]},
                            {"pad_token", vocab[d->pad_id]},
                            {"mask_token", vocab[d->mask_id]}};
    for (int i = 0; i < 5; i++)
        json_object_object_add(tc, sp[i][0], json_object_new_string(sp[i][1]));
    write_json(dir, "tokenizer_config.json", tc);
    json_object_put(tc);
    h5_free_strings(vocab, nv), h5_free_strings(merges, nm);
}

static json_object *float_array(const double *v, int n) {
    json_object *a = json_object_new_array();
    for (int i = 0; i < n; i++)
        json_object_array_add(a, json_object_new_double(v[i]));
    return a;
}

/* The input pipeline d2v trained with, as HF's processors describe it. */
static void write_preprocessor(const char *dir, const Loaded *l) {
    const TrainConfig *c = &l->cfg;
    json_object *o = json_object_new_object();
    if (c->modality == D2V_IMAGE) {
        json_object *size = json_object_new_object();
        json_object_object_add(size, "height", json_object_new_int(c->image_height));
        json_object_object_add(size, "width", json_object_new_int(c->image_width));
        json_object_object_add(o, "image_processor_type",
                               json_object_new_string("BeitImageProcessor"));
        json_object_object_add(o, "do_resize", json_object_new_boolean(1));
        json_object_object_add(o, "size", size);
        /* PIL's filter codes: 2 bilinear, 3 bicubic, as data.interpolation resized the crops */
        json_object_object_add(
            o, "resample", json_object_new_int(c->interpolation == LOADER_INTERP_BICUBIC ? 3 : 2));
        json_object_object_add(o, "do_center_crop", json_object_new_boolean(0));
        json_object_object_add(o, "do_rescale", json_object_new_boolean(1));
        json_object_object_add(o, "rescale_factor", json_object_new_double(1.0 / 255));
        json_object_object_add(o, "do_normalize", json_object_new_boolean(1));
        json_object_object_add(o, "image_mean", float_array(c->mean, c->image_channels));
        json_object_object_add(o, "image_std", float_array(c->std, c->image_channels));
        json_object_object_add(o, "do_reduce_labels", json_object_new_boolean(0));
    } else {
        json_object_object_add(o, "feature_extractor_type",
                               json_object_new_string("Wav2Vec2FeatureExtractor"));
        json_object_object_add(o, "feature_size", json_object_new_int(1));
        json_object_object_add(o, "sampling_rate", json_object_new_int(16000));
        json_object_object_add(o, "padding_value", json_object_new_double(0.0));
        json_object_object_add(o, "do_normalize", json_object_new_boolean(c->speech_normalize));
        json_object_object_add(o, "return_attention_mask", json_object_new_boolean(1));
    }
    write_json(dir, "preprocessor_config.json", o);
    json_object_put(o);
}

void export_run(const ExportJob *j) {
    refuse_existing(j->out);
    Loaded l;
    load_checkpoint(&l, j->checkpoint, j->data, j->format);
    const ModelParams *view = j->teacher ? &l.pt : &l.ps;
    ExportPlan p;
    export_plan(&p, &l.mc, view, j->format);
    char tmp[PATH_MAX + 32], err[PATH_MAX + 256];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", j->out, (int)getpid());
    if (mkdir(tmp, 0775) != 0) die("%s: cannot create (%s)", tmp, strerror(errno));
    int cleanup = die_cleanup_push(remove_tree, tmp);
    StTensor *t = xalloc(sizeof *t * (size_t)(p.n + 1), "tensors");
    for (int i = 0; i < p.n; i++) {
        snprintf(t[i].name, sizeof t[i].name, "%s", p.e[i].name);
        t[i].rank = p.e[i].rank, t[i].count = p.e[i].count, t[i].data = p.e[i].src;
        memcpy(t[i].shape, p.e[i].shape, sizeof t[i].shape);
    }
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    if (st_write(path, t, p.n, err, sizeof err)) die("%s", err);
    free(t);
    if (j->format == EXPORT_HF) {
        char *cj = export_hf_config(&l.cfg, &l.mc, l.has_d ? &l.d : NULL);
        write_text(tmp, "config.json", cj);
        free(cj);
        if (l.cfg.modality == D2V_TEXT)
            write_tokenizer(tmp, &l.d, l.cfg.text_max_positions);
        else
            write_preprocessor(tmp, &l);
    }
    if (fsync_path(tmp) != 0) die("%s: cannot sync (%s)", tmp, strerror(errno));
    struct stat sb;
    if (stat(j->out, &sb) == 0) {
        refuse_existing(j->out); /* still empty: it goes, the export takes its name */
        if (rmdir(j->out) != 0)
            die("%s: cannot replace the empty directory (%s)", j->out, strerror(errno));
    }
    if (rename(tmp, j->out) != 0)
        die("%s: cannot rename %s to it (%s)", j->out, tmp, strerror(errno));
    die_cleanup_pop(cleanup);
    printf("exported %s (%s, update %lld) to %s: %d tensors under %s names\n", l.ckpt,
           j->teacher ? "EMA teacher" : "student", (long long)l.update, j->out, p.n,
           j->format == EXPORT_HF ? "HF Data2Vec" : "fairseq");
    for (int i = 0; i < p.n_left; i++)
        printf("left out: %s (no %s counterpart)\n", p.left_out[i],
               j->format == EXPORT_HF ? "HF" : "fairseq");
    export_plan_free(&p);
    free_loaded(&l);
}

/* ---- import ---- */

static const char *strip_prefix(const char *name) {
    static const char *const pre[] = {"data2vec_text.", "data2vec_vision.", "data2vec_audio.",
                                      NULL};
    for (int i = 0; pre[i]; i++)
        if (!strncmp(name, pre[i], strlen(pre[i]))) return name + strlen(pre[i]);
    return name;
}

/* Whether an HF tensor d2v does not hold takes part in the base model's last_hidden_state: the
 * embeddings, the encoder, the final layernorm and the audio front-end, but not their index
 * buffers (position_ids, token_type_ids, relative_position_index: integers, or derived from the
 * config), nor the pooler and the task heads (classifier, lm_head, decode_head, ...), which
 * fine-tuning trains from scratch. */
static int hf_forward_tensor(const char *name, int is_float) {
    static const char *const part[] = {
        "embeddings.", "encoder.",          "feature_extractor.", "feature_projection.",
        "layernorm.",  "masked_spec_embed", "adapter.",           NULL};
    static const char *const buffer[] = {"position_ids", "token_type_ids",
                                         "relative_position_index", NULL};
    const char *s = strip_prefix(name);
    if (!is_float) return 0;
    for (int i = 0; buffer[i]; i++) {
        size_t ls = strlen(s), lb = strlen(buffer[i]);
        if (ls >= lb && !strcmp(s + ls - lb, buffer[i])) return 0;
    }
    for (int i = 0; part[i]; i++)
        if (!strncmp(s, part[i], strlen(part[i]))) return 1;
    return 0;
}

static void shape_text(char *out, size_t n, int rank, const int64_t *s) {
    out[0] = 0;
    for (int i = 0; i < rank; i++)
        snprintf(out + strlen(out), n - strlen(out), "%s%lld", i ? "x" : "", (long long)s[i]);
    if (!rank) snprintf(out, n, "scalar");
}

/* vocab.json against the dataset's tokenizer: the ids must mean the same tokens. */
static void check_vocab(const char *hf_dir, const Dataset *d) {
    char path[PATH_MAX + 64], err[PATH_MAX + 256], pr[96];
    snprintf(path, sizeof path, "%s/vocab.json", hf_dir);
    if (access(path, F_OK) != 0) return; /* weights only: the user vouches for the ids */
    json_object *v = json_object_from_file(path);
    if (!v || !json_object_is_type(v, json_type_object))
        die("%s: not a readable JSON object (%s)", path, json_util_get_last_err());
    hid_t f = (hid_t)d->shards[0].file;
    size_t nv = 0;
    char **vocab = h5_read_strings(f, d->shards[0].path, "tokenizer/vocab", &nv, err, sizeof err);
    if (!vocab) die("%s", err);
    if (json_object_object_length(v) != (int)nv)
        die("%s: %d tokens, the dataset %s has %zu", path, json_object_object_length(v),
            d->shards[0].path, nv);
    for (size_t i = 0; i < nv; i++) {
        json_object *id;
        if (!json_object_object_get_ex(v, vocab[i], &id) ||
            !json_object_is_type(id, json_type_int) || json_object_get_int64(id) != (int64_t)i)
            die("%s: token '%s' is not id %zu as in the dataset %s (another vocabulary)", path,
                str_printable(vocab[i], pr, sizeof pr), i, d->shards[0].path);
    }
    h5_free_strings(vocab, nv);
    json_object_put(v);
}

void import_run(const ImportJob *j) {
    char err[PATH_MAX + 1024], path[PATH_MAX + 64];
    struct stat sb;
    if (stat(j->hf_dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        die("%s: no such HF model directory", j->hf_dir);
    refuse_existing(j->out);
    Loaded l;
    memset(&l, 0, sizeof l);
    train_config_defaults(&l.cfg);
    if (train_config_load(&l.cfg, j->config, err, sizeof err)) die("%s", err);
    for (int i = 0; i < j->n_sets; i++)
        if (train_config_set(&l.cfg, j->sets[i], err, sizeof err)) die("%s", err);
    if (train_config_validate(&l.cfg, 0, err, sizeof err)) die("%s", err);
    if (l.cfg.mode == 1)
        die("%s: model.mode = \"v2\": HF has no data2vec 2.0 model to import from", j->config);
    open_text_data(&l, j->data, "d2v-import");
    train_config_to_model(&l.mc, &l.cfg, l.has_d ? &l.d : NULL);
    if (export_supported(&l.cfg, &l.mc, EXPORT_HF, err, sizeof err))
        die("%s: this model has no HF layout: %s", j->config, err);
    snprintf(path, sizeof path, "%s/config.json", j->hf_dir);
    if (access(path, F_OK) != 0) die("%s: no such file (an HF model directory has one)", path);
    if (export_hf_config_check(path, &l.cfg, &l.mc, l.has_d ? &l.d : NULL, err, sizeof err))
        die("%s", err);
    if (l.has_d) check_vocab(j->hf_dir, &l.d);
    snprintf(path, sizeof path, "%s/model.safetensors", j->hf_dir);
    if (access(path, F_OK) != 0)
        die("%s: no such file (d2v-import reads safetensors; convert a pytorch_model.bin with "
            "transformers' save_pretrained(safe_serialization=True))",
            path);
    StTensor *t;
    int n;
    if (st_read(path, &t, &n, err, sizeof err)) die("%s", err);
    /* fresh values for what HF lacks (the regression head), then HF's tensors over them */
    l.np = model_params_layout(NULL, NULL, &l.mc);
    l.params = xalloc(l.np * 4, "params");
    model_params_layout(&l.ps, l.params, &l.mc);
    model_params_init(&l.ps, &l.mc, (uint64_t)l.cfg.seed);
    ExportPlan p;
    export_plan(&p, &l.mc, &l.ps, EXPORT_HF);
    uint8_t *used = calloc((size_t)n + 1, 1);
    char a[96], b[96], pr[140];
    for (int i = 0; i < p.n; i++) {
        const ExportEntry *e = &p.e[i];
        int k = 0;
        while (k < n && strcmp(strip_prefix(t[k].name), e->name))
            k++;
        if (k == n && e->optional) { /* switched off in HF's config: d2v's fresh value stays */
            printf("initialised: %s (not in the HF file; run.seed %lld)\n", e->name,
                   (long long)l.cfg.seed);
            continue;
        }
        if (k == n) die("%s: no tensor %s (the d2v config's model has it)", path, e->name);
        used[k] = 1;
        if (!t[k].data)
            die("%s: tensor %s is %s, a floating-point tensor is needed", path, e->name,
                t[k].dtype);
        int same = t[k].rank == e->rank;
        for (int d = 0; same && d < e->rank; d++)
            same = t[k].shape[d] == e->shape[d];
        if (!same) {
            shape_text(a, sizeof a, t[k].rank, t[k].shape),
                shape_text(b, sizeof b, e->rank, e->shape);
            die("%s: tensor %s is %s, the d2v config's model has %s", path,
                str_printable(t[k].name, pr, sizeof pr), a, b);
        }
        if (!e->src) { /* no d2v counterpart: only its zero value is what d2v computes */
            for (size_t q = 0; q < e->count; q++)
                if (t[k].data[q] != 0)
                    die("%s: tensor %s is not zero: d2v's model has no such input and would "
                        "compute something else",
                        path, e->name);
            continue;
        }
        memcpy(e->src, t[k].data, e->count * 4);
    }
    /* a key bias the d2v config does not have must be zero */
    if (!l.mc.enc.k_bias) {
        size_t C = (size_t)l.mc.enc.C;
        for (int q = 0; q < l.mc.enc.L; q++)
            for (size_t c = 0; c < C; c++)
                if (l.ps.enc.qkv_b[(size_t)q * 3 * C + C + c] != 0)
                    die("%s: block %d's key bias is not zero, the d2v config has model.k_bias = "
                        "false",
                        path, q);
    }
    printf("imported %s: %d tensors\n", path, p.n);
    for (int i = 0; i < p.n_left; i++)
        printf("initialised: %s (no HF counterpart; run.seed %lld)\n", p.left_out[i],
               (long long)l.cfg.seed);
    for (int k = 0; k < n; k++)
        if (!used[k] && hf_forward_tensor(t[k].name, t[k].data != NULL))
            die("%s: tensor %s is part of HF's encoder but has no place in the d2v config's model "
                "(a layer scale, a per-block relative bias, a conv bias, ... the config lacks): "
                "importing without it would compute something else",
                path, str_printable(t[k].name, pr, sizeof pr));
    for (int k = 0; k < n; k++)
        if (!used[k])
            printf("ignored: %s (no d2v counterpart)\n", str_printable(t[k].name, pr, sizeof pr));
    free(used);
    st_free(t, n);
    /* update 0: teacher = student, zero moments; d2v-train --init-from (or --resume) */
    float *teacher = xalloc(l.np * 4, "teacher"), *m = calloc(l.np, 4), *v = calloc(l.np, 4);
    memcpy(teacher, l.params, l.np * 4);
    if (!m || !v) die("out of memory for the AdamW moments");
    if (mkdir(j->out, 0775) != 0 && errno != EEXIST)
        die("%s: cannot create (%s)", j->out, strerror(errno));
    char *text = train_config_text(&l.cfg);
    TrainState st = {0};
    ckpt_write(j->out, &l.mc, text, l.params, teacher, m, v, l.np, &st, 0, 0);
    snprintf(path, sizeof path, "%s/config.resolved.cfg", j->out);
    if (train_config_write(&l.cfg, path)) die("%s: cannot write", path);
    printf("wrote %s/ckpt/step_00000000/model.h5 (update 0)\n", j->out);
    free(text), free(teacher), free(m), free(v);
    export_plan_free(&p);
    free_loaded(&l);
}
