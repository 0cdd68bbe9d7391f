/* trainer.h: the data2vec training loop as a library: set-up from a validated config, one update
 * (EMA, micro-batches, allreduce, normalisation by the global masked count, guards, clip, AdamW,
 * metrics), checkpoints and resume. d2v-train, the benchmark and the tests all call it. */
#ifndef D2V_TRAINER_H
#define D2V_TRAINER_H

#include <limits.h>
#include <stdio.h>

#include "d2v/ckpt.h"
#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/dist.h"
#include "d2v/model.h"
#include "d2v/optim.h"
#include "d2v/params.h"

/// Where micro-batches come from: the dataset's loader unless a caller supplies its own.
typedef struct {
    const Batch *(*next)(void *ctx);
    void *ctx;
} BatchSource;

typedef struct {
    const char *run_dir;    // config.resolved.cfg, metrics.jsonl, ckpt/, stop; NULL: none
    const char *dump;       // --dump-step file, or NULL
    int dump_updates;       // dump the first N updates (F_0000.h5, ...) when > 1
    BatchSource source;     // .next NULL: a loader over data.train
    const Dataset *dataset; // with a source: what the model needs of the data (vocabulary, ids)
} TrainerOptions;

/// One update's figures, over all ranks.
typedef struct {
    int64_t update; // updates done, this one included
    int skipped;    // 1: non-finite loss or gradient, nothing applied
    int64_t skipped_total;
    double loss; // mean over masked positions
    double target_var, pred_var;
    double tau, lr, grad_norm; // grad_norm before clipping
    double masked;             // loss positions
    int64_t samples;           // samples in the update
    double seconds;            // wall time of the update
} TrainMetrics;

/// Seconds per part of trainer_update since trainer_reset_times (for make bench).
typedef struct {
    double model[PHASE_NUM]; // model_micro_step's phases
    double batches;          // waiting for micro-batches
    double skew;             // waiting for the slowest rank to finish its backward (stragglers)
    double allreduce;        // after that, the allreduce not hidden behind the backward
    double optimizer, ema;
    double total;
} TrainTimes;

typedef struct {
    TrainConfig cfg;
    TrainSplit split; // per-rank share, micro-batches per update
    ModelConfig mc;
    TrainerOptions opt;
    char run_dir[PATH_MAX];
    Dataset ds;
    int own_ds;
    Loader *loader;
    BatchSource source;
    ParamTable table;
    size_t np;
    float *params, *grads, *adam_m, *adam_v, *teacher; // one layout, np floats each
    uint8_t *decay;
    ModelParams ps, pg, pt;
    ParamRange ema[64];
    int n_ema;
    Model *model;
    AdamW adamw;
    LrSchedule sched;
    TrainState st;
    int64_t skipped_in_a_row, last_ckpt;
    double *sums; // reduction buffer: loss, masked, then the prediction and target statistics
    size_t n_sums;
    char *config_text; // the resolved configuration (in every checkpoint and dump)
    FILE *metrics;
    int metrics_failed; // a write to metrics.jsonl failed (reported once)
    double t_start, t_log;
    int64_t samples_since_log;
    float *dump_p, *dump_t, *dump_g;
    TrainTimes times;
    double t_probe;     // run.max_time: the end of this process's first update (probe start)
    int64_t probe_from; //   and that update's number
    int plans;     //   plans made by this process (a tenth in, then halfway: the third is final)
    double t_plan; //   the second plan's time and update: the third times the rate since
    int64_t plan_at;
    int64_t tau_steps; // the tau ramp's length (ema.tau_steps, scaled by a budget's plan)
    double log_skew, log_allreduce; // times.skew and times.allreduce at the last log
    int64_t updates_since_log;
    const char *arch; // BLIS kernel set in use
    size_t act_bytes; // the model's activation arenas
    /* bucketed allreduce: each part's gradient ranges (part 0 the head, 1 + l encoder block l,
     * L + 1 the front-end), started as the backward completes them */
    ParamRange *slices; // all parts' ranges, part p's at [part_first[p], part_first[p + 1])
    int *part_first;
    ParamRange *pending; // ranges waiting for their bucket to fill
    int n_pending;
    size_t pending_bytes, bucket_bytes;
    DistReqs reqs;
} Trainer;

/// Updates the run makes: run.max_updates, or under run.max_time the count planned after the
/// first TRAINER_PROBE updates of the process from their measured rate (kept across --resume;
/// the budget counts from the start of the process that plans).
#define TRAINER_PROBE 10
int64_t trainer_total_updates(const Trainer *t);
/// Every rank's student, teacher and AdamW moments against rank 0's (per-tensor CRC32s): a
/// difference stops the job naming the rank and the first differing tensor. trainer_update runs
/// it every run.consistency_every updates, trainer_checkpoint before every checkpoint.
void trainer_check_replicas(Trainer *t);
/// Set up data, model, teacher and optimiser from a validated config (every rank; dies with a
/// one-line message on any error, ending the job).
void trainer_init(Trainer *t, const TrainConfig *cfg, const TrainerOptions *o);
/// Continue from the newest complete checkpoint under the run directory: 1 if one was read,
/// 0 when there is none (a fresh start). Any rank count may resume any checkpoint.
int trainer_resume(Trainer *t);
/// --init-from: the student weights of another run's checkpoint (a model.h5 or a run directory's
/// newest; d2v-import writes one), the teacher a copy of them, AdamW, the update count and the
/// loader fresh. The checkpoint's architecture keys must equal this config's: a differing one is
/// refused naming it (train_config_arch_diff), then every tensor's name and shape. Collective;
/// dies with one line naming the file.
void trainer_init_from(Trainer *t, const char *path);
/// Rank 0 prints the run's banner and the resolved configuration.
void trainer_banner(const Trainer *t);
/// One optimizer update. Returns 0, or 1 when it was skipped as non-finite.
int trainer_update(Trainer *t, TrainMetrics *m);
/// The log line (rank 0) and a metrics.jsonl record.
void trainer_log(Trainer *t, const TrainMetrics *m);
/// 1 on every rank if any rank asks to stop (local != 0) or RUN_DIR/stop exists.
int trainer_stop_requested(Trainer *t, int local);
/// Rank 0 writes a checkpoint of the present state; every rank waits for it.
void trainer_checkpoint(Trainer *t);
/// A final checkpoint unless the last update was just written; prints the closing line.
void trainer_finish(Trainer *t);
void trainer_free(Trainer *t);
void trainer_reset_times(Trainer *t);

/// --dump-step: one HDF5 file with the batch, masks, targets, predictions and the arenas before
/// and after the update (docs/dump-step.md).
void dump_step(const char *path, const Trainer *t, const Batch *b, const float *params_before,
               const float *teacher_before, const float *teacher_after, const float *grads,
               double loss, double tau, double lr);

#endif
