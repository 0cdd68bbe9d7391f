/* gemm.c: the only BLIS caller: kernel-set choice before BLIS initialises, thread set-up, and a
 * row-major sgemm wrapper (BLIS typed API with row/column strides, so no transposed copies). */
#define _POSIX_C_SOURCE 200809L
#include <blis.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

static int g_gemm_threads = 1;
static char g_arch_name[64] = "uninitialised";

/* Debian's BLIS 0.9 does not recognise newer AVX-512 Xeons and falls back to its AVX2 haswell
 * kernels; skx (arch id 0) runs about 2x faster there. Pick skx when the CPU has the AVX-512
 * subsets skx kernels use, unless the user chose a set with BLIS_ARCH_TYPE. */
static void choose_arch(void) {
    const char *user = getenv("BLIS_ARCH_TYPE");
    if (user && *user) return;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        char id[16];
        snprintf(id, sizeof id, "%d", (int)BLIS_ARCH_SKX);
        setenv("BLIS_ARCH_TYPE", id, 0);
    }
}

/* A small GEMM checked against a double loop right after initialisation: a kernel set that is
 * selected but wrong on this CPU must stop the run, not train on garbage. */
static void verify_gemm(void) {
    enum { M = 37, N = 29, K = 41 };
    static float A[M * K], B[K * N], C[M * N];
    for (int i = 0; i < M * K; i++)
        A[i] = (float)((i * 7 % 13) - 6) / 7.0f;
    for (int i = 0; i < K * N; i++)
        B[i] = (float)((i * 5 % 11) - 5) / 5.0f;
    gemm_rowmajor(0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N, 0);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++)
                s += (double)A[i * K + k] * B[k * N + j];
            if (fabs(s - C[i * N + j]) > 1e-4 * (1 + fabs(s)))
                die("BLIS kernel set '%s' computes a wrong sgemm on this CPU; set BLIS_ARCH_TYPE "
                    "to another id (e.g. 3 = haswell)",
                    g_arch_name);
        }
}

const char *gemm_init(int threads) {
    choose_arch();
    /* BLIS_NUM_THREADS, else OMP_NUM_THREADS, else OpenMP's own default (the core count) */
    int n = threads > 0
                ? threads
                : env_int("BLIS_NUM_THREADS", env_int("OMP_NUM_THREADS", omp_get_max_threads()));
    bli_thread_set_num_threads(n);
    g_gemm_threads = n;
    arch_t id = bli_arch_query_id(); /* initialises BLIS with the chosen kernel set */
    snprintf(g_arch_name, sizeof g_arch_name, "%s", bli_arch_string(id));
    verify_gemm();
    return g_arch_name;
}

int gemm_threads(void) { return g_gemm_threads; }

void gemm_rowmajor(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc, int single) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) /* beta = 0 overwrites, as BLIS does (NaN included) */
                C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    /* Stored A is (M x K) row-major, or (K x M) when transposed: BLIS takes its strides and a
     * transpose flag, so row-major means row stride = ld, column stride = 1. BLIS 0.9's typed
     * API takes non-const pointers; this is the one place that casts. */
    float a = alpha, b = beta;
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    /* Below ~64^3 multiply-adds, waking BLIS threads costs more than the product. */
    int small = (double)M * N * K < 262144.0;
    bli_rntm_set_num_threads(single || small ? 1 : g_gemm_threads, &rntm);
    bli_sgemm_ex(trans_a ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 trans_b ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, M, N, K, &a, (float *)A, lda, 1,
                 (float *)B, ldb, 1, &b, C, ldc, 1, NULL, &rntm);
}
