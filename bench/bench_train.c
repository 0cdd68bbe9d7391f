/* bench_train.c: training updates per second and samples/s of each modality's small config on
 * synthetic batches, with the share of time in teacher, student forward, loss, backward,
 * optimiser and EMA. Usage: bench_train [threads] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/config.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/objective.h"
#include "d2v/optim.h"
#include "d2v/util.h"

static void bench(const char *path, int updates) {
    TrainConfig c;
    char err[512];
    train_config_defaults(&c);
    if (train_config_load(&c, path, err, sizeof err) < 0) die("%s", err);
    c.dropout = c.attn_dropout = 0; /* keep only the math the step always does */
    Dataset d = {0};
    d.modality = c.modality, d.vocab_size = 8192, d.bos_id = 0, d.pad_id = 1, d.eos_id = 2;
    d.unk_id = 3, d.mask_id = 8191, d.C = c.image_channels;
    ModelConfig mc;
    train_config_to_model(&mc, &c, &d);
    int B = c.batch_size, S = c.modality == D2V_SPEECH ? 2 * 16000 : 0;
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *p = xalloc(np * 4, "p"), *g = xalloc(np * 4, "g"), *t = xalloc(np * 4, "t");
    float *m1 = xalloc(np * 4, "m"), *v1 = xalloc(np * 4, "v");
    ModelParams ps, pg, pt;
    model_params_layout(&ps, p, &mc), model_params_layout(&pg, g, &mc);
    model_params_init(&ps, &mc, 1);
    memcpy(t, p, np * 4);
    model_teacher_view(&pt, &ps, t, &mc);
    ParamRange ema[4];
    int n_ema = model_ema_ranges(ema, &mc);
    Model *m = model_create(&mc, B, c.modality == D2V_TEXT ? c.text_block : S);
    /* a synthetic batch of the right shape */
    Batch b = {0};
    b.B = B, b.ids = xalloc(sizeof(int64_t) * B, "ids"), b.labels = xalloc(4 * B, "labels");
    for (int i = 0; i < B; i++)
        b.ids[i] = i;
    uint64_t k = rng_key(9, 0, 0, 0);
    if (c.modality == D2V_TEXT) {
        b.T = c.text_block, b.tokens = xalloc(4 * (size_t)B * b.T, "tokens");
        for (int i = 0; i < B * b.T; i++)
            b.tokens[i] = 4 + (int32_t)(rng_uniform(k, i) * 8000);
    } else if (c.modality == D2V_IMAGE) {
        b.H = c.image_height, b.W = c.image_width, b.C = c.image_channels;
        size_t n = (size_t)B * b.H * b.W * b.C;
        b.images = xalloc(4 * n, "images");
        for (size_t i = 0; i < n; i++)
            b.images[i] = rng_normal(k, i);
    } else {
        b.S = S, b.audio = xalloc(4 * (size_t)B * S, "audio");
        for (size_t i = 0; i < (size_t)B * S; i++)
            b.audio[i] = rng_normal(k, i);
    }
    AdamW opt = {c.beta1, c.beta2, c.adam_eps, c.weight_decay, c.adam_eps_mode};
    double t_opt = 0, t_ema = 0, t_all = 0;
    int C = mc.enc.C;
    double *stats = xalloc(sizeof(double) * 2 * (1 + 2 * C), "stats");
    for (int n = -1; n < updates; n++) { /* update -1 warms up */
        if (n == 0) model_phase_reset(m), t_opt = t_ema = 0;
        double t0 = now_seconds();
        for (int r = 0; r < n_ema; r++)
            ema_update(t + ema[r].offset, p + ema[r].offset, ema[r].count, 0.999);
        double t1 = now_seconds();
        memset(g, 0, np * 4);
        MicroResult res = {0, 0, stats, stats + 1 + 2 * C};
        model_micro_step(m, &ps, &pt, &pg, &b, 1, (uint64_t)(n + 1), &res);
        double t2 = now_seconds();
        double gn = grad_norm(g, np);
        clip_grad_norm(g, np, gn, 1.0);
        adamw_step(p, m1, v1, g, NULL, np, &opt, 1e-4, n + 2);
        double t3 = now_seconds();
        if (n >= 0) t_ema += t1 - t0, t_opt += t3 - t2, t_all += t3 - t0;
    }
    double ph[PHASE_NUM];
    model_phase_times(m, ph);
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    printf("%-17s L=%d C=%d B=%d%s  %6.3f s/update  %7.1f samples/s\n", name, mc.enc.L, C, B,
           c.modality == D2V_SPEECH ? " (2 s clips)" : "", t_all / updates, B * updates / t_all);
    printf("    ");
    for (int i = 0; i < PHASE_NUM; i++)
        printf("%s %.0f%%, ", model_phase_names[i], 100 * ph[i] / t_all);
    printf("optimiser %.0f%%, EMA %.0f%%\n", 100 * t_opt / t_all, 100 * t_ema / t_all);
    model_destroy(m);
    free(p), free(g), free(t), free(m1), free(v1), free(stats), free(b.ids), free(b.labels);
    free(b.tokens), free(b.images), free(b.audio);
}

int main(int argc, char **argv) {
    const char *arch = gemm_init(argc > 1 ? atoi(argv[1]) : 0);
    printf("threads=%d  BLIS kernels=%s\n", gemm_threads(), arch);
    bench("configs/text-small.cfg", 4);
    bench("configs/image-small.cfg", 4);
    bench("configs/speech-small.cfg", 2);
    return 0;
}
