/* test_trainer.c: the trainer library through trainer_update on synthetic batches: the loss and
 * gradient normalised by the masked count, micro-batches equal to one pass, the EMA of exactly
 * the averaged tensors, the non-finite skip, the metrics, and checkpoint + resume. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "d2v/dist.h"
#include "d2v/objective.h"
#include "d2v/trainer.h"
#include "d2v/util.h"

/* Batches cycle through `n` fixed ones of B images (distinct global ids, so distinct masks); a
 * micro-batch source hands out halves. */
typedef struct {
    Batch b[4], half[8];
    int n, next, halves;
} Source;

static const Batch *next_batch(void *ctx) {
    Source *s = ctx;
    const Batch *b = s->halves ? &s->half[s->next % (2 * s->n)] : &s->b[s->next % s->n];
    s->next++;
    return b;
}

static void make_source(Source *s, int n, int B, int H, int W, int halves, float poison) {
    memset(s, 0, sizeof *s);
    s->n = n, s->halves = halves;
    size_t per = (size_t)H * W;
    for (int k = 0; k < n; k++) {
        Batch *b = &s->b[k];
        b->B = B, b->H = H, b->W = W, b->C = 1, b->epoch = 0;
        b->ids = xalloc(sizeof(int64_t) * B, "ids"), b->labels = xalloc(4 * B, "labels");
        b->images = xalloc(4 * per * B, "images");
        uint64_t key = rng_key(77, (uint64_t)k, 0, 0);
        for (int i = 0; i < B; i++)
            b->ids[i] = (int64_t)k * B + i;
        for (size_t i = 0; i < per * B; i++)
            b->images[i] = rng_normal(key, i);
        b->images[0] += poison;
        for (int h = 0; h < 2; h++) { /* views of the two halves */
            Batch *q = &s->half[2 * k + h];
            *q = *b;
            q->B = B / 2, q->ids = b->ids + h * (B / 2), q->labels = b->labels + h * (B / 2);
            q->images = b->images + (size_t)h * (B / 2) * per;
        }
    }
}

static void free_source(Source *s) {
    for (int k = 0; k < s->n; k++)
        free(s->b[k].ids), free(s->b[k].labels), free(s->b[k].images);
}

static void tiny_config(TrainConfig *c, const char *const *extra) {
    char err[1024];
    train_config_defaults(c);
    if (train_config_load(c, "configs/image-tiny.cfg", err, sizeof err)) die("%s", err);
    const char *base[] = {"data.train=synthetic.h5", "data.batch_size=8", "run.collapse_after=0",
                          "model.drop_path=0.1", NULL};
    for (int i = 0; base[i]; i++)
        if (train_config_set(c, base[i], err, sizeof err)) die("%s", err);
    for (int i = 0; extra && extra[i]; i++)
        if (train_config_set(c, extra[i], err, sizeof err)) die("%s", err);
}

static Dataset image_ds(void) {
    Dataset d = {0};
    d.modality = D2V_IMAGE, d.C = 1, d.H = d.W = 28, d.num_samples = 32;
    return d;
}

static double max_rel_diff(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 1e-12;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs(a[i] - b[i]));
    return worst / scale;
}

/* Loss and gradient: the trainer's update equals model_micro_step's sums divided by the masked
 * count, and the metrics report it. */
static void test_normalisation(void) {
    printf("-- loss and gradient normalised by the masked count\n");
    TrainConfig c;
    tiny_config(&c, (const char *[]){"optim.clip=0", NULL});
    Dataset d = image_ds();
    Source s;
    make_source(&s, 1, 8, 28, 28, 0, 0);
    Trainer t;
    trainer_init(&t, &c, &(TrainerOptions){.source = {next_batch, &s}, .dataset = &d});
    /* the same step by hand, before the update changes anything */
    float *g = xalloc(t.np * 4, "grads");
    ModelParams pg;
    ptab_bind(&t.table, &pg, g);
    Model *m = model_create(&t.mc, 8, 0);
    double *stats = xalloc(sizeof(double) * 2 * (1 + 2 * t.mc.enc.C), "stats");
    MicroResult r = {0, 0, stats, stats + 1 + 2 * t.mc.enc.C};
    model_micro_step(m, &t.ps, &t.pt, &pg, &s.b[0], (uint64_t)c.seed, 0, &r);
    TrainMetrics tm;
    int rc = trainer_update(&t, &tm);
    check_record(rc == 0 && tm.update == 1 && tm.samples == 8 && !tm.skipped,
                 "one update of 8 samples, not skipped");
    check_record(tm.masked == (double)r.masked && r.masked > 0, "metrics: the masked count");
    check_record(fabs(tm.loss - r.loss_sum / r.masked) <= 1e-6 * fabs(tm.loss),
                 "metrics: loss = summed loss / masked count");
    for (size_t i = 0; i < t.np; i++)
        g[i] /= (float)r.masked;
    double gn = grad_norm(g, t.np);
    check_record(fabs(tm.grad_norm - gn) <= 1e-5 * gn, "metrics: norm of the normalised gradient");
    check_record(max_rel_diff(t.grads, g, t.np) < 1e-6,
                 "the applied gradient is the summed gradient / masked count");
    check_record(tm.lr == lr_at(&t.sched, 0) &&
                     tm.tau == ema_tau(c.ema_tau0, c.ema_tau_end, c.ema_tau_steps, 0),
                 "metrics: lr and tau of update 0");
    model_destroy(m);
    free(g), free(stats);
    trainer_free(&t);
    free_source(&s);
}

/* data.micro_batch = 4 runs each update as two micro-batches of the same 8 samples: the same
 * trajectory, since dropout and masks are keyed on (update, sample). */
static void test_micro_batches(void) {
    printf("-- micro-batches\n");
    TrainConfig c1, c2;
    tiny_config(&c1, NULL);
    tiny_config(&c2, (const char *[]){"data.micro_batch=4", NULL});
    Dataset d = image_ds();
    Source s1, s2;
    make_source(&s1, 3, 8, 28, 28, 0, 0), make_source(&s2, 3, 8, 28, 28, 1, 0);
    Trainer a, b;
    trainer_init(&a, &c1, &(TrainerOptions){.source = {next_batch, &s1}, .dataset = &d});
    trainer_init(&b, &c2, &(TrainerOptions){.source = {next_batch, &s2}, .dataset = &d});
    check_record(a.split.update_freq == 1 && b.split.update_freq == 2 && b.split.micro == 4,
                 "data.micro_batch = 4 splits the 8 samples into 2 micro-batches");
    TrainMetrics ma, mb;
    double worst = 0;
    for (int n = 0; n < 5; n++) {
        trainer_update(&a, &ma), trainer_update(&b, &mb);
        worst = fmax(worst, fabs(ma.loss - mb.loss) / fabs(ma.loss));
    }
    char label[160];
    snprintf(label, sizeof label, "5 updates: losses agree (%.1e), parameters agree (%.1e)", worst,
             max_rel_diff(b.params, a.params, a.np));
    check_record(worst < 1e-5 && max_rel_diff(b.params, a.params, a.np) < 1e-5, label);
    check_record(mb.samples == 8 && mb.masked == ma.masked, "same samples and masked count");
    trainer_free(&a), trainer_free(&b);
    free_source(&s1), free_source(&s2);
}

/* The EMA: averaged tensors follow teacher <- tau teacher + (1 - tau) student before each
 * update's forward; the rest of the teacher arena is never touched, the teacher reading the
 * student's own tensors there (ema.frontend = false: the patch embedding is shared). */
static void test_ema(void) {
    printf("-- EMA in trainer_update\n");
    TrainConfig c;
    tiny_config(&c, (const char *[]){"ema.tau0=0.9", "ema.tau_end=0.99", "ema.tau_steps=10",
                                     "ema.frontend=false", NULL});
    Dataset d = image_ds();
    Source s;
    make_source(&s, 2, 8, 28, 28, 0, 0);
    Trainer t;
    trainer_init(&t, &c, &(TrainerOptions){.source = {next_batch, &s}, .dataset = &d});
    trainer_update(&t, NULL);
    float *t1 = xalloc(t.np * 4, "teacher copy"), *p1 = xalloc(t.np * 4, "params copy");
    memcpy(t1, t.teacher, t.np * 4), memcpy(p1, t.params, t.np * 4);
    uint8_t *avg = xalloc(t.np, "averaged");
    for (int r = 0; r < t.n_ema; r++)
        memset(avg + t.ema[r].offset, 1, t.ema[r].count);
    TrainMetrics m;
    trainer_update(&t, &m);
    double tau = ema_tau(0.9, 0.99, 10, 1), worst = 0;
    int untouched = 1;
    for (size_t i = 0; i < t.np; i++) {
        if (avg[i])
            worst = fmax(worst, fabs(t.teacher[i] - (tau * t1[i] + (1 - tau) * p1[i])));
        else
            untouched &= t.teacher[i] == t1[i];
    }
    char label[160];
    snprintf(label, sizeof label, "averaged tensors: tau t + (1 - tau) theta (worst %.1e)", worst);
    check_record(worst < 1e-6, label);
    check_record(untouched, "the rest of the teacher arena is untouched");
    const ParamSpec *pw = ptab_find(&t.table, "image.patch_w"),
                    *q = ptab_find(&t.table, "enc.qkv_w");
    check_record(pw && !avg[pw->offset] && t.pt.image.patch_w == t.ps.image.patch_w,
                 "shared: the teacher reads the student's patch embedding");
    check_record(q && avg[q->offset] && t.pt.enc.qkv_w == t.teacher + q->offset,
                 "averaged: the teacher reads its own encoder");
    check_record(fabs(m.tau - tau) < 1e-12, "update 1 reports tau of update 1");
    free(t1), free(p1), free(avg);
    trainer_free(&t);
    free_source(&s);
}

/* A non-finite batch: skipped (run.skip_nonfinite), nothing applied, counted. */
static void test_skip(void) {
    printf("-- non-finite skip\n");
    TrainConfig c;
    tiny_config(&c, (const char *[]){"run.skip_nonfinite=true", NULL});
    Dataset d = image_ds();
    Source s;
    make_source(&s, 1, 8, 28, 28, 0, NAN);
    Trainer t;
    trainer_init(&t, &c, &(TrainerOptions){.source = {next_batch, &s}, .dataset = &d});
    float *before = xalloc(t.np * 4, "params copy");
    memcpy(before, t.params, t.np * 4);
    TrainMetrics m;
    int rc = trainer_update(&t, &m);
    check_record(rc == 1 && m.skipped && m.skipped_total == 1 && t.st.skipped == 1,
                 "a NaN pixel: the update is skipped and counted");
    check_record(!memcmp(before, t.params, t.np * 4), "skipped: the parameters are unchanged");
    check_record(t.st.update == 1, "skipped: the update counter still advances");
    free(before);
    trainer_free(&t);
    free_source(&s);
}

/* trainer_checkpoint, then a new trainer that resumes: the same state, bit for bit. */
static void test_checkpoint_resume(void) {
    printf("-- checkpoint and resume\n");
    char dir[] = "/tmp/d2v-test-trainer.XXXXXX";
    if (!mkdtemp(dir)) die("%s: cannot create", dir);
    TrainConfig c;
    tiny_config(&c, NULL);
    Dataset d = image_ds();
    Source s;
    make_source(&s, 2, 8, 28, 28, 0, 0);
    Trainer a, b;
    trainer_init(&a, &c,
                 &(TrainerOptions){.run_dir = dir, .source = {next_batch, &s}, .dataset = &d});
    for (int n = 0; n < 3; n++)
        trainer_update(&a, NULL);
    trainer_checkpoint(&a);
    trainer_init(&b, &c,
                 &(TrainerOptions){.run_dir = dir, .source = {next_batch, &s}, .dataset = &d});
    int resumed = trainer_resume(&b);
    check_record(resumed == 1 && b.st.update == 3, "resumed at update 3");
    check_record(!memcmp(a.params, b.params, a.np * 4) && !memcmp(a.teacher, b.teacher, a.np * 4) &&
                     !memcmp(a.adam_m, b.adam_m, a.np * 4) && !memcmp(a.adam_v, b.adam_v, a.np * 4),
                 "parameters, teacher and AdamW moments bit-identical");
    s.next = 3 % s.n; /* the next batch either trainer would see */
    TrainMetrics ma, mb;
    trainer_update(&a, &ma);
    s.next = 3 % s.n;
    trainer_update(&b, &mb);
    check_record(ma.loss == mb.loss && !memcmp(a.params, b.params, a.np * 4),
                 "the next update is identical");
    trainer_free(&a), trainer_free(&b);
    free_source(&s);
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", dir);
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    h5io_init();
    test_normalisation();
    test_micro_batches();
    test_ema();
    test_skip();
    test_checkpoint_resume();
    int rc = check_summary();
    dist_finalize();
    return rc;
}
