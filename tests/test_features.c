/* test_features.c: model_features against the front-end and encoder run through the public API:
 * the mean over real tokens, patches (not cls) or frames; padding and batch independent, no
 * dropout, deterministic. Run from the repository root (reads configs/). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/config.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/util.h"

#define ATOL 1e-5 /* same kernels on both routes: fp32 summation order only (seen <= 5e-7) */
#define RTOL 1e-4
enum { VOCAB = 64, PAD = 1, BATCH = 3, GUARD = 16 };

static const char *const tiny_cfg[3] = {"configs/text-tiny.cfg", "configs/image-tiny.cfg",
                                        "configs/speech-tiny.cfg"};

/* configs/<modality>-tiny.cfg (dropouts as configured) plus `sets`, as a ModelConfig. */
static int tiny_model(ModelConfig *mc, TrainConfig *cfg, int modality, const char *const *sets) {
    char err[1024];
    train_config_defaults(cfg);
    if (train_config_load(cfg, tiny_cfg[modality], err, sizeof err) != 0 ||
        train_config_set(cfg, "data.train=unused.h5", err, sizeof err) != 0)
        return check_record(0, err), -1;
    for (int i = 0; sets[i]; i++)
        if (train_config_set(cfg, sets[i], err, sizeof err) != 0) return check_record(0, err), -1;
    if (train_config_validate(cfg, 1, err, sizeof err) != 0) return check_record(0, err), -1;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.vocab_size = VOCAB, ds.bos_id = 0, ds.pad_id = PAD, ds.eos_id = 2, ds.unk_id = 3;
    ds.mask_id = VOCAB - 1;
    train_config_to_model(mc, cfg, &ds);
    return 0;
}

/* A batch of B rows: text rows of lens[i] real tokens (bos .. eos) padded to T; images and
 * audio N(0, 1). Row i has id 10 + i. */
static Batch make_batch(const ModelConfig *mc, const TrainConfig *cfg, int B, int T,
                        const int *lens, int S) {
    Batch b;
    memset(&b, 0, sizeof b);
    b.B = B, b.ids = xalloc(sizeof(int64_t) * B, "ids");
    uint64_t key = rng_key(5, 0, 0, 0);
    for (int i = 0; i < B; i++)
        b.ids[i] = 10 + i;
    if (mc->modality == D2V_TEXT) {
        b.T = T, b.tokens = xalloc(sizeof(int32_t) * B * T, "tokens");
        for (int i = 0; i < B; i++)
            for (int t = 0; t < T; t++) {
                int32_t v = 4 + (int32_t)(rng_uniform(key, (uint64_t)(i * 1000 + t)) * (VOCAB - 5));
                b.tokens[i * T + t] = t == 0 ? 0 : t == lens[i] - 1 ? 2 : t < lens[i] ? v : PAD;
            }
    } else if (mc->modality == D2V_IMAGE) {
        b.H = cfg->image_height, b.W = cfg->image_width, b.C = cfg->image_channels;
        size_t n = (size_t)B * b.H * b.W * b.C;
        b.images = xalloc(n * sizeof(float), "images");
        for (size_t i = 0; i < n; i++)
            b.images[i] = rng_normal(key, i);
    } else {
        b.S = S, b.audio = xalloc(sizeof(float) * B * S, "audio");
        for (size_t i = 0; i < (size_t)B * S; i++)
            b.audio[i] = rng_normal(key, i);
    }
    return b;
}

static void free_batch(Batch *b) { free(b->ids), free(b->tokens), free(b->images), free(b->audio); }

/* The second route: front-end and encoder run here with train off; `real` (B, C) averages the
 * tokens that count (text: not <pad>; image: not cls; speech: all), `all` (B, C) every token. */
static void reference(const ModelConfig *mc, const ModelParams *p, const Batch *b, float *real,
                      float *all) {
    int B = b->B, C = mc->enc.C, T = 0, first = 0;
    const float *x = NULL;
    uint8_t *pad = NULL;
    float *bias = NULL;
    TextEmbed te;
    ImageEmbed ie;
    SpeechFeatures sf;
    SpeechContext sc;
    DropKey dk = {0, 0, 1, NULL};
    if (mc->modality == D2V_TEXT) {
        T = b->T;
        pad = xalloc((size_t)B * T, "pad");
        for (int n = 0; n < B * T; n++)
            pad[n] = b->tokens[n] == mc->text.pad_id;
        text_embed_init(&te, &mc->text, B, T);
        text_embed_forward(&te, &p->text, b->tokens, B, T, 0, dk);
        x = te.out;
    } else if (mc->modality == D2V_IMAGE) {
        T = image_embed_tokens(&mc->image), first = !!mc->image.cls;
        image_embed_init(&ie, &mc->image, B);
        image_embed_forward(&ie, &p->image, b->images, NULL, B);
        if (mc->image.pos == IMAGE_POS_RELATIVE) {
            bias = xalloc(sizeof(float) * mc->enc.NH * T * T, "bias");
            image_rel_bias_forward(&ie, bias, &p->image);
        }
        x = ie.out;
    } else {
        speech_features_init(&sf, &mc->speech, B, b->S);
        speech_features_forward(&sf, &p->speech, b->audio, B, b->S);
        T = sf.T;
        speech_context_init(&sc, &mc->speech, B, T, 0);
        speech_context_forward(&sc, &p->speech, sf.features, NULL, B, T, 0,
                               (DropKey){0, 0, 0, NULL});
        x = sc.out;
    }
    Encoder e;
    encoder_init(&e, &mc->enc, B, T, 0);
    EncoderRun run = {.B = B, .T = T, .key_pad = pad, .attn_bias = bias};
    encoder_forward(&e, &p->enc, x, &run);
    const float *h = encoder_output(&e);
    for (int i = 0; i < B; i++)
        for (int k = 0; k < C; k++) {
            double s_real = 0, s_all = 0;
            int n_real = 0;
            for (int t = 0; t < T; t++) {
                double v = h[((size_t)i * T + t) * C + k];
                s_all += v;
                if (t >= first && !(pad && pad[i * T + t])) s_real += v, n_real++;
            }
            real[i * C + k] = (float)(s_real / n_real), all[i * C + k] = (float)(s_all / T);
        }
    encoder_free(&e);
    if (mc->modality == D2V_TEXT) text_embed_free(&te);
    if (mc->modality == D2V_IMAGE) image_embed_free(&ie);
    if (mc->modality == D2V_SPEECH) speech_features_free(&sf), speech_context_free(&sc);
    free(pad), free(bias);
}

typedef struct {
    const char *name;
    int modality;
    const char *sets[3];
} Case;

static void test_case(const Case *c) {
    printf("-- %s\n", c->name);
    ModelConfig mc;
    TrainConfig cfg;
    if (tiny_model(&mc, &cfg, c->modality, c->sets)) return;
    int C = model_width(&mc), T = cfg.text_block, S = 3200;
    const int lens[BATCH] = {T, 20, 9};
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *arena = xalloc(np * sizeof(float), "params");
    ModelParams p;
    model_params_layout(&p, arena, &mc);
    model_params_init(&p, &mc, 11);
    /* moved off the init, so the tensors that start at zero (biases, the relative bias table)
     * count too */
    for (size_t i = 0; i < np; i++)
        arena[i] += 0.05f * rng_normal(rng_key(12, 0, 0, 0), i);
    Model *m = model_create(&mc, BATCH, c->modality == D2V_TEXT ? T : S);
    Batch b = make_batch(&mc, &cfg, BATCH, T, lens, S);
    size_t n = (size_t)BATCH * C;
    float *out = xalloc((n + GUARD) * sizeof(float), "features");
    float *again = xalloc(n * sizeof(float), "features");
    float *real = xalloc(n * sizeof(float), "reference");
    float *all = xalloc(n * sizeof(float), "reference");
    const uint32_t guard_bits = 0x7fc0dead;
    for (int g = 0; g < GUARD; g++)
        memcpy(&out[n + g], &guard_bits, sizeof guard_bits);
    model_features(m, &p, &b, out);
    char label[160];

    int guard_ok = 1;
    for (int g = 0; g < GUARD; g++)
        guard_ok &= !memcmp(&out[n + g], &guard_bits, sizeof guard_bits);
    snprintf(label, sizeof label, "%s: (B, C) = (%d, %d) written, nothing past it", c->name, BATCH,
             C);
    check_record(guard_ok && C == mc.enc.C, label);

    reference(&mc, &p, &b, real, all);
    const char *which = c->modality == D2V_TEXT     ? "real tokens"
                        : c->modality == D2V_SPEECH ? "all frames"
                        : mc.image.cls              ? "patches (not cls)"
                                                    : "all patches";
    snprintf(label, sizeof label, "%s: = mean of the encoder output over %s", c->name, which);
    check_tensor(label, out, real, n, ATOL, RTOL);
    /* where some tokens must not count, counting them gives other features (the check can tell) */
    int excluded = c->modality == D2V_TEXT || (c->modality == D2V_IMAGE && mc.image.cls);
    if (excluded) {
        snprintf(label, sizeof label, "%s: the mean over every token (%s included) differs",
                 c->name, c->modality == D2V_TEXT ? "padding" : "cls");
        check_record(!check_tensor_q(label, out, all, n, ATOL, RTOL, 1), label);
    }

    /* deterministic, dropout off whatever the config says, and no state from a train step */
    model_features(m, &p, &b, again);
    snprintf(label, sizeof label, "%s: a second call is bit-identical", c->name);
    check_record(!memcmp(out, again, n * sizeof(float)), label);
    float *teacher = xalloc(np * sizeof(float), "teacher"), *grads = xalloc(np * 4, "grads");
    memcpy(teacher, arena, np * sizeof(float));
    ModelParams pt, pg;
    model_teacher_view(&pt, &p, teacher, &mc);
    model_params_layout(&pg, grads, &mc);
    MicroResult mr = {0, 0, NULL, NULL};
    model_micro_step(m, &p, &pt, &pg, &b, 3, 1, &mr);
    model_features(m, &p, &b, again);
    snprintf(label, sizeof label, "%s: bit-identical after a training micro-step (dropout on)",
             c->name);
    check_record(!memcmp(out, again, n * sizeof(float)), label);

    /* each row alone gives its row of the batch */
    int alone_ok = 1;
    for (int i = 0; i < BATCH; i++) {
        Batch one = b;
        one.B = 1, one.ids = b.ids + i;
        if (b.tokens) one.tokens = b.tokens + (size_t)i * T;
        if (b.images) one.images = b.images + (size_t)i * b.H * b.W * b.C;
        if (b.audio) one.audio = b.audio + (size_t)i * S;
        model_features(m, &p, &one, again);
        alone_ok &= check_tensor_q("", again, out + (size_t)i * C, C, ATOL, RTOL, 1);
    }
    snprintf(label, sizeof label, "%s: each row alone (B = 1) equals its row in the batch",
             c->name);
    check_record(alone_ok, label);

    /* text: the 9-token row padded to 9 (none), 14 and 32 tokens gives the same features */
    if (c->modality == D2V_TEXT) {
        const int widths[3] = {9, 14, T};
        const int l9[1] = {9};
        int pad_ok = 1;
        for (int w = 0; w < 3; w++) {
            Batch s = make_batch(&mc, &cfg, 1, widths[w], l9, 0);
            for (int t = 0; t < widths[w]; t++) /* the same tokens as row 2 */
                s.tokens[t] = t < 9 ? b.tokens[2 * T + t] : PAD;
            s.ids[0] = b.ids[2];
            model_features(m, &p, &s, again);
            int ok = check_tensor_q("", again, out + 2 * C, C, ATOL, RTOL, 1);
            if (!ok) printf("     padded to %d tokens: differs\n", widths[w]);
            pad_ok &= ok;
            free_batch(&s);
        }
        snprintf(label, sizeof label, "%s: 9 real tokens padded to 9, 14 or 32: same features",
                 c->name);
        check_record(pad_ok, label);
    }
    free(teacher), free(grads), free(out), free(again), free(real), free(all), free(arena);
    free_batch(&b);
    model_destroy(m);
}

int main(void) {
    gemm_init(0);
    const Case cases[] = {
        {"text", D2V_TEXT, {NULL}},
        {"image, cls, learned positions", D2V_IMAGE, {NULL}},
        {"image, cls, relative bias", D2V_IMAGE, {"image.pos=relative", NULL}},
        {"image, no cls, sin-cos", D2V_IMAGE, {"image.cls=false", "image.pos=sincos", NULL}},
        {"speech", D2V_SPEECH, {NULL}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        test_case(&cases[i]);
    return check_summary();
}
