/* test_dist.c: MPI helpers under mpirun -np 2: float/double allreduce (sums exact, chunking
 * path), broadcast; with --die-on-rank R, rank R dies while the others wait in a collective, to
 * show one rank's fatal error ends the whole job. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/dist.h"
#include "d2v/util.h"

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    if (argc > 2 && !strcmp(argv[1], "--die-on-rank")) {
        if (g_dist.rank == atoi(argv[2])) die("deliberate failure on rank %d", g_dist.rank);
        float x = 1;
        for (;;)
            dist_allreduce_sum_f32(&x, 1); /* would hang forever without the abort */
    }
    int R = g_dist.world, r = g_dist.rank;
    enum { N = 1000 };
    float f[N];
    double d[N];
    for (int i = 0; i < N; i++)
        f[i] = (float)(r + 1) * i, d[i] = 0.5 * (r + 1) + i;
    dist_allreduce_sum_f32(f, N);
    dist_allreduce_sum_f64(d, N);
    int ok_f = 1, ok_d = 1;
    for (int i = 0; i < N; i++) {
        if (f[i] != (float)(R * (R + 1) / 2) * i) ok_f = 0;
        if (d[i] != 0.25 * R * (R + 1) + (double)R * i) ok_d = 0;
    }
    CHECK(ok_f);
    CHECK(ok_d);
    char msg[32] = {0};
    if (r == 0) strcpy(msg, "from rank 0");
    dist_bcast_bytes(msg, sizeof msg);
    CHECK(strcmp(msg, "from rank 0") == 0);
    CHECK(R >= 1);
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
