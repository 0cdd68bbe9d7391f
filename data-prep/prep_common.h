/* prep_common.h: pieces shared by the d2v-prep-* dataset tools: contiguous rank blocks of the
 * sorted input list, shard naming and the index file, folder-tree listing, and bad-input
 * accounting (skip with a count, or stop under --strict). */
#ifndef D2V_PREP_COMMON_H
#define D2V_PREP_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/h5io.h"

/// Every tool's start: --help / -h prints usage() and exits 0 (before MPI starts, so it works
/// outside mpirun too); otherwise MPI is initialised.
void prep_start(int *argc, char ***argv, void (*usage)(void));

/// Inputs [lo, hi) of n for this rank: contiguous blocks in rank order, so concatenating the
/// shards in rank order gives the same sample order for any rank count.
void prep_rank_block(size_t n, int rank, int world, size_t *lo, size_t *hi);

/// This rank's output file: `out` itself on one rank, else "<out without
/// .h5>.shard-RRRRR-of-WWWWW.h5".
void prep_shard_path(char *buf, size_t buflen, const char *out, int rank, int world);

/// Create this rank's output file (h5out_create) and remember its temporary name, so that a fatal
/// bad input (prep_bad_input under --strict), prep_out_discard, or a SIGTERM/SIGINT/SIGHUP (how
/// mpirun ends the other ranks when one dies) deletes it: a failed job leaves no partial file.
void prep_out_create(H5Out *o, const char *path);
/// Collective: wait until every rank has finished writing, then commit this rank's output, so no
/// shard is renamed into place when another rank fails.
void prep_out_commit(H5Out *o);
/// Delete the open output's temporary file (call before die() once prep_out_create has run).
void prep_out_discard(void);

/// After every rank committed its shard (with `count` samples): rank 0 writes the index file at
/// `out` (world > 1), listing the shards and copying the modality attributes from shard 0.
/// Collective. On one rank nothing is written (the shard is the dataset).
void prep_write_index(const char *out, const char *modality, const char *created_by, int64_t count);

/// A folder tree root/<class>/<file>: files with one of the extensions (case-insensitive, e.g.
/// {".png", ".jpg", ".jpeg", NULL}), sorted by class then file name. Classes are the sorted
/// sub-directory names (labels are their indices); files directly under root get no class.
typedef struct {
    size_t n, n_classes;
    char **paths;   // (n) full paths
    int32_t *label; // (n) class index
    char **classes; // (n_classes) names
} PrepTree;
/// Returns 0, or -1 with err naming the root when it cannot be read.
int prep_list_tree(PrepTree *t, const char *root, const char *const *exts, char *err,
                   size_t errlen);
void prep_tree_free(PrepTree *t);

/// Bad-input policy: under strict the first bad input stops the job (naming the file); otherwise
/// it is reported on stderr and counted.
typedef struct {
    int strict;
    long skipped;
} PrepErrors;
void prep_bad_input(PrepErrors *e, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/// Collective: prints "skipped N bad input(s)" on rank 0 when any rank skipped one; returns N.
long prep_report_skipped(PrepErrors *e);

#endif
