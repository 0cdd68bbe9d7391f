/* d2v_info.c: prints the build's runtime set-up (BLIS kernel set and threads, OpenMP threads,
 * MPI ranks) so a user can check a node or a job allocation before a long run. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/dist.h"
#include "d2v/kernels.h"
#include "d2v/util.h"

int main(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf(
            "usage: d2v-info\n"
            "Prints the BLIS kernel set d2v selects (override with BLIS_ARCH_TYPE=<id>), the ISA\n"
            "level of its element-wise kernels (override with D2V_SIMD=base|avx2|avx512),\n"
            "BLIS and OpenMP thread counts, and the MPI world size when run under mpirun.\n");
        return 0;
    }
    dist_init(&argc, &argv);
    const char *user = getenv("BLIS_ARCH_TYPE");
    const char *arch = gemm_init(0);
    log0("blis_kernels=%s (%s)\n", arch, user && *user ? "set by BLIS_ARCH_TYPE" : "auto-selected");
    const char *simd = getenv("D2V_SIMD");
    log0("elementwise_kernels=%s (%s)\n", simd_level(),
         simd && *simd ? "set by D2V_SIMD" : "auto-selected");
    log0("blis_threads=%d omp_threads=%d mpi_ranks=%d\n", gemm_threads(), omp_get_max_threads(),
         g_dist.world);
    dist_finalize();
    return 0;
}
