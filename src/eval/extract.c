/* extract.c: d2v-extract as a library: every sample of a dataset through the student, the
 * teacher or a random initialisation of a checkpoint's model (one unmasked forward per batch,
 * model_features_multi), or through a raw-input baseline; ranks take contiguous blocks of
 * batches, rank 0 gathers and writes one features file (docs/evaluation.md). */
#define _POSIX_C_SOURCE 200809L
#include "d2v/extract.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "d2v/ckpt.h"
#include "d2v/config.h"
#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/model.h"
#include "d2v/rng.h"
#include "d2v/util.h"

const char *const extract_network_names[4] = {"student", "teacher", "random-init", "raw"};

enum { V_MEAN_FINAL, V_MEAN_NORM, V_CLS, V_MEAN_LASTK, V_RAW, V_NUM };
static const char *const variant_names[V_NUM] = {"mean_final", "mean_norm", "cls", "mean_lastk",
                                                 "raw"};

typedef struct {
    const ExtractConfig *c;
    Dataset d;
    TrainConfig cfg; // the checkpoint's (network modes)
    ModelConfig mc;
    int width, last_k;
    int on[V_NUM];
    char skipped[512]; // why a model variant is absent
    char ckpt[PATH_MAX + 64];
    int64_t step;
    uint64_t model_hash;
    char *config_text;
    char raw_kind[160];
} Job;

/* ---- raw-input baselines ---- */

int extract_raw_width(const Dataset *d) {
    if (d->modality == D2V_IMAGE) return d->H * d->W * d->C;
    if (d->modality == D2V_TEXT)
        return d->vocab_size < EXTRACT_TEXT_BUCKETS ? d->vocab_size : EXTRACT_TEXT_BUCKETS;
    return 2 * EXTRACT_FRAME;
}

void extract_raw_sample(const Dataset *d, int64_t i, float *out) {
    char err[PATH_MAX + 256];
    int D = extract_raw_width(d);
    if (d->modality == D2V_IMAGE) {
        uint8_t *px = xalloc((size_t)D, "image");
        if (dataset_read_image(d, i, px, err, sizeof err) < 0) die("%s", err);
        for (int k = 0; k < D; k++)
            out[k] = px[k] / 255.0f;
        free(px);
        return;
    }
    int64_t len = dataset_sample_len(d, i);
    if (d->modality == D2V_TEXT) {
        int32_t *tok = xalloc(sizeof(int32_t) * (size_t)(len + 1), "document");
        if (dataset_read_tokens(d, i, 0, len, tok, err, sizeof err) < 0) die("%s", err);
        memset(out, 0, sizeof(float) * D);
        for (int64_t t = 0; t < len; t++) {
            if (tok[t] < 0 || tok[t] >= d->vocab_size)
                die("%s: document %lld holds token %d outside the vocabulary", d->path,
                    (long long)i, tok[t]);
            /* a vocabulary wider than the buckets is hashed whole (no mix of both schemes) */
            int bucket = d->vocab_size <= EXTRACT_TEXT_BUCKETS
                             ? tok[t]
                             : (int)(rng_mix64((uint64_t)tok[t]) % EXTRACT_TEXT_BUCKETS);
            out[bucket] += 1.0f;
        }
        free(tok);
        return;
    }
    float *x = xalloc(sizeof(float) * (size_t)(len > EXTRACT_FRAME ? len : EXTRACT_FRAME), "audio");
    if (dataset_read_audio(d, i, 0, len, x, err, sizeof err) < 0) die("%s", err);
    double m = 0, v = 0; /* the loader's per-utterance normalisation (data.speech_normalize) */
    for (int64_t t = 0; t < len; t++)
        m += x[t];
    m /= len > 0 ? len : 1;
    for (int64_t t = 0; t < len; t++)
        v += (x[t] - m) * (x[t] - m);
    float s = (float)(1.0 / sqrt(v / (len > 0 ? len : 1) + 1e-5));
    for (int64_t t = 0; t < len; t++)
        x[t] = (float)(x[t] - m) * s;
    /* a clip shorter than one frame is one zero-padded frame (xalloc zeroed the tail) */
    int64_t frames = len >= EXTRACT_FRAME ? (len - EXTRACT_FRAME) / EXTRACT_HOP + 1 : 1;
    for (int j = 0; j < EXTRACT_FRAME; j++) {
        double s1 = 0, s2 = 0;
        for (int64_t f = 0; f < frames; f++) {
            double y = x[f * EXTRACT_HOP + j];
            s1 += y, s2 += y * y;
        }
        double mean = s1 / frames, var = s2 / frames - mean * mean;
        out[j] = (float)mean, out[EXTRACT_FRAME + j] = (float)sqrt(var > 0 ? var : 0);
    }
    free(x);
}

/* ---- network inputs: d2v-eval's, for every sample ---- */

typedef struct {
    Batch b;
    int cap_audio;
} Inputs;

static void inputs_alloc(Inputs *in, const Job *j) {
    memset(in, 0, sizeof *in);
    int B = j->c->batch;
    in->b.ids = xalloc(sizeof(int64_t) * B, "ids");
    if (j->d.modality == D2V_TEXT) {
        in->b.T = j->cfg.text_block;
        in->b.tokens = xalloc(sizeof(int32_t) * B * in->b.T, "tokens");
    } else if (j->d.modality == D2V_IMAGE) {
        in->b.H = j->d.H, in->b.W = j->d.W, in->b.C = j->d.C;
        in->b.images = xalloc(sizeof(float) * B * j->d.H * j->d.W * j->d.C, "images");
    } else {
        in->b.audio = xalloc(sizeof(float) * j->cfg.speech_max_samples, "audio");
    }
}

static void inputs_free(Inputs *in) {
    free(in->b.ids), free(in->b.tokens), free(in->b.images), free(in->b.audio);
}

/* Samples [first, first + B) as one batch. Text: one row per document, <s> + its first
 * text_block - 1 tokens (+ </s>), padded; images: the loader's normalisation at the dataset's
 * size (no crop, no flip); speech (B = 1): the first speech_max_samples of the utterance,
 * normalised as the loader does. */
static void fill_batch(const Job *j, Inputs *in, int64_t first, int B) {
    const Dataset *d = &j->d;
    const TrainConfig *cfg = &j->cfg;
    Batch *b = &in->b;
    char err[PATH_MAX + 256];
    b->B = B;
    for (int i = 0; i < B; i++)
        b->ids[i] = first + i;
    if (d->modality == D2V_TEXT) {
        int T = b->T;
        for (int i = 0; i < B; i++) {
            int64_t doc = first + i, len = dataset_sample_len(d, doc);
            int32_t *row = b->tokens + (size_t)i * T;
            int take = (int)(len < T - 1 ? len : T - 1);
            row[0] = d->bos_id;
            if (dataset_read_tokens(d, doc, 0, take, row + 1, err, sizeof err) < 0) die("%s", err);
            for (int k = 1; k <= take; k++)
                if (row[k] < 0 || row[k] >= d->vocab_size)
                    die("%s: document %lld holds token %d outside the vocabulary", d->path,
                        (long long)doc, row[k]);
            int n = 1 + take;
            if (n < T) row[n++] = d->eos_id;
            for (; n < T; n++)
                row[n] = d->pad_id;
        }
    } else if (d->modality == D2V_IMAGE) {
        size_t per = (size_t)d->H * d->W * d->C;
        uint8_t *px = xalloc(per, "image");
        for (int i = 0; i < B; i++) {
            if (dataset_read_image(d, first + i, px, err, sizeof err) < 0) die("%s", err);
            float *o = b->images + i * per;
            for (size_t p = 0; p < per; p++) { /* as loader.c's fill_image, in float */
                int k = (int)(p % (size_t)d->C);
                o[p] = (px[p] / 255.0f - (float)cfg->mean[k]) / (float)cfg->std[k];
            }
        }
        free(px);
    } else {
        int64_t len = dataset_sample_len(d, first);
        int S = (int)(len < cfg->speech_max_samples ? len : cfg->speech_max_samples);
        if (speech_num_frames(&j->mc.speech, S) < 1)
            die("%s: utterance %lld has %d samples, fewer than one frame of the feature extractor",
                d->path, (long long)first, S);
        if (dataset_read_audio(d, first, 0, S, b->audio, err, sizeof err) < 0) die("%s", err);
        if (cfg->speech_normalize) { /* F.layer_norm(wav, wav.shape), as loader.c */
            double m = 0, v = 0;
            for (int i = 0; i < S; i++)
                m += b->audio[i];
            m /= S;
            for (int i = 0; i < S; i++)
                v += (b->audio[i] - m) * (b->audio[i] - m);
            float s = (float)(1.0 / sqrt(v / S + 1e-5));
            for (int i = 0; i < S; i++)
                b->audio[i] = (float)(b->audio[i] - m) * s;
        }
        b->S = S;
    }
}

/* ---- set-up ---- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

/* Token 0 is a summary token: the image cls (v2's context always prepends one); text's <s>,
 * RoBERTa's classification token (every row starts with it). Speech frames have none. */
static int first_is_cls(const ModelConfig *mc) {
    return mc->modality == D2V_TEXT || (mc->modality == D2V_IMAGE && (mc->image.cls || mc->v2));
}

static void open_dataset(Job *j, int modality) {
    char err[PATH_MAX + 256];
    if (dataset_open(&j->d, j->c->data, modality, err, sizeof err) < 0) die("%s", err);
}

static void setup_network(Job *j, float **params, float **teacher, ModelParams *ps,
                          ModelParams *pt) {
    const ExtractConfig *c = j->c;
    char err[PATH_MAX + 512];
    if (!c->checkpoint) die("d2v-extract: need a CHECKPOINT (or --raw)");
    snprintf(j->ckpt, sizeof j->ckpt, "%s", c->checkpoint);
    if (access(c->checkpoint, F_OK) != 0)
        die("%s: no such checkpoint or run directory", c->checkpoint);
    char latest[PATH_MAX + 64];
    if (ckpt_find_latest(c->checkpoint, latest, sizeof latest) == 0)
        snprintf(j->ckpt, sizeof j->ckpt, "%s", latest);
    if (ckpt_read_config(j->ckpt, &j->cfg, err, sizeof err)) die("%s", err);
    open_dataset(j, j->cfg.modality);
    const Dataset *d = &j->d;
    if (d->modality == D2V_IMAGE && (d->H != j->cfg.image_height || d->W != j->cfg.image_width ||
                                     d->C != j->cfg.image_channels))
        die("%s: images are %dx%dx%d, the model takes %dx%dx%d", d->path, d->H, d->W, d->C,
            j->cfg.image_height, j->cfg.image_width, j->cfg.image_channels);
    train_config_to_model(&j->mc, &j->cfg, d);
    int L = j->mc.enc.L;
    j->last_k = c->last_k > 0 ? c->last_k : (L < 4 ? L : 4);
    if (j->last_k > L) die("--last-k %d: the model has %d blocks", c->last_k, L);
    size_t np = model_params_layout(NULL, NULL, &j->mc);
    *params = xalloc(np * 4, "params"), *teacher = xalloc(np * 4, "teacher");
    model_params_layout(ps, *params, &j->mc);
    j->step = 0;
    if (c->network == EXTRACT_RANDOM_INIT) {
        model_params_init(ps, &j->mc, (uint64_t)j->cfg.seed);
        memcpy(*teacher, *params, np * 4);
    } else {
        float *m = xalloc(np * 4, "adam m"), *v = xalloc(np * 4, "adam v");
        TrainState st;
        if (ckpt_read(j->ckpt, &j->mc, *params, *teacher, m, v, np, &st, err, sizeof err) < 0)
            die("%s", err);
        j->step = st.update;
        free(m), free(v);
    }
    model_teacher_view(pt, ps, *teacher, &j->mc);
    j->width = model_width(&j->mc);
    j->on[V_MEAN_FINAL] = j->on[V_MEAN_LASTK] = 1;
    j->on[V_MEAN_NORM] = model_final_norm(&j->mc);
    j->on[V_CLS] = first_is_cls(&j->mc);
    snprintf(j->skipped, sizeof j->skipped, "%s%s",
             j->on[V_MEAN_NORM] ? ""
                                : "mean_norm: no final norm after the last block (post-LN blocks "
                                  "each end in their own layer norm, already in mean_final); ",
             j->on[V_CLS] ? "" : "cls: the encoder input has no cls token; ");
    j->config_text = train_config_text(&j->cfg);
    /* what the features depend on: probe refuses train and test files of different models */
    uint64_t h = fnv(0xcbf29ce484222325ull, j->config_text, strlen(j->config_text));
    h = fnv(h, extract_network_names[c->network], strlen(extract_network_names[c->network]));
    h = fnv(h, *params, np * 4);
    if (c->network == EXTRACT_TEACHER) h = fnv(h, *teacher, np * 4);
    j->model_hash = h;
}

static void setup_raw(Job *j) {
    open_dataset(j, -1);
    const Dataset *d = &j->d;
    j->width = extract_raw_width(d);
    j->on[V_RAW] = 1;
    if (d->modality == D2V_IMAGE)
        snprintf(j->raw_kind, sizeof j->raw_kind, "pixels / 255 (%dx%dx%d)", d->H, d->W, d->C);
    else if (d->modality == D2V_TEXT)
        snprintf(j->raw_kind, sizeof j->raw_kind, "token counts over %s%d %s",
                 d->vocab_size > EXTRACT_TEXT_BUCKETS ? "hashed " : "", j->width,
                 d->vocab_size > EXTRACT_TEXT_BUCKETS ? "buckets" : "vocabulary ids");
    else
        snprintf(j->raw_kind, sizeof j->raw_kind,
                 "mean and std over frames of %d samples every %d of the normalised waveform",
                 EXTRACT_FRAME, EXTRACT_HOP);
    char id[64];
    snprintf(id, sizeof id, "raw:%s:%d", d2v_modality_names[d->modality], j->width);
    j->model_hash = fnv(0xcbf29ce484222325ull, id, strlen(id));
}

/* ---- writing (rank 0) ---- */

static int is_data_object(const char *name) {
    static const char *const data[] = {"tokens",        "doc_offsets", "images",      "audio",
                                       "offsets",       "labels",      "label_names", "shards",
                                       "shard_samples", "tokenizer",   NULL};
    for (int i = 0; data[i]; i++)
        if (!strcmp(name, data[i])) return 1;
    return 0;
}

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && !strcmp(s + n - m, tail);
}

/* Per-sample information other than the samples themselves (speaker or group ids, splits,
 * transcripts: 1-D integer or string datasets with one row per sample in every shard) and their
 * `*_names` tables, copied in global sample order. */
static void copy_extras(const Dataset *d, hid_t out) {
    enum { MAXN = 128 };
    char(*names)[64] = xalloc(sizeof(char[64]) * MAXN, "dataset names");
    char err[PATH_MAX + 256];
    hid_t f0 = (hid_t)d->shards[0].file;
    int n = h5_list(f0, d->shards[0].path, names, MAXN, err, sizeof err);
    if (n < 0) die("%s", err);
    for (int k = 0; k < n && k < MAXN; k++) {
        const char *name = names[k];
        int cls = h5_dataset_class(f0, name), rank;
        hsize_t dims[4];
        if (is_data_object(name) || (cls != H5T_INTEGER && cls != H5T_STRING) ||
            h5_dataset_shape(f0, d->shards[0].path, name, &rank, dims, err, sizeof err) < 0 ||
            rank != 1)
            continue;
        if (cls == H5T_STRING && ends_with(name, "_names")) { /* a class table, as it is */
            size_t ns = 0;
            char **s = h5_read_strings(f0, d->shards[0].path, name, &ns, err, sizeof err);
            if (!s) die("%s", err);
            h5_write_strings(out, name, (const char *const *)s, ns);
            h5_free_strings(s, ns);
            continue;
        }
        int per_sample = 1; /* one row per sample in every shard, else not ours to copy */
        for (int s = 0; s < d->n_shards && per_sample; s++) {
            hid_t f = (hid_t)d->shards[s].file;
            per_sample =
                h5_dataset_class(f, name) == cls &&
                h5_dataset_shape(f, d->shards[s].path, name, &rank, dims, err, sizeof err) == 0 &&
                rank == 1 && (int64_t)dims[0] == d->shards[s].num_samples;
        }
        if (!per_sample) continue;
        hsize_t N = (hsize_t)d->num_samples;
        if (cls == H5T_INTEGER) {
            int64_t *v = xalloc(sizeof(int64_t) * (N + 1), name);
            for (int s = 0; s < d->n_shards; s++)
                if (h5_read_rows((hid_t)d->shards[s].file, d->shards[s].path, name,
                                 H5T_NATIVE_INT64, 0, (hsize_t)d->shards[s].num_samples,
                                 v + d->shards[s].first, err, sizeof err) < 0)
                    die("%s", err);
            h5_write(out, name, H5T_NATIVE_INT64, 1, &N, NULL, v);
            free(v);
        } else {
            char **all = xalloc(sizeof(char *) * (N + 1), name);
            for (int s = 0; s < d->n_shards; s++) {
                size_t ns = 0;
                char **v = h5_read_strings((hid_t)d->shards[s].file, d->shards[s].path, name, &ns,
                                           err, sizeof err);
                if (!v) die("%s", err);
                memcpy(all + d->shards[s].first, v, sizeof(char *) * ns);
                free(v); /* the strings now belong to all */
            }
            h5_write_strings(out, name, (const char *const *)all, N);
            h5_free_strings(all, N);
        }
    }
    free(names);
}

static void variant_list(const Job *j, char *list, size_t n) {
    list[0] = '\0';
    for (int v = 0; v < V_NUM; v++)
        if (j->on[v])
            snprintf(list + strlen(list), n - strlen(list), "%s%s", *list ? "," : "",
                     variant_names[v]);
}

static void write_file(const Job *j, float *const *feat) {
    const ExtractConfig *c = j->c;
    const Dataset *d = &j->d;
    H5Out o;
    h5out_create(&o, c->out);
    hid_t f = o.file;
    h5_write_root_attrs(f, d2v_modality_names[d->modality], "features", d->num_samples,
                        c->created_by ? c->created_by : "d2v-extract 1");
    h5_attr_str(f, "source", c->data);
    h5_attr_str(f, "network", extract_network_names[c->network]);
    char id[32], list[128];
    snprintf(id, sizeof id, "%016llx", (unsigned long long)j->model_hash);
    h5_attr_str(f, "model_id", id);
    h5_attr_i32(f, "width", j->width);
    variant_list(j, list, sizeof list);
    h5_attr_str(f, "variants", list);
    if (c->network == EXTRACT_RAW) {
        h5_attr_str(f, "raw", j->raw_kind);
    } else {
        h5_attr_str(f, "checkpoint", j->ckpt);
        h5_attr_i64(f, "step", j->step);
        h5_attr_i32(f, "last_k", j->last_k);
        h5_attr_str(f, "skipped", j->skipped);
        h5_attr_str(f, "config", j->config_text);
    }
    hsize_t dims[2] = {(hsize_t)d->num_samples, (hsize_t)j->width};
    for (int v = 0; v < V_NUM; v++)
        if (j->on[v]) h5_write(f, variant_names[v], H5T_NATIVE_FLOAT, 2, dims, NULL, feat[v]);
    if (d->labels) h5_write(f, "labels", H5T_NATIVE_INT32, 1, dims, NULL, d->labels);
    if (d->label_names)
        h5_write_strings(f, "label_names", (const char *const *)d->label_names, d->n_label_names);
    copy_extras(d, f);
    h5out_commit(&o);
}

static void check_output(const char *out) {
    if (access(out, F_OK) == 0) die("%s: already exists (not overwritten)", out);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", out);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    if (access(dir, W_OK) != 0) die("%s: cannot write into %s", out, dir);
}

/* ---- the job ---- */

void extract_features(const ExtractConfig *c) {
    if (!c->data || !c->out) die("d2v-extract: need --data and -o");
    if (c->batch < 1) die("d2v-extract: --batch must be positive");
    if (c->network < EXTRACT_STUDENT || c->network > EXTRACT_RAW) die("d2v-extract: bad network");
    if (g_dist.rank == 0) check_output(c->out);
    double t0 = now_seconds();
    Job j;
    memset(&j, 0, sizeof j);
    j.c = c;
    float *params = NULL, *teacher = NULL;
    ModelParams ps, pt;
    Model *model = NULL;
    int batch = c->batch;
    if (c->network == EXTRACT_RAW) {
        setup_raw(&j);
    } else {
        setup_network(&j, &params, &teacher, &ps, &pt);
        if (j.d.modality == D2V_SPEECH) batch = 1; /* whole utterances, no cropping */
        model = model_create_features(&j.mc, batch,
                                      j.d.modality == D2V_SPEECH ? j.cfg.speech_max_samples
                                      : j.d.modality == D2V_TEXT ? j.cfg.text_block
                                                                 : 0);
    }
    ExtractConfig cb = *c;
    cb.batch = batch;
    j.c = &cb;
    /* contiguous blocks of whole batches: every batch is the same on any rank count */
    int64_t N = j.d.num_samples, nb = (N + batch - 1) / batch;
    int64_t b0 = nb * g_dist.rank / g_dist.world, b1 = nb * (g_dist.rank + 1) / g_dist.world;
    int64_t lo = b0 * batch < N ? b0 * batch : N, hi = b1 * batch < N ? b1 * batch : N;
    size_t W = (size_t)j.width;
    float *mine[V_NUM] = {0};
    for (int v = 0; v < V_NUM; v++)
        if (j.on[v]) mine[v] = xalloc(sizeof(float) * (size_t)(hi - lo) * W + 64, "features");
    Inputs in;
    if (model) inputs_alloc(&in, &j);
    const ModelParams *p = c->network == EXTRACT_TEACHER ? &pt : &ps;
    double t_start = now_seconds(), t_last = t_start;
    for (int64_t first = lo; first < hi; first += batch) {
        int B = (int)(hi - first < batch ? hi - first : batch);
        size_t at = (size_t)(first - lo) * W;
        if (model) {
            fill_batch(&j, &in, first, B);
            ModelFeatures f = {
                mine[V_MEAN_FINAL] + at, mine[V_MEAN_NORM] ? mine[V_MEAN_NORM] + at : NULL,
                mine[V_CLS] ? mine[V_CLS] + at : NULL, mine[V_MEAN_LASTK] + at, j.last_k};
            model_features_multi(model, p, &in.b, &f);
        } else {
            for (int i = 0; i < B; i++)
                extract_raw_sample(&j.d, first + i, mine[V_RAW] + at + (size_t)i * W);
        }
        double t = now_seconds();
        int64_t done = first + B - lo, total = hi - lo;
        if (c->progress && g_dist.rank == 0 && (t - t_last >= 2.0 || done == total)) {
            double rate = done / (t - t_start + 1e-9);
            fprintf(stderr, "d2v-extract: %lld/%lld samples (rank 0 of %d), %.0f/s, ETA %.0f s\n",
                    (long long)done, (long long)total, g_dist.world, rate,
                    (total - done) / (rate > 0 ? rate : 1));
            t_last = t;
        }
    }
    float *all[V_NUM] = {0};
    for (int v = 0; v < V_NUM; v++) {
        if (!j.on[v]) continue;
        if (g_dist.rank == 0) all[v] = xalloc(sizeof(float) * (size_t)N * W + 64, "features");
        dist_gather_f32(mine[v], (size_t)(hi - lo) * W, all[v]);
        free(mine[v]);
    }
    if (g_dist.rank == 0) {
        write_file(&j, all);
        char what[PATH_MAX + 256];
        if (c->network == EXTRACT_RAW)
            snprintf(what, sizeof what, "raw input: %s", j.raw_kind);
        else
            snprintf(what, sizeof what, "%s of %s, update %lld", extract_network_names[c->network],
                     j.ckpt, (long long)j.step);
        char list[128];
        variant_list(&j, list, sizeof list);
        log0("d2v-extract: wrote %s: %lld samples x %d, %s (%s; %.1f s)\n", c->out, (long long)N,
             j.width, list, what, now_seconds() - t0);
    }
    dist_barrier(); /* no rank leaves (and maybe exits the job) before the file is complete */
    for (int v = 0; v < V_NUM; v++)
        free(all[v]);
    if (model) inputs_free(&in), model_destroy(model);
    free(params), free(teacher), free(j.config_text);
    dataset_close(&j.d);
}
