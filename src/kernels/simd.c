/* simd.c: choose the element-wise kernels' ISA level once: the best this CPU has, or D2V_SIMD. */
#include "simd.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

static int cpu_has(const char *name) {
    if (!strcmp(name, "base")) return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (!strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
#endif
    return 0;
}

const SimdOps *simd_ops_named(const char *name) {
    static const SimdOps *const all[] = {&simd_avx512, &simd_avx2, &simd_base};
    for (int i = 0; i < 3; i++)
        if (!strcmp(all[i]->name, name)) return cpu_has(name) ? all[i] : NULL;
    return NULL;
}

static const SimdOps *g_ops;
static void choose(void) {
    const char *want = getenv("D2V_SIMD");
    if (want && *want) {
        g_ops = simd_ops_named(want);
        if (!g_ops) die("D2V_SIMD=%s: not one of base, avx2, avx512 that this CPU supports", want);
        return;
    }
    g_ops = cpu_has("avx512") ? &simd_avx512 : cpu_has("avx2") ? &simd_avx2 : &simd_base;
}

const SimdOps *simd_ops(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, choose);
    return g_ops;
}

const char *simd_level(void) { return simd_ops()->name; }
