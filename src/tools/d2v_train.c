/* d2v_train.c: the d2v-train job: data2vec pretraining of one modality under MPI. Reads like a
 * table of contents: configure, set up (data, model, teacher, optimiser), train (EMA, micro-
 * batches, allreduce, clip, AdamW), report. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "d2v/ckpt.h"
#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/objective.h"
#include "d2v/optim.h"
#include "d2v/util.h"

/* LoaderConfig's trailing fields (colour jitter, interpolation) are set by plain assignments right
 * after its positional initializer below; drop this once that initializer is designated. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

static void usage(void) {
    printf("usage: d2v-train CONFIG [--set key=value ...] [--run-dir DIR] [--dump-step FILE "
           "[--dump-updates N]]\n"
           "  CONFIG          libconfig file (see configs/); every key is validated\n"
           "  --set k=v       override one key, e.g. --set optim.lr=1e-4 (repeatable)\n"
           "  --run-dir DIR   where config.resolved.cfg, metrics.jsonl and ckpt/ go (default "
           "runs/NAME)\n"
           "  --resume        continue from the newest complete checkpoint in the run directory\n"
           "                  (a fresh start when there is none: safe for requeued jobs)\n"
           "  --dump-step F   after the first update, write everything needed to check it to F\n"
           "  --dump-updates N  dump the first N updates: F with _0000, _0001, ... before .h5\n"
           "Launch with mpirun -n N; threads per rank from OMP_NUM_THREADS / BLIS_NUM_THREADS.\n"
           "SIGUSR1 or SIGTERM, or a file RUN_DIR/stop, ends the run after a checkpoint.\n");
}

typedef struct {
    const char *config, *run_dir, *dump;
    const char *sets[64];
    int n_sets, dump_updates, resume;
} Args;

static void parse_args(Args *a, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (g_dist.rank == 0) usage();
            dist_finalize();
            exit(0);
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            if (a->n_sets == 64) die("too many --set options (64 at most)");
            a->sets[a->n_sets++] = argv[++i];
        } else if (!strcmp(argv[i], "--resume")) {
            a->resume = 1;
        } else if (!strcmp(argv[i], "--run-dir") && i + 1 < argc) {
            a->run_dir = argv[++i];
        } else if (!strcmp(argv[i], "--dump-step") && i + 1 < argc) {
            a->dump = argv[++i];
        } else if (!strcmp(argv[i], "--dump-updates") && i + 1 < argc) {
            a->dump_updates = atoi(argv[++i]);
            if (a->dump_updates < 1) die("--dump-updates needs a positive count");
        } else if (argv[i][0] == '-' || a->config) {
            die("unexpected argument '%s' (see d2v-train --help)", argv[i]);
        } else {
            a->config = argv[i];
        }
    }
    if (!a->config) die("no config file given (see d2v-train --help)");
    if (!a->dump_updates) a->dump_updates = 1;
}

/* Rank 0 reads and checks the configuration; every rank gets the same bytes. */
static void configure(TrainConfig *c, const Args *a) {
    char err[1024];
    int ok = 1;
    if (g_dist.rank == 0) {
        train_config_defaults(c);
        ok = train_config_load(c, a->config, err, sizeof err) == 0;
        for (int i = 0; ok && i < a->n_sets; i++)
            ok = train_config_set(c, a->sets[i], err, sizeof err) == 0;
        if (ok) ok = train_config_validate(c, err, sizeof err) == 0;
        if (!ok) die("%s", err);
    }
    dist_bcast_bytes(c, sizeof *c);
}

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

/* Slurm's --signal=USR1@N (forwarded by the batch shell) or a TERM: checkpoint and stop. */
static volatile sig_atomic_t g_stop_signal;
static void on_stop_signal(int sig) { g_stop_signal = sig; }

/* --dump-step: one HDF5 file with the batch, masks, targets, predictions, and the parameters,
 * gradients and teacher before and after the update (dataset names in docs/dump-step.md). */
static void dump_step(const char *path, const char *config_text, const Model *m, const Batch *b,
                      const ModelConfig *mc, const float *params_before,
                      const float *teacher_before, const float *params_after,
                      const float *teacher_after, const float *grads, size_t np, double loss,
                      double tau, double lr) {
    ModelTrace t = model_trace(m);
    H5Out o;
    h5_lock();
    h5out_create(&o, path);
    h5_attr_str(o.file, "modality", d2v_modality_names[mc->modality]);
    h5_attr_i32(o.file, "format_version", D2V_FORMAT_VERSION);
    h5_attr_str(o.file, "config", config_text); /* the resolved configuration */
    if (mc->modality == D2V_TEXT) h5_attr_i32(o.file, "pad_id", mc->text.pad_id); /* dataset's */
    hsize_t one[1] = {1};
    h5_write(o.file, "loss", H5T_NATIVE_DOUBLE, 1, one, NULL, &loss);
    h5_write(o.file, "tau", H5T_NATIVE_DOUBLE, 1, one, NULL, &tau);
    h5_write(o.file, "lr", H5T_NATIVE_DOUBLE, 1, one, NULL, &lr);
    hsize_t ids[1] = {(hsize_t)t.B}, sel[2] = {(hsize_t)t.B, (hsize_t)t.T};
    h5_write(o.file, "sample_ids", H5T_NATIVE_INT64, 1, ids, NULL, b->ids);
    h5_write(o.file, "loss_positions", H5T_NATIVE_UINT8, 2, sel, NULL, t.sel);
    if (mc->modality == D2V_TEXT) {
        h5_write(o.file, "batch_tokens", H5T_NATIVE_INT32, 2, sel, NULL, b->tokens);
        h5_write(o.file, "student_tokens", H5T_NATIVE_INT32, 2, sel, NULL, t.student_tokens);
    } else if (mc->modality == D2V_IMAGE) {
        hsize_t im[4] = {(hsize_t)t.B, (hsize_t)b->H, (hsize_t)b->W, (hsize_t)b->C};
        h5_write(o.file, "batch_images", H5T_NATIVE_FLOAT, 4, im, NULL, b->images);
        hsize_t mk[2] = {(hsize_t)t.B, (hsize_t)image_embed_num_patches(&mc->image)};
        h5_write(o.file, "patch_mask", H5T_NATIVE_UINT8, 2, mk, NULL, t.mask);
    } else {
        hsize_t au[2] = {(hsize_t)t.B, (hsize_t)b->S};
        h5_write(o.file, "batch_audio", H5T_NATIVE_FLOAT, 2, au, NULL, b->audio);
        h5_write(o.file, "frame_mask", H5T_NATIVE_UINT8, 2, sel, NULL, t.mask);
    }
    hsize_t mc2[2] = {(hsize_t)t.M, (hsize_t)t.C};
    h5_write(o.file, "targets", H5T_NATIVE_FLOAT, 2, mc2, NULL, t.targets);
    h5_write(o.file, "predictions", H5T_NATIVE_FLOAT, 2, mc2, NULL, t.preds);
    hsize_t tl[3] = {(hsize_t)t.B, (hsize_t)t.T, (hsize_t)t.C};
    for (int k = 0; k < mc->top_k; k++) {
        char name[64];
        snprintf(name, sizeof name, "teacher_layer_%d", mc->enc.L - mc->top_k + k);
        h5_write(o.file, name, H5T_NATIVE_FLOAT, 3, tl, NULL, t.teacher_layers[k]);
    }
    ParamInfo table[512];
    int nt = model_param_table(table, 512, mc);
    const char *names[512];
    int64_t offsets[512], shapes[512][4];
    for (int i = 0; i < nt; i++) {
        names[i] = table[i].name, offsets[i] = (int64_t)table[i].offset;
        for (int j = 0; j < 4; j++)
            shapes[i][j] = j < table[i].rank ? table[i].shape[j] : -1;
    }
    h5_write_strings(o.file, "param_names", names, (size_t)nt);
    hsize_t ntd[1] = {(hsize_t)nt}, nsd[2] = {(hsize_t)nt, 4};
    h5_write(o.file, "param_offsets", H5T_NATIVE_INT64, 1, ntd, NULL, offsets);
    h5_write(o.file, "param_shapes", H5T_NATIVE_INT64, 2, nsd, NULL, shapes);
    hsize_t p[1] = {np};
    h5_write(o.file, "params_before", H5T_NATIVE_FLOAT, 1, p, NULL, params_before);
    h5_write(o.file, "teacher_before", H5T_NATIVE_FLOAT, 1, p, NULL, teacher_before);
    h5_write(o.file, "grads", H5T_NATIVE_FLOAT, 1, p, NULL, grads);
    h5_write(o.file, "params_after", H5T_NATIVE_FLOAT, 1, p, NULL, params_after);
    h5_write(o.file, "teacher_after", H5T_NATIVE_FLOAT, 1, p, NULL, teacher_after);
    h5out_commit(&o);
    h5_unlock();
    log0("wrote %s\n", path);
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    h5io_init();
    Args a;
    parse_args(&a, argc, argv);
    TrainConfig cfg;
    configure(&cfg, &a);
    if (a.dump && cfg.update_freq != 1)
        die("--dump-step records one micro-batch per update: set optim.update_freq = 1");
    const char *arch = gemm_init(cfg.threads);
    if (cfg.threads > 0) omp_set_num_threads(cfg.threads);

    /* data: every rank opens the dataset read-only and validates it now, not at step time */
    Dataset ds;
    char err[1024];
    if (dataset_open(&ds, cfg.train_path, cfg.modality, err, sizeof err) < 0) die("%s", err);
    LoaderConfig lc = {cfg.modality,
                       cfg.batch_size,
                       (uint64_t)cfg.seed,
                       1,
                       cfg.text_block,
                       cfg.text_stream,
                       cfg.augment,
                       (float)cfg.crop_scale_min,
                       (float)cfg.crop_scale_max,
                       0.75f,
                       4.0f / 3.0f,
                       (float)cfg.flip_prob,
                       cfg.image_height,
                       cfg.image_width,
                       {(float)cfg.mean[0], (float)cfg.mean[1], (float)cfg.mean[2]},
                       {(float)cfg.std[0], (float)cfg.std[1], (float)cfg.std[2]},
                       cfg.speech_max_samples,
                       cfg.speech_min_samples,
                       cfg.speech_normalize,
                       cfg.prefetch};
    lc.color_jitter = (float)cfg.color_jitter;
    lc.interpolation = cfg.interpolation;
    if (cfg.modality == D2V_IMAGE && ds.C != cfg.image_channels)
        die("%s: images have %d channels, image.channels is %d", cfg.train_path, ds.C,
            cfg.image_channels);
    /* model: student, gradients, AdamW moments and teacher share one layout */
    ModelConfig mc;
    train_config_to_model(&mc, &cfg, &ds);
    if (cfg.modality == D2V_SPEECH) { /* clips must give the extractor more frames than a span */
        int need = 1;
        while (need < cfg.speech_max_samples &&
               speech_num_frames(&mc.speech, need) < cfg.mask_speech_length + 1)
            need++;
        if (speech_num_frames(&mc.speech, cfg.speech_max_samples) < cfg.mask_speech_length + 1)
            die("config: data.speech_max_samples %d gives the conv extractor fewer than "
                "mask.speech_length + 1 = %d frames",
                cfg.speech_max_samples, cfg.mask_speech_length + 1);
        if (lc.speech_min_samples < need) {
            log0("data.speech_min_samples raised from %d to %d (shorter clips give fewer than %d "
                 "frames)\n",
                 lc.speech_min_samples, need, cfg.mask_speech_length + 1);
            lc.speech_min_samples = need;
        }
    }
    ModelParams ps, pg, pt;
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *params = xalloc(np * 4, "parameters"), *grads = xalloc(np * 4, "gradients");
    float *adam_m = xalloc(np * 4, "AdamW m"), *adam_v = xalloc(np * 4, "AdamW v");
    float *teacher = xalloc(np * 4, "teacher");
    uint8_t *decay = xalloc(np, "weight-decay mask");
    model_params_layout(&ps, params, &mc), model_params_layout(&pg, grads, &mc);
    if (g_dist.rank == 0) model_params_init(&ps, &mc, (uint64_t)cfg.seed);
    memcpy(teacher, params, np * 4);
    /* run directory and banner */
    char run_dir[PATH_MAX], path[PATH_MAX + 64];
    if (a.run_dir)
        snprintf(run_dir, sizeof run_dir, "%s", a.run_dir);
    else {
        const char *base = strrchr(a.config, '/');
        snprintf(run_dir, sizeof run_dir, "runs/%.*s",
                 (int)strcspn(base ? base + 1 : a.config, "."), base ? base + 1 : a.config);
    }
    /* --resume: rank 0 reads the newest complete checkpoint; every replica gets its bytes */
    TrainState st = {0, 0, {0, 0}};
    double resumed = 0;
    if (a.resume && g_dist.rank == 0) {
        char ck[PATH_MAX + 32], err2[1024];
        if (ckpt_find_latest(run_dir, ck, sizeof ck) == 0) {
            if (ckpt_read(ck, &mc, params, teacher, adam_m, adam_v, np, &st, err2, sizeof err2))
                die("%s", err2);
            resumed = 1;
            log0("resuming from %s: update %lld, epoch %lld, position %lld\n", ck,
                 (long long)st.update, (long long)st.cursor.epoch, (long long)st.cursor.position);
        } else {
            log0("--resume: no complete checkpoint under %s/ckpt, starting fresh\n", run_dir);
        }
    }
    dist_bcast_bytes(&resumed, sizeof resumed);
    dist_bcast_bytes(&st, sizeof st);
    dist_bcast_bytes(params, np * 4); /* one initialisation for all replicas */
    dist_bcast_bytes(teacher, np * 4);
    if (resumed) dist_bcast_bytes(adam_m, np * 4), dist_bcast_bytes(adam_v, np * 4);
    model_teacher_view(&pt, &ps, teacher, &mc);
    model_decay_mask(decay, &mc, cfg.exempt_1d);
    ParamRange ema[4];
    int n_ema = model_ema_ranges(ema, &mc);
    int C = mc.enc.C;
    Model *model = model_create(&mc, cfg.batch_size,
                                cfg.modality == D2V_TEXT     ? cfg.text_block
                                : cfg.modality == D2V_SPEECH ? cfg.speech_max_samples
                                                             : 0);
    AdamW opt = {cfg.beta1, cfg.beta2, cfg.adam_eps, cfg.weight_decay, cfg.adam_eps_mode};
    LrSchedule sched = {cfg.schedule,    cfg.lr,          cfg.lr_min,   cfg.warmup,
                        cfg.max_updates, cfg.warmup_init, cfg.tri_hold, cfg.tri_decay};
    if (cfg.schedule == LR_TRI_STAGE && cfg.warmup_init == 0) sched.warmup_init = 0.01 * cfg.lr;

    /* the loader starts where the checkpoint left off (a global cursor: any rank count) */
    Loader *loader = loader_create(&ds, &lc, g_dist.rank, g_dist.world, st.cursor);

    /* banner */
    FILE *metrics = NULL;
    if (g_dist.rank == 0) {
        make_dir(run_dir);
        snprintf(path, sizeof path, "%s/config.resolved.cfg", run_dir);
        if (train_config_write(&cfg, path) != 0) die("%s: cannot write", path);
        snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
        metrics = fopen(path, "a");
        if (!metrics) die("%s: cannot open for appending", path);
        log0("d2v-train: %s pretraining on %s (%lld samples, %lld per epoch for the loader)\n",
             d2v_modality_names[cfg.modality], cfg.train_path, (long long)ds.num_samples,
             (long long)loader_epoch_samples(loader));
        log0("ranks=%d threads/rank: omp=%d blis=%d (%s kernels)  run dir %s\n", g_dist.world,
             omp_get_max_threads(), gemm_threads(), arch, run_dir);
        log0("model L=%d C=%d heads=%d ffn=%d: %.2fM parameters; arenas: params+grads+adam+teacher "
             "%.1f MiB, activations %.1f MiB\n",
             mc.enc.L, C, mc.enc.NH, mc.enc.F, np / 1e6, 5.0 * np * 4 / 1048576.0,
             model_act_mib(model));
    }

    /* the resolved configuration, as written: printed once, and carried by every dump and
     * checkpoint */
    char *config_text = NULL;
    if (g_dist.rank == 0) {
        snprintf(path, sizeof path, "%s/config.resolved.cfg", run_dir);
        FILE *cf = fopen(path, "r");
        if (!cf) die("%s: cannot read back", path);
        config_text = xalloc(1 << 16, "config text");
        size_t got = fread(config_text, 1, (1 << 16) - 1, cf);
        config_text[got] = 0;
        fclose(cf);
        for (const char *l = config_text; *l;) {
            size_t len = strcspn(l, "\n");
            log0("  %.*s\n", (int)len, l);
            l += len + (l[len] == '\n');
        }
    }

    /* the training loop */
    double *stats = xalloc(sizeof(double) * (2 + 2 * (1 + 2 * (size_t)C)), "metric sums");
    float *dump_p = NULL, *dump_t = NULL, *dump_g = NULL;
    if (a.dump) {
        dump_p = xalloc(np * 4, "dump copy"), dump_t = xalloc(np * 4, "dump copy");
        dump_g = xalloc(np * 4, "dump copy");
    }
    double t_start = now_seconds(), t_log = t_start;
    int64_t skipped = st.skipped, skipped_in_a_row = 0, samples_since_log = 0;
    int64_t n = st.update, last_ckpt = resumed ? st.update : -1;
    signal(SIGUSR1, on_stop_signal), signal(SIGTERM, on_stop_signal);
    for (; n < cfg.max_updates; n++) {
        /* the teacher absorbs theta after update n-1, before the forward of update n (once per
         * update, also under gradient accumulation: fairseq v1 steps it per micro-batch) */
        double tau = ema_tau(cfg.ema_tau0, cfg.ema_tau_end, cfg.ema_tau_steps, n);
        if (n > 0)
            for (int r = 0; r < n_ema; r++)
                ema_update(teacher + ema[r].offset, params + ema[r].offset, ema[r].count, tau);
        int dumping = a.dump && n < a.dump_updates;
        if (dumping) memcpy(dump_p, params, np * 4), memcpy(dump_t, teacher, np * 4);
        memset(grads, 0, np * 4);
        memset(stats, 0, sizeof(double) * (2 + 2 * (1 + 2 * (size_t)C)));
        const Batch *b = NULL;
        for (int k = 0; k < cfg.update_freq; k++) {
            b = loader_next(loader);
            MicroResult r = {0, 0, stats + 2, stats + 2 + 1 + 2 * C};
            model_micro_step(model, &ps, &pt, &pg, b, (uint64_t)cfg.seed,
                             (uint64_t)(n * cfg.update_freq + k), &r);
            stats[0] += r.loss_sum, stats[1] += (double)r.masked;
            samples_since_log += b->B;
        }
        /* one allreduce of the flat gradients and one of the metric sums */
        dist_allreduce_sum_f32(grads, np);
        dist_allreduce_sum_f64(stats, 2 + 2 * (1 + 2 * (size_t)C));
        double masked = stats[0 + 1], loss = masked > 0 ? stats[0] / masked : 0;
        if (masked > 0) { /* the gradient of the per-masked-token mean over all ranks */
            float inv = (float)(1.0 / masked);
#pragma omp parallel for
            for (size_t i = 0; i < np; i++)
                grads[i] *= inv;
        }
        double gnorm = grad_norm(grads, np);
        if (!isfinite(loss) || !isfinite(gnorm)) {
            if (!cfg.skip_nonfinite)
                die("non-finite %s at update %lld: loss %g, gradient norm %g (lr %g). Lower "
                    "optim.lr, raise optim.warmup or set run.skip_nonfinite = true",
                    isfinite(loss) ? "gradient" : "loss", (long long)n, loss, gnorm,
                    lr_at(&sched, n));
            skipped++, skipped_in_a_row++;
            log0("update %lld skipped: non-finite loss or gradient (%lld so far)\n", (long long)n,
                 (long long)skipped);
            if (skipped_in_a_row >= 20) /* nothing recovers by itself after this */
                die("20 updates in a row had a non-finite loss or gradient (update %lld); lower "
                    "optim.lr or raise optim.warmup and restart",
                    (long long)n);
            continue;
        }
        skipped_in_a_row = 0;
        if (dumping) memcpy(dump_g, grads, np * 4); /* the dump holds them before clipping */
        clip_grad_norm(grads, np, gnorm, cfg.clip);
        double lr = lr_at(&sched, n);
        if (!isfinite(lr) || lr < 0) die("learning rate %g at update %lld", lr, (long long)n);
        adamw_step(params, adam_m, adam_v, grads, decay, np, &opt, lr, n + 1 - skipped);
        double tvar = var_from_stats(stats + 2 + 1 + 2 * C, C);
        double pvar = var_from_stats(stats + 2, C);
        if (dumping) {
            /* the teacher after the EMA that follows this update: the one update n+1 uses */
            float *t_after = xalloc(np * 4, "dump teacher");
            memcpy(t_after, teacher, np * 4);
            double tau1 = ema_tau(cfg.ema_tau0, cfg.ema_tau_end, cfg.ema_tau_steps, n + 1);
            for (int r = 0; r < n_ema; r++)
                ema_update(t_after + ema[r].offset, params + ema[r].offset, ema[r].count, tau1);
            char dpath[PATH_MAX + 16];
            if (a.dump_updates == 1)
                snprintf(dpath, sizeof dpath, "%s", a.dump);
            else {
                size_t len = strlen(a.dump);
                int h5 = len > 3 && !strcmp(a.dump + len - 3, ".h5");
                snprintf(dpath, sizeof dpath, "%.*s_%04lld.h5", (int)(h5 ? len - 3 : len), a.dump,
                         (long long)n);
            }
            if (g_dist.rank == 0)
                dump_step(dpath, config_text, model, b, &mc, dump_p, dump_t, params, t_after,
                          dump_g, np, loss, tau, lr);
            free(t_after);
        }
        /* collapse guard (spec §8): the targets or predictions have lost their variance */
        if (n >= cfg.collapse_after && cfg.collapse_after > 0 &&
            (tvar < cfg.min_target_var || pvar < cfg.min_pred_var))
            die("representation collapse at update %lld: target_var %.4g (min %g), pred_var "
                "%.4g (min %g). Usual remedies: lower optim.lr, longer optim.warmup, higher "
                "ema.tau0/ema.tau_end",
                (long long)n, tvar, cfg.min_target_var, pvar, cfg.min_pred_var);
        if ((n + 1) % cfg.log_every == 0 || n == 0 || n + 1 == cfg.max_updates) {
            double now = now_seconds(), rate = samples_since_log * g_dist.world / (now - t_log);
            double eta = (now - t_start) / (n + 1) * (cfg.max_updates - n - 1);
            log0("update %7lld  loss %.4f  target_var %.4f  pred_var %.4f  tau %.5f  lr %.3e  "
                 "gnorm %.3f  %.1f samples/s  eta %.0f s\n",
                 (long long)n + 1, loss, tvar, pvar, tau, lr, gnorm, rate, eta);
            if (metrics) {
                fprintf(
                    metrics,
                    "{\"update\": %lld, \"loss\": %.6g, \"target_var\": %.6g, \"pred_var\": "
                    "%.6g, \"tau\": %.8g, \"lr\": %.6g, \"grad_norm\": %.6g, \"samples_per_s\": "
                    "%.4g, \"eta_s\": %.1f, \"masked\": %.0f, \"skipped\": %lld}\n",
                    (long long)n + 1, loss, tvar, pvar, tau, lr, gnorm, rate, eta, masked,
                    (long long)skipped);
                fflush(metrics);
            }
            t_log = now, samples_since_log = 0;
        }
        /* a signal on any rank, or RUN_DIR/stop, stops every rank after this update */
        double stop = g_stop_signal != 0;
        if (g_dist.rank == 0) {
            snprintf(path, sizeof path, "%s/stop", run_dir);
            stop += access(path, F_OK) == 0;
        }
        dist_allreduce_sum_f64(&stop, 1);
        int periodic = cfg.checkpoint_every > 0 && (n + 1) % cfg.checkpoint_every == 0;
        if (periodic || stop > 0) {
            TrainState now_st = {n + 1, skipped, loader_cursor(loader)};
            if (g_dist.rank == 0)
                ckpt_write(run_dir, &mc, config_text, params, teacher, adam_m, adam_v, np, &now_st,
                           cfg.keep_last);
            last_ckpt = n + 1;
            dist_barrier();
        }
        if (stop > 0) {
            log0("stopping after update %lld on request (signal or %s/stop); resume with "
                 "--resume\n",
                 (long long)n + 1, run_dir);
            n++;
            break;
        }
    }
    if (last_ckpt != n && n > 0) { /* the final state, unless just written */
        TrainState now_st = {n, skipped, loader_cursor(loader)};
        if (g_dist.rank == 0)
            ckpt_write(run_dir, &mc, config_text, params, teacher, adam_m, adam_v, np, &now_st,
                       cfg.keep_last);
        dist_barrier();
    }
    log0("done: update %lld of %lld, %.1f s\n", (long long)n, (long long)cfg.max_updates,
         now_seconds() - t_start);
    if (metrics) fclose(metrics);
    loader_destroy(loader);
    model_destroy(model);
    dataset_close(&ds);
    free(params), free(grads), free(adam_m), free(adam_v), free(teacher), free(decay), free(stats);
    free(dump_p), free(dump_t), free(dump_g), free(config_text);
    dist_finalize();
    return 0;
}
