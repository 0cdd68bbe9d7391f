/* trainer.c: the training update of docs/algorithm.md §1 and §5 under MPI: every rank computes
 * its micro-batches' gradients and targets, one allreduce sums them, and every replica applies
 * the same AdamW step, so the replicas stay identical without a parameter broadcast. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/trainer.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "d2v/dist.h"
#include "d2v/kernels.h"
#include "d2v/objective.h"
#include "d2v/util.h"

static void make_dir(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0775);
            *p = '/';
        }
    if (mkdir(tmp, 0775) != 0 && errno != EEXIST) die("%s: cannot create the run directory", path);
}

static const Batch *next_from_loader(void *ctx) { return loader_next(ctx); }

static void open_loader(Trainer *t) {
    if (t->opt.source.next) return;
    if (t->loader) loader_destroy(t->loader);
    LoaderConfig lc = train_config_to_loader(&t->cfg, t->split.micro);
    if (lc.speech_min_samples != t->cfg.speech_min_samples && !t->loader) /* once, not on resume */
        log0("data.speech_min_samples raised from %d to %d (shorter clips give fewer than %d "
             "frames)\n",
             t->cfg.speech_min_samples, lc.speech_min_samples, t->cfg.mask_speech_length + 1);
    t->loader = loader_create(&t->ds, &lc, g_dist.rank, g_dist.world, t->st.cursor);
    t->source = (BatchSource){next_from_loader, t->loader};
}

/* The gradient ranges of each backward part, from the table: encoder tensors are stacked over
 * blocks, so block l's part is one slice of each; adjacent ranges are merged. */
static void build_slices(Trainer *t) {
    int L = t->mc.enc.L, P = L + 2, n = 0;
    t->slices = xalloc(sizeof(ParamRange) * (size_t)(t->table.n * (L + 1) + P), "gradient slices");
    t->part_first = xalloc(sizeof(int) * (size_t)(P + 1), "gradient parts");
    t->pending = xalloc(sizeof(ParamRange) * (size_t)(t->table.n * (L + 1) + P), "pending slices");
    for (int p = 0; p < P; p++) {
        t->part_first[p] = n;
        for (int i = 0; i < t->table.n; i++) {
            const ParamSpec *s = &t->table.t[i];
            /* the v2 decoder's gradients are complete first, like the v1 head's */
            int enc = !strncmp(s->name, "enc.", 4),
                head = !strncmp(s->name, "head.", 5) || !strncmp(s->name, "dec.", 4);
            ParamRange r;
            if (enc && p >= 1 && p <= L) {
                size_t per = s->count / (size_t)L;
                r = (ParamRange){s->offset + (size_t)(p - 1) * per, per};
            } else if ((head && p == 0) || (!enc && !head && p == L + 1)) {
                r = (ParamRange){s->offset, s->count};
            } else {
                continue;
            }
            if (n > t->part_first[p] &&
                t->slices[n - 1].offset + t->slices[n - 1].count == r.offset)
                t->slices[n - 1].count += r.count;
            else
                t->slices[n++] = r;
        }
    }
    t->part_first[P] = n;
    size_t covered = 0;
    for (int i = 0; i < n; i++)
        covered += t->slices[i].count;
    if (covered != t->np) die("trainer: gradient parts cover %zu of %zu floats", covered, t->np);
}

static void flush_pending(Trainer *t) {
    /* in arena order, adjacent ranges merged: a bucket that is the whole arena is one call */
    ParamRange *q = t->pending;
    for (int i = 1; i < t->n_pending; i++)
        for (int j = i; j > 0 && q[j - 1].offset > q[j].offset; j--) {
            ParamRange x = q[j];
            q[j] = q[j - 1], q[j - 1] = x;
        }
    int n = 0;
    for (int i = 0; i < t->n_pending; i++)
        if (n > 0 && q[n - 1].offset + q[n - 1].count == q[i].offset)
            q[n - 1].count += q[i].count;
        else
            q[n++] = q[i];
    t->n_pending = n;
    for (int i = 0; i < t->n_pending; i++)
        dist_iallreduce_sum_f32(t->grads + t->pending[i].offset, t->pending[i].count, &t->reqs);
    t->n_pending = 0, t->pending_bytes = 0;
}

/* model_micro_step's backward completed a part: queue its ranges, start the bucket when full,
 * and let MPI progress what is in flight. */
static void grads_ready(void *ctx, int part, int layer) {
    Trainer *t = ctx;
    int p = part == GRAD_HEAD ? 0 : part == GRAD_BLOCK ? 1 + layer : t->mc.enc.L + 1;
    for (int i = t->part_first[p]; i < t->part_first[p + 1]; i++) {
        t->pending[t->n_pending++] = t->slices[i];
        t->pending_bytes += t->slices[i].count * sizeof(float);
    }
    if (t->pending_bytes >= t->bucket_bytes) flush_pending(t);
    dist_test(&t->reqs);
}

void trainer_init(Trainer *t, const TrainConfig *cfg, const TrainerOptions *o) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg, t->opt = *o;
    char err[1024];
    if (train_config_validate(cfg, g_dist.world, err, sizeof err) ||
        train_config_split(cfg, g_dist.world, &t->split, err, sizeof err))
        die("%s", err);
    if (o->dump && t->split.update_freq != 1)
        die("--dump-step records one micro-batch per update: set data.micro_batch = 0");
    if (!o->dump_updates) t->opt.dump_updates = 1;
    if (o->run_dir) snprintf(t->run_dir, sizeof t->run_dir, "%s", o->run_dir);
    t->arch = gemm_init(cfg->threads);
    if (cfg->threads > 0) omp_set_num_threads(cfg->threads);

    /* data: every rank opens the dataset read-only and validates it now, not at step time */
    if (o->source.next) {
        if (!o->dataset) die("trainer: a batch source needs a dataset description");
        t->ds = *o->dataset, t->source = o->source;
    } else {
        if (dataset_open(&t->ds, cfg->train_path, cfg->modality, err, sizeof err) < 0)
            die("%s", err);
        t->own_ds = 1;
    }
    if (cfg->modality == D2V_IMAGE && t->ds.C != cfg->image_channels)
        die("%s: images have %d channels, image.channels is %d", cfg->train_path, t->ds.C,
            cfg->image_channels);

    /* model: student, gradients, AdamW moments and teacher share the table's layout */
    train_config_to_model(&t->mc, cfg, &t->ds);
    model_declare(&t->table, &t->mc);
    size_t np = t->np = t->table.total;
    t->params = xalloc(np * 4, "parameters"), t->grads = xalloc(np * 4, "gradients");
    t->adam_m = xalloc(np * 4, "AdamW m"), t->adam_v = xalloc(np * 4, "AdamW v");
    t->teacher = xalloc(np * 4, "teacher"), t->decay = xalloc(np, "weight-decay mask");
    ptab_bind(&t->table, &t->ps, t->params), ptab_bind(&t->table, &t->pg, t->grads);
    if (g_dist.rank == 0) {
        ptab_init_values(&t->table, &t->ps, (uint64_t)cfg->seed);
        encoder_params_constrain(&t->ps.enc, &t->mc.enc);
    }
    dist_bcast_bytes(t->params, np * 4); /* one initialisation for all replicas */
    memcpy(t->teacher, t->params, np * 4);
    ptab_bind_teacher(&t->table, &t->pt, t->teacher, t->params);
    ptab_decay_mask(&t->table, t->decay, cfg->exempt_1d);
    t->n_ema = ptab_ema_ranges(&t->table, t->ema, 64);
    int len = cfg->modality == D2V_TEXT     ? cfg->text_block
              : cfg->modality == D2V_SPEECH ? cfg->speech_max_samples
                                            : 0;
    size_t before = xalloc_total();
    t->model = model_create(&t->mc, t->split.micro, len);
    t->act_bytes = xalloc_total() - before; /* every activation: front-end, encoders, head */
    t->adamw = train_config_to_optim(cfg), t->sched = train_config_to_schedule(cfg);
    t->tau_steps = cfg->ema_tau_steps;
    t->n_sums = 2 + 2 * (1 + 2 * (size_t)t->mc.enc.C);
    t->sums = xalloc(sizeof(double) * t->n_sums, "metric sums");
    if (o->dump) {
        t->dump_p = xalloc(np * 4, "dump copy"), t->dump_t = xalloc(np * 4, "dump copy");
        t->dump_g = xalloc(np * 4, "dump copy");
    }
    t->config_text = train_config_text(cfg);
    t->bucket_bytes = (size_t)cfg->allreduce_bucket_kb * 1024;
    dist_watchdog_start(cfg->watchdog_s);
    build_slices(t);
    t->last_ckpt = -1;
    open_loader(t);

    if (g_dist.rank == 0 && o->run_dir) {
        char path[PATH_MAX + 32];
        make_dir(t->run_dir);
        ckpt_remove_stale(t->run_dir);
        snprintf(path, sizeof path, "%s/config.resolved.cfg", t->run_dir);
        if (train_config_write(cfg, path) != 0) die("%s: cannot write", path);
        snprintf(path, sizeof path, "%s/metrics.jsonl", t->run_dir);
        t->metrics = fopen(path, "a");
        if (!t->metrics) die("%s: cannot open for appending", path);
    }
    t->t_start = t->t_log = now_seconds();
}

/* ---- run.max_time: a wall-time budget instead of an update count ---- */

int64_t trainer_total_updates(const Trainer *t) {
    return t->st.planned > 0 ? t->st.planned : t->cfg.max_updates;
}

/* The recipe written for max_updates, compressed or stretched to `planned` updates: the LR
 * schedule's length and warm-up and the tau ramp scale together (docs/algorithm.md §7). */
static void apply_plan(Trainer *t, int64_t planned) {
    const TrainConfig *c = &t->cfg;
    double r = (double)planned / (double)c->max_updates;
    t->st.planned = planned;
    t->sched = train_config_to_schedule(c);
    t->sched.total = planned;
    t->sched.warmup = (int64_t)llround(c->warmup * r);
    t->tau_steps = (int64_t)llround(c->ema_tau_steps * r);
}

/* After the probe updates, rank 0 turns the measured rate into an update count for the rest of
 * the budget; every rank applies the same plan. The first two plans time the updates since the
 * probe began, the third (halfway) those since the second, so a slow start does not end the run
 * early (docs/algorithm.md §5.2). */
static void plan_budget(Trainer *t) {
    const TrainConfig *c = &t->cfg;
    int64_t done = t->st.update, from = t->plans == 2 ? t->plan_at : t->probe_from;
    double v[2] = {0, 0};
    if (g_dist.rank == 0) {
        double now = now_seconds();
        double rate = (now - (t->plans == 2 ? t->t_plan : t->t_probe)) / (double)(done - from);
        double left = c->max_time - (now - t->t_start) - 0.05 * c->max_time; /* 5 %: the end */
        int64_t more = left > 0 ? (int64_t)(left / rate) : 0;
        v[0] = (double)(done + more), v[1] = rate;
        if (v[0] > 100.0 * (double)c->max_updates) v[0] = 100.0 * (double)c->max_updates;
    }
    dist_bcast_bytes(v, sizeof v);
    int64_t planned = (int64_t)v[0];
    if (t->plans == 2 && planned <= done) planned = done + 1; /* slowed down: end at once */
    if (planned < done + c->log_every && t->plans < 2)
        die("run.max_time = %g s allows only %lld updates at the measured %.3g s/update, fewer "
            "than one logging interval past the %lld already run (run.log_every = %d): raise "
            "run.max_time or lower run.log_every",
            c->max_time, (long long)planned, v[1], (long long)done, c->log_every);
    apply_plan(t, planned);
    t->plans++;
    t->t_plan = now_seconds(), t->plan_at = done;
    log0("run.max_time %.0f s: %.3g s/update over updates %lld-%lld, so %lld updates in all; the "
         "recipe of run.max_updates = %lld scaled by %.3g (warm-up %lld, tau ramp %lld)\n",
         c->max_time, v[1], (long long)from + 1, (long long)done, (long long)planned,
         (long long)c->max_updates, (double)planned / (double)c->max_updates,
         (long long)t->sched.warmup, (long long)t->tau_steps);
}

int trainer_resume(Trainer *t) {
    double resumed = 0;
    if (!t->run_dir[0]) die("--resume needs a run directory");
    if (g_dist.rank == 0) {
        char ck[PATH_MAX + 32], err[1024];
        int rc = ckpt_load_latest(t->run_dir, &t->mc, t->params, t->teacher, t->adam_m, t->adam_v,
                                  t->np, &t->st, ck, sizeof ck, err, sizeof err);
        if (rc < 0) die("%s", err);
        if (rc == 0) {
            /* the checkpoint against this run: a changed dataset or config is the user's to fix */
            int64_t per_epoch = t->loader ? loader_epoch_samples(t->loader) : 0;
            if (t->st.update > (t->st.planned ? t->st.planned : t->cfg.max_updates))
                die("%s: update %lld is past the run's %lld updates (raise run.max_updates to "
                    "continue it)",
                    ck, (long long)t->st.update,
                    (long long)(t->st.planned ? t->st.planned : t->cfg.max_updates));
            if (t->loader && t->st.cursor.position > per_epoch)
                die("%s: loader position %lld is past the %lld samples per epoch of %s (another "
                    "dataset?)",
                    ck, (long long)t->st.cursor.position, (long long)per_epoch, t->cfg.train_path);
            resumed = 1;
            log0("resuming from %s: update %lld, epoch %lld, position %lld\n", ck,
                 (long long)t->st.update, (long long)t->st.cursor.epoch,
                 (long long)t->st.cursor.position);
        } else {
            log0("--resume: no complete checkpoint under %s/ckpt, starting fresh\n", t->run_dir);
        }
    }
    dist_bcast_bytes(&resumed, sizeof resumed);
    if (!resumed) return 0;
    dist_bcast_bytes(&t->st, sizeof t->st);
    dist_bcast_bytes(t->params, t->np * 4), dist_bcast_bytes(t->teacher, t->np * 4);
    dist_bcast_bytes(t->adam_m, t->np * 4), dist_bcast_bytes(t->adam_v, t->np * 4);
    t->last_ckpt = t->st.update;
    if (t->st.planned > 0) apply_plan(t, t->st.planned); /* a budgeted run keeps its plan */
    open_loader(t); /* the loader starts where the checkpoint left off (a global cursor) */
    return 1;
}

void trainer_init_from(Trainer *t, const char *path) {
    if (g_dist.rank == 0) {
        char ck[PATH_MAX + 64], err[PATH_MAX + 1024], key[64], va[256], vb[256];
        snprintf(ck, sizeof ck, "%s", path);
        if (access(path, F_OK) != 0) die("%s: no such checkpoint or run directory", path);
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode) &&
            ckpt_find_latest(path, ck, sizeof ck) != 0)
            die("%s: a directory with no complete checkpoint (ckpt/step_*/DONE)", path);
        TrainConfig other;
        if (ckpt_read_config(ck, &other, err, sizeof err)) die("%s", err);
        if (train_config_arch_diff(&other, &t->cfg, key, sizeof key, va, vb, sizeof va))
            die("%s: %s is %s in the checkpoint, %s in this config (--init-from needs the same "
                "architecture)",
                ck, key, va, vb);
        float *m = xalloc(t->np * 4, "adam m"), *v = xalloc(t->np * 4, "adam v");
        TrainState st;
        /* the teacher arena is read and then replaced: the run starts as a fresh one would */
        if (ckpt_read(ck, &t->mc, t->params, t->teacher, m, v, t->np, &st, err, sizeof err) < 0)
            die("%s", err);
        free(m), free(v);
        memcpy(t->teacher, t->params, t->np * 4);
        log0("--init-from %s: student weights of update %lld, teacher = student, AdamW and the "
             "update count fresh\n",
             ck, (long long)st.update);
    }
    dist_bcast_bytes(t->params, t->np * 4), dist_bcast_bytes(t->teacher, t->np * 4);
}

void trainer_banner(const Trainer *t) {
    if (g_dist.rank != 0) return;
    const TrainConfig *c = &t->cfg;
    const ModelConfig *mc = &t->mc;
    log0("d2v-train: %s pretraining on %s (%lld samples, %lld per epoch for the loader)\n",
         d2v_modality_names[c->modality], c->train_path, (long long)t->ds.num_samples,
         t->loader ? (long long)loader_epoch_samples(t->loader) : 0LL);
    log0("ranks=%d threads/rank: omp=%d blis=%d (%s kernels, %s element-wise)  run dir %s\n",
         g_dist.world, omp_get_max_threads(), gemm_threads(), t->arch, simd_level(),
         t->run_dir[0] ? t->run_dir : "(none)");
    log0("batch %d per update = %d ranks x %d micro-batches x %d\n", c->batch_size, g_dist.world,
         t->split.update_freq, t->split.micro);
    log0("model L=%d C=%d heads=%d ffn=%d: %.2fM parameters; arenas: params+grads+adam+teacher "
         "%.1f MiB, activations (front-end, encoders, head) %.1f MiB\n",
         mc->enc.L, mc->enc.C, mc->enc.NH, mc->enc.F, t->np / 1e6, 5.0 * t->np * 4 / 1048576.0,
         t->act_bytes / 1048576.0);
    char names[16][16];
    size_t counts[16];
    int nm = ptab_modules(&t->table, names, counts, 16);
    log0("parameters by module (each of the 5 arenas):");
    for (int i = 0; i < nm; i++) {
        double n = (double)counts[i], kib = n * 4 / 1024;
        if (n >= 1e6)
            log0(" %s %.2fM (%.1f MiB)", names[i], n / 1e6, kib / 1024);
        else
            log0(" %s %.1fK (%.1f KiB)", names[i], n / 1e3, kib);
    }
    log0("\n");
    for (const char *l = t->config_text; *l;) {
        size_t len = strcspn(l, "\n");
        log0("  %.*s\n", (int)len, l);
        l += len + (l[len] == '\n');
    }
}

static void ema_step(Trainer *t, float *teacher, double tau) {
    for (int r = 0; r < t->n_ema; r++)
        ema_update(teacher + t->ema[r].offset, t->params + t->ema[r].offset, t->ema[r].count, tau);
}

/* D2V_FAULT=KIND:RANK:UPDATE, for the fault trials (tests/script_faults.sh): after update
 * UPDATE, rank RANK perturbs one parameter (KIND "params") or skips ahead one update ("counter"),
 * as a silent memory error or a diverged replica would. */
static void fault_inject(Trainer *t, int64_t update) {
    const char *f = getenv("D2V_FAULT");
    char kind[16];
    int rank;
    long long at;
    if (!f || sscanf(f, "%15[a-z]:%d:%lld", kind, &rank, &at) != 3) return;
    if (rank != g_dist.rank || at != update) return;
    if (!strcmp(kind, "params")) t->params[t->np / 2] += 1e-3f;
    if (!strcmp(kind, "counter")) t->st.update++;
}

void trainer_check_replicas(Trainer *t) {
    if (g_dist.world == 1) return;
    dist_watchdog_phase("the replica check", t->st.update);
    int n = t->table.n;
    const float *arena[4] = {t->params, t->teacher, t->adam_m, t->adam_v};
    static const char *const names[4] = {"params", "teacher", "adam_m", "adam_v"};
    uint32_t *mine = xalloc(sizeof(uint32_t) * 8 * (size_t)n, "replica checksums"),
             *ref = mine + 4 * (size_t)n;
    for (int a = 0; a < 4; a++)
        ptab_crc32(&t->table, arena[a], mine + (size_t)a * n);
    memcpy(ref, mine, sizeof(uint32_t) * 4 * (size_t)n);
    dist_bcast_bytes(ref, sizeof(uint32_t) * 4 * (size_t)n);
    int64_t first = -1, count = 0;
    for (int i = 0; i < 4 * n; i++)
        if (mine[i] != ref[i]) first = first < 0 ? i : first, count++;
    int64_t *firsts = xalloc(sizeof(int64_t) * 2 * (size_t)g_dist.world, "replica reports"),
            *counts = firsts + g_dist.world;
    dist_allgather_i64(first, firsts);
    dist_allgather_i64(count, counts);
    free(mine);
    char msg[1024] = "";
    int bad = 0;
    for (int r = 1; r < g_dist.world; r++)
        if (firsts[r] >= 0 && bad++ == 0)
            snprintf(msg, sizeof msg, "rank %d differs from rank 0 in %s of /%s (%lld tensors)", r,
                     t->table.t[firsts[r] % n].name, names[firsts[r] / n], (long long)counts[r]);
    free(firsts);
    if (bad && g_dist.rank == 0)
        die("replicas drifted apart at update %lld: %s%s; the last checkpoint is consistent "
            "(resume from it)",
            (long long)t->st.update, msg, bad > 1 ? ", and other ranks too" : "");
    if (bad) dist_barrier(); /* rank 0's die() ends the job meanwhile */
}

int trainer_update(Trainer *t, TrainMetrics *out) {
    const TrainConfig *c = &t->cfg;
    int64_t n = t->st.update;
    size_t np = t->np;
    int C = t->mc.enc.C;
    double t_begin = now_seconds(), t0 = t_begin, t1;
    /* the teacher absorbs theta after update n-1, before the forward of update n (once per
     * update, also under gradient accumulation: fairseq v1 steps it per micro-batch;
     * docs/algorithm.md §6.1) */
    /* rank 0 owns the schedule: its update counter, tau and learning rate go to every rank,
     * and a rank that is out of step stops the job (docs/reliability.md §6) */
    double sched[3] = {(double)n, ema_tau(c->ema_tau0, c->ema_tau_end, t->tau_steps, n),
                       lr_at(&t->sched, n)};
    if (g_dist.world > 1) {
        dist_watchdog_phase("the schedule broadcast", n);
        dist_bcast_bytes(sched, sizeof sched);
        if ((int64_t)sched[0] != n)
            die("replicas out of step: this rank is at update %lld, rank 0 at %lld", (long long)n,
                (long long)sched[0]);
    }
    double tau = sched[1];
    if (n > 0) ema_step(t, t->teacher, tau);
    int dumping = t->opt.dump && n < t->opt.dump_updates;
    if (dumping) memcpy(t->dump_p, t->params, np * 4), memcpy(t->dump_t, t->teacher, np * 4);
    t1 = now_seconds(), t->times.ema += t1 - t0;
    memset(t->grads, 0, np * 4);
    memset(t->sums, 0, sizeof(double) * t->n_sums);
    double *loss_sum = &t->sums[0], *masked = &t->sums[1];
    double *pred_stats = t->sums + 2, *target_stats = t->sums + 2 + 1 + 2 * C;
    const Batch *b = NULL;
    int64_t samples = 0;
    double phase0[PHASE_NUM], phase1[PHASE_NUM];
    model_phase_times(t->model, phase0);
    /* the last micro-batch's backward starts each bucket's allreduce as it completes */
    int overlap = g_dist.world > 1 && t->bucket_bytes > 0;
    for (int k = 0; k < t->split.update_freq; k++) {
        double tb = now_seconds();
        dist_watchdog_phase("reading a batch", n);
        b = t->source.next(t->source.ctx);
        t->times.batches += now_seconds() - tb;
        dist_watchdog_phase("the forward and backward", n);
        MicroResult r = {0, 0, pred_stats, target_stats};
        model_set_grad_hook(t->model, overlap && k == t->split.update_freq - 1 ? grads_ready : NULL,
                            t);
        /* dropout keyed on (update, sample): the same masks however the batch is split */
        model_micro_step(t->model, &t->ps, &t->pt, &t->pg, b, (uint64_t)c->seed, (uint64_t)n, &r);
        *loss_sum += r.loss_sum, *masked += (double)r.masked;
        samples += b->B;
    }
    model_phase_times(t->model, phase1);
    for (int i = 0; i < PHASE_NUM; i++)
        t->times.model[i] += phase1[i] - phase0[i];
    /* the gradients: the buckets still pending, then wait for all (or one blocking allreduce);
     * the metric sums in one small allreduce. Each element is the same sum over ranks either
     * way. */
    t0 = now_seconds();
    dist_watchdog_phase("the gradient allreduce", n);
    if (g_dist.world > 1) { /* the slowest rank's lag, apart from the communication proper */
        dist_barrier();
        t1 = now_seconds(), t->times.skew += t1 - t0, t0 = t1;
    }
    if (overlap) {
        flush_pending(t);
        dist_allreduce_sum_f64(t->sums, t->n_sums);
        dist_wait(&t->reqs);
    } else {
        dist_allreduce_sum_f32(t->grads, np);
        dist_allreduce_sum_f64(t->sums, t->n_sums);
    }
    t1 = now_seconds(), t->times.allreduce += t1 - t0, t0 = t1;
    TrainMetrics m = {.update = n + 1, .tau = tau, .masked = *masked};
    m.samples = samples * g_dist.world;
    t->samples_since_log += m.samples, t->updates_since_log++;
    m.loss = *masked > 0 ? *loss_sum / *masked : 0;
    if (*masked > 0) { /* the gradient of the per-masked-token mean over all ranks */
        float inv = (float)(1.0 / *masked);
        float *g = t->grads;
#pragma omp parallel for
        for (size_t i = 0; i < np; i++)
            g[i] *= inv;
    }
    m.grad_norm = grad_norm(t->grads, np);
    m.lr = sched[2];
    t->st.update = n + 1;
    if (!isfinite(m.loss) || !isfinite(m.grad_norm)) {
        if (!c->skip_nonfinite)
            die("non-finite %s at update %lld: loss %g, gradient norm %g (lr %g). Lower "
                "optim.lr, raise optim.warmup or set run.skip_nonfinite = true",
                isfinite(m.loss) ? "gradient" : "loss", (long long)n, m.loss, m.grad_norm, m.lr);
        t->st.skipped++, t->skipped_in_a_row++;
        log0("update %lld skipped: non-finite loss or gradient (%lld so far)\n", (long long)n,
             (long long)t->st.skipped);
        if (t->skipped_in_a_row >= 20) /* nothing recovers by itself after this */
            die("20 updates in a row had a non-finite loss or gradient (update %lld); lower "
                "optim.lr or raise optim.warmup and restart",
                (long long)n);
        m.skipped = 1, m.skipped_total = t->st.skipped;
        m.seconds = now_seconds() - t_begin;
        dist_watchdog_raise(5 * m.seconds);
        t->times.total += m.seconds;
        if (out) *out = m;
        return 1;
    }
    t->skipped_in_a_row = 0;
    if (dumping) memcpy(t->dump_g, t->grads, np * 4); /* the dump holds them before clipping */
    clip_grad_norm(t->grads, np, m.grad_norm, c->clip);
    if (!isfinite(m.lr) || m.lr < 0) die("learning rate %g at update %lld", m.lr, (long long)n);
    adamw_step(t->params, t->adam_m, t->adam_v, t->grads, t->decay, np, &t->adamw, m.lr,
               n + 1 - t->st.skipped);
    t1 = now_seconds(), t->times.optimizer += t1 - t0;
    fault_inject(t, n + 1);
    m.target_var = var_from_stats(target_stats, C);
    m.pred_var = var_from_stats(pred_stats, C);
    m.skipped_total = t->st.skipped;
    if (dumping) {
        /* the teacher after the EMA that follows this update: the one update n+1 uses */
        float *t_after = xalloc(np * 4, "dump teacher");
        memcpy(t_after, t->teacher, np * 4);
        ema_step(t, t_after, ema_tau(c->ema_tau0, c->ema_tau_end, t->tau_steps, n + 1));
        char path[PATH_MAX + 16];
        const char *d = t->opt.dump;
        if (t->opt.dump_updates == 1)
            snprintf(path, sizeof path, "%s", d);
        else {
            size_t len = strlen(d);
            int h5 = len > 3 && !strcmp(d + len - 3, ".h5");
            snprintf(path, sizeof path, "%.*s_%04lld.h5", (int)(h5 ? len - 3 : len), d,
                     (long long)n);
        }
        if (g_dist.rank == 0)
            dump_step(path, t, b, t->dump_p, t->dump_t, t_after, t->dump_g, m.loss, tau, m.lr);
        free(t_after);
    }
    /* collapse guard (docs/algorithm.md §1.5): targets or predictions lost their variance */
    if (n >= c->collapse_after && c->collapse_after > 0 &&
        (m.target_var < c->min_target_var || m.pred_var < c->min_pred_var))
        die("representation collapse at update %lld: target_var %.4g (min %g), pred_var "
            "%.4g (min %g). Usual remedies: lower optim.lr, longer optim.warmup, higher "
            "ema.tau0/ema.tau_end",
            (long long)n, m.target_var, c->min_target_var, m.pred_var, c->min_pred_var);
    m.seconds = now_seconds() - t_begin;
    t->times.total += m.seconds;
    /* a slow update is not a hang: the limit follows the slowest one seen */
    dist_watchdog_raise(5 * m.seconds);
    dist_watchdog_phase("logging and checkpoint checks", n + 1);
    if (c->max_time > 0 && t->plans < 3) { /* time this process's updates from its first */
        if (t->probe_from == 0 && !t->st.planned)
            t->probe_from = n + 1, t->t_probe = now_seconds();
        else if (t->probe_from > 0 &&
                 ((t->plans == 0 && n + 1 >= t->probe_from + TRAINER_PROBE - 1) ||
                  (t->plans == 1 && n + 1 >= t->probe_from + TRAINER_PROBE - 1 +
                                                 (t->st.planned - t->probe_from) / 10) ||
                  (t->plans == 2 && n + 1 >= t->plan_at + (t->st.planned - t->plan_at) / 2)))
            plan_budget(t); /* after the probe, a tenth in (better measured), and halfway */
    }
    if (c->consistency_every > 0 && (n + 1) % c->consistency_every == 0 &&
        !(c->checkpoint_every > 0 && (n + 1) % c->checkpoint_every == 0))
        trainer_check_replicas(t); /* (a checkpoint checks them itself) */
    if (out) *out = m;
    return 0;
}

void trainer_log(Trainer *t, const TrainMetrics *m) {
    const TrainConfig *c = &t->cfg;
    double now = now_seconds(), rate = t->samples_since_log / (now - t->t_log);
    double eta = (now - t->t_start) / m->update * (trainer_total_updates(t) - m->update);
    (void)c;
    double since = t->updates_since_log > 0 ? (double)t->updates_since_log : 1;
    double skew = (t->times.skew - t->log_skew) / since;
    double comm = (t->times.allreduce - t->log_allreduce) / since;
    log0("update %7lld  loss %.4f  target_var %.4f  pred_var %.4f  tau %.5f  lr %.3e  "
         "gnorm %.3f  %.1f samples/s  eta %.0f s\n",
         (long long)m->update, m->loss, m->target_var, m->pred_var, m->tau, m->lr, m->grad_norm,
         rate, eta);
    char v2[160] = "";
    if (t->mc.v2) { /* fairseq v2 logs these: collapse shows in them before target_var */
        double sn = 0, tn = 0;
        for (int i = 0; i < t->n_ema; i++)
            for (size_t j = 0; j < t->ema[i].count; j++) {
                double s = t->params[t->ema[i].offset + j], e = t->teacher[t->ema[i].offset + j];
                sn += s * s, tn += e * e;
            }
        snprintf(v2, sizeof v2, ", \"model_norm\": %.6g, \"ema_norm\": %.6g, \"masked_pct\": %.4g",
                 sqrt(sn), sqrt(tn), model_masked_pct(t->model));
        log0("        model_norm %.4f  ema_norm %.4f  masked_pct %.3f\n", sqrt(sn), sqrt(tn),
             model_masked_pct(t->model));
    }
    if (t->metrics) {
        int w = fprintf(
            t->metrics,
            "{\"update\": %lld, \"loss\": %.6g, \"target_var\": %.6g, \"pred_var\": %.6g, "
            "\"tau\": %.8g, \"lr\": %.6g, \"grad_norm\": %.6g, \"samples_per_s\": %.4g, "
            "\"eta_s\": %.1f, \"masked\": %.0f, \"skipped\": %lld, \"wait_s\": %.4g, "
            "\"allreduce_s\": %.4g%s}\n",
            (long long)m->update, m->loss, m->target_var, m->pred_var, m->tau, m->lr, m->grad_norm,
            rate, eta, m->masked, (long long)m->skipped_total, skew, comm, v2);
        if ((w < 0 || fflush(t->metrics) != 0) && !t->metrics_failed) {
            /* keep training: the checkpoint, which must succeed, reports a full disk itself */
            fprintf(stderr, "d2v: warning: %s/metrics.jsonl: cannot write (%s); training goes on\n",
                    t->run_dir, strerror(errno));
            t->metrics_failed = 1;
        }
    }
    t->t_log = now, t->samples_since_log = 0;
    t->log_skew = t->times.skew, t->log_allreduce = t->times.allreduce;
    t->updates_since_log = 0;
}

int trainer_stop_requested(Trainer *t, int local) {
    double stop = local != 0;
    if (g_dist.rank == 0 && t->run_dir[0]) {
        char path[PATH_MAX + 8];
        snprintf(path, sizeof path, "%s/stop", t->run_dir);
        stop += access(path, F_OK) == 0;
    }
    /* run.max_time is a wall-time limit too: past it, stop (checkpointed; --resume finishes) */
    if (g_dist.rank == 0 && t->cfg.max_time > 0 && now_seconds() - t->t_start >= t->cfg.max_time &&
        t->st.update < trainer_total_updates(t)) {
        log0("run.max_time %.0f s reached at update %lld of %lld\n", t->cfg.max_time,
             (long long)t->st.update, (long long)trainer_total_updates(t));
        stop += 1;
    }
    dist_allreduce_sum_f64(&stop, 1);
    return stop > 0;
}

void trainer_checkpoint(Trainer *t) {
    if (!t->run_dir[0]) die("trainer: checkpoints need a run directory");
    trainer_check_replicas(t); /* never write a checkpoint of diverged replicas */
    dist_watchdog_phase("writing a checkpoint", t->st.update);
    TrainState now = t->st;
    now.cursor = t->loader ? loader_cursor(t->loader) : (LoaderCursor){0, 0};
    if (g_dist.rank == 0)
        ckpt_write(t->run_dir, &t->mc, t->config_text, t->params, t->teacher, t->adam_m, t->adam_v,
                   t->np, &now, t->cfg.keep_last, t->cfg.keep_every);
    t->last_ckpt = t->st.update;
    dist_barrier();
}

void trainer_finish(Trainer *t) {
    if (t->run_dir[0] && t->last_ckpt != t->st.update && t->st.update > 0)
        trainer_checkpoint(t); /* the final state, unless just written */
    log0("done: update %lld of %lld, %.1f s\n", (long long)t->st.update,
         (long long)trainer_total_updates(t), now_seconds() - t->t_start);
}

void trainer_reset_times(Trainer *t) {
    memset(&t->times, 0, sizeof t->times);
    t->log_skew = t->log_allreduce = 0;
    model_phase_reset(t->model);
}

void trainer_free(Trainer *t) {
    dist_watchdog_stop();
    if (t->metrics) fclose(t->metrics);
    if (t->loader) loader_destroy(t->loader);
    model_destroy(t->model);
    if (t->own_ds) dataset_close(&t->ds);
    ptab_free(&t->table);
    free(t->params), free(t->grads), free(t->adam_m), free(t->adam_v), free(t->teacher);
    free(t->decay), free(t->sums), free(t->dump_p), free(t->dump_t), free(t->dump_g);
    free(t->config_text), free(t->slices), free(t->part_first), free(t->pending);
    dist_reqs_free(&t->reqs);
    memset(t, 0, sizeof *t);
}
