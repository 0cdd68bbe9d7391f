/* dist.c: the only file that talks to MPI: init, abort-on-fatal, allreduce, broadcast, gather,
 * and the watchdog that ends a job whose collectives stop completing (docs/reliability.md §4). */
#define _POSIX_C_SOURCE 200809L
#include "d2v/dist.h"

#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "d2v/util.h"

Dist g_dist = {0, 1, 0};

#define MPI_CHECK(call)                                                                            \
    do {                                                                                           \
        int rc_ = (call);                                                                          \
        if (rc_ != MPI_SUCCESS) {                                                                  \
            char s_[MPI_MAX_ERROR_STRING];                                                         \
            int n_ = 0;                                                                            \
            MPI_Error_string(rc_, s_, &n_);                                                        \
            die("MPI call %s failed: %s", #call, s_);                                              \
        }                                                                                          \
    } while (0)

void dist_init(int *argc, char ***argv) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    g_dist.initialized = 1;
    /* Errors return codes so MPI_CHECK can report them, then die() aborts every rank. */
    MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_dist.rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_dist.world));
}

/* ---- watchdog: the time of the last completed collective, checked by a thread ---- */

static struct {
    pthread_t thread;
    int running;
    double limit;       // seconds; raised by dist_watchdog_raise
    double last;        // now_seconds() of the last completed collective (or phase change)
    const char *phase;  // what this rank is doing (static strings)
    int64_t update;     // the update it belongs to
    int collective;     // 1 while inside an MPI collective
    const char *inside; // which one
} wd;

static void wd_store(double *p, double v) { __atomic_store(p, &v, __ATOMIC_RELAXED); }
static double wd_load(double *p) {
    double v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}

static void *watchdog_main(void *arg) {
    (void)arg;
    struct timespec half = {0, 500000000L};
    while (__atomic_load_n(&wd.running, __ATOMIC_RELAXED)) {
        nanosleep(&half, NULL);
        double idle = now_seconds() - wd_load(&wd.last), limit = wd_load(&wd.limit);
        if (!__atomic_load_n(&wd.running, __ATOMIC_RELAXED) || idle <= limit) continue;
        const char *phase = __atomic_load_n(&wd.phase, __ATOMIC_RELAXED);
        const char *inside = __atomic_load_n(&wd.inside, __ATOMIC_RELAXED);
        int in_mpi = __atomic_load_n(&wd.collective, __ATOMIC_RELAXED);
        char where[256];
        if (in_mpi)
            snprintf(where, sizeof where,
                     "waiting in MPI %s (%s, update %lld): another rank is "
                     "stuck (a frozen node or a hung file system?)",
                     inside ? inside : "collective", phase ? phase : "start-up",
                     (long long)__atomic_load_n(&wd.update, __ATOMIC_RELAXED));
        else
            snprintf(where, sizeof where, "in %s (update %lld), not in MPI: this rank is stuck",
                     phase ? phase : "start-up",
                     (long long)__atomic_load_n(&wd.update, __ATOMIC_RELAXED));
        /* stderr unbuffered: the line gets out even if the main thread holds stdout's lock */
        fprintf(stderr,
                "d2v: error: [rank %d] watchdog: no progress for %.0f s, %s; ending the "
                "job (run.watchdog_s = %.0f)\n",
                g_dist.rank, idle, where, limit);
        /* not MPI_Abort: this thread may not call MPI while the main one is inside it; a rank
         * that exits without MPI_Finalize makes mpirun / srun end the whole job */
        _exit(3);
    }
    return NULL;
}

void dist_watchdog_start(double seconds) {
    if (wd.running || seconds <= 0) return;
    wd_store(&wd.limit, seconds);
    wd_store(&wd.last, now_seconds());
    wd.running = 1;
    if (pthread_create(&wd.thread, NULL, watchdog_main, NULL) != 0) {
        wd.running = 0;
        die("cannot start the watchdog thread");
    }
}

void dist_watchdog_stop(void) {
    if (!wd.running) return;
    __atomic_store_n(&wd.running, 0, __ATOMIC_RELAXED);
    pthread_join(wd.thread, NULL);
}

void dist_watchdog_raise(double seconds) {
    if (seconds > wd_load(&wd.limit)) wd_store(&wd.limit, seconds);
}

void dist_watchdog_phase(const char *phase, int64_t update) {
    __atomic_store_n(&wd.phase, phase, __ATOMIC_RELAXED);
    __atomic_store_n(&wd.update, update, __ATOMIC_RELAXED);
    wd_store(&wd.last, now_seconds());
}

static void wd_enter(const char *what) {
    __atomic_store_n(&wd.inside, what, __ATOMIC_RELAXED);
    __atomic_store_n(&wd.collective, 1, __ATOMIC_RELAXED);
}
static void wd_leave(void) {
    __atomic_store_n(&wd.collective, 0, __ATOMIC_RELAXED);
    wd_store(&wd.last, now_seconds());
}

void dist_finalize(void) {
    dist_watchdog_stop();
    if (g_dist.initialized) MPI_Finalize();
    g_dist.initialized = 0;
}

void dist_abort(int code) {
    int up = 0, down = 0;
    MPI_Initialized(&up);
    MPI_Finalized(&down);
    /* One rank's fatal error must end the job, never leave the others waiting. Alone, a
     * clean finalize avoids mpirun's abort banner around the one-line message. */
    if (up && !down && g_dist.world > 1) MPI_Abort(MPI_COMM_WORLD, code);
    if (up && !down) MPI_Finalize();
    exit(code);
}

/* Open MPI 4.1 has no large-count calls: chunk below INT_MAX elements. */
#define CHUNK ((size_t)1 << 30)
static size_t chunk = CHUNK;

void dist_set_chunk_elems(size_t n) { chunk = n > 0 && n <= CHUNK ? n : CHUNK; }

static void allreduce_sum(void *buf, size_t n, MPI_Datatype type, size_t elem_size) {
    if (!g_dist.initialized || g_dist.world == 1) return;
    char *p = buf;
    wd_enter("allreduce");
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + off * elem_size, (int)m, type, MPI_SUM,
                                MPI_COMM_WORLD));
    }
    wd_leave();
}

void dist_allreduce_sum_f32(float *buf, size_t n) {
    allreduce_sum(buf, n, MPI_FLOAT, sizeof(float));
}

void dist_allreduce_sum_f64(double *buf, size_t n) {
    allreduce_sum(buf, n, MPI_DOUBLE, sizeof(double));
}

void dist_bcast_bytes(void *buf, size_t n) {
    if (!g_dist.initialized || g_dist.world == 1) return;
    char *p = buf;
    wd_enter("broadcast");
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        MPI_CHECK(MPI_Bcast(p + off, (int)m, MPI_BYTE, 0, MPI_COMM_WORLD));
    }
    wd_leave();
}

void dist_allgather_i64(int64_t mine, int64_t *all) {
    if (!g_dist.initialized || g_dist.world == 1) {
        all[0] = mine;
        return;
    }
    wd_enter("allgather");
    MPI_CHECK(MPI_Allgather(&mine, 1, MPI_INT64_T, all, 1, MPI_INT64_T, MPI_COMM_WORLD));
    wd_leave();
}

void dist_gather_f32(const float *mine, size_t n, float *all) {
    if (!g_dist.initialized || g_dist.world == 1) {
        if (n && all != mine) memcpy(all, mine, n * sizeof(float));
        return;
    }
    int64_t *counts = xalloc(sizeof(int64_t) * (size_t)g_dist.world, "gather counts");
    dist_allgather_i64((int64_t)n, counts);
    /* point to point in chunks: Gatherv's int counts and displacements would overflow */
    if (g_dist.rank == 0) {
        if (n) memcpy(all, mine, n * sizeof(float));
        size_t at = n;
        for (int r = 1; r < g_dist.world; r++) {
            for (size_t off = 0; off < (size_t)counts[r]; off += chunk) {
                size_t m = (size_t)counts[r] - off < chunk ? (size_t)counts[r] - off : chunk;
                MPI_CHECK(MPI_Recv(all + at + off, (int)m, MPI_FLOAT, r, 0, MPI_COMM_WORLD,
                                   MPI_STATUS_IGNORE));
            }
            at += (size_t)counts[r];
        }
    } else {
        for (size_t off = 0; off < n; off += chunk) {
            size_t m = n - off < chunk ? n - off : chunk;
            MPI_CHECK(MPI_Send(mine + off, (int)m, MPI_FLOAT, 0, 0, MPI_COMM_WORLD));
        }
    }
    free(counts);
}

void dist_barrier(void) {
    if (!g_dist.initialized || g_dist.world == 1) return;
    wd_enter("barrier");
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    wd_leave();
}

void dist_iallreduce_sum_f32(float *buf, size_t n, DistReqs *q) {
    if (!g_dist.initialized || g_dist.world == 1) return;
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        if (q->n == q->cap) {
            q->cap = q->cap ? 2 * q->cap : 64;
            q->reqs = realloc(q->reqs, sizeof(MPI_Request) * (size_t)q->cap);
            if (!q->reqs) die("MPI: out of memory for %d requests", q->cap);
        }
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)m, MPI_FLOAT, MPI_SUM,
                                 MPI_COMM_WORLD, (MPI_Request *)q->reqs + q->n++));
    }
}

int dist_test(DistReqs *q) {
    if (q->n == 0) return 1;
    int done = 0;
    MPI_CHECK(MPI_Testall(q->n, q->reqs, &done, MPI_STATUSES_IGNORE));
    if (done) q->n = 0;
    return done;
}

void dist_wait(DistReqs *q) {
    if (q->n == 0) return;
    wd_enter("allreduce (bucketed)");
    MPI_CHECK(MPI_Waitall(q->n, q->reqs, MPI_STATUSES_IGNORE));
    wd_leave();
    q->n = 0;
}

void dist_reqs_free(DistReqs *q) {
    free(q->reqs);
    q->reqs = NULL, q->n = q->cap = 0;
}
