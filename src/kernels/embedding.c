/* embedding.c: token-embedding lookup and its scatter-add backward. */
#include <omp.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int V, int C) {
    for (int n = 0; n < N; n++)
        if (ids[n] < 0 || ids[n] >= V)
            die("embedding: token id %d at position %d is outside the vocabulary [0, %d)", ids[n],
                n, V);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *src = table + (size_t)ids[n] * C;
        float *dst = out + (size_t)n * C;
        for (int c = 0; c < C; c++)
            dst[c] = src[c];
    }
}

void embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int C) {
    /* Repeated ids would race if threads split tokens; split channels instead. */
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int c0 = (int)((long)C * t / nt), c1 = (int)((long)C * (t + 1) / nt);
        for (int n = 0; n < N; n++) {
            const float *src = dout + (size_t)n * C;
            float *dst = dtable + (size_t)ids[n] * C;
            for (int c = c0; c < c1; c++)
                dst[c] += src[c];
        }
    }
}
