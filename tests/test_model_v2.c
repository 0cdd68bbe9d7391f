/* test_model_v2.c: the data2vec 2.0 micro-step (docs/algorithm.md §7.2) through the model API:
 * masked counts, finite differences of the summed loss through decoder, encoder and gather (speech:
 * also the zero-filled positional context and the ALiBi scale), a
 * batch of 2B equal to its halves, the v2 configuration errors, and checkpoints refusing the
 * other mode. Run from the repository root (reads configs/). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch_util.h"
#include "check.h"
#include "d2v/ckpt.h"
#include "d2v/config.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/util.h"
#include "fd.h"

enum { VOCAB = 64, PAD = 1, MASK = VOCAB - 1 };

/* configs/<modality>-v2-tiny.cfg (every dropout off unless `dropout`), plus overrides. */
static int v2_model_of(ModelConfig *mc, TrainConfig *cfg, const char *path, int dropout,
                       const char *const *extra) {
    char err[1024];
    const char *off[] = {"model.dropout=0", "model.attn_dropout=0", "text.dropout=0",
                         "decoder.input_dropout=0", "model.layerdrop=0"};
    train_config_defaults(cfg);
    if (train_config_load(cfg, path, err, sizeof err) ||
        train_config_set(cfg, "data.train=unused.h5", err, sizeof err))
        return check_record(0, err), -1;
    for (int i = 0; !dropout && i < 5; i++)
        if (train_config_set(cfg, off[i], err, sizeof err)) return check_record(0, err), -1;
    for (int i = 0; extra && extra[i]; i++)
        if (train_config_set(cfg, extra[i], err, sizeof err)) return check_record(0, err), -1;
    if (train_config_validate(cfg, 1, err, sizeof err)) return check_record(0, err), -1;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.vocab_size = VOCAB, ds.bos_id = 0, ds.pad_id = PAD, ds.eos_id = 2, ds.unk_id = 3;
    ds.mask_id = MASK;
    train_config_to_model(mc, cfg, &ds);
    return 0;
}

static int v2_model(ModelConfig *mc, TrainConfig *cfg, int dropout, const char *const *extra) {
    return v2_model_of(mc, cfg, "configs/text-v2-tiny.cfg", dropout, extra);
}

/* Random tokens (text: T of them) or random images (the config's size). */
static void fill_batch(Batch *b, const TrainConfig *cfg, int B, int T) {
    memset(b, 0, sizeof *b);
    b->B = B;
    b->ids = xalloc(sizeof(int64_t) * B, "ids");
    uint64_t key = rng_key(42, 0, 0, 0);
    for (int i = 0; i < B; i++)
        b->ids[i] = 300 + 11 * i;
    if (cfg->modality == D2V_SPEECH) { /* T samples of unit-variance noise per utterance */
        b->S = T;
        b->audio = xalloc(4 * (size_t)B * T, "audio");
        for (size_t i = 0; i < (size_t)B * T; i++)
            b->audio[i] = rng_normal(key, i);
        return;
    }
    if (cfg->modality == D2V_IMAGE) {
        b->H = cfg->image_height, b->W = cfg->image_width, b->C = cfg->image_channels;
        size_t n = (size_t)B * b->H * b->W * b->C;
        b->images = xalloc(4 * n, "images");
        for (size_t i = 0; i < n; i++)
            b->images[i] = rng_normal(key, i);
        return;
    }
    b->T = T;
    b->tokens = xalloc(sizeof(int32_t) * B * T, "tokens");
    for (int i = 0; i < B; i++)
        for (int t = 0; t < T; t++)
            b->tokens[(size_t)i * T + t] =
                4 + (int32_t)(rng_uniform(key, (uint64_t)i * T + t) * (VOCAB - 5));
}

typedef struct {
    Model *m;
    ModelParams *ps, *pt;
    Batch *b;
} Ctx;

static double loss_of(void *v) {
    Ctx *c = v;
    MicroResult r = {0, 0, NULL, NULL};
    model_micro_step(c->m, c->ps, c->pt, NULL, c->b, 1, 5, &r);
    return r.loss_sum;
}

static void test_step(const char *path) {
    printf("-- the v2 step (%s): counts, finite differences, accumulation\n", path);
    ModelConfig mc;
    TrainConfig cfg;
    if (v2_model_of(&mc, &cfg, path, 0, NULL)) return;
    int image = cfg.modality == D2V_IMAGE, speech = cfg.modality == D2V_SPEECH, M = mc.v2c.clones;
    int T = image ? (cfg.image_height / cfg.image_patch) * (cfg.image_width / cfg.image_patch)
                  : cfg.text_block,
        B = 3;
    int S = 2000; /* speech: samples per utterance; T becomes its frames */
    if (speech) T = speech_num_frames(&mc.speech, S);
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *params = xalloc(np * 4, "params"), *teacher = xalloc(np * 4, "teacher"),
          *grads = xalloc(np * 4, "grads");
    ModelParams ps, pt, pg;
    model_params_layout(&ps, params, &mc);
    model_params_init(&ps, &mc, 3);
    uint64_t key = rng_key(9, 0, 0, 0);
    for (size_t i = 0; i < np; i++) /* larger than init, so every path carries a gradient */
        params[i] += 0.05f * rng_normal(key, i),
            teacher[i] = params[i] * (1.0f + 0.1f * (rng_uniform(key, np + i) - 0.5f));
    model_teacher_view(&pt, &ps, teacher, &mc);
    model_params_layout(&pg, grads, &mc);
    Model *m = model_create(&mc, 2 * B, image ? 0 : speech ? S : T);
    Batch b;
    fill_batch(&b, &cfg, B, speech ? S : T);
    MicroResult r = {0, 0, NULL, NULL};
    model_micro_step(m, &ps, &pt, &pg, &b, 1, 5, &r);
    /* fairseq: len_keep = int(T (1 - p)) for random (text) and inverse block (image) masks */
    int n = T - (int)(T * (1 - cfg.v2_mask_prob));
    if (speech) n = (int)(T * cfg.v2_mask_prob); /* 1-D blocks: exactly int(T R) masked */
    char label[256];
    snprintf(label, sizeof label, "%d samples x %d clones x %d masked of %d = %lld loss rows", B, M,
             n, T, (long long)r.masked);
    check_record(r.masked == (int64_t)B * M * n, label);
    ModelTrace tr = model_trace(m, &b);
    int row_ok = tr.rows == B * M;
    for (int i = 0; i < B * M; i++) {
        int c = 0;
        for (int t = 0; t < T; t++)
            c += tr.sel[(size_t)i * T + t];
        row_ok &= c == n;
    }
    check_record(row_ok, "the trace's masks: B x M rows, each with the same masked count");
    /* finite differences of the summed loss. The teacher reads its own arena and (text) the
     * student's local features: the encoder and decoder tensors leave the targets alone, and
     * for images (the teacher's own front-end) every tensor does; the text embedding's
     * gradient is checked against PyTorch in tests/script_trainer_parity.sh */
    Ctx c = {m, &ps, &pt, &b};
    ParamInfo table[128];
    int nt = model_param_table(table, 128, &mc), checked = 0;
    for (int i = 0; i < nt; i++) {
        /* speech: the teacher's positional convs, context LN and ALiBi scale are its own
         * (averaged), so the student's carry the whole gradient; the extractor is shared */
        int own = speech && (!strncmp(table[i].name, "speech.pos_", 11) ||
                             !strncmp(table[i].name, "speech.enc_ln", 13) ||
                             !strcmp(table[i].name, "speech.alibi_scale"));
        if (!image && !own && strncmp(table[i].name, "enc.", 4) &&
            strncmp(table[i].name, "dec.", 4))
            continue;
        fd_tensor(table[i].name, loss_of, &c, params + table[i].offset, grads + table[i].offset,
                  table[i].count, 24, 0);
        checked++;
    }
    snprintf(label, sizeof label, "%d tensors checked", checked);
    check_record(checked >= 12, label);
    /* negative control: a 10% wrong decoder gradient must be rejected */
    const ParamSpec *w = NULL;
    for (int i = 0; i < nt; i++)
        if (!strcmp(table[i].name, "dec.proj_w")) w = &table[i];
    if (w) {
        float *bad = xalloc(w->count * 4, "bad grad");
        for (size_t j = 0; j < w->count; j++)
            bad[j] = 1.1f * grads[w->offset + j];
        check_record(!fd_tensor("control", loss_of, &c, params + w->offset, bad, w->count, 24, 1),
                     "negative control: dec.proj_w's gradient 10% off is rejected");
        free(bad);
    } else {
        check_record(0, "dec.proj_w in the parameter table");
    }
    /* speech: the ALiBi scale's gradient (summed over blocks, rows and logits) 10% off */
    for (int i = 0; speech && i < nt; i++)
        if (!strcmp(table[i].name, "speech.alibi_scale")) {
            const ParamSpec *a = &table[i];
            float *bad = xalloc(a->count * 4, "bad grad");
            for (size_t j = 0; j < a->count; j++)
                bad[j] = 1.1f * grads[a->offset + j];
            check_record(
                !fd_tensor("control", loss_of, &c, params + a->offset, bad, a->count, 24, 1),
                "negative control: speech.alibi_scale's gradient 10% off is rejected");
            free(bad);
        }
    /* a batch of 2B equals its two halves: masks, noise and dropout keyed on sample ids */
    Batch b2;
    fill_batch(&b2, &cfg, 2 * B, speech ? S : T);
    float *g_full = xalloc(np * 4, "g full"), *g_halves = xalloc(np * 4, "g halves");
    ModelParams pf, ph;
    model_params_layout(&pf, g_full, &mc), model_params_layout(&ph, g_halves, &mc);
    MicroResult rf = {0, 0, NULL, NULL}, r1 = {0, 0, NULL, NULL}, r2 = {0, 0, NULL, NULL};
    model_micro_step(m, &ps, &pt, &pf, &b2, 1, 5, &rf);
    Batch h1 = half_of(&b2, 0, B), h2 = half_of(&b2, B, B);
    model_micro_step(m, &ps, &pt, &ph, &h1, 1, 5, &r1);
    model_micro_step(m, &ps, &pt, &ph, &h2, 1, 5, &r2);
    double rel = fabs(rf.loss_sum - r1.loss_sum - r2.loss_sum) / fabs(rf.loss_sum);
    snprintf(label, sizeof label, "2B = B + B: loss %.6f vs %.6f (rel %.1e), rows %lld",
             rf.loss_sum, r1.loss_sum + r2.loss_sum, rel, (long long)rf.masked);
    check_record(rel < 1e-6 && rf.masked == r1.masked + r2.masked, label);
    double worst = 0, gmax = 0;
    for (size_t i = 0; i < np; i++)
        worst = fmax(worst, fabs(g_full[i] - g_halves[i])), gmax = fmax(gmax, fabs(g_full[i]));
    snprintf(label, sizeof label, "2B = B + B: gradients within %.1e of max %.2e", worst, gmax);
    check_record(worst <= 1e-5 * gmax && gmax > 0, label);
    model_destroy(m);
    free(b.ids), free(b.tokens), free(b.images), free(b2.ids), free(b2.tokens), free(b2.images);
    free(b.audio), free(b2.audio);
    free(params), free(teacher), free(grads), free(g_full), free(g_halves);
}

static void expect_config_error_of(const char *path, const char *what, const char *const *sets,
                                   const char *want) {
    TrainConfig cfg;
    char err[1024] = "";
    train_config_defaults(&cfg);
    int rc = train_config_load(&cfg, path, err, sizeof err);
    for (int i = 0; !rc && sets[i]; i++)
        rc = train_config_set(&cfg, sets[i], err, sizeof err);
    if (!rc) rc = train_config_validate(&cfg, 1, err, sizeof err);
    char label[1400];
    snprintf(label, sizeof label, "%s: \"%s\"", what, err);
    check_record(rc != 0 && strstr(err, want) != NULL, label);
}

static void expect_config_error(const char *what, const char *const *sets, const char *want) {
    expect_config_error_of("configs/text-v2-tiny.cfg", what, sets, want);
}

static void test_config(void) {
    expect_config_error_of("configs/speech-v2-tiny.cfg", "speech v2 with its own EMA extractor",
                           (const char *const[]){"data.train=x.h5", "ema.frontend=true", NULL},
                           "ema.frontend");
    expect_config_error("speech.alibi on text",
                        (const char *const[]){"data.train=x.h5", "speech.alibi=true", NULL},
                        "speech.alibi");
    printf("-- v2 configuration errors\n");
    expect_config_error("a v1 target tensor",
                        (const char *const[]){"data.train=x.h5", "target.tensor=\"end\"", NULL},
                        "target.tensor");
    expect_config_error("an even decoder kernel",
                        (const char *const[]){"data.train=x.h5", "decoder.kernel=8", NULL},
                        "decoder.kernel");
    expect_config_error("decoder groups not dividing the width",
                        (const char *const[]){"data.train=x.h5", "decoder.groups=3", NULL},
                        "decoder.groups");
    expect_config_error("a student too large for this node",
                        (const char *const[]){"data.train=x.h5", "v2.clones=256",
                                              "data.batch_size=1000000", "model.width=4096",
                                              "model.heads=16", "model.ffn=16384", NULL},
                        "v2.clones");
}

static void test_ckpt_mode(void) {
    printf("-- checkpoints of the other mode\n");
    ModelConfig v2, v1;
    TrainConfig cfg;
    if (v2_model(&v2, &cfg, 1, NULL)) return;
    v1 = v2;
    v1.v2 = 0; /* the same tensors would not even match; the mode is checked first */
    char dir[] = "/tmp/d2v-test-v2.XXXXXX", path[PATH_MAX], err[1024] = "";
    if (!mkdtemp(dir)) die("cannot create a temporary directory");
    size_t np = model_params_layout(NULL, NULL, &v2);
    float *a = xalloc(np * 16, "arenas");
    TrainState st = {3, 0, {0, 0}, 0};
    ckpt_write(dir, &v2, "", a, a + np, a + 2 * np, a + 3 * np, np, &st, 0, 0);
    snprintf(path, sizeof path, "%s/ckpt/step_00000003/model.h5", dir);
    int rc = ckpt_read(path, &v1, a, a + np, a + 2 * np, a + 3 * np, np, &st, err, sizeof err);
    char label[1400];
    snprintf(label, sizeof label, "a v2 checkpoint read by a v1 run: \"%s\"", err);
    check_record(rc == CKPT_OTHER && strstr(err, "model.mode = \"v2\"") &&
                     strstr(err, "model.mode = \"v1\""),
                 label);
    rc = ckpt_read(path, &v2, a, a + np, a + 2 * np, a + 3 * np, np, &st, err, sizeof err);
    check_record(rc == 0, "and by a v2 run of the same config: read");
    free(a);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
}

int main(void) {
    gemm_init(0);
    h5io_init();
    test_step("configs/text-v2-tiny.cfg");
    test_step("configs/image-v2-tiny.cfg");
    test_step("configs/speech-v2-tiny.cfg");
    test_config();
    test_ckpt_mode();
    return check_summary();
}
