/* bench.h: what every benchmark reports beside its own figures: the BLIS sgemm rate of this run,
 * the CPU model and the ISA levels in use. */
#ifndef D2V_BENCH_H
#define D2V_BENCH_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

/// Best-of-3 GFLOP/s of one n^3 sgemm on BLIS's threads.
static inline double blis_peak_gflops(int n) {
    float *a = xalloc((size_t)n * n * 4, "A"), *b = xalloc((size_t)n * n * 4, "B");
    float *c = xalloc((size_t)n * n * 4, "C");
    for (size_t i = 0; i < (size_t)n * n; i++)
        a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
    gemm_rowmajor(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n, 0); /* warm-up */
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now_seconds();
        gemm_rowmajor(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n, 0);
        double dt = now_seconds() - t0;
        if (dt < best) best = dt;
    }
    free(a), free(b), free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

/// "model name" of /proc/cpuinfo into buf.
static inline const char *cpu_model(char *buf, size_t n) {
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return buf;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            const char *v = strchr(line, ':');
            if (v) snprintf(buf, n, "%.*s", (int)strcspn(v + 2, "\n"), v + 2);
            break;
        }
    fclose(f);
    return buf;
}

#endif
