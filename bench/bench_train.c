/* bench_train.c: seconds per trainer_update (the step d2v-train runs) of one config on synthetic
 * batches of the right shape, with the share of each part of the update, GFLOP/s of the
 * analytic count against this run's BLIS rate, and peak RSS against the arenas. --dump F writes
 * the first update as a step dump (bench/torch_step.py times PyTorch on the same model and
 * batch). Runs under mpirun too: data.batch_size is the global batch.
 * Usage: bench_train CONFIG [--updates N] [--dump F] [--set key=value ...] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench.h"
#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/trainer.h"

typedef struct {
    Batch b;
} Synthetic;

static const Batch *next_synthetic(void *ctx) { return &((Synthetic *)ctx)->b; }

/* Analytic FLOPs of one micro-step: the teacher's forward, the student's forward and backward
 * (2x the forward: input and weight gradients), the head on M rows, and the front-end's GEMMs.
 * Element-wise work is left out: this is the rate against BLIS's. */
/* One encoder forward over B rows of T tokens. */
static double enc_fwd(const EncoderConfig *e, double B, double T) {
    double C = e->C, F = e->F;
    return (double)e->L * (B * T * 2 * (4 * C * C + 2 * C * F) + B * 4 * T * T * C);
}

/* v2 (docs/algorithm.md §7.2): the student on B M rows of Tk kept tokens (forward + backward),
 * the teacher once on B x T, the decoder on B M x T (forward + backward). */
static double step_flops_v2(const ModelConfig *c, int B, int T, double kept) {
    const DecoderConfig *d = &c->v2c.dec;
    double R = (double)B * c->v2c.clones, C = c->enc.C, D = d->D;
    double taps = d->dims == 2 ? (double)d->K * d->K : d->K;
    double dec = 0, in = C;
    for (int l = 0; l < d->layers; l++, in = D)
        dec += 2 * R * T * taps * (in / d->groups) * D;
    dec +=
        d->proj_hidden ? 2 * R * T * (D * d->proj_hidden + d->proj_hidden * C) : 2 * R * T * D * C;
    return 3 * enc_fwd(&c->enc, R, kept) + enc_fwd(&c->enc, B, T) + 3 * dec;
}

static double step_flops(const ModelConfig *c, int B, int T, int S, double M) {
    const EncoderConfig *e = &c->enc;
    double C = e->C, fwd = enc_fwd(e, B, T);
    double f = 4 * fwd;
    double H = c->head.layers == 2 ? 2 * C : C;
    f += 3 * 2 * M * C * H * (c->head.layers == 2 ? 2 : 1);
    if (c->modality == D2V_IMAGE) {
        const ImageEmbedConfig *im = &c->image;
        double K = (double)im->Cin * im->P * im->P, Np = image_embed_num_patches(im);
        f += 3 * 2 * B * Np * C * K; /* student forward + weight gradient, teacher forward */
    } else if (c->modality == D2V_SPEECH) {
        const SpeechEmbedConfig *s = &c->speech;
        double L = S, in = 1;
        for (int i = 0; i < s->n_conv; i++) { /* shared: one forward, two backward GEMMs */
            L = (double)(int)((L - s->conv_k[i]) / s->conv_s[i] + 1);
            f += 3 * 2 * B * L * s->conv_dim[i] * in * s->conv_k[i];
            in = s->conv_dim[i];
        }
        f += 3 * 2 * B * T * C * in; /* projection */
        f += 4 * s->pos_layers * 2 * (double)B * T * C * (C / s->pos_groups) * s->pos_k;
    }
    return f;
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    h5io_init();
    const char *path = NULL, *dump = NULL, *extra[16];
    int updates = 4, n_extra = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--set") && i + 1 < argc && n_extra < 16)
            extra[n_extra++] = argv[++i];
        else if (!strcmp(argv[i], "--updates") && i + 1 < argc)
            updates = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc)
            dump = argv[++i];
        else
            path = argv[i];
    }
    if (!path || updates < 1)
        die("usage: bench_train CONFIG [--updates N] [--dump F] [--set key=value ...]");
    TrainConfig c;
    char err[512];
    train_config_defaults(&c);
    if (train_config_load(&c, path, err, sizeof err) < 0) die("%s", err);
    /* every dropout off (the PyTorch step has none), no collapse guard, one pass per update */
    const char *sets[] = {"model.dropout=0",      "model.attn_dropout=0", "model.act_dropout=0",
                          "model.drop_path=0",    "model.layerdrop=0",    "text.dropout=0",
                          "run.collapse_after=0", "data.micro_batch=0"};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        if (train_config_set(&c, sets[i], err, sizeof err)) die("%s", err);
    for (int i = 0; i < n_extra; i++)
        if (train_config_set(&c, extra[i], err, sizeof err)) die("%s", err);
    c.max_updates = updates + 2;
    if (c.modality == D2V_SPEECH && c.speech_max_samples > 2 * 16000) c.speech_max_samples = 32000;
    int per_rank = c.batch_size / g_dist.world;
    Dataset d = {0};
    d.modality = c.modality, d.vocab_size = 8192, d.bos_id = 0, d.pad_id = 1, d.eos_id = 2;
    d.unk_id = 3, d.mask_id = 8191, d.C = c.image_channels, d.num_samples = c.batch_size;
    Synthetic s = {{0}};
    Batch *b = &s.b;
    int B = per_rank, S = c.speech_max_samples;
    b->B = B, b->ids = xalloc(sizeof(int64_t) * B, "ids"), b->labels = xalloc(4 * B, "labels");
    for (int i = 0; i < B; i++)
        b->ids[i] = (int64_t)g_dist.rank * B + i;
    uint64_t k = rng_key(9, (uint64_t)g_dist.rank, 0, 0);
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
    size_t before = xalloc_total();
    Trainer t;
    trainer_init(&t, &c,
                 &(TrainerOptions){.source = {next_synthetic, &s}, .dataset = &d, .dump = dump});
    TrainMetrics m;
    trainer_update(&t, &m); /* warm-up (and the dump, if asked) */
    trainer_reset_times(&t);
    for (int n = 0; n < updates; n++)
        trainer_update(&t, &m);
    size_t arenas = xalloc_total() - before;
    double blis = blis_peak_gflops(2048);
    ModelTrace tr = model_trace(t.model, b);
    double kept = tr.T * (1 - model_masked_pct(t.model));
    double flops = (t.mc.v2 ? step_flops_v2(&t.mc, B, tr.T, kept)
                            : step_flops(&t.mc, B, tr.T, b->S, m.masked / g_dist.world)) *
                   g_dist.world;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    const TrainTimes *tm = &t.times;
    double su = tm->total / updates, gf = flops / su / 1e9 / g_dist.world;
    char cpu[256];
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    log0("%-17s L=%d C=%d B=%d%s ranks=%d threads=%d: %.4f s/update  %.1f samples/s  "
         "%.0f masked predictions/s  %.1f GFLOP/s per rank = %.0f%% of BLIS (%.1f)\n",
         name, t.mc.enc.L, t.mc.enc.C, c.batch_size, c.modality == D2V_SPEECH ? " (2 s clips)" : "",
         g_dist.world, gemm_threads(), su, c.batch_size / su, m.masked / su, gf, 100 * gf / blis,
         blis);
    log0("    ");
    for (int i = 0; i < PHASE_NUM; i++)
        log0("%s %.0f%%, ", model_phase_names[i], 100 * tm->model[i] / tm->total);
    log0("waiting for the slowest rank %.0f%%, allreduce %.0f%%, optimiser %.0f%%, EMA %.0f%%\n",
         100 * tm->skew / tm->total, 100 * tm->allreduce / tm->total,
         100 * tm->optimizer / tm->total, 100 * tm->ema / tm->total);
    log0("    memory: peak RSS %.1f MiB, arenas %.1f MiB (params+grads+adam+teacher %.1f, the rest "
         "activations) = %.2fx; %s, %s element-wise, %s BLIS kernels\n",
         ru.ru_maxrss / 1024.0, arenas / 1048576.0, 5.0 * t.np * 4 / 1048576.0,
         ru.ru_maxrss * 1024.0 / arenas, cpu_model(cpu, sizeof cpu), simd_level(), t.arch);
    log0("bench_train %s %.6f %.6f %.6f\n", name, su, tm->allreduce / updates,
         tm->skew / updates); /* for bench/run.sh */
    trainer_free(&t);
    free(b->ids), free(b->labels), free(b->tokens), free(b->images), free(b->audio);
    dist_finalize();
    return 0;
}
