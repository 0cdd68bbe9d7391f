/* d2v_train.c: the d2v-train job: data2vec pretraining of one modality under MPI. The work is the
 * trainer library's (src/train/); this is its table of contents. */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/trainer.h"
#include "d2v/util.h"

static void usage(void) {
    printf(
        "usage: d2v-train CONFIG [--set key=value ...] [--run-dir DIR] [--resume] "
        "[--init-from CKPT] [--dump-step FILE [--dump-updates N]]\n"
        "                 [--check-config [--ranks N]]\n"
        "  CONFIG          libconfig file (see configs/); every key is validated\n"
        "  --set k=v       override one key, e.g. --set optim.lr=1e-4 (repeatable)\n"
        "  --run-dir DIR   where config.resolved.cfg, metrics.jsonl and ckpt/ go (default "
        "runs/NAME)\n"
        "  --resume        continue from the newest complete checkpoint in the run directory\n"
        "                  (a fresh start when there is none: safe for requeued jobs)\n"
        "  --init-from CKPT  start from the student weights of a checkpoint or run directory\n"
        "                  (e.g. d2v-import's; teacher = student, fresh AdamW and counters; the\n"
        "                  architecture must match). With --resume, a checkpoint found wins.\n"
        "  --dump-step F   after the first update, write everything needed to check it to F\n"
        "  --dump-updates N  dump the first N updates: F with _0000, _0001, ... before .h5\n"
        "  --check-config  only read and validate the configuration (for --ranks N ranks, default\n"
        "                  the launch's) and open data.train, print one line and exit: 0 when\n"
        "                  it would start, 1 with the error (sweep submission uses it)\n"
        "Launch with mpirun -n N; data.batch_size is the global batch (samples per update\n"
        "over all ranks); threads per rank from OMP_NUM_THREADS / BLIS_NUM_THREADS.\n"
        "SIGUSR1 or SIGTERM, or a file RUN_DIR/stop, ends the run after a checkpoint.\n");
}

typedef struct {
    const char *config, *run_dir, *dump, *init_from;
    const char *sets[64];
    int n_sets, dump_updates, resume, check, ranks;
    char default_run_dir[PATH_MAX];
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
        } else if (!strcmp(argv[i], "--init-from") && i + 1 < argc) {
            a->init_from = argv[++i];
        } else if (!strcmp(argv[i], "--check-config")) {
            a->check = 1;
        } else if (!strcmp(argv[i], "--ranks") && i + 1 < argc) {
            a->ranks = atoi(argv[++i]);
            if (a->ranks < 1) die("--ranks needs a positive count");
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
    if (!a->run_dir) { /* runs/NAME for configs/NAME.cfg */
        const char *base = strrchr(a->config, '/');
        base = base ? base + 1 : a->config;
        snprintf(a->default_run_dir, sizeof a->default_run_dir, "runs/%.*s",
                 (int)strcspn(base, "."), base);
        a->run_dir = a->default_run_dir;
    }
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
        int ranks = a->ranks > 0 ? a->ranks : g_dist.world;
        if (ok) ok = train_config_validate(c, ranks, err, sizeof err) == 0;
        if (!ok) die("%s", err);
        if (a->check) { /* a dry run: the dataset must open too, as trainer_init will open it */
            Dataset d;
            if (dataset_open(&d, c->train_path, c->modality, err, sizeof err) < 0) die("%s", err);
            printf("config ok: %s with %d --set, %d rank(s), data.train %s (%lld samples)\n",
                   a->config, a->n_sets, ranks, c->train_path, (long long)d.num_samples);
            dataset_close(&d);
        }
    }
    if (a->check) {
        dist_finalize();
        exit(0);
    }
    dist_bcast_bytes(c, sizeof *c);
}

/* Slurm's --signal=USR1@N (forwarded by the batch shell) or a TERM: checkpoint and stop. */
static volatile sig_atomic_t g_stop_signal;
static void on_stop_signal(int sig) { g_stop_signal = sig; }

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    h5io_init();
    Args a;
    parse_args(&a, argc, argv);
    TrainConfig cfg;
    configure(&cfg, &a);
    Trainer t;
    trainer_init(
        &t, &cfg,
        &(TrainerOptions){.run_dir = a.run_dir, .dump = a.dump, .dump_updates = a.dump_updates});
    int resumed = a.resume ? trainer_resume(&t) : 0;
    if (a.init_from && !resumed) trainer_init_from(&t, a.init_from);
    trainer_banner(&t);
    signal(SIGUSR1, on_stop_signal), signal(SIGTERM, on_stop_signal);
    TrainMetrics m;
    while (t.st.update < trainer_total_updates(&t)) {
        int skipped = trainer_update(&t, &m); /* a non-finite update is counted, not applied */
        if (!skipped && (m.update % cfg.log_every == 0 || m.update == 1 ||
                         m.update == trainer_total_updates(&t)))
            trainer_log(&t, &m);
        /* a signal on any rank, or RUN_DIR/stop, stops every rank after this update */
        int stop = trainer_stop_requested(&t, g_stop_signal != 0);
        if (stop || (cfg.checkpoint_every > 0 && m.update % cfg.checkpoint_every == 0))
            trainer_checkpoint(&t);
        if (stop) {
            log0("stopping after update %lld on request (signal or %s/stop); resume with "
                 "--resume\n",
                 (long long)m.update, a.run_dir);
            break;
        }
    }
    trainer_finish(&t);
    trainer_free(&t);
    dist_finalize();
    return 0;
}
