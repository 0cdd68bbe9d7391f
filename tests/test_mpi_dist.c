/* test_mpi_dist.c: MPI helpers under mpirun -np 2: float/double allreduce and broadcast, exact
 * and never past n, at the default chunk and at chunks of 7 and 1 (dist_set_chunk_elems), with
 * every MPI call counted through the PMPI interface (ceil(n / chunk) calls of <= chunk elements
 * covering the buffer in order); with --die-on-rank R, rank R dies while the others wait in a
 * collective, to show one rank's fatal error ends the whole job. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/dist.h"
#include "d2v/util.h"

enum { GUARD = 9 }; /* elements past n on each rank: never summed, never sent */

/* The MPI calls dist.c made since the last reset: count, elements, largest call, and whether
 * each one started where the previous one ended. Wrappers of the MPI profiling interface. */
static struct {
    int calls, in_order, max;
    size_t elems;
    const char *next;
} tally;

static void tally_reset(void) { memset(&tally, 0, sizeof tally), tally.in_order = 1; }

static void tally_add(const void *buf, int count, MPI_Datatype type) {
    int size = 0;
    PMPI_Type_size(type, &size);
    if (tally.calls && (const char *)buf != tally.next) tally.in_order = 0;
    tally.next = (const char *)buf + (size_t)count * (size_t)size;
    tally.calls++, tally.elems += (size_t)count;
    if (count > tally.max) tally.max = count;
}

int MPI_Allreduce(const void *sendbuf, void *recvbuf, int count, MPI_Datatype type, MPI_Op op,
                  MPI_Comm comm) {
    tally_add(recvbuf, count, type);
    return PMPI_Allreduce(sendbuf, recvbuf, count, type, op, comm);
}

int MPI_Bcast(void *buf, int count, MPI_Datatype type, int root, MPI_Comm comm) {
    tally_add(buf, count, type);
    return PMPI_Bcast(buf, count, type, root, comm);
}

/* The last operation on n elements went out as ceil(n / chunk) in-order calls of <= chunk. */
static int calls_ok(size_t n, size_t chunk, const char *what) {
    size_t want = (n + chunk - 1) / chunk;
    int ok = (size_t)tally.calls == want && tally.elems == n && (size_t)tally.max <= chunk &&
             tally.in_order;
    if (!ok)
        printf("     %s of %zu at chunk %zu: %d calls (want %zu), %zu elements, largest %d%s\n",
               what, n, chunk, tally.calls, want, tally.elems, tally.max,
               tally.in_order ? "" : ", out of order");
    tally_reset();
    return ok;
}

/* Sum n floats and n doubles whose every element differs per rank and per index; each element
 * must be exact, and the GUARD elements past n keep this rank's own values. */
static int sums_ok(size_t n, size_t chunk, int R, int r) {
    float *f = malloc((n + GUARD) * sizeof *f);
    double *d = malloc((n + GUARD) * sizeof *d);
    for (size_t i = 0; i < n + GUARD; i++)
        f[i] = (float)(r + 1) * (float)i, d[i] = 0.5 * (r + 1) + (double)i;
    tally_reset();
    dist_allreduce_sum_f32(f, n);
    int ok = calls_ok(n, chunk, "float allreduce");
    dist_allreduce_sum_f64(d, n);
    ok &= calls_ok(n, chunk, "double allreduce");
    for (size_t i = 0; i < n + GUARD; i++) {
        float wf = i < n ? (float)(R * (R + 1) / 2) * (float)i : (float)(r + 1) * (float)i;
        double wd = i < n ? 0.25 * R * (R + 1) + (double)R * i : 0.5 * (r + 1) + (double)i;
        if (f[i] != wf || d[i] != wd) {
            if (ok)
                printf("     n=%zu: element %zu is %g / %g, want %g / %g\n", n, i, f[i], d[i], wf,
                       wd);
            ok = 0;
        }
    }
    free(f), free(d);
    return ok;
}

/* Broadcast n bytes of rank 0's pattern; the GUARD bytes past n keep this rank's own. */
static int bcast_ok(size_t n, size_t chunk, int r) {
    unsigned char *b = malloc(n + GUARD);
    for (size_t i = 0; i < n + GUARD; i++)
        b[i] = (unsigned char)(r == 0 || i >= n ? 31 * i + 7 * r + 1 : 0);
    tally_reset();
    dist_bcast_bytes(b, n);
    int ok = calls_ok(n, chunk, "broadcast");
    for (size_t i = 0; i < n + GUARD; i++)
        ok &= b[i] == (unsigned char)(31 * i + (i < n ? 0 : 7 * r) + 1);
    free(b);
    return ok;
}

/* One result: every rank counts it, rank 0 (or a failing rank) prints it. */
static void record(int ok, const char *label) {
    if (ok && g_dist.rank != 0)
        check_passed_++;
    else
        check_record(ok, label);
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    if (argc > 2 && !strcmp(argv[1], "--die-on-rank")) {
        if (g_dist.rank == atoi(argv[2])) die("deliberate failure on rank %d", g_dist.rank);
        float x = 1;
        for (;;)
            dist_allreduce_sum_f32(&x, 1); /* would hang forever without the abort */
    }
    int R = g_dist.world, r = g_dist.rank;
    /* at one rank the helpers return at once: nothing would be chunked */
    record(R >= 2, "at least 2 ranks");
    /* chunk 0 restores the production default (2^30); 7 and 1 split buffers into many calls */
    const size_t chunks[3] = {0, 7, 1}, sizes[8] = {0, 1, 6, 7, 8, 14, 15, 1000};
    for (int c = 0; c < 3; c++) {
        dist_set_chunk_elems(chunks[c]);
        size_t chunk = chunks[c] ? chunks[c] : (size_t)1 << 30;
        for (int k = 0; k < 8; k++) {
            if (chunks[c] == 1 && sizes[k] > 15) continue; /* 1000 calls: not worth the time */
            char label[96];
            snprintf(label, sizeof label, "chunk %zu: allreduce of %zu floats and doubles", chunk,
                     sizes[k]);
            record(sums_ok(sizes[k], chunk, R, r), label);
        }
        char label[96];
        snprintf(label, sizeof label, "chunk %zu: broadcast of 0, 7 and 50 bytes", chunk);
        int ok = bcast_ok(0, chunk, r);
        ok &= bcast_ok(7, chunk, r);
        ok &= bcast_ok(50, chunk, r);
        record(ok, label);
    }
    dist_set_chunk_elems(0);
    dist_barrier();
    /* Every rank's counts, summed; rank 0 prints the closing line, every rank exits with it. */
    double counts[2] = {check_passed_, check_failed_};
    dist_allreduce_sum_f64(counts, 2);
    check_passed_ = (int)counts[0], check_failed_ = (int)counts[1];
    int rc = check_failed_ ? EXIT_FAILURE : EXIT_SUCCESS;
    if (r == 0) check_summary();
    dist_finalize();
    return rc;
}
