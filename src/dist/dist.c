/* dist.c: the only file that talks to MPI: init, abort-on-fatal, allreduce, broadcast, gather. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/dist.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

void dist_finalize(void) {
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
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p + off * elem_size, (int)m, type, MPI_SUM,
                                MPI_COMM_WORLD));
    }
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
    for (size_t off = 0; off < n; off += chunk) {
        size_t m = n - off < chunk ? n - off : chunk;
        MPI_CHECK(MPI_Bcast(p + off, (int)m, MPI_BYTE, 0, MPI_COMM_WORLD));
    }
}

void dist_allgather_i64(int64_t mine, int64_t *all) {
    if (!g_dist.initialized || g_dist.world == 1) {
        all[0] = mine;
        return;
    }
    MPI_CHECK(MPI_Allgather(&mine, 1, MPI_INT64_T, all, 1, MPI_INT64_T, MPI_COMM_WORLD));
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
    if (g_dist.initialized && g_dist.world > 1) MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
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
    MPI_CHECK(MPI_Waitall(q->n, q->reqs, MPI_STATUSES_IGNORE));
    q->n = 0;
}

void dist_reqs_free(DistReqs *q) {
    free(q->reqs);
    q->reqs = NULL, q->n = q->cap = 0;
}
