/* bench_encoder.c: encoder forward+backward GFLOP/s against a BLIS sgemm rate measured in the
 * same run, with a per-kernel time breakdown. Usage: bench_encoder [threads] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "d2v/dist.h"
#include "d2v/encoder.h"
#include "d2v/kernels.h"
#include "d2v/util.h"

/* Best-of-3 rate of a large square sgemm (the ceiling the encoder's GEMMs can reach). */

/* Matmul FLOPs of one forward: projections and FFN, plus QK^T and PV. Backward is 2x. */
static double encoder_fwd_flops(const EncoderConfig *c, int B, int T) {
    double N = (double)B * T, C = c->C, F = c->F;
    double per_layer = 2 * N * (3 * C * C + C * C + 2 * C * F) + 2 * 2 * (double)B * T * T * C;
    return per_layer * c->L;
}

/* One configuration; store = 1 keeps the attention probabilities instead of recomputing them
 * (the A/B behind the default, printed as one line). Returns s/iter. */
static double bench_case(const char *name, EncoderConfig cfg, int B, int T, double peak, int iters,
                         int store) {
    cfg.store_attention = store;
    EncoderParams p, g;
    size_t np = encoder_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "params"), *gm = xalloc(np * 4, "grads");
    encoder_params_layout(&p, pm, &cfg), encoder_params_layout(&g, gm, &cfg);
    encoder_params_init(&p, &cfg, 1);
    size_t n = (size_t)B * T * cfg.C;
    float *x = xalloc(n * 4, "x"), *dout = xalloc(n * 4, "dout");
    uint64_t key = rng_key(3, 0, 0, 0);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_normal(key, i), dout[i] = rng_normal(key, n + i);
    Encoder e;
    encoder_init(&e, &cfg, B, T, 1);
    EncoderRun run = {.B = B, .T = T, .seed = 1}; /* dropout off: time the math */
    encoder_forward(&e, &p, x, &run);             /* warm-up: first touch of the arenas */
    encoder_backward(&e, &g, NULL, NULL, &p, x, &run, dout);
    memset(encoder_prof_seconds, 0, sizeof encoder_prof_seconds);
    encoder_prof_on = 1;
    double t_fwd = 0, t_all = 0;
    for (int it = 0; it < iters; it++) {
        double t0 = now_seconds();
        encoder_forward(&e, &p, x, &run);
        double t1 = now_seconds();
        encoder_backward(&e, &g, NULL, NULL, &p, x, &run, dout);
        double t2 = now_seconds();
        t_fwd += t1 - t0, t_all += t2 - t0;
    }
    encoder_prof_on = 0;
    double fl = 3 * encoder_fwd_flops(&cfg, B, T) * iters;
    double gf = fl / t_all / 1e9;
    if (store) {
        printf(
            "        stored attention probabilities instead: %.3f s/iter %6.1f GFLOP/s, act %.0f "
            "MiB\n",
            t_all / iters, gf, encoder_act_mib(&e));
        encoder_free(&e);
        free(pm), free(gm), free(x), free(dout);
        return t_all / iters;
    }
    printf("%-6s L=%-2d C=%-3d T=%-3d B=%d  fwd+bwd %7.3f s/iter  %6.1f GFLOP/s  = %4.0f%% of BLIS "
           "(fwd %4.1f%% of time)  act %.0f MiB\n",
           name, cfg.L, cfg.C, T, B, t_all / iters, gf, 100 * gf / peak, 100 * t_fwd / t_all,
           encoder_act_mib(&e));
    printf("        breakdown:");
    double accounted = 0;
    for (int k = 0; k < PROF_NUM; k++) {
        printf(" %s %.0f%%", encoder_prof_names[k], 100 * encoder_prof_seconds[k] / t_all);
        accounted += encoder_prof_seconds[k];
    }
    printf(" other %.0f%%\n", 100 * (1 - accounted / t_all));
    encoder_free(&e);
    free(pm), free(gm), free(x), free(dout);
    return t_all / iters;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    const char *arch = gemm_init(threads);
    int nt = gemm_threads();
    double peak = blis_peak_gflops(2048);
    printf("threads=%d  BLIS kernels=%s  BLIS sgemm 2048^3: %.1f GFLOP/s\n", nt, arch, peak);
    EncoderConfig small = {.L = 6, .C = 384, .NH = 6, .F = 1536, .k_bias = 1, .ln_eps = 1e-5f};
    EncoderConfig base = {.L = 12, .C = 768, .NH = 12, .F = 3072, .k_bias = 1, .ln_eps = 1e-5f};
    bench_case("small", small, 8, 196, peak, 3, 0);
    bench_case("small", small, 4, 512, peak, 3, 0);
    bench_case("small", small, 4, 512, peak, 3, 1);
    bench_case("base", base, 4, 196, peak, 2, 0);
    bench_case("base", base, 2, 512, peak, 2, 0);
    bench_case("base", base, 2, 512, peak, 2, 1);
    return 0;
}
