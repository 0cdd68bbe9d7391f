/* d2v_eval.c: d2v-eval, a k-nearest-neighbour probe of frozen pretrained features: the encoder
 * (student or teacher of a checkpoint, or a random initialisation as the baseline) embeds a
 * labelled train and test set, and each test sample takes the weighted vote of its k most
 * cosine-similar train samples (the DINO kNN protocol: weights exp(sim / 0.07)). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "d2v/ckpt.h"
#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/probe.h"
#include "d2v/util.h"

static void usage(void) {
    printf(
        "usage: d2v-eval CHECKPOINT --train DATA.h5 --test DATA.h5 [--k 20] [--batch 50]\n"
        "                [--teacher] [--random-init]\n"
        "  CHECKPOINT     RUN_DIR/ckpt/step_N/model.h5 (or a run directory: its newest one)\n"
        "  --teacher      embed with the EMA teacher instead of the student\n"
        "  --random-init  embed with the untrained initialisation of the same config (baseline)\n"
        "Prints the kNN top-1 accuracy of mean-pooled final-block features on labelled\n"
        "datasets (the data-prep tools' /labels; text: one row per document,\n"
        "tokenised with the pretraining vocabulary).\n");
}

typedef struct {
    float *feat; // (n, C), L2-normalised
    int32_t *label;
    int64_t n;
} Embedded;

/* Labels are class ids that index the vote array: more classes than this is a damaged file. */
#define MAX_CLASSES (1 << 20)

/* A positive int option (atoi would take "1e9" for 1 and overflow silently). */
static int parse_count(const char *opt, const char *s) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < 1 || v > 1 << 20)
        die("%s %s: expected a whole number from 1 to %d", opt, s, 1 << 20);
    return (int)v;
}

/* Every weight the probe reads must be finite (a diverged run's NaN weights would otherwise give
 * an accuracy, as every vote ties): the first tensor holding a NaN or Inf is named. */
static void check_finite_weights(const char *ckpt, const ModelConfig *mc, const float *arena,
                                 const char *which) {
    ParamTable t;
    model_declare(&t, mc);
    for (int i = 0; i < t.n; i++)
        for (size_t j = 0; j < t.t[i].count; j++)
            if (!isfinite(arena[t.t[i].offset + j]))
                die("%s: tensor %s of /%s holds non-finite values (%g at element %zu): the run "
                    "diverged; refusing to evaluate it",
                    ckpt, t.t[i].name, which, (double)arena[t.t[i].offset + j], j);
    ptab_free(&t);
}

/* Features of samples [first, first + n) of `path` must be finite. */
static void check_finite_features(const char *path, const float *f, int64_t first, int64_t n,
                                  int C) {
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < C; j++)
            if (!isfinite(f[(size_t)i * C + j]))
                die("%s: sample %lld gives non-finite features (the encoder overflowed on it)",
                    path, (long long)(first + i));
}

static void l2_normalise(float *f, int64_t n, int C) {
    for (int64_t i = 0; i < n; i++) {
        float *x = f + (size_t)i * C;
        double s = 0;
        for (int j = 0; j < C; j++)
            s += (double)x[j] * x[j];
        float inv = (float)(1.0 / sqrt(s + 1e-12));
        for (int j = 0; j < C; j++)
            x[j] *= inv;
    }
}

/* Text: one row per labelled document, <s> + its first text_block - 1 tokens (+ </s>), padded;
 * every document counts once (the training loader's rows are blocks, which carry no label). */
static Embedded embed_documents(const Dataset *d, const TrainConfig *cfg, const ModelConfig *mc,
                                Model *model, const ModelParams *p, int batch) {
    int T = cfg->text_block, C = mc->enc.C;
    Embedded e = {xalloc(sizeof(float) * d->num_samples * C, "features"),
                  xalloc(sizeof(int32_t) * d->num_samples, "labels"), d->num_samples};
    Batch b = {0};
    b.T = T, b.tokens = xalloc(sizeof(int32_t) * batch * T, "tokens");
    b.ids = xalloc(sizeof(int64_t) * batch, "ids");
    char err[1024];
    for (int64_t first = 0; first < d->num_samples; first += batch) {
        b.B = (int)(d->num_samples - first < batch ? d->num_samples - first : batch);
        for (int i = 0; i < b.B; i++) {
            int64_t doc = first + i, len = dataset_sample_len(d, doc);
            int32_t *row = b.tokens + (size_t)i * T;
            int take = (int)(len < T - 1 ? len : T - 1);
            row[0] = d->bos_id;
            /* ids are checked against the vocabulary at open, the vocabulary against the
             * model's in embed() */
            if (dataset_read_tokens(d, doc, 0, take, row + 1, err, sizeof err) < 0) die("%s", err);
            int n = 1 + take;
            if (n < T) row[n++] = d->eos_id;
            for (; n < T; n++)
                row[n] = d->pad_id;
            b.ids[i] = doc;
            e.label[doc] = d->labels[doc];
        }
        model_features(model, p, &b, e.feat + (size_t)first * C);
        check_finite_features(d->path, e.feat + (size_t)first * C, first, b.B, C);
    }
    free(b.tokens), free(b.ids);
    l2_normalise(e.feat, e.n, C);
    return e;
}

/* Embed every full batch of a labelled dataset, in order, with the given parameters. `ref` is
 * the --train dataset (the model's vocabulary and sample rate). */
static Embedded embed(const char *path, const TrainConfig *cfg, const ModelConfig *mc, Model *model,
                      const ModelParams *p, int batch, const Dataset *ref) {
    Dataset d;
    char err[1024];
    if (dataset_open(&d, path, cfg->modality, err, sizeof err) < 0) die("%s", err);
    if (!d.labels) die("%s: has no /labels to evaluate against", path);
    if (d.modality == D2V_IMAGE &&
        (d.H != cfg->image_height || d.W != cfg->image_width || d.C != cfg->image_channels))
        die("%s: images are %dx%dx%d, the model takes %dx%dx%d", path, d.H, d.W, d.C,
            cfg->image_height, cfg->image_width, cfg->image_channels);
    if (d.modality == D2V_TEXT && (d.vocab_size != mc->text.V || d.bos_id != ref->bos_id ||
                                   d.eos_id != ref->eos_id || d.pad_id != ref->pad_id))
        die("%s: its vocabulary (%d tokens, <s> %d, </s> %d, <pad> %d) is not the model's (%d, "
            "%d, %d, %d): tokenise it with the pretraining vocabulary",
            path, d.vocab_size, d.bos_id, d.eos_id, d.pad_id, mc->text.V, ref->bos_id, ref->eos_id,
            ref->pad_id);
    if (d.modality == D2V_SPEECH && d.sample_rate != ref->sample_rate)
        die("%s: sample rate %d Hz, the training data's is %d Hz", path, d.sample_rate,
            ref->sample_rate);
    for (int64_t i = 0; i < d.num_samples; i++)
        if (d.labels[i] >= MAX_CLASSES)
            die("%s: sample %lld has label %d; labels are class ids below %d (damaged /labels?)",
                path, (long long)i, d.labels[i], MAX_CLASSES);
    if (d.modality == D2V_TEXT) {
        Embedded e = embed_documents(&d, cfg, mc, model, p, batch);
        dataset_close(&d);
        return e;
    }
    if (d.num_samples < batch)
        die("%s: %lld samples, fewer than one batch of %d (use a smaller --batch)", path,
            (long long)d.num_samples, batch);
    /* the pretraining loader's resize and normalisation, without shuffling or augmentation */
    LoaderConfig lc = train_config_to_loader(cfg, batch);
    lc.seed = 0, lc.shuffle = 0, lc.image_augment = 0, lc.color_jitter = 0, lc.flip_prob = 0;
    lc.speech_min_samples = 1, lc.prefetch = 1;
    LoaderCursor c0 = {0, 0};
    Loader *l = loader_create(&d, &lc, 0, 1, c0);
    int64_t batches = loader_epoch_samples(l) / batch;
    int C = mc->enc.C;
    Embedded e = {xalloc(sizeof(float) * batches * batch * C, "features"),
                  xalloc(sizeof(int32_t) * batches * batch, "labels"), batches * batch};
    for (int64_t k = 0; k < batches; k++) {
        const Batch *b = loader_next(l);
        model_features(model, p, b, e.feat + (size_t)k * batch * C);
        check_finite_features(path, e.feat + (size_t)k * batch * C, k * batch, batch, C);
        memcpy(e.label + k * batch, b->labels, sizeof(int32_t) * batch);
    }
    l2_normalise(e.feat, e.n, C);
    loader_destroy(l);
    dataset_close(&d);
    return e;
}

int main(int argc, char **argv) {
    const char *ckpt = NULL, *train = NULL, *test = NULL;
    int k = 20, batch = 50, teacher = 0, random_init = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(), 0;
        else if (!strcmp(argv[i], "--train") && i + 1 < argc)
            train = argv[++i];
        else if (!strcmp(argv[i], "--test") && i + 1 < argc)
            test = argv[++i];
        else if (!strcmp(argv[i], "--k") && i + 1 < argc)
            k = parse_count("--k", argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = parse_count("--batch", argv[++i]);
        else if (!strcmp(argv[i], "--teacher"))
            teacher = 1;
        else if (!strcmp(argv[i], "--random-init"))
            random_init = 1;
        else if (argv[i][0] != '-' && !ckpt)
            ckpt = argv[i];
        else {
            fprintf(stderr, "d2v: error: unexpected argument '%s' (see d2v-eval --help)\n",
                    argv[i]);
            return 1;
        }
    }
    dist_init(&argc, &argv);
    h5io_init();
    if (!ckpt || !train || !test) die("need CHECKPOINT, --train and --test (see d2v-eval --help)");
    if (k < 1 || batch < 1) die("--k and --batch must be positive");
    char path[PATH_MAX + 64];
    if (access(ckpt, F_OK) == 0 && ckpt_find_latest(ckpt, path, sizeof path) == 0) ckpt = path;
    /* the checkpoint carries its resolved configuration */
    char err[1024];
    TrainConfig cfg;
    if (ckpt_read_config(ckpt, &cfg, err, sizeof err)) die("%s", err);
    gemm_init(cfg.threads);
    Dataset probe;
    if (dataset_open(&probe, train, cfg.modality, err, sizeof err) < 0) die("%s", err);
    ModelConfig mc;
    train_config_to_model(&mc, &cfg, &probe);
    size_t nclass = probe.n_label_names;
    dataset_close(&probe); /* its scalars stay: the model's vocabulary and sample rate */
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *params = xalloc(np * 4, "params"), *tch = xalloc(np * 4, "teacher");
    float *m = xalloc(np * 4, "m"), *v = xalloc(np * 4, "v");
    ModelParams ps, pt;
    model_params_layout(&ps, params, &mc);
    TrainState st;
    if (random_init) {
        model_params_init(&ps, &mc, (uint64_t)cfg.seed);
        memcpy(tch, params, np * 4);
    } else if (ckpt_read(ckpt, &mc, params, tch, m, v, np, &st, err, sizeof err) < 0) {
        die("%s", err);
    }
    check_finite_weights(ckpt, &mc, params, "params");
    if (teacher) check_finite_weights(ckpt, &mc, tch, "teacher");
    model_teacher_view(&pt, &ps, tch, &mc);
    if (cfg.modality == D2V_SPEECH) batch = 1; /* whole utterances, no cropping across a batch */
    Model *model = model_create_features(&mc, batch,
                                         cfg.modality == D2V_SPEECH ? cfg.speech_max_samples
                                         : cfg.modality == D2V_TEXT ? cfg.text_block
                                                                    : 0);
    const ModelParams *p = teacher ? &pt : &ps;
    double t0 = now_seconds();
    Embedded tr = embed(train, &cfg, &mc, model, p, batch, &probe);
    Embedded te = embed(test, &cfg, &mc, model, p, batch, &probe);
    /* labels were checked against MAX_CLASSES and /label_names at open: no overflow here */
    int64_t classes = nclass < MAX_CLASSES ? (int64_t)nclass : MAX_CLASSES;
    for (int64_t i = 0; i < tr.n; i++)
        classes = tr.label[i] >= classes ? tr.label[i] + 1 : classes;
    /* docs/evaluation.md: the kNN of d2v-probe (temperature 0.07) */
    double acc = probe_knn(tr.feat, tr.label, tr.n, te.feat, te.label, te.n, mc.enc.C, (int)classes,
                           k, 0.07);
    printf("kNN (k=%d) top-1 accuracy %.2f%%  (%s of %s; %lld train, %lld test, %.1f s)\n", k,
           100 * acc,
           random_init ? "random init"
           : teacher   ? "teacher"
                       : "student",
           random_init ? "the same config" : ckpt, (long long)tr.n, (long long)te.n,
           now_seconds() - t0);
    model_destroy(model);
    free(params), free(tch), free(m), free(v);
    free(tr.feat), free(tr.label), free(te.feat), free(te.label);
    dist_finalize();
    return 0;
}
