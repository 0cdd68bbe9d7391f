/* dist.h: the process group (MPI behind it; dist.c is the only file that includes mpi.h). */
#ifndef D2V_DIST_H
#define D2V_DIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int rank;
    int world;
    int initialized;
} Dist;

extern Dist g_dist;

/// Start MPI (funneled threads), set MPI_ERRORS_RETURN, fill g_dist.
void dist_init(int *argc, char ***argv);
/// Finalize MPI if it was started.
void dist_finalize(void);
/// End every rank of the job with `code` (MPI_Abort once MPI is up, exit otherwise).
void dist_abort(int code) __attribute__((noreturn));
/// In-place sum of n floats over all ranks (chunked below INT_MAX elements).
void dist_allreduce_sum_f32(float *buf, size_t n);
/// In-place sum of n doubles over all ranks.
void dist_allreduce_sum_f64(double *buf, size_t n);
/// Broadcast n bytes from rank 0 (chunked likewise).
void dist_bcast_bytes(void *buf, size_t n);
/// Tests only: elements (bytes for broadcasts) per MPI call; 0 restores the default 2^30.
void dist_set_chunk_elems(size_t n);
/// Gather one int64 from every rank into all[world] on every rank.
void dist_allgather_i64(int64_t mine, int64_t *all);
void dist_barrier(void);
/// Gather every rank's n floats (n may differ per rank, 0 included) to rank 0, in rank order,
/// into all (rank 0: room for the sum over ranks; elsewhere unused, may be NULL). Collective.
void dist_gather_f32(const float *mine, size_t n, float *all);

/// The watchdog: a thread that ends the job when this rank has completed no collective (and
/// changed no phase) for `seconds`, with one line naming the rank, its phase and update, and
/// whether it was waiting inside MPI (another rank is stuck) or not (this one is). A frozen rank
/// cannot report itself; the ranks waiting for it do. 0: off. Stopped by dist_finalize.
void dist_watchdog_start(double seconds);
void dist_watchdog_stop(void);
/// Raise the limit (never lower it): e.g. to a multiple of the slowest update seen.
void dist_watchdog_raise(double seconds);
/// What this rank does now (a static string) in which update; counts as progress.
void dist_watchdog_phase(const char *phase, int64_t update);

/// Outstanding non-blocking reductions (the MPI requests stay inside dist.c).
typedef struct {
    void *reqs;
    int n, cap;
} DistReqs;
/// Start an in-place sum of n floats over all ranks (chunked like the blocking one); the buffer
/// must not be touched until dist_wait. Nothing to do on one rank.
void dist_iallreduce_sum_f32(float *buf, size_t n, DistReqs *q);
/// Let MPI progress the outstanding reductions (Open MPI moves non-blocking collectives only
/// inside MPI calls); 1 when all are done.
int dist_test(DistReqs *q);
/// Wait for every outstanding reduction; q is empty afterwards.
void dist_wait(DistReqs *q);
void dist_reqs_free(DistReqs *q);

#endif
