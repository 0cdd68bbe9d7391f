/* bench_train.c: seconds per trainer_update (the step d2v-train runs) for each modality's small
 * config, on synthetic batches of the right shape, with the share of each part of the update.
 * Usage: bench_train [threads] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/trainer.h"
#include "d2v/util.h"

typedef struct {
    Batch b;
} Synthetic;

static const Batch *next_synthetic(void *ctx) { return &((Synthetic *)ctx)->b; }

static void bench(const char *path, int updates, int threads) {
    TrainConfig c;
    char err[512];
    train_config_defaults(&c);
    if (train_config_load(&c, path, err, sizeof err) < 0) die("%s", err);
    c.threads = threads, c.collapse_after = 0, c.max_updates = updates + 1;
    if (c.modality == D2V_SPEECH) c.speech_max_samples = 2 * 16000;
    Dataset d = {0};
    d.modality = c.modality, d.vocab_size = 8192, d.bos_id = 0, d.pad_id = 1, d.eos_id = 2;
    d.unk_id = 3, d.mask_id = 8191, d.C = c.image_channels, d.num_samples = c.batch_size;
    /* a synthetic batch of the right shape */
    Synthetic s = {{0}};
    Batch *b = &s.b;
    int B = c.batch_size, S = 2 * 16000;
    b->B = B, b->ids = xalloc(sizeof(int64_t) * B, "ids"), b->labels = xalloc(4 * B, "labels");
    for (int i = 0; i < B; i++)
        b->ids[i] = i;
    uint64_t k = rng_key(9, 0, 0, 0);
    if (c.modality == D2V_TEXT) {
        b->T = c.text_block, b->tokens = xalloc(4 * (size_t)B * b->T, "tokens");
        for (int i = 0; i < B * b->T; i++)
            b->tokens[i] = 4 + (int32_t)(rng_uniform(k, i) * 8000);
    } else if (c.modality == D2V_IMAGE) {
        b->H = c.image_height, b->W = c.image_width, b->C = c.image_channels;
        size_t n = (size_t)B * b->H * b->W * b->C;
        b->images = xalloc(4 * n, "images");
        for (size_t i = 0; i < n; i++)
            b->images[i] = rng_normal(k, i);
    } else {
        b->S = S, b->audio = xalloc(4 * (size_t)B * S, "audio");
        for (size_t i = 0; i < (size_t)B * S; i++)
            b->audio[i] = rng_normal(k, i);
    }
    Trainer t;
    trainer_init(&t, &c, &(TrainerOptions){.source = {next_synthetic, &s}, .dataset = &d});
    trainer_update(&t, NULL); /* warm-up */
    trainer_reset_times(&t);
    for (int n = 0; n < updates; n++)
        trainer_update(&t, NULL);
    const TrainTimes *tm = &t.times;
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    printf("%-17s L=%d C=%d B=%d%s  %6.3f s/update  %7.1f samples/s  (%s kernels)\n", name,
           t.mc.enc.L, t.mc.enc.C, B, c.modality == D2V_SPEECH ? " (2 s clips)" : "",
           tm->total / updates, B * updates / tm->total, t.arch);
    printf("    ");
    for (int i = 0; i < PHASE_NUM; i++)
        printf("%s %.0f%%, ", model_phase_names[i], 100 * tm->model[i] / tm->total);
    printf("allreduce %.0f%%, optimiser %.0f%%, EMA %.0f%%\n", 100 * tm->allreduce / tm->total,
           100 * tm->optimizer / tm->total, 100 * tm->ema / tm->total);
    trainer_free(&t);
    free(b->ids), free(b->labels), free(b->tokens), free(b->images), free(b->audio);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    bench("configs/text-small.cfg", 4, threads);
    bench("configs/image-small.cfg", 4, threads);
    bench("configs/speech-small.cfg", 2, threads);
    return 0;
}
