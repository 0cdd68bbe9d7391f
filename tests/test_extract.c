/* test_extract.c: d2v-extract (extract_features, and the tool on 2 MPI ranks) on datasets made
 * from the real fixtures by the prep tools (500 Fashion-MNIST images, the spoken digits,
 * Moby-Dick paragraphs) and checkpoints of the tiny configs: every written feature equals a
 * direct forward of the same network (front-end and encoder run by hand, one sample at a time),
 * for the student, the teacher (2 ranks, bit-identical to 1) and a random init; attributes,
 * labels and per-sample ids copied; the raw baselines by hand; an existing output refused.
 * Run from the repository root (reads configs/ and tests/fixtures/). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "d2v/ckpt.h"
#include "d2v/config.h"
#include "d2v/extract.h"
#include "d2v/h5io.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/util.h"

#define ATOL 1e-5 /* the same kernels, other batch shapes: fp32 summation order only */
#define RTOL 1e-4
enum { STEP = 7 };

static char g_bin[1024], g_dir[512];
#define FN 1200 /* file names: g_dir plus a short name */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* Output (stdout and stderr) of a command into out; returns its exit status. */
static int sh_capture(char *out, size_t n, const char *cmd) {
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* ---- one modality: a dataset, a checkpoint, the networks ---- */

typedef struct {
    const char *name, *cfg_file;
    char data[FN], run[FN];
    TrainConfig cfg;
    ModelConfig mc;
    Dataset d;
    size_t np;
    float *params, *teacher, *random;
    ModelParams ps, pt, pr;
} Case;

static void perturb(float *x, size_t n, uint64_t seed, float s) {
    for (size_t i = 0; i < n; i++) /* off the init, so zero-initialised tensors count too */
        x[i] += s * rng_normal(rng_key(seed, 0, 0, 0), i);
}

static int setup(Case *c) {
    char err[PATH_MAX + 256], set[FN + 16];
    train_config_defaults(&c->cfg);
    snprintf(set, sizeof set, "data.train=%s", c->data);
    if (train_config_load(&c->cfg, c->cfg_file, err, sizeof err) ||
        train_config_set(&c->cfg, set, err, sizeof err) ||
        train_config_validate(&c->cfg, 1, err, sizeof err) ||
        dataset_open(&c->d, c->data, c->cfg.modality, err, sizeof err))
        return check_record(0, err), -1;
    train_config_to_model(&c->mc, &c->cfg, &c->d);
    c->np = model_params_layout(NULL, NULL, &c->mc);
    c->params = xalloc(c->np * 4, "params"), c->teacher = xalloc(c->np * 4, "teacher");
    c->random = xalloc(c->np * 4, "random init");
    model_params_layout(&c->ps, c->params, &c->mc);
    model_params_init(&c->ps, &c->mc, 11);
    perturb(c->params, c->np, 12, 0.05f);
    memcpy(c->teacher, c->params, c->np * 4);
    perturb(c->teacher, c->np, 13, 0.05f);
    encoder_params_constrain(&c->ps.enc, &c->mc.enc);
    model_teacher_view(&c->pt, &c->ps, c->teacher, &c->mc);
    encoder_params_constrain(&c->pt.enc, &c->mc.enc);
    model_params_layout(&c->pr, c->random, &c->mc);
    model_params_init(&c->pr, &c->mc, (uint64_t)c->cfg.seed); /* what --random-init uses */
    float *m = xalloc(c->np * 4, "adam m"), *v = xalloc(c->np * 4, "adam v");
    TrainState st = {STEP, 0, {0, 0}, 0};
    char *text = train_config_text(&c->cfg);
    snprintf(c->run, sizeof c->run, "%s/run-%s", g_dir, c->name);
    mkdir(c->run, 0755);
    ckpt_write(c->run, &c->mc, text, c->params, c->teacher, m, v, c->np, &st, 0, 0);
    free(text), free(m), free(v);
    return 0;
}

/* ---- the direct forward: front-end and encoder by hand, one sample ---- */

typedef struct {
    int T_max;
    TextEmbed te;
    ImageEmbed ie;
    SpeechFeatures sf;
    SpeechContext sc;
    Encoder e;
    float *bias, *img, *wav, *normed, *mean, *rstd, *ctx_in, *ctx_out; /* ctx: image v2 */
    int32_t *tok;
    uint8_t *pad;
} Ref;

static void ref_init(Ref *r, const Case *c) {
    memset(r, 0, sizeof *r);
    const ModelConfig *mc = &c->mc;
    int S = c->cfg.speech_max_samples, C = mc->enc.C;
    if (mc->modality == D2V_TEXT) {
        r->T_max = c->cfg.text_block;
        text_embed_init(&r->te, &mc->text, 1, r->T_max);
    } else if (mc->modality == D2V_IMAGE) {
        r->T_max = image_embed_tokens(&mc->image);
        image_embed_init(&r->ie, &mc->image, 1);
        r->bias = xalloc(sizeof(float) * mc->enc.NH * r->T_max * r->T_max, "bias");
    } else {
        r->T_max = speech_num_frames(&mc->speech, S);
        speech_features_init(&r->sf, &mc->speech, 1, S);
        speech_context_init(&r->sc, &mc->speech, 1, r->T_max, 0);
    }
    int v2 = mc->v2 && mc->modality == D2V_IMAGE; /* the context prepends a cls row */
    if (v2) {
        r->ctx_in = xalloc(sizeof(float) * (r->T_max + 1) * C, "context input");
        r->ctx_out = xalloc(sizeof(float) * (r->T_max + 1) * C, "context");
    }
    encoder_init(&r->e, &mc->enc, 1, r->T_max + v2, 0);
    r->img = xalloc(sizeof(float) * (c->d.H * c->d.W * c->d.C + 1), "image");
    r->wav = xalloc(sizeof(float) * S, "audio");
    r->tok = xalloc(sizeof(int32_t) * r->T_max, "tokens");
    r->pad = xalloc((size_t)r->T_max, "pad");
    r->normed = xalloc(sizeof(float) * (r->T_max + 1) * C, "normed");
    r->mean = xalloc(sizeof(float) * (r->T_max + 1), "mean"),
    r->rstd = xalloc(sizeof(float) * (r->T_max + 1), "");
}

static void ref_free(Ref *r, const Case *c) {
    encoder_free(&r->e);
    if (c->mc.modality == D2V_TEXT) text_embed_free(&r->te);
    if (c->mc.modality == D2V_IMAGE) image_embed_free(&r->ie);
    if (c->mc.modality == D2V_SPEECH) speech_features_free(&r->sf), speech_context_free(&r->sc);
    free(r->bias), free(r->img), free(r->wav), free(r->tok), free(r->pad), free(r->normed);
    free(r->mean), free(r->rstd), free(r->ctx_in), free(r->ctx_out);
}

static void mean_over(float *o, const float *h, const uint8_t *pad, int first, int T, int C) {
    for (int k = 0; k < C; k++) {
        double s = 0;
        int n = 0;
        for (int t = first; t < T; t++)
            if (!pad || !pad[t]) s += h[(size_t)t * C + k], n++;
        o[k] = (float)(s / n);
    }
}

/* Sample i's variants (NULL: skip) from its input as d2v-eval builds it. */
static void ref_sample(Ref *r, const Case *c, const ModelParams *p, int64_t i, int last_k,
                       float *mf, float *mn, float *cls, float *lk) {
    const ModelConfig *mc = &c->mc;
    const Dataset *d = &c->d;
    int C = mc->enc.C, T = 0, first = 0;
    const float *x = NULL, *bias = NULL;
    const uint8_t *pad = NULL;
    char err[PATH_MAX + 256];
    if (mc->modality == D2V_TEXT) {
        T = r->T_max;
        int64_t len = dataset_sample_len(d, i);
        int take = (int)(len < T - 1 ? len : T - 1), n = 0;
        r->tok[n++] = d->bos_id;
        if (dataset_read_tokens(d, i, 0, take, r->tok + 1, err, sizeof err)) die("%s", err);
        n += take;
        if (n < T) r->tok[n++] = d->eos_id;
        for (int t = 0; t < T; t++) {
            if (t >= n) r->tok[t] = d->pad_id;
            r->pad[t] = t >= n;
        }
        text_embed_forward(&r->te, &p->text, r->tok, 1, T, 0, (DropKey){0, 0, 1, NULL});
        x = r->te.out, pad = r->pad;
    } else if (mc->modality == D2V_IMAGE) {
        size_t n = (size_t)d->H * d->W * d->C;
        uint8_t *px = xalloc(n, "pixels");
        if (dataset_read_image(d, i, px, err, sizeof err)) die("%s", err);
        for (size_t k = 0; k < n; k++)
            r->img[k] = (float)((px[k] / 255.0 - c->cfg.mean[k % d->C]) / c->cfg.std[k % d->C]);
        free(px);
        T = r->T_max, first = !!mc->image.cls;
        image_embed_forward(&r->ie, &p->image, r->img, NULL, 1);
        if (mc->image.pos == IMAGE_POS_RELATIVE) image_rel_bias_forward(&r->ie, r->bias, &p->image);
        x = r->ie.out, bias = mc->image.pos == IMAGE_POS_RELATIVE ? r->bias : NULL;
        if (mc->v2) { /* docs/algorithm.md §7: cls + the patches, one layer norm, then blocks */
            memcpy(r->ctx_in, p->image.v2_cls, sizeof(float) * C);
            memcpy(r->ctx_in + C, x, sizeof(float) * (size_t)T * C);
            T += 1, first = 1;
            layernorm_forward(r->ctx_out, r->mean, r->rstd, r->ctx_in, p->image.v2_ln_w,
                              p->image.v2_ln_b, T, C, mc->enc.ln_eps);
            x = r->ctx_out;
        }
    } else {
        int64_t len = dataset_sample_len(d, i);
        int S = (int)(len < c->cfg.speech_max_samples ? len : c->cfg.speech_max_samples);
        if (dataset_read_audio(d, i, 0, S, r->wav, err, sizeof err)) die("%s", err);
        double m = 0, v = 0;
        for (int k = 0; k < S; k++)
            m += r->wav[k];
        m /= S;
        for (int k = 0; k < S; k++)
            v += (r->wav[k] - m) * (r->wav[k] - m);
        for (int k = 0; k < S; k++)
            r->wav[k] = (float)((r->wav[k] - m) / sqrt(v / S + 1e-5));
        speech_features_forward(&r->sf, &p->speech, r->wav, 1, S);
        T = r->sf.T;
        speech_context_forward(&r->sc, &p->speech, r->sf.features, NULL, 1, T, 0,
                               (DropKey){0, 0, 0, NULL});
        x = r->sc.out;
    }
    EncoderRun run = {.B = 1, .T = T, .key_pad = pad, .attn_bias = bias};
    encoder_forward(&r->e, &p->enc, x, &run);
    const float *h = encoder_output(&r->e);
    if (mf) mean_over(mf, h, pad, first, T, C);
    if (cls) memcpy(cls, h, sizeof(float) * C);
    if (mn) {
        layernorm_forward(r->normed, r->mean, r->rstd, h, p->head.ln_w, p->head.ln_b, T, C,
                          mc->head.final_norm_eps);
        mean_over(mn, r->normed, pad, first, T, C);
    }
    if (lk) {
        float *acc = xalloc(sizeof(float) * (size_t)T * C, "block average");
        for (int l = mc->enc.L - last_k; l < mc->enc.L; l++) {
            const float *o = encoder_block(&r->e, l).out;
            for (size_t k = 0; k < (size_t)T * C; k++)
                acc[k] += o[k] / (float)last_k;
        }
        mean_over(lk, acc, pad, first, T, C);
        free(acc);
    }
}

/* ---- reading a features file ---- */

typedef struct {
    hid_t f;
    char path[FN];
} Out;

static int out_open(Out *o, const char *path) {
    char err[PATH_MAX + 256];
    snprintf(o->path, sizeof o->path, "%s", path);
    o->f = h5_open_ro(path, err, sizeof err);
    return o->f < 0 ? (check_record(0, err), -1) : 0;
}

static float *out_read(const Out *o, const char *name, int64_t n, int C) {
    char err[PATH_MAX + 256];
    int rank;
    hsize_t dims[4];
    if (h5_dataset_shape(o->f, o->path, name, &rank, dims, err, sizeof err) || rank != 2 ||
        (int64_t)dims[0] != n || (int)dims[1] != C) {
        printf("     %s: %s is not (%lld, %d)\n", o->path, name, (long long)n, C);
        return NULL;
    }
    float *x = xalloc(sizeof(float) * (size_t)n * C, name);
    if (h5_read_rows(o->f, o->path, name, H5T_NATIVE_FLOAT, 0, (hsize_t)n, x, err, sizeof err))
        die("%s", err);
    return x;
}

static void out_str(const Out *o, const char *name, char *buf, size_t n) {
    char err[PATH_MAX + 256];
    if (h5_read_attr_str(o->f, o->path, name, buf, n, err, sizeof err)) snprintf(buf, n, "?");
}

static int64_t out_i64(const Out *o, const char *name) {
    char err[PATH_MAX + 256];
    int64_t v = -999;
    if (h5_read_attr_i64(o->f, o->path, name, &v, err, sizeof err)) return -999;
    return v;
}

/* The resolved configuration attribute holds `line`. */
static int config_is(const Out *o, const char *line) {
    char *text = xalloc(1 << 20, "config");
    out_str(o, "config", text, 1 << 20);
    int ok = strstr(text, line) != NULL;
    free(text);
    return ok;
}

/* Every sample's written variants against ref_sample with parameters p. Returns 1 when all
 * agree; quiet: compute only (negative controls). */
static int check_against(const Case *c, const char *file, const ModelParams *p, const char *what,
                         int quiet) {
    Out o;
    if (out_open(&o, file)) return 0;
    int64_t N = c->d.num_samples;
    int C = c->mc.enc.C, L = c->mc.enc.L, last_k = L < 4 ? L : 4;
    int has_norm = model_final_norm(&c->mc);
    int has_cls = c->mc.modality == D2V_TEXT ||
                  (c->mc.modality == D2V_IMAGE && (c->mc.image.cls || c->mc.v2));
    float *mf = out_read(&o, "mean_final", N, C), *lk = out_read(&o, "mean_lastk", N, C);
    float *mn = has_norm ? out_read(&o, "mean_norm", N, C) : NULL;
    float *cl = has_cls ? out_read(&o, "cls", N, C) : NULL;
    int ok = mf && lk && (!has_norm || mn) && (!has_cls || cl);
    ok &= h5_exists(o.f, "mean_norm") == has_norm && h5_exists(o.f, "cls") == has_cls;
    size_t n = (size_t)N * C;
    float *w[4];
    for (int v = 0; v < 4; v++)
        w[v] = xalloc(sizeof(float) * n, "reference");
    if (ok) {
        Ref r;
        ref_init(&r, c);
        for (int64_t i = 0; i < N; i++) {
            size_t at = (size_t)i * C;
            ref_sample(&r, c, p, i, last_k, w[0] + at, has_norm ? w[1] + at : NULL,
                       has_cls ? w[2] + at : NULL, w[3] + at);
        }
        ref_free(&r, c);
        char label[200];
        const char *names[4] = {"mean_final", "mean_norm", "cls", "mean_lastk"};
        float *got[4] = {mf, mn, cl, lk};
        for (int v = 0; v < 4; v++) {
            if (!got[v]) continue;
            snprintf(label, sizeof label, "%s %s: %s = the direct forward", c->name, what,
                     names[v]);
            ok &= check_tensor_q(label, got[v], w[v], n, ATOL, RTOL, quiet);
        }
    } else if (!quiet) {
        check_record(0, "the expected variants are written (and no others)");
    }
    for (int v = 0; v < 4; v++)
        free(w[v]);
    free(mf), free(mn), free(cl), free(lk);
    h5_close(o.f);
    return ok;
}

static void extract(const Case *c, int network, const char *out, int batch) {
    ExtractConfig e = {.checkpoint = network == EXTRACT_RAW ? NULL : c->run,
                       .data = c->data,
                       .out = out,
                       .network = network,
                       .batch = batch,
                       .created_by = "test_extract"};
    extract_features(&e);
}

static int same_file_variant(const char *a, const char *b, const char *name, int64_t n, int C) {
    Out oa, ob;
    if (out_open(&oa, a) || out_open(&ob, b)) return 0;
    float *x = out_read(&oa, name, n, C), *y = out_read(&ob, name, n, C);
    int same = x && y && !memcmp(x, y, sizeof(float) * (size_t)n * C);
    free(x), free(y);
    h5_close(oa.f), h5_close(ob.f);
    return same;
}

/* ---- the cases ---- */

static void test_image(Case *c) {
    printf("-- image: 500 Fashion-MNIST test images, configs/image-tiny.cfg\n");
    char f_s[FN], f_t[FN], f_t2[FN], buf[256];
    snprintf(f_s, sizeof f_s, "%s/img-student.h5", g_dir);
    snprintf(f_t, sizeof f_t, "%s/img-teacher.h5", g_dir);
    snprintf(f_t2, sizeof f_t2, "%s/img-teacher-2ranks.h5", g_dir);
    extract(c, EXTRACT_STUDENT, f_s, 7);
    check_against(c, f_s, &c->ps, "student", 0);
    extract(c, EXTRACT_TEACHER, f_t, 7);
    check_against(c, f_t, &c->pt, "teacher", 0);
    check_record(!check_against(c, f_t, &c->ps, "", 1),
                 "negative control: the teacher's features are not the student's");

    Out o;
    if (out_open(&o, f_s) == 0) {
        char net[32], var[128], mod[32], ck[FN + 64], want_ck[FN + 64], kind[32];
        out_str(&o, "network", net, sizeof net), out_str(&o, "variants", var, sizeof var);
        out_str(&o, "modality", mod, sizeof mod), out_str(&o, "checkpoint", ck, sizeof ck);
        out_str(&o, "kind", kind, sizeof kind);
        snprintf(want_ck, sizeof want_ck, "%s/ckpt/step_%08d/model.h5", c->run, STEP);
        snprintf(buf, sizeof buf, "attributes: %s, %s, %s, step %lld, width %lld, last_k %lld",
                 kind, net, var, (long long)out_i64(&o, "step"), (long long)out_i64(&o, "width"),
                 (long long)out_i64(&o, "last_k"));
        check_record(!strcmp(kind, "features") && !strcmp(net, "student") &&
                         !strcmp(var, "mean_final,mean_norm,cls,mean_lastk") &&
                         !strcmp(mod, "image") && !strcmp(ck, want_ck) &&
                         out_i64(&o, "step") == STEP && out_i64(&o, "width") == 64 &&
                         out_i64(&o, "last_k") == 2 && out_i64(&o, "num_samples") == 500 &&
                         config_is(&o, "modality = \"image\""),
                     buf);
        int32_t *lab = xalloc(sizeof(int32_t) * 500, "labels");
        char err[PATH_MAX + 256];
        int ok = h5_read_rows(o.f, o.path, "labels", H5T_NATIVE_INT32, 0, 500, lab, err,
                              sizeof err) == 0 &&
                 !memcmp(lab, c->d.labels, sizeof(int32_t) * 500);
        check_record(ok, "/labels copied in sample order");
        /* the per-sample ids this test added to the dataset, and their names table */
        int64_t *g = xalloc(sizeof(int64_t) * 500, "groups");
        size_t nn = 0;
        char **names = h5_read_strings(o.f, o.path, "speaker_names", &nn, err, sizeof err);
        ok = h5_read_rows(o.f, o.path, "speakers", H5T_NATIVE_INT64, 0, 500, g, err, sizeof err) ==
                 0 &&
             names && nn == 3 && !strcmp(names[2], "voice c");
        for (int i = 0; ok && i < 500; i++)
            ok = g[i] == i % 3;
        check_record(ok, "per-sample /speakers and its /speaker_names table copied");
        check_record(!h5_exists(o.f, "images"), "the samples themselves are not copied");
        h5_free_strings(names, nn);
        free(lab), free(g);
        h5_close(o.f);
    }

    /* the tool on 2 ranks: whole batches per rank, so the same features bit for bit */
    char cmd[8 * FN], out[4096];
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x BLIS_NUM_THREADS=1 "
             "%s/d2v-extract %s --teacher --data %s -o %s --batch 7",
             g_bin, c->run, c->data, f_t2);
    int rc = sh_capture(out, sizeof out, cmd);
    check_record(rc == 0 && strstr(out, "rank 0 of 2") && strstr(out, "wrote"),
                 "d2v-extract --teacher under mpirun -np 2 runs (progress on rank 0)");
    if (rc) printf("%s", out);
    int same = 1;
    const char *vars[4] = {"mean_final", "mean_norm", "cls", "mean_lastk"};
    for (int v = 0; v < 4; v++)
        same &= same_file_variant(f_t, f_t2, vars[v], 500, 64);
    check_record(same, "2 ranks wrote what 1 rank wrote, bit for bit");
    Out a, b;
    if (out_open(&a, f_s) == 0 && out_open(&b, f_t2) == 0) {
        char ia[64], ib[64], ic[64];
        out_str(&a, "model_id", ia, sizeof ia), out_str(&b, "model_id", ib, sizeof ib);
        Out t;
        if (out_open(&t, f_t) == 0) out_str(&t, "model_id", ic, sizeof ic), h5_close(t.f);
        check_record(strcmp(ia, ib) && !strcmp(ib, ic),
                     "model_id: the same network gives the same id, student and teacher differ");
        h5_close(a.f), h5_close(b.f);
    }

    /* 3 ranks, one batch of 500: ranks 0 and 1 have nothing to send */
    char f_3[FN];
    snprintf(f_3, sizeof f_3, "%s/img-3ranks.h5", g_dir);
    snprintf(cmd, sizeof cmd,
             "mpirun --oversubscribe -np 3 -x OMP_NUM_THREADS=1 -x BLIS_NUM_THREADS=1 "
             "%s/d2v-extract %s --data %s -o %s --batch 500 --quiet",
             g_bin, c->run, c->data, f_3);
    rc = sh_capture(out, sizeof out, cmd);
    if (rc) printf("%s", out);
    check_record(rc == 0 && check_against(c, f_3, &c->ps, "student, 3 ranks, 2 of them empty", 0),
                 "3 ranks of which two hold no batch: the gather keeps the sample order");

    /* an existing output is refused with one line naming it, and left untouched */
    struct stat before, after;
    stat(f_s, &before);
    snprintf(cmd, sizeof cmd, "%s/d2v-extract %s --data %s -o %s --quiet", g_bin, c->run, c->data,
             f_s);
    rc = sh_capture(out, sizeof out, cmd);
    stat(f_s, &after);
    snprintf(buf, sizeof buf, "an existing output is refused: %.*s", (int)strcspn(out, "\n"), out);
    check_record(rc != 0 && strstr(out, f_s) && strstr(out, "already exists") &&
                     before.st_size == after.st_size && before.st_mtime == after.st_mtime,
                 buf);
    check_record(sh("ls %s | grep -q '\\.tmp\\.'", g_dir) != 0, "no temporary file left behind");
}

/* data2vec 2.0: the context prepends cls and layer-norms before the blocks; cls is a variant */
static void test_image_v2(Case *c) {
    printf("-- image, data2vec 2.0: the same images, configs/image-v2-tiny.cfg\n");
    char f_s[FN], var[128] = "";
    snprintf(f_s, sizeof f_s, "%s/img-v2-student.h5", g_dir);
    extract(c, EXTRACT_STUDENT, f_s, 7);
    check_against(c, f_s, &c->ps, "v2 student", 0);
    check_record(!check_against(c, f_s, &c->pt, "", 1),
                 "negative control: v2, the student's features are not the teacher's");
    Out o;
    if (out_open(&o, f_s) == 0) {
        out_str(&o, "variants", var, sizeof var);
        h5_close(o.f);
    }
    check_record(
        !strcmp(var, "mean_final,cls,mean_lastk"),
        "v2 variants: mean_final, cls (the context's), mean_lastk (post-LN: no mean_norm)");
}

static void test_text(Case *c) {
    printf("-- text: Moby-Dick paragraphs (no labels), configs/text-tiny.cfg\n");
    char f[FN];
    snprintf(f, sizeof f, "%s/txt-student.h5", g_dir);
    extract(c, EXTRACT_STUDENT, f, 5);
    check_against(c, f, &c->ps, "student", 0);
    Out o;
    if (out_open(&o, f) == 0) {
        char var[128], skip[512];
        out_str(&o, "variants", var, sizeof var), out_str(&o, "skipped", skip, sizeof skip);
        check_record(!strcmp(var, "mean_final,cls,mean_lastk") && strstr(skip, "mean_norm") &&
                         !h5_exists(o.f, "labels"),
                     "post-LN: no mean_norm (said in 'skipped'); cls = <s>; no labels to copy");
        h5_close(o.f);
    }
}

static void test_speech(Case *c) {
    printf("-- speech: the 40 spoken-digit fixtures, configs/speech-tiny.cfg\n");
    char f[FN];
    snprintf(f, sizeof f, "%s/sp-random.h5", g_dir);
    extract(c, EXTRACT_RANDOM_INIT, f, 50);
    check_against(c, f, &c->pr, "random init", 0);
    check_record(!check_against(c, f, &c->ps, "", 1),
                 "negative control: the random init's features are not the checkpoint's");
    Out o;
    if (out_open(&o, f) == 0) {
        char var[128], net[32], err[PATH_MAX + 256];
        out_str(&o, "variants", var, sizeof var), out_str(&o, "network", net, sizeof net);
        size_t nn = 0;
        char **names = h5_read_strings(o.f, o.path, "label_names", &nn, err, sizeof err);
        check_record(!strcmp(var, "mean_final,mean_lastk") && !strcmp(net, "random-init") &&
                         out_i64(&o, "step") == 0 && names && nn == 10 && !strcmp(names[3], "3"),
                     "speech random init: mean_final and mean_lastk, step 0, the label names");
        h5_free_strings(names, nn);
        h5_close(o.f);
    }
}

static void test_raw(Case *img, Case *txt, Case *sp) {
    printf("-- raw-input baselines\n");
    char f[3][FN];
    Case *cs[3] = {img, txt, sp};
    for (int k = 0; k < 3; k++) {
        snprintf(f[k], sizeof f[k], "%s/raw-%s.h5", g_dir, cs[k]->name);
        extract(cs[k], EXTRACT_RAW, f[k], 50);
    }
    char err[PATH_MAX + 256], buf[200];
    Out o;
    /* images: pixels / 255 */
    if (out_open(&o, f[0]) == 0) {
        float *x = out_read(&o, "raw", 500, 784);
        uint8_t px[784];
        int ok = x != NULL;
        for (int i = 0; ok && i < 500; i += 37) {
            if (dataset_read_image(&img->d, i, px, err, sizeof err)) die("%s", err);
            for (int k = 0; k < 784; k++)
                ok &= x[i * 784 + k] == px[k] / 255.0f;
        }
        check_record(ok && !h5_exists(o.f, "mean_final") && h5_exists(o.f, "labels"),
                     "image raw: (500, 784) pixels / 255, the labels, no model variants");
        free(x), h5_close(o.f);
    }
    /* text: token counts over the vocabulary */
    if (out_open(&o, f[1]) == 0) {
        int V = txt->d.vocab_size;
        int64_t N = txt->d.num_samples;
        float *x = out_read(&o, "raw", N, V);
        int ok = x != NULL && V <= EXTRACT_TEXT_BUCKETS;
        for (int64_t i = 0; ok && i < N; i += 17) {
            int64_t len = dataset_sample_len(&txt->d, i);
            int32_t *t = xalloc(sizeof(int32_t) * (size_t)(len + 1), "tokens");
            float *want = xalloc(sizeof(float) * V, "counts");
            if (dataset_read_tokens(&txt->d, i, 0, len, t, err, sizeof err)) die("%s", err);
            for (int64_t k = 0; k < len; k++)
                want[t[k]] += 1;
            ok &= !memcmp(want, x + (size_t)i * V, sizeof(float) * V);
            free(t), free(want);
        }
        snprintf(buf, sizeof buf, "text raw: (%lld, %d) token counts of each whole document",
                 (long long)N, V);
        check_record(ok, buf);
        free(x), h5_close(o.f);
    }
    /* speech: per frame position, mean then std over the normalised waveform's frames */
    if (out_open(&o, f[2]) == 0) {
        int D = 2 * EXTRACT_FRAME;
        int64_t N = sp->d.num_samples;
        float *x = out_read(&o, "raw", N, D);
        int ok = x != NULL;
        for (int64_t i = 0; ok && i < N; i += 9) {
            int64_t len = dataset_sample_len(&sp->d, i);
            float *a = xalloc(sizeof(float) * (size_t)len, "audio");
            if (dataset_read_audio(&sp->d, i, 0, len, a, err, sizeof err)) die("%s", err);
            double m = 0, v = 0;
            for (int64_t t = 0; t < len; t++)
                m += a[t];
            m /= len;
            for (int64_t t = 0; t < len; t++)
                v += (a[t] - m) * (a[t] - m);
            double s = 1 / sqrt(v / len + 1e-5);
            int64_t F = (len - EXTRACT_FRAME) / EXTRACT_HOP + 1;
            float want[2 * EXTRACT_FRAME];
            for (int j = 0; j < EXTRACT_FRAME; j++) {
                double s1 = 0, s2 = 0;
                for (int64_t fr = 0; fr < F; fr++) {
                    double y = (a[fr * EXTRACT_HOP + j] - m) * s;
                    s1 += y, s2 += y * y;
                }
                want[j] = (float)(s1 / F);
                want[EXTRACT_FRAME + j] = (float)sqrt(s2 / F - (s1 / F) * (s1 / F));
            }
            ok &= check_tensor_q("", x + (size_t)i * D, want, (size_t)D, 1e-5, 1e-4, 1);
            free(a);
        }
        snprintf(buf, sizeof buf, "speech raw: (%lld, %d) frame means and stds (%d every %d)",
                 (long long)N, D, EXTRACT_FRAME, EXTRACT_HOP);
        check_record(ok, buf);
        free(x), h5_close(o.f);
    }
    Out a, b;
    if (out_open(&a, f[0]) == 0 && out_open(&b, f[2]) == 0) {
        char ia[64], ib[64], net[32];
        out_str(&a, "model_id", ia, sizeof ia), out_str(&b, "model_id", ib, sizeof ib);
        out_str(&a, "network", net, sizeof net);
        check_record(strcmp(ia, ib) && !strcmp(net, "raw") && !h5_exists(a.f, "checkpoint"),
                     "raw files: network \"raw\", no checkpoint, an id of their own");
        h5_close(a.f), h5_close(b.f);
    }
}

/* Per-sample ids as a prep tool of a labelled corpus might write them (written with HDF5
 * directly: h5io has no read-write open). */
static void add_speakers(const char *path, int64_t n) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) die("%s: cannot open for writing", path);
    int64_t *v = xalloc(sizeof(int64_t) * (size_t)n, "speakers");
    for (int64_t i = 0; i < n; i++)
        v[i] = i % 3;
    hsize_t dn = (hsize_t)n;
    h5_write(f, "speakers", H5T_NATIVE_INT64, 1, &dn, NULL, v);
    const char *names[3] = {"voice a", "voice b", "voice c"};
    h5_write_strings(f, "speaker_names", names, 3);
    H5Fclose(f);
    free(v);
}

int main(int argc, char **argv) {
    (void)argc;
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1), setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    gemm_init(0);
    h5io_init();
    /* the tools next to this binary: BUILD/tests/test_extract -> BUILD/bin */
    snprintf(g_bin, sizeof g_bin, "%s", argv[0]);
    char *slash = strrchr(g_bin, '/');
    if (slash) *slash = '\0';
    snprintf(g_bin + strlen(g_bin), sizeof g_bin - strlen(g_bin), "/../bin");
    snprintf(g_dir, sizeof g_dir, "/tmp/d2v-extract.XXXXXX");
    if (!mkdtemp(g_dir)) die("cannot make a temporary directory");
    static Case img = {.name = "image", .cfg_file = "configs/image-tiny.cfg"};
    static Case img2 = {.name = "image-v2", .cfg_file = "configs/image-v2-tiny.cfg"};
    static Case txt = {.name = "text", .cfg_file = "configs/text-tiny.cfg"};
    static Case sp = {.name = "speech", .cfg_file = "configs/speech-tiny.cfg"};
    snprintf(img.data, sizeof img.data, "%s/images.h5", g_dir);
    snprintf(img2.data, sizeof img2.data, "%s/images.h5", g_dir);
    snprintf(txt.data, sizeof txt.data, "%s/text.h5", g_dir);
    snprintf(sp.data, sizeof sp.data, "%s/speech.h5", g_dir);
    int rc = sh("%s/d2v-prep-image --idx-images tests/fixtures/fmnist-t500-images-idx3.gz "
                "--idx-labels tests/fixtures/fmnist-t500-labels-idx1.gz -o %s >/dev/null",
                g_bin, img.data);
    rc |= sh("%s/d2v-prep-text --vocab-size 400 --split-blank -o %s tests/fixtures/text/moby-dick "
             ">/dev/null",
             g_bin, txt.data);
    rc |= sh("%s/d2v-prep-speech --tree tests/fixtures/speech -o %s >/dev/null", g_bin, sp.data);
    if (!check_record(rc == 0, "the prep tools made the datasets from tests/fixtures"))
        return check_summary();
    add_speakers(img.data, 500);
    if (setup(&img) == 0) test_image(&img);
    if (setup(&img2) == 0) test_image_v2(&img2);
    if (setup(&txt) == 0) test_text(&txt);
    if (setup(&sp) == 0) test_speech(&sp);
    if (img.params && txt.params && sp.params) test_raw(&img, &txt, &sp);
    Case *cs[4] = {&img, &img2, &txt, &sp};
    for (int k = 0; k < 4; k++)
        if (cs[k]->params) {
            dataset_close(&cs[k]->d);
            free(cs[k]->params), free(cs[k]->teacher), free(cs[k]->random);
        }
    sh("rm -rf %s", g_dir);
    return check_summary();
}
