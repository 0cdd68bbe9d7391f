/* test_attn_target.c: target.tensor = "attn" (the self-attention branch before its residual, the
 * paper's §5.4 ablation): the config maps it, the teacher layers differ from the "ffn" and "end"
 * targets, v2 refuses it, and finite differences of the v1 image step's loss through every student
 * tensor agree with its gradient (the targets are constants of the student), with a negative
 * control. Run from the repository root (reads configs/image-tiny.cfg). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/config.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/util.h"
#include "fd.h"

/* configs/image-tiny.cfg with every dropout off and target.tensor = `tensor`. */
static int tiny_model(ModelConfig *mc, TrainConfig *cfg, const char *tensor) {
    char err[1024], set[64];
    const char *sets[] = {"data.train=unused.h5", "model.dropout=0", "model.attn_dropout=0",
                          "model.drop_path=0", set};
    snprintf(set, sizeof set, "target.tensor=\"%s\"", tensor);
    train_config_defaults(cfg);
    if (train_config_load(cfg, "configs/image-tiny.cfg", err, sizeof err))
        return check_record(0, err), -1;
    for (int i = 0; i < 5; i++)
        if (train_config_set(cfg, sets[i], err, sizeof err)) return check_record(0, err), -1;
    if (train_config_validate(cfg, 1, err, sizeof err)) return check_record(0, err), -1;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    train_config_to_model(mc, cfg, &ds);
    return 0;
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

/* The top-K teacher layers of one micro-step with target.tensor = tensor, copied out
 * (K x B x T x C floats), on the same parameters and batch. */
static float *teacher_layers(const char *tensor, const float *params, const float *teacher,
                             Batch *b, size_t *n) {
    ModelConfig mc;
    TrainConfig cfg;
    if (tiny_model(&mc, &cfg, tensor)) return NULL;
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *p = xalloc(np * 4, "params"), *t = xalloc(np * 4, "teacher");
    memcpy(p, params, np * 4), memcpy(t, teacher, np * 4);
    ModelParams ps, pt;
    model_params_layout(&ps, p, &mc);
    model_teacher_view(&pt, &ps, t, &mc);
    Model *m = model_create(&mc, b->B, 0);
    MicroResult r = {0, 0, NULL, NULL};
    model_micro_step(m, &ps, &pt, NULL, b, 1, 5, &r);
    ModelTrace tr = model_trace(m, b);
    size_t one = (size_t)tr.B * tr.T * tr.C;
    *n = one * mc.top_k;
    float *out = xalloc(*n * 4, "layers");
    for (int k = 0; k < mc.top_k; k++)
        memcpy(out + k * one, tr.teacher_layers[k], one * 4);
    model_destroy(m);
    free(p), free(t);
    return out;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

int main(void) {
    gemm_init(0);
    printf("-- target.tensor = \"attn\" on configs/image-tiny.cfg\n");
    ModelConfig mc;
    TrainConfig cfg;
    if (tiny_model(&mc, &cfg, "attn")) return check_summary();
    check_record(mc.target_attn && !mc.target_ffn && mc.enc.keep_attn_out,
                 "the config maps \"attn\" to the attention-branch targets");
    int B = 3;
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
    Batch b;
    memset(&b, 0, sizeof b);
    b.B = B, b.H = cfg.image_height, b.W = cfg.image_width, b.C = cfg.image_channels;
    b.ids = xalloc(sizeof(int64_t) * B, "ids");
    for (int i = 0; i < B; i++)
        b.ids[i] = 100 + 7 * i;
    size_t npix = (size_t)B * b.H * b.W * b.C;
    b.images = xalloc(4 * npix, "images");
    for (size_t i = 0; i < npix; i++)
        b.images[i] = rng_normal(key, 2 * np + i);

    Model *m = model_create(&mc, B, 0);
    MicroResult r = {0, 0, NULL, NULL};
    model_micro_step(m, &ps, &pt, &pg, &b, 1, 5, &r);
    char label[256];
    snprintf(label, sizeof label, "one step: loss sum %.4f over %lld masked patches", r.loss_sum,
             (long long)r.masked);
    check_record(isfinite(r.loss_sum) && r.masked > 0, label);

    /* the same layers from a fresh model, and other ones than the "ffn" and "end" targets
     * (tests/test_encoder_parity.c checks the branch itself, gamma1 included, against PyTorch) */
    ModelTrace tr = model_trace(m, &b);
    size_t one = (size_t)tr.B * tr.T * tr.C;
    size_t n_attn = 0, n_ffn = 0, n_end = 0;
    float *la = teacher_layers("attn", params, teacher, &b, &n_attn);
    float *lf = teacher_layers("ffn", params, teacher, &b, &n_ffn);
    float *le = teacher_layers("end", params, teacher, &b, &n_end);
    if (la && lf && le) {
        double d_self = max_diff(la, tr.teacher_layers[0], one);
        snprintf(label, sizeof label, "a fresh model gives the same attn layers (max diff %.1e)",
                 d_self);
        check_record(d_self == 0, label);
        double d_ffn = max_diff(la, lf, n_attn), d_end = max_diff(la, le, n_attn);
        snprintf(label, sizeof label,
                 "attn targets differ from ffn (max diff %.2f) and end (%.2f) targets", d_ffn,
                 d_end);
        check_record(d_ffn > 1e-2 && d_end > 1e-2, label);
    }
    /* finite differences of the summed loss through every student tensor: the teacher reads its
     * own arena (image: ema.frontend), so the attn targets are constants of the student */
    Ctx c = {m, &ps, &pt, &b};
    ParamInfo table[128];
    int nt = model_param_table(table, 128, &mc), checked = 0;
    for (int i = 0; i < nt; i++) {
        fd_tensor(table[i].name, loss_of, &c, params + table[i].offset, grads + table[i].offset,
                  table[i].count, 24, 0);
        checked++;
    }
    snprintf(label, sizeof label, "%d tensors checked", checked);
    check_record(checked >= 12, label);
    const ParamSpec *w = NULL;
    for (int i = 0; i < nt; i++)
        if (!strcmp(table[i].name, "enc.proj_w")) w = &table[i];
    if (w) { /* negative control: a 10% wrong gradient must be rejected */
        float *bad = xalloc(w->count * 4, "bad grad");
        for (size_t j = 0; j < w->count; j++)
            bad[j] = 1.1f * grads[w->offset + j];
        check_record(!fd_tensor("control", loss_of, &c, params + w->offset, bad, w->count, 24, 1),
                     "negative control: enc.proj_w's gradient 10% off is rejected");
        free(bad);
    } else {
        check_record(0, "enc.proj_w in the parameter table");
    }
    { /* data2vec 2.0 regresses the FFN branch: the attention target is refused, naming it */
        TrainConfig v2;
        char err[1024] = "";
        train_config_defaults(&v2);
        int rc = train_config_load(&v2, "configs/image-v2-tiny.cfg", err, sizeof err);
        if (!rc) rc = train_config_set(&v2, "data.train=unused.h5", err, sizeof err);
        if (!rc) rc = train_config_set(&v2, "target.tensor=attn", err, sizeof err);
        if (!rc) rc = train_config_validate(&v2, 1, err, sizeof err);
        snprintf(label, sizeof label, "model.mode = v2 refuses target.tensor = attn: \"%s\"", err);
        check_record(rc != 0 && strstr(err, "\"attn\"") != NULL, label);
    }
    model_destroy(m);
    free(la), free(lf), free(le);
    free(b.ids), free(b.images), free(params), free(teacher), free(grads);
    return check_summary();
}
