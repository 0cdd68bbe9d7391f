/* fuzz_files.h: what tests/fuzz/fuzz_dataset.c, fuzz_ckpt.c and fuzz_h5edit.c share: small valid
 * shards of each modality (the files index inputs name) and the index files over them, a tiny
 * image model and its checkpoints, and what is done with an input file (a dataset that opens
 * has samples read directly and batches made by the loader's error-returning calls; a checkpoint
 * is read with its configuration), every invariant the readers promise checked with abort(). */
#ifndef D2V_FUZZ_FILES_H
#define D2V_FUZZ_FILES_H

#include <math.h>
#include <sys/stat.h>

#include "d2v/ckpt.h"
#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/h5io.h"
#include "fuzz.h"

/* ---- the shards next to every input ---- */

static inline void shard_root(H5Out *o, const char *dir, const char *name, const char *mod,
                              int64_t n) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    h5out_create(o, p);
    h5_write_root_attrs(o->file, mod, "shard", n, "fuzz_dataset");
}

static inline void write_labels(hid_t f, int64_t n, int first) {
    int32_t lab[8];
    for (int i = 0; i < n; i++)
        lab[i] = (first + i) % 3;
    hsize_t d[1] = {(hsize_t)n};
    h5_write(f, "labels", H5T_NATIVE_INT32, 1, d, NULL, lab);
    const char *names[3] = {"a", "b", "c"};
    h5_write_strings(f, "label_names", names, 3);
}

/* Shard k of each modality: images 4x4x1, documents of k + 1.. tokens, utterances of 40.. */
static inline void write_shards(const char *dir) {
    for (int k = 0; k < 2; k++) {
        int n = 3 + k;
        char name[64];
        H5Out o;
        snprintf(name, sizeof name, "img.shard-%d.h5", k);
        shard_root(&o, dir, name, "image", n);
        h5_attr_i32(o.file, "height", 4), h5_attr_i32(o.file, "width", 4);
        h5_attr_i32(o.file, "channels", 1);
        uint8_t px[8 * 16];
        for (int i = 0; i < n * 16; i++)
            px[i] = (uint8_t)(i * 37 + k);
        hsize_t dims[4] = {(hsize_t)n, 4, 4, 1}, chunk[4] = {1, 4, 4, 1};
        h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, chunk, px);
        write_labels(o.file, n, k * 3);
        h5out_commit(&o);

        snprintf(name, sizeof name, "txt.shard-%d.h5", k);
        shard_root(&o, dir, name, "text", n);
        const char *a[6] = {"vocab_size", "bos_id", "eos_id", "pad_id", "unk_id", "mask_id"};
        const int32_t v[6] = {50, 0, 2, 1, 3, 49};
        for (int i = 0; i < 6; i++)
            h5_attr_i32(o.file, a[i], v[i]);
        int64_t off[9] = {0};
        int32_t tok[64];
        for (int d = 0; d < n; d++)
            off[d + 1] = off[d] + d + 1 + k;
        for (int i = 0; i < off[n]; i++)
            tok[i] = 4 + (i * 7) % 45;
        hsize_t nt[1] = {(hsize_t)off[n]}, no[1] = {(hsize_t)n + 1};
        h5_write(o.file, "tokens", H5T_NATIVE_INT32, 1, nt, NULL, tok);
        h5_write(o.file, "doc_offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
        write_labels(o.file, n, k * 3);
        h5out_commit(&o);

        snprintf(name, sizeof name, "sp.shard-%d.h5", k);
        shard_root(&o, dir, name, "speech", n);
        h5_attr_i32(o.file, "sample_rate", 16000);
        h5_attr_str(o.file, "sample_format", "int16");
        int16_t au[512];
        for (int d = 0; d < n; d++)
            off[d + 1] = off[d] + 40 + 10 * d;
        for (int i = 0; i < off[n]; i++)
            au[i] = (int16_t)(i * 331 - 9000);
        hsize_t na[1] = {(hsize_t)off[n]};
        h5_write(o.file, "audio", H5T_NATIVE_INT16, 1, na, NULL, au);
        h5_write(o.file, "offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
        h5out_commit(&o);
    }
    /* float32 speech, one shard */
    H5Out o;
    shard_root(&o, dir, "spf.h5", "speech", 2);
    h5_attr_i32(o.file, "sample_rate", 16000);
    h5_attr_str(o.file, "sample_format", "float32");
    float au[100];
    for (int i = 0; i < 100; i++)
        au[i] = (float)(i % 17 - 8) / 9;
    int64_t off[3] = {0, 45, 100};
    hsize_t na[1] = {100}, no[1] = {3};
    h5_write(o.file, "audio", H5T_NATIVE_FLOAT, 1, na, NULL, au);
    h5_write(o.file, "offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
    h5out_commit(&o);
}

/* An index over each modality's two shards (index-image.h5, ...). */
static inline void write_index_seeds(const char *dir) {
    const char *mods[3] = {"image", "text", "speech"}, *pre[3] = {"img", "txt", "sp"};
    for (int m = 0; m < 3; m++) {
        char p[700], s0[64], s1[64];
        snprintf(p, sizeof p, "%s/index-%s.h5", dir, mods[m]);
        snprintf(s0, sizeof s0, "%s.shard-0.h5", pre[m]),
            snprintf(s1, sizeof s1, "%s.shard-1.h5", pre[m]);
        H5Out o;
        h5out_create(&o, p);
        h5_write_root_attrs(o.file, mods[m], "index", 7, "fuzz_dataset");
        const char *names[2] = {s0, s1};
        h5_write_strings(o.file, "shards", names, 2);
        int64_t counts[2] = {3, 4};
        hsize_t n2[1] = {2};
        h5_write(o.file, "shard_samples", H5T_NATIVE_INT64, 1, n2, NULL, counts);
        h5out_commit(&o);
    }
}

/* ---- a dataset that opened ---- */

static inline void read_samples(const Dataset *d) {
    char err[1024];
    for (int64_t i = 0; i < d->num_samples && i < 4; i++) {
        int64_t len = dataset_sample_len(d, i), take = len < 64 ? len : 64;
        if (d->modality == D2V_IMAGE) {
            uint8_t *px = malloc((size_t)d->H * d->W * d->C);
            (void)dataset_read_image(d, i, px, err, sizeof err);
            free(px);
        } else if (d->modality == D2V_TEXT) {
            int32_t tok[64];
            if (dataset_read_tokens(d, i, 0, take, tok, err, sizeof err) == 0)
                for (int64_t k = 0; k < take; k++)
                    if (tok[k] < 0 || tok[k] >= d->vocab_size) abort(); /* checked at open */
        } else {
            float au[64];
            (void)dataset_read_audio(d, i, 0, take, au, err, sizeof err);
        }
        /* reads past the sample are refused, never performed */
        int32_t t[2];
        float f[2];
        if (d->modality == D2V_TEXT && dataset_read_tokens(d, i, len, 1, t, err, sizeof err) == 0)
            abort();
        if (d->modality == D2V_SPEECH && dataset_read_audio(d, i, len, 1, f, err, sizeof err) == 0)
            abort();
    }
}

static inline void run_loader(Dataset *d, int variant) {
    LoaderConfig c = {.modality = d->modality,
                      .batch_size = 2,
                      .seed = 3,
                      .shuffle = 1,
                      .text_T = 8,
                      .text_stream = variant,
                      .image_augment = 1,
                      .crop_scale_min = 0.08f,
                      .crop_scale_max = 1,
                      .crop_ratio_min = 0.75f,
                      .crop_ratio_max = 4.0f / 3,
                      .flip_prob = 0.5f,
                      .out_H = 6,
                      .out_W = 5,
                      .mean = {0.5f, 0.5f, 0.5f},
                      .std = {0.25f, 0.25f, 0.25f},
                      .speech_max_samples = 3000,
                      .speech_min_samples = 1,
                      .speech_normalize = 1,
                      .color_jitter = variant ? 0.4f : 0,
                      .interpolation = variant};
    char err[1024];
    Loader *l = loader_create_err(d, &c, variant, 2, (LoaderCursor){0, 0}, err, sizeof err);
    if (!l) return;
    for (int k = 0; k < 3; k++) {
        const Batch *b = loader_next_err(l, err, sizeof err);
        if (!b) break;
        for (int i = 0; i < b->B; i++)
            if (b->ids[i] < 0 || (b->labels[i] >= 0 && (!d->labels || d->modality == D2V_TEXT)))
                abort();
        if (d->modality == D2V_TEXT)
            for (int i = 0; i < b->B * b->T; i++)
                if (b->tokens[i] < 0 || b->tokens[i] >= d->vocab_size) abort();
    }
    LoaderCursor cur = loader_cursor(l);
    loader_destroy(l);
    /* the cursor it hands out resumes */
    l = loader_create_err(d, &c, variant, 2, cur, err, sizeof err);
    if (!l) abort();
    loader_destroy(l);
}

/* ---- checkpoints of a tiny image model ---- */

static const char *const tiny =
    "modality = \"image\";\n"
    "model: { layers = 1; width = 8; heads = 2; ffn = 8; head_layers = 1; };\n"
    "image: { height = 4; width = 4; channels = 1; patch = 2; };\n"
    "mask: { image_patches = 2; image_min_patches = 1; };\n"
    "target: { top_k = 1; };\n"
    "data: { train = \"data/fuzz.h5\"; batch_size = 2; };\n";

static ModelConfig tiny_mc;
static size_t tiny_np;
static float *tiny_arena[4];
static char *config_text;

static inline void tiny_model(void) {
    TrainConfig c;
    char err[1024];
    train_config_defaults(&c);
    if (train_config_load_string(&c, tiny, "tiny", err, sizeof err) ||
        train_config_validate(&c, 1, err, sizeof err)) {
        fprintf(stderr, "fuzz_ckpt: %s\n", err);
        abort();
    }
    Dataset none;
    memset(&none, 0, sizeof none);
    train_config_to_model(&tiny_mc, &c, &none);
    tiny_np = model_params_layout(NULL, NULL, &tiny_mc);
    for (int a = 0; a < 4; a++)
        tiny_arena[a] = calloc(tiny_np, sizeof(float));
    config_text = train_config_text(&c);
}

/* Checkpoints of the tiny model with small arbitrary values into dir: tiny.h5, and
 * tiny-no-checksums.h5 (as an older d2v wrote). */
static inline void write_ckpt_seeds(const char *dir) {
    char run[700], from[800], to[800];
    snprintf(run, sizeof run, "%s/run", fuzz_dir());
    mkdir(run, 0775);
    for (int a = 0; a < 4; a++)
        for (size_t i = 0; i < tiny_np; i++)
            tiny_arena[a][i] = (float)((int)(i * 7 + a) % 13 - 6) / 8;
    TrainState st = {.update = 12, .skipped = 1, .cursor = {2, 4}};
    ckpt_write(run, &tiny_mc, config_text, tiny_arena[0], tiny_arena[1], tiny_arena[2],
               tiny_arena[3], tiny_np, &st, 0, 0);
    snprintf(from, sizeof from, "%s/ckpt/step_00000012/model.h5", run);
    for (int k = 0; k < 2; k++) {
        snprintf(to, sizeof to, "%s/%s.h5", dir, k ? "tiny-no-checksums" : "tiny");
        FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
        char buf[65536];
        size_t n;
        while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0)
            fwrite(buf, 1, n, out);
        if (!in || !out || fclose(out) != 0) abort();
        fclose(in);
        if (k) {
            hid_t f = H5Fopen(to, H5F_ACC_RDWR, H5P_DEFAULT);
            H5Ldelete(f, "checksums", H5P_DEFAULT);
            H5Fclose(f);
        }
    }
    char cmd[900];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", run);
    if (system(cmd) != 0) abort();
}

/* Read path as a checkpoint of the tiny model, and its configuration. */
static inline void exercise_ckpt(const char *path) {
    TrainState st;
    char err[1024];
    int rc = ckpt_read(path, &tiny_mc, tiny_arena[0], tiny_arena[1], tiny_arena[2], tiny_arena[3],
                       tiny_np, &st, err, sizeof err);
    if (rc == 0) { /* the counters a run can reach, and nothing else */
        if (st.update < 0 || st.update > CKPT_MAX_UPDATE || st.skipped < 0 ||
            st.skipped > st.update || st.cursor.epoch < 0 || st.cursor.position < 0)
            abort();
    } else if ((rc != CKPT_OTHER && rc != CKPT_DAMAGED) || !err[0] || strchr(err, '\n')) {
        abort();
    }
    TrainConfig c;
    if (ckpt_read_config(path, &c, err, sizeof err) == 0) {
        if (train_config_validate(&c, 0, err, sizeof err) != 0) abort(); /* checked on read */
    } else if (!err[0]) {
        abort();
    }
}

/* Open path as a dataset; exercise it when it opens, with the loader variants in the bit mask
 * `loaders` (1: document text blocks, bilinear; 2: streamed text, colour jitter, bicubic). */
static inline void exercise_dataset(const char *path, int loaders) {
    Dataset d;
    char err[1024];
    if (dataset_open(&d, path, -1, err, sizeof err) == 0) {
        if (d.num_samples <= 0 || d.n_shards < 1) abort();
        read_samples(&d);
        if (loaders & 1) run_loader(&d, 0);
        if (loaders & 2) run_loader(&d, 1);
        dataset_close(&d);
    } else if (!err[0] || strchr(err, '\n')) {
        abort(); /* every failure is one line */
    }
}

#endif
