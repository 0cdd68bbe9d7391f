/* ckpt.h: checkpoints of a d2v-train run. All training state is replicated across ranks (the
 * loader cursor is global and every random draw is keyed, not stateful), so rank 0 alone writes
 * RUN_DIR/ckpt/step_NNNNNNNN/model.h5 and then a DONE marker; resume takes the newest complete
 * one and may use a different rank count. */
#ifndef D2V_CKPT_H
#define D2V_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/h5io.h"
#include "d2v/model.h"

typedef struct {
    int64_t update;      // completed optimizer updates
    int64_t skipped;     // updates skipped as non-finite (AdamW's step count excludes them)
    LoaderCursor cursor; // where the next batch starts
    int64_t planned;     // run.max_time: the update count planned from the measured rate (0: none)
} TrainState;

/// ckpt_read's results besides 0.
enum {
    CKPT_OTHER = -1,   // a valid file that is not this model's checkpoint: stop, never fall back
    CKPT_DAMAGED = -2, // truncated, unreadable, a failed CRC32 or an impossible value
    CKPT_MISSING = -3, // no such file
};
#define CKPT_MAX_UPDATE (1LL << 36) // more updates than any run makes: a damaged value

/// Write a checkpoint of the arenas (each np floats) and the state, with a CRC32 per tensor.
/// Retention keeps the newest keep_last complete checkpoints (0: all) and every one whose update
/// is a multiple of keep_every (0: none). The file is written under a temporary name, fsynced and
/// renamed; DONE, written and fsynced after it, marks it complete. Dies naming the path on an I/O
/// failure, leaving no temporary file and the previous checkpoint intact.
void ckpt_write(const char *run_dir, const ModelConfig *mc, const char *config_text,
                const float *params, const float *teacher, const float *adam_m, const float *adam_v,
                size_t np, const TrainState *st, int keep_last, int64_t keep_every);
/// The parameter table (param_names, param_offsets, param_shapes) of checkpoints and dumps.
void ckpt_write_table(hid_t file, const ModelConfig *mc);
/// Newest complete checkpoint's model.h5 under run_dir: 0, or -1 when there is none.
int ckpt_find_latest(const char *run_dir, char *path, size_t pathlen);
/// Read a checkpoint into the arenas after checking it matches this model (modality, parameter
/// names and shapes), verifying every tensor's CRC32 and range-checking the scalars. 0, or a
/// CKPT_* code with a one-line message naming the file (and the tensor) in err.
int ckpt_read(const char *path, const ModelConfig *mc, float *params, float *teacher, float *adam_m,
              float *adam_v, size_t np, TrainState *st, char *err, size_t errlen);
/// --resume: the newest complete checkpoint that verifies. A damaged one is reported on stderr,
/// moved aside as step_N.damaged and the next older one tried, so a requeued job always makes
/// progress. 0 (path set), 1 when none is left, or CKPT_OTHER (err set: another model's).
int ckpt_load_latest(const char *run_dir, const ModelConfig *mc, float *params, float *teacher,
                     float *adam_m, float *adam_v, size_t np, TrainState *st, char *path,
                     size_t pathlen, char *err, size_t errlen);
/// Remove temporary files a killed writer left under run_dir/ckpt (and their empty directories).
void ckpt_remove_stale(const char *run_dir);

/// The resolved configuration a checkpoint carries, read into cfg (defaults first, so keys
/// added since keep their defaults). 0, or -1 with a one-line message naming the file.
int ckpt_read_config(const char *path, TrainConfig *cfg, char *err, size_t errlen);

#endif
