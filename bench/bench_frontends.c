/* bench_frontends.c: forward+backward rates of the modality input encoders at base size: text
 * tokens/s, images/s, and seconds of audio per second (with GFLOP/s against BLIS for speech). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "d2v/frontends.h"
#include "d2v/kernels.h"
#include "d2v/util.h"

static float *random_floats(size_t n, uint64_t seed) {
    float *x = xalloc(n * 4, "bench input");
    uint64_t k = rng_key(seed, 0, 0, 0);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_normal(k, i);
    return x;
}

static void bench_text(int iters) {
    TextEmbedConfig cfg = {
        .V = 50265, .C = 768, .max_positions = 512, .pad_id = 1, .ln_eps = 1e-5f, .dropout = 0.1f};
    enum { B = 8, T = 512 };
    TextEmbedParams p, g;
    size_t np = text_embed_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    text_embed_params_layout(&p, pm, &cfg), text_embed_params_layout(&g, gm, &cfg);
    text_embed_params_init(&p, &cfg, 1);
    int32_t *ids = xalloc(B * T * 4, "ids");
    uint64_t k = rng_key(2, 0, 0, 0);
    for (int i = 0; i < B * T; i++)
        ids[i] = 4 + (int32_t)(rng_uniform(k, i) * 50000);
    float *dout = random_floats((size_t)B * T * 768, 3);
    TextEmbed t;
    text_embed_init(&t, &cfg, B, T);
    DropKey dk = {1, 0, 0, NULL};
    double t0 = 0;
    for (int it = -1; it < iters; it++) {
        if (it == 0) t0 = now_seconds();
        text_embed_forward(&t, &p, ids, B, T, 1, dk);
        text_embed_backward(&t, &g, &p, dout, 1, dk);
    }
    double dt = (now_seconds() - t0) / iters;
    printf("text   V=50265 C=768 B=%d T=%d     fwd+bwd %7.4f s/iter  %9.0f tokens/s\n", B, T, dt,
           B * T / dt);
    text_embed_free(&t), free(pm), free(gm), free(ids), free(dout);
}

static void bench_image(int iters, double peak) {
    ImageEmbedConfig cfg = {
        .H = 224, .W = 224, .Cin = 3, .P = 16, .C = 768, .cls = 1, .pos = IMAGE_POS_LEARNED};
    enum { B = 16 };
    ImageEmbedParams p, g;
    size_t np = image_embed_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    image_embed_params_layout(&p, pm, &cfg), image_embed_params_layout(&g, gm, &cfg);
    image_embed_params_init(&p, &cfg, 1);
    float *img = random_floats((size_t)B * 224 * 224 * 3, 4);
    float *dout = random_floats((size_t)B * 197 * 768, 5);
    ImageEmbed e;
    image_embed_init(&e, &cfg, B);
    double t0 = 0;
    for (int it = -1; it < iters; it++) {
        if (it == 0) t0 = now_seconds();
        image_embed_forward(&e, &p, img, NULL, B);
        image_embed_backward(&e, &g, dout);
    }
    double dt = (now_seconds() - t0) / iters;
    double fl = 2.0 * 2 * B * 196.0 * 768 * 768; /* patch GEMM forward + weight gradient */
    printf("image  224x224x3 P=16 C=768 B=%d   fwd+bwd %7.4f s/iter  %9.1f images/s  %6.1f GFLOP/s "
           "= %3.0f%% of BLIS\n",
           B, dt, B / dt, fl / dt / 1e9, 100 * fl / dt / 1e9 / peak);
    image_embed_free(&e), free(pm), free(gm), free(img), free(dout);
}

static double speech_flops(const SpeechEmbedConfig *c, int B, const int *Lin) {
    double f = 0;
    for (int i = 0; i < c->n_conv; i++)
        f += 2.0 * B * Lin[i + 1] * c->conv_dim[i] * (i ? c->conv_dim[i - 1] : 1) * c->conv_k[i];
    int T = Lin[c->n_conv];
    f += 2.0 * B * T * c->C * c->conv_dim[c->n_conv - 1];
    f += c->pos_layers * 2.0 * B * T * c->C * (c->C / c->pos_groups) * c->pos_k;
    return 3 * f - 2.0 * B * Lin[1] * c->conv_dim[0] * c->conv_k[0]; /* no input grad at layer 0 */
}

static void bench_speech(int iters, double peak) {
    SpeechEmbedConfig cfg = {.n_conv = 7,
                             .conv_dim = {512, 512, 512, 512, 512, 512, 512},
                             .conv_k = {10, 3, 3, 3, 3, 2, 2},
                             .conv_s = {5, 2, 2, 2, 2, 2, 2},
                             .C = 768,
                             .pos_layers = 5,
                             .pos_k = 19,
                             .pos_groups = 16,
                             .ln_eps = 1e-5f,
                             .dropout = 0.1f};
    enum { B = 2, S = 4 * 16000 };
    SpeechEmbedParams p, g;
    size_t np = speech_embed_params_layout(&p, NULL, &cfg);
    float *pm = xalloc(np * 4, "p"), *gm = xalloc(np * 4, "g");
    speech_embed_params_layout(&p, pm, &cfg), speech_embed_params_layout(&g, gm, &cfg);
    speech_embed_params_init(&p, &cfg, 1);
    float *wav = random_floats((size_t)B * S, 6);
    SpeechFeatures f;
    SpeechContext s;
    speech_features_init(&f, &cfg, B, S);
    speech_context_init(&s, &cfg, B, f.Tmax, 1);
    float *dout = random_floats((size_t)B * f.Tmax * 768, 7);
    float *dfeat = xalloc((size_t)B * f.Tmax * 768 * 4, "dfeat");
    DropKey dk = {1, 0, 2, NULL};
    double t0 = 0;
    for (int it = -1; it < iters; it++) {
        if (it == 0) t0 = now_seconds();
        speech_features_forward(&f, &p, wav, B, S);
        speech_context_forward(&s, &p, f.features, NULL, B, f.T, 1, dk);
        memset(dfeat, 0, (size_t)B * f.T * 768 * 4);
        speech_context_backward(&s, &g, &p, dout, dfeat, 1, dk);
        speech_features_backward(&f, &g, &p, dfeat);
    }
    double dt = (now_seconds() - t0) / iters;
    double fl = speech_flops(&cfg, B, f.Lin);
    printf("speech wav2vec2 convs + 5 pos convs B=%d x 4 s  fwd+bwd %7.4f s/iter  %6.1f s audio/s  "
           "%6.1f GFLOP/s = %3.0f%% of BLIS\n",
           B, dt, B * 4.0 / dt, fl / dt / 1e9, 100 * fl / dt / 1e9 / peak);
    speech_context_free(&s), speech_features_free(&f);
    free(pm), free(gm), free(wav), free(dout), free(dfeat);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    const char *arch = gemm_init(threads);
    double peak = blis_peak_gflops(2048);
    printf("threads=%d  BLIS kernels=%s  BLIS sgemm 2048^3: %.1f GFLOP/s\n", gemm_threads(), arch,
           peak);
    bench_text(3);
    bench_image(3, peak);
    bench_speech(2, peak);
    return 0;
}
