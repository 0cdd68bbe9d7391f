/* test_trainer_units.c: trainer pieces checked through the model and config APIs (no dataset, no
 * MPI): gradient accumulation (a batch of 2B equals its two halves of B, image and text), the EMA
 * teacher's placement (which tensors it averages, which it shares with the student,
 * docs/algorithm.md §4.1), the AdamW decay mask (docs/algorithm.md §5.1, §6.4), and configuration
 * errors (each returns -1 with a message naming the file, line and key). Run from the repository
 * root (reads configs/). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batch_util.h"
#include "check.h"
#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/frontends.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "d2v/objective.h"
#include "d2v/optim.h"
#include "d2v/util.h"

#define ACC_TOL 1e-5 /* accumulation: fp32 rounding, relative to each tensor's max |gradient| */

/* The text vocabulary a dataset would provide: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last. */
enum { VOCAB = 64, PAD = 1, MASK = VOCAB - 1 };

static const char *const tiny_cfg[3] = {"configs/text-tiny.cfg", "configs/image-tiny.cfg",
                                        "configs/speech-tiny.cfg"};

/* configs/<modality>-tiny.cfg with every dropout off, as a ModelConfig. */
static int tiny_model(ModelConfig *mc, TrainConfig *cfg, int modality) {
    char err[1024];
    const char *sets[] = {"model.dropout=0",     "model.attn_dropout=0", "model.act_dropout=0",
                          "model.drop_path=0",   "model.layerdrop=0",    "text.dropout=0",
                          "data.train=unused.h5"};
    train_config_defaults(cfg);
    if (train_config_load(cfg, tiny_cfg[modality], err, sizeof err) != 0) {
        printf("FAIL %s (run the test from the repository root)\n", err);
        return check_record(0, "load the tiny config"), -1;
    }
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        if (train_config_set(cfg, sets[i], err, sizeof err) != 0) return check_record(0, err), -1;
    if (train_config_validate(cfg, 1, err, sizeof err) != 0) return check_record(0, err), -1;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.vocab_size = VOCAB, ds.bos_id = 0, ds.pad_id = PAD, ds.eos_id = 2, ds.unk_id = 3;
    ds.mask_id = MASK;
    train_config_to_model(mc, cfg, &ds);
    return 0;
}

/* ---- gradient accumulation --------------------------------------------------------------------
 * model_micro_step adds the un-normalised gradient of the summed loss; masks are keyed on sample
 * ids, so with dropout off the 2B batch and its two halves see identical inputs, masks and
 * targets. (Speech is left out on purpose: span masks are thinned to the batch's minimum count.) */

static void fill_batch(Batch *b, const ModelConfig *mc, const TrainConfig *cfg, int B) {
    memset(b, 0, sizeof *b);
    b->B = B, b->epoch = 0;
    b->ids = xalloc(sizeof(int64_t) * B, "ids");
    for (int i = 0; i < B; i++)
        b->ids[i] = 100 + 7 * i; /* any global ids: masks are keyed on them */
    uint64_t key = rng_key(42, 0, 0, 0);
    if (mc->modality == D2V_TEXT) {
        int T = cfg->text_block;
        b->T = T;
        b->tokens = xalloc(sizeof(int32_t) * B * T, "tokens");
        for (int i = 0; i < B; i++) {
            int len = T - 3 * (i % 4); /* rows 1..3 of each 4 end in padding */
            for (int t = 0; t < T; t++) {
                int32_t v = 4 + (int32_t)(rng_uniform(key, (uint64_t)i * T + t) * (VOCAB - 5));
                b->tokens[(size_t)i * T + t] = t == 0 ? 0 : t == len - 1 ? 2 : t < len ? v : PAD;
            }
        }
    } else {
        b->H = cfg->image_height, b->W = cfg->image_width, b->C = cfg->image_channels;
        size_t n = (size_t)B * b->H * b->W * b->C;
        b->images = xalloc(n * sizeof(float), "images");
        for (size_t i = 0; i < n; i++)
            b->images[i] = rng_normal(key, i);
    }
}

static void test_accumulation(int modality) {
    const char *name = d2v_modality_names[modality];
    printf("-- accumulation (%s): one batch of 2B = two micro-batches of B\n", name);
    ModelConfig mc;
    TrainConfig cfg;
    if (tiny_model(&mc, &cfg, modality)) return;
    int B = 4, B2 = 2 * B;
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *params = xalloc(np * 4, "params"), *teacher = xalloc(np * 4, "teacher");
    float *g_full = xalloc(np * 4, "grads"), *g_halves = xalloc(np * 4, "grads");
    ModelParams ps, pt, pg_full, pg_halves;
    model_params_layout(&ps, params, &mc);
    model_params_init(&ps, &mc, 7);
    /* a teacher that differs from the student, as after some updates */
    for (size_t i = 0; i < np; i++)
        teacher[i] = params[i] * (1.0f + 0.05f * (rng_uniform(rng_key(3, 0, 0, 0), i) - 0.5f));
    model_teacher_view(&pt, &ps, teacher, &mc);
    model_params_layout(&pg_full, g_full, &mc);
    model_params_layout(&pg_halves, g_halves, &mc);
    Model *m = model_create(&mc, B2, modality == D2V_TEXT ? cfg.text_block : 0);
    Batch b;
    fill_batch(&b, &mc, &cfg, B2);
    MicroResult r_full = {0, 0, NULL, NULL}, r1 = {0, 0, NULL, NULL}, r2 = {0, 0, NULL, NULL};
    model_micro_step(m, &ps, &pt, &pg_full, &b, 1, 5, &r_full);
    Batch h1 = half_of(&b, 0, B), h2 = half_of(&b, B, B);
    model_micro_step(m, &ps, &pt, &pg_halves, &h1, 1, 5, &r1);
    model_micro_step(m, &ps, &pt, &pg_halves, &h2, 1, 5, &r2);
    char label[160];
    snprintf(label, sizeof label, "%s: masked count %lld = %lld + %lld (both halves non-empty)",
             name, (long long)r_full.masked, (long long)r1.masked, (long long)r2.masked);
    check_record(r_full.masked == r1.masked + r2.masked && r1.masked > 0 && r2.masked > 0, label);
    double sum = r1.loss_sum + r2.loss_sum, rel = fabs(r_full.loss_sum - sum) / fabs(sum);
    snprintf(label, sizeof label, "%s: summed loss %.6f = %.6f + %.6f (rel %.1e)", name,
             r_full.loss_sum, r1.loss_sum, r2.loss_sum, rel);
    check_record(rel <= 1e-6, label);
    ParamInfo table[512];
    int nt = model_param_table(table, 512, &mc);
    double worst = 0;
    int nonzero = 0;
    for (int i = 0; i < nt; i++) {
        const float *want = g_full + table[i].offset, *got = g_halves + table[i].offset;
        double mx = 0, err = 0;
        for (size_t j = 0; j < table[i].count; j++) {
            mx = fmax(mx, fabs(want[j]));
            err = fmax(err, fabs((double)got[j] - want[j]));
        }
        nonzero += mx > 0;
        snprintf(label, sizeof label, "%.8s: grad %.47s", name, table[i].name);
        check_tensor(label, got, want, table[i].count, ACC_TOL * mx, ACC_TOL);
        if (mx > 0) worst = fmax(worst, err / mx);
    }
    snprintf(label, sizeof label,
             "%s: %d of %d gradient tensors non-zero; worst error %.1e of the tensor's max", name,
             nonzero, nt, worst);
    check_record(nonzero == nt, label);
    model_destroy(m);
    free(b.ids), free(b.tokens), free(b.images);
    free(params), free(teacher), free(g_full), free(g_halves);
}

/* ---- speech: dropout on the encoder input (wav2vec2 TransformerEncoder.extract_features) ------
 * The same batch, parameters and masks with the encoder-input dropout at 0 and at 0.1 (every
 * encoder dropout off, so it is the only difference): the teacher's targets must be bit-identical
 * (it runs in eval mode: no dropout) and the student's predictions must differ. */

static void test_speech_input_dropout(void) {
    printf("-- speech encoder-input dropout: student only, never the teacher\n");
    ModelConfig mc;
    TrainConfig cfg;
    if (tiny_model(&mc, &cfg, D2V_SPEECH)) return;
    ModelConfig md = mc;
    md.speech.dropout = 0.1f;
    enum { B = 2, S = 4000 };
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *params = xalloc(np * 4, "params"), *grads = xalloc(np * 4, "grads");
    ModelParams ps, pg;
    model_params_layout(&ps, params, &mc);
    model_params_init(&ps, &mc, 7);
    model_params_layout(&pg, grads, &mc);
    Batch b;
    memset(&b, 0, sizeof b);
    int64_t ids[B] = {3, 11};
    float *audio = xalloc(sizeof(float) * B * S, "audio");
    for (size_t i = 0; i < (size_t)B * S; i++)
        audio[i] = rng_normal(rng_key(5, 0, 0, 0), i);
    b.B = B, b.ids = ids, b.S = S, b.audio = audio;
    float *y[2], *pred[2];
    int M[2];
    for (int run = 0; run < 2; run++) {
        const ModelConfig *c = run ? &md : &mc;
        Model *m = model_create(c, B, S);
        MicroResult r = {0, 0, NULL, NULL};
        model_micro_step(m, &ps, &ps, &pg, &b, 1, 5, &r); /* teacher = student's parameters */
        ModelTrace t = model_trace(m, &b);
        M[run] = t.M;
        y[run] = xalloc((size_t)t.M * t.C * 4, "targets");
        pred[run] = xalloc((size_t)t.M * t.C * 4, "predictions");
        memcpy(y[run], t.targets, (size_t)t.M * t.C * 4);
        memcpy(pred[run], t.preds, (size_t)t.M * t.C * 4);
        model_destroy(m);
    }
    size_t n = (size_t)M[0] * mc.enc.C;
    check_record(M[0] == M[1] && M[0] > 0, "speech: the same masked positions in both runs");
    check_record(M[0] == M[1] && !memcmp(y[0], y[1], n * 4),
                 "speech: teacher targets bit-identical with encoder-input dropout 0.1 (no "
                 "dropout in the teacher)");
    double diff = 0;
    for (size_t i = 0; M[0] == M[1] && i < n; i++)
        diff = fmax(diff, fabs((double)pred[0][i] - pred[1][i]));
    char label[160];
    snprintf(label, sizeof label,
             "speech: student predictions change with encoder-input dropout 0.1 (max |diff| "
             "%.2e)",
             diff);
    check_record(diff > 1e-3, label);
    for (int run = 0; run < 2; run++)
        free(y[run]), free(pred[run]);
    free(params), free(grads), free(audio);
}

/* ---- text positions: independent of the numeric pad id ---------------------------------------
 * A GPT-2 vocab.json puts <pad> at 50258; fairseq's numbering (offset by the pad id) would need a
 * 50771-row position table for 512 positions. d2v numbers from padding_idx 1 whatever the pad id:
 * max_positions + 2 rows, padding at row 1, real tokens from row 2. */

static int64_t param_rows(const ModelConfig *mc, const char *name, int64_t *cols) {
    ParamInfo table[512];
    int nt = model_param_table(table, 512, mc);
    for (int i = 0; i < nt; i++)
        if (!strcmp(table[i].name, name)) return *cols = table[i].shape[1], table[i].shape[0];
    return *cols = -1, -1;
}

static void test_text_positions_gpt2_pad(void) {
    printf("-- text positions with a GPT-2 vocabulary (<pad> = 50258)\n");
    ModelConfig mc, m1;
    TrainConfig cfg;
    if (tiny_model(&m1, &cfg, D2V_TEXT)) return; /* pad 1, as RoBERTa's dictionary */
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.vocab_size = 50265, ds.eos_id = 50256, ds.bos_id = 50257, ds.pad_id = 50258;
    ds.unk_id = 50259, ds.mask_id = 50264;
    train_config_to_model(&mc, &cfg, &ds);
    int64_t C, C1, rows = param_rows(&mc, "text.pos", &C), rows1 = param_rows(&m1, "text.pos", &C1);
    char label[200];
    snprintf(label, sizeof label,
             "text.pos is (%lld, %lld) for pad 50258 and (%lld, %lld) for pad 1: "
             "(max_positions + 2, C) = (%d, %d)",
             (long long)rows, (long long)C, (long long)rows1, (long long)C1,
             cfg.text_max_positions + 2, cfg.width);
    check_record(rows == cfg.text_max_positions + 2 && C == cfg.width && rows1 == rows && C1 == C,
                 label);
    /* the embedding itself: pad rows zero at init, positions 2.. for real tokens, 1 at padding */
    TextEmbedConfig tc = mc.text;
    TextEmbedParams p;
    size_t np = text_embed_params_layout(&p, NULL, &tc);
    float *mem = xalloc(np * 4, "text params");
    text_embed_params_layout(&p, mem, &tc);
    text_embed_params_init(&p, &tc, 3);
    int zero_rows = 1;
    for (int c = 0; c < tc.C; c++)
        zero_rows &=
            p.tok[(size_t)50258 * tc.C + c] == 0 && p.pos[(size_t)TEXT_POS_PAD_ROW * tc.C + c] == 0;
    TextEmbed t;
    text_embed_init(&t, &tc, 1, 6);
    int32_t ids[6] = {50257, 10, 11, 50256, 50258, 50258}, want[6] = {2, 3, 4, 5, 1, 1};
    DropKey dk = {0, 0, 1, NULL};
    text_embed_forward(&t, &p, ids, 1, 6, 0, dk);
    check_record(zero_rows && !memcmp(t.pos_ids, want, sizeof want),
                 "pad 50258: zero pad rows (token 50258, position 1); positions 2, 3, 4, 5, 1, 1");
    text_embed_free(&t);
    free(mem);
    /* one training step of the whole model on such a vocabulary: finite, no gradient into the
     * pad rows */
    size_t n = model_params_layout(NULL, NULL, &mc);
    float *params = xalloc(n * 4, "params"), *grads = xalloc(n * 4, "grads");
    ModelParams ps, pg;
    model_params_layout(&ps, params, &mc), model_params_layout(&pg, grads, &mc);
    model_params_init(&ps, &mc, 7);
    int B = 2, T = cfg.text_block;
    Batch b;
    memset(&b, 0, sizeof b);
    int64_t bid[2] = {1, 2};
    b.B = B, b.T = T, b.ids = bid, b.tokens = xalloc(sizeof(int32_t) * B * T, "tokens");
    for (int i = 0; i < B * T; i++) {
        int col = i % T, len = i < T ? T : T - 5;
        b.tokens[i] = col == 0         ? 50257
                      : col < len - 1  ? 100 + (i * 37) % 50000
                      : col == len - 1 ? 50256
                                       : 50258;
    }
    Model *m = model_create(&mc, B, T);
    MicroResult r = {0, 0, NULL, NULL};
    model_micro_step(m, &ps, &ps, &pg, &b, 1, 5, &r);
    int finite = isfinite(r.loss_sum) && r.masked > 0, pad_rows = 1;
    for (size_t i = 0; i < n; i++)
        finite &= isfinite(grads[i]);
    for (int c = 0; c < mc.enc.C; c++)
        pad_rows &= pg.text.tok[(size_t)50258 * mc.enc.C + c] == 0 &&
                    pg.text.pos[(size_t)TEXT_POS_PAD_ROW * mc.enc.C + c] == 0;
    snprintf(label, sizeof label,
             "a training step on it: loss %.4f over %lld positions, finite "
             "gradients, none into the pad rows",
             r.loss_sum, (long long)r.masked);
    check_record(finite && pad_rows, label);
    model_destroy(m);
    free(b.tokens), free(params), free(grads);
}

/* ---- EMA placement (spec §6) ----------------------------------------------------------------- */

/* ---- EMA placement (docs/algorithm.md §4.1) --------------------------------------------- */

/* Where the teacher reads tensor `ptr` of the student from: 1 = its own arena at the same
 * offset, 0 = the student's own tensor, -1 = anything else. */
static int teacher_place(const float *t_ptr, const float *s_ptr, const float *student,
                         const float *teacher) {
    if (t_ptr == s_ptr) return 0;
    if (t_ptr == teacher + (s_ptr - student)) return 1;
    return -1;
}

static void check_place(const char *what, const float *t_ptr, const float *s_ptr,
                        const float *student, const float *teacher, int want) {
    char label[160];
    int got = teacher_place(t_ptr, s_ptr, student, teacher);
    snprintf(label, sizeof label, "teacher view: %-22s %s", what,
             want ? "in the teacher arena (EMA)" : "the student's tensor (shared)");
    check_record(got == want, label);
}

static void enc_ptrs(const EncoderParams *e, const float *out[ENCODER_NUM_PARAMS]) {
    const float *v[ENCODER_NUM_PARAMS] = {e->ln1_w,  e->ln1_b, e->qkv_w,  e->qkv_b, e->proj_w,
                                          e->proj_b, e->ln2_w, e->ln2_b,  e->fc1_w, e->fc1_b,
                                          e->fc2_w,  e->fc2_b, e->gamma1, e->gamma2};
    memcpy(out, v, sizeof v);
}

/* Whether docs/algorithm.md §4.1 averages tensor `name` of this modality. */
static int spec_ema(const char *name, int modality) {
    if (!strncmp(name, "enc.", 4)) return 1; /* the transformer blocks, always */
    if (modality == D2V_IMAGE) /* everything, head included (the official vision EMA) */
        return !strncmp(name, "image.", 6) || !strncmp(name, "head.", 5);
    if (modality == D2V_SPEECH) return !strncmp(name, "speech.enc_ln", 13); /* encoder LN */
    return 0; /* text: embeddings shared; the head is never in the teacher */
}

static void test_ema_placement(int modality) {
    const char *mname = d2v_modality_names[modality];
    printf("-- EMA placement (%s)\n", mname);
    ModelConfig mc;
    TrainConfig cfg;
    if (tiny_model(&mc, &cfg, modality)) return;
    char label[200];
    snprintf(label, sizeof label, "%s: ema.frontend = %s in the tiny config", mname,
             mc.ema_frontend ? "true" : "false");
    check_record(mc.ema_frontend == (modality == D2V_IMAGE), label);
    size_t np = model_params_layout(NULL, NULL, &mc);
    float *params = xalloc(np * 4, "params"), *teacher = xalloc(np * 4, "teacher");
    ModelParams ps, pt;
    model_params_layout(&ps, params, &mc);
    model_teacher_view(&pt, &ps, teacher, &mc);
    /* front-end pointers */
    if (modality == D2V_TEXT) {
        check_place("text.tok", pt.text.tok, ps.text.tok, params, teacher, 0);
        check_place("text.pos", pt.text.pos, ps.text.pos, params, teacher, 0);
        check_place("text.ln_w", pt.text.ln_w, ps.text.ln_w, params, teacher, 0);
        check_place("text.ln_b", pt.text.ln_b, ps.text.ln_b, params, teacher, 0);
    } else if (modality == D2V_IMAGE) {
        check_place("image.patch_w", pt.image.patch_w, ps.image.patch_w, params, teacher, 1);
        check_place("image.patch_b", pt.image.patch_b, ps.image.patch_b, params, teacher, 1);
        check_place("image.cls", pt.image.cls, ps.image.cls, params, teacher, 1);
        check_place("image.mask_token", pt.image.mask_token, ps.image.mask_token, params, teacher,
                    1);
        check_place("image.pos", pt.image.pos, ps.image.pos, params, teacher, 1);
    } else {
        const SpeechEmbedParams *s = &ps.speech, *t = &pt.speech;
        char what[64];
        for (int i = 0; i < mc.speech.n_conv; i++) {
            snprintf(what, sizeof what, "speech.conv_w.%d", i);
            check_place(what, t->conv_w[i], s->conv_w[i], params, teacher, 0);
            snprintf(what, sizeof what, "speech.conv_ln_w/b.%d", i);
            check_place(what, t->conv_ln_w[i], s->conv_ln_w[i], params, teacher, 0);
            check_place(what, t->conv_ln_b[i], s->conv_ln_b[i], params, teacher, 0);
        }
        check_place("speech.feat_ln_w", t->feat_ln_w, s->feat_ln_w, params, teacher, 0);
        check_place("speech.feat_ln_b", t->feat_ln_b, s->feat_ln_b, params, teacher, 0);
        check_place("speech.proj_w", t->proj_w, s->proj_w, params, teacher, 0);
        check_place("speech.proj_b", t->proj_b, s->proj_b, params, teacher, 0);
        check_place("speech.mask_emb", t->mask_emb, s->mask_emb, params, teacher, 0);
        for (int j = 0; j < mc.speech.pos_layers; j++) {
            snprintf(what, sizeof what, "speech.pos_w/b.%d", j);
            check_place(what, t->pos_w[j], s->pos_w[j], params, teacher, 0);
            check_place(what, t->pos_b[j], s->pos_b[j], params, teacher, 0);
        }
        check_place("speech.enc_ln_w", t->enc_ln_w, s->enc_ln_w, params, teacher, 1);
        check_place("speech.enc_ln_b", t->enc_ln_b, s->enc_ln_b, params, teacher, 1);
    }
    const float *es[ENCODER_NUM_PARAMS], *et[ENCODER_NUM_PARAMS];
    enc_ptrs(&ps.enc, es), enc_ptrs(&pt.enc, et);
    int enc_ok = 1;
    for (int i = 0; i < ENCODER_NUM_PARAMS; i++)
        if (es[i]) enc_ok &= teacher_place(et[i], es[i], params, teacher) == 1;
    check_record(enc_ok, "teacher view: enc.* (every tensor)    in the teacher arena (EMA)");
    /* the ranges the trainer averages: every table tensor fully in or fully out, as §4.1 says */
    ParamRange r[8];
    int nr = model_ema_ranges(r, 8, &mc);
    uint8_t *in = xalloc(np, "ema coverage");
    int overlap = 0;
    size_t covered = 0;
    for (int k = 0; k < nr; k++)
        for (size_t j = r[k].offset; j < r[k].offset + r[k].count && j < np; j++)
            overlap |= in[j], in[j] = 1, covered++;
    snprintf(label, sizeof label, "%s: %d EMA ranges, disjoint, inside the arena", mname, nr);
    check_record(nr >= 1 && nr <= 4 && !overlap && r[nr - 1].offset + r[nr - 1].count <= np, label);
    ParamInfo table[512];
    int nt = model_param_table(table, 512, &mc);
    size_t want_cov = 0;
    for (int i = 0; i < nt; i++) {
        size_t n_in = 0;
        for (size_t j = 0; j < table[i].count; j++)
            n_in += in[table[i].offset + j];
        int want = spec_ema(table[i].name, modality);
        want_cov += want ? table[i].count : 0;
        snprintf(label, sizeof label, "%.8s: %-20.47s %s", mname, table[i].name,
                 want ? "averaged (EMA)" : "not averaged");
        check_record(n_in == (want ? table[i].count : 0), label);
    }
    snprintf(label, sizeof label, "%s: EMA covers %zu floats = §4.1's tensors (%zu)", mname,
             covered, want_cov);
    check_record(covered == want_cov, label);
    free(in), free(params), free(teacher);
}

/* ---- decay mask (docs/algorithm.md §6.4: the official vision rule) ------------------------ */

static void test_decay_mask(int modality) {
    const char *mname = d2v_modality_names[modality];
    printf("-- decay mask (%s)\n", mname);
    ModelConfig mc;
    TrainConfig cfg;
    if (tiny_model(&mc, &cfg, modality)) return;
    size_t np = model_params_layout(NULL, NULL, &mc);
    uint8_t *mask = xalloc(np, "decay mask"), *seen = xalloc(np, "table coverage");
    ParamInfo table[512];
    int nt = model_param_table(table, 512, &mc);
    int tiles = 1;
    for (int i = 0; i < nt; i++)
        for (size_t j = 0; j < table[i].count; j++)
            tiles &= table[i].offset + j < np && !seen[table[i].offset + j],
                seen[table[i].offset + j] = 1;
    for (size_t j = 0; j < np; j++)
        tiles &= seen[j];
    char label[200];
    snprintf(label, sizeof label, "%s: %d table tensors tile the %zu-float arena", mname, nt, np);
    check_record(tiles, label);
    model_decay_mask(mask, &mc, 0);
    size_t ones = 0;
    for (size_t j = 0; j < np; j++)
        ones += mask[j] == 1;
    snprintf(label, sizeof label, "%s: exempt_1d = false decays every parameter (fairseq v1)",
             mname);
    check_record(ones == np, label);
    model_decay_mask(mask, &mc, 1);
    for (int i = 0; i < nt; i++) {
        /* the tensor's own rank: enc.* are stacked over layers (L, ...) */
        int rank = table[i].rank - (strncmp(table[i].name, "enc.", 4) == 0);
        /* the official vision recipe: 1-D tensors, biases, pos_embed and cls_token are exempt;
         * the mask token (3-D there) decays */
        int exempt = (rank <= 1 && strcmp(table[i].name, "image.mask_token")) ||
                     !strcmp(table[i].name, "image.pos");
        size_t n0 = 0;
        for (size_t j = 0; j < table[i].count; j++)
            n0 += mask[table[i].offset + j] == 0;
        snprintf(label, sizeof label, "%.8s: %-20.47s rank %d: %s", mname, table[i].name, rank,
                 exempt ? "exempt" : "decayed");
        check_record(n0 == (exempt ? table[i].count : 0), label);
    }
    free(mask), free(seen);
}

/* ---- configuration errors -------------------------------------------------------------------- */

static char dir[] = "/tmp/d2v-trainer-units.XXXXXX";

static char written[16][512]; /* files to remove at the end */
static int n_written;

static const char *write_cfg(const char *name, const char *text) {
    if (n_written == 16) die("write_cfg: too many files");
    char *path = written[n_written++];
    snprintf(path, sizeof written[0], "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) die("%s: cannot write", path);
    fputs(text, f);
    fclose(f);
    return path;
}

/* rc must be -1 and err must contain each of the NULL-terminated substrings. */
static void expect_error(const char *what, int rc, const char *err, ...) {
    va_list ap;
    va_start(ap, err);
    int ok = rc == -1;
    const char *s;
    while ((s = va_arg(ap, const char *)))
        ok &= strstr(err, s) != NULL;
    va_end(ap);
    char label[1400];
    snprintf(label, sizeof label, "%-34s -> %s", what, rc == -1 ? err : "(accepted)");
    check_record(ok, label);
}

static void test_config_errors(void) {
    printf("-- configuration errors\n");
    TrainConfig c;
    char err[1024], at[600];
    const char *good = "modality = \"image\";\n"
                       "model: { layers = 2; width = 64; heads = 2; ffn = 128; };\n"
                       "target: { top_k = 2; };\n"
                       "data: { train = \"x.h5\"; };\n";
    const char *p = write_cfg("good.cfg", good);
    train_config_defaults(&c);
    int rc = train_config_load(&c, p, err, sizeof err);
    check_record(rc == 0 && c.layers == 2 && c.width == 64 && !strcmp(c.train_path, "x.h5") &&
                     train_config_validate(&c, 1, err, sizeof err) == 0,
                 "a small valid file loads and validates");
    for (int mod = 0; mod < 3; mod++) {
        train_config_defaults(&c);
        rc = train_config_load(&c, tiny_cfg[mod], err, sizeof err);
        snprintf(at, sizeof at, "%s loads and validates", tiny_cfg[mod]);
        check_record(rc == 0 && train_config_set(&c, "data.train=x.h5", err, sizeof err) == 0 &&
                         train_config_validate(&c, 1, err, sizeof err) == 0 && c.modality == mod,
                     at);
    }

    /* train_config_load: missing file, unknown key, wrong type, out of range, syntax error */
    snprintf(at, sizeof at, "%s/missing.cfg", dir);
    train_config_defaults(&c);
    expect_error("load: missing file", train_config_load(&c, at, err, sizeof err), err, at, NULL);
    p = write_cfg("unknown.cfg",
                  "modality = \"text\";\nmodel: {\n  layers = 2;\n  depth = 3;\n};\n");
    snprintf(at, sizeof at, "%s:4:", p);
    expect_error("load: unknown key", train_config_load(&c, p, err, sizeof err), err, at,
                 "unknown key", "'model.depth'", NULL);
    p = write_cfg("type.cfg", "model: {\n  layers = \"two\";\n};\n");
    snprintf(at, sizeof at, "%s:2:", p);
    expect_error("load: wrong type (string for int)", train_config_load(&c, p, err, sizeof err),
                 err, at, "'model.layers'", "integer", NULL);
    p = write_cfg("bool.cfg", "\nmodel: { pre_ln = 1; };\n");
    snprintf(at, sizeof at, "%s:2:", p);
    expect_error("load: wrong type (int for bool)", train_config_load(&c, p, err, sizeof err), err,
                 at, "'model.pre_ln'", "true or false", NULL);
    p = write_cfg("range.cfg", "optim: {\n  lr = 1e-4;\n  beta2 = 1.5;\n};\n");
    snprintf(at, sizeof at, "%s:3:", p);
    expect_error("load: out of range", train_config_load(&c, p, err, sizeof err), err, at,
                 "'optim.beta2'", "out of range", NULL);
    p = write_cfg("enum.cfg", "target: { tensor = \"middle\"; };\n");
    snprintf(at, sizeof at, "%s:1:", p);
    expect_error("load: bad enum value", train_config_load(&c, p, err, sizeof err), err, at,
                 "'target.tensor'", "end, ffn", NULL);
    p = write_cfg("syntax.cfg", "model: {\n  layers = 2;\n  width = ;\n};\n");
    snprintf(at, sizeof at, "%s:3:", p);
    expect_error("load: syntax error", train_config_load(&c, p, err, sizeof err), err, at, NULL);

    /* train_config_set: bad key, bad value, wrong type, out of range, no '=' */
    train_config_defaults(&c);
    expect_error("set: unknown key", train_config_set(&c, "model.depth=3", err, sizeof err), err,
                 "'model.depth'", NULL);
    expect_error("set: unparsable value", train_config_set(&c, "model.layers=2x", err, sizeof err),
                 err, "model.layers", "2x", NULL);
    expect_error("set: wrong type", train_config_set(&c, "model.pre_ln=3", err, sizeof err), err,
                 "model.pre_ln", "true or false", NULL);
    expect_error("set: out of range", train_config_set(&c, "optim.lr=100", err, sizeof err), err,
                 "'optim.lr'", "out of range", NULL);
    expect_error("set: bad enum", train_config_set(&c, "optim.schedule=step", err, sizeof err), err,
                 "'optim.schedule'", "cosine", NULL);
    expect_error("set: no '='", train_config_set(&c, "optim.lr", err, sizeof err), err, "optim.lr",
                 "key=value", NULL);
    check_record(train_config_set(&c, "optim.lr=2e-4", err, sizeof err) == 0 && c.lr == 2e-4,
                 "set: a good override is applied");

    /* train_config_validate: cross-key errors, each naming both keys */
    struct {
        const char *what, *sets[3], *want[3];
    } cross[] = {
        {"validate: heads divide width",
         {"model.width=66", "model.heads=4"},
         {"model.width", "model.heads"}},
        {"validate: top_k <= layers",
         {"model.layers=2", "target.top_k=3"},
         {"target.top_k", "model.layers"}},
        {"validate: data.train is set", {"data.train=\"\""}, {"data.train"}},
        {"validate: image multiple of patch",
         {"image.height=30", "image.patch=16"},
         {"image.patch"}},
        {"validate: mask <= patches", {"mask.image_patches=300"}, {"mask.image_patches"}},
        {"validate: tau0 <= tau_end",
         {"ema.tau0=0.9999", "ema.tau_end=0.999"},
         {"ema.tau0", "ema.tau_end"}},
        {"validate: lr_min <= lr",
         {"optim.lr=1e-4", "optim.lr_min=1e-3"},
         {"optim.lr_min", "optim.lr"}},
        {"validate: text_block <= positions",
         {"modality=text", "data.text_block=600", "text.max_positions=512"},
         {"data.text_block", "text.max_positions"}},
        {"validate: odd speech pos kernel",
         {"modality=speech", "speech.pos_kernel=4"},
         {"speech.pos_kernel"}},
        {"validate: speech ema.frontend",
         {"modality=speech", "ema.frontend=true"},
         {"ema.frontend", "speech"}},
    };
    for (size_t i = 0; i < sizeof cross / sizeof cross[0]; i++) {
        train_config_defaults(&c);
        int ok = train_config_set(&c, "data.train=x.h5", err, sizeof err) == 0;
        for (int j = 0; j < 3 && cross[i].sets[j]; j++)
            ok &= train_config_set(&c, cross[i].sets[j], err, sizeof err) == 0;
        if (!ok) {
            check_record(0, err);
            continue;
        }
        rc = train_config_validate(&c, 1, err, sizeof err);
        expect_error(cross[i].what, rc, err, cross[i].want[0],
                     cross[i].want[1] ? cross[i].want[1] : "", NULL);
    }
    train_config_defaults(&c);
    train_config_set(&c, "data.train=x.h5", err, sizeof err);
    check_record(train_config_validate(&c, 1, err, sizeof err) == 0, "validate: the defaults pass");

    /* the resolved file d2v-train writes reads back to the same configuration */
    train_config_defaults(&c);
    train_config_load(&c, tiny_cfg[D2V_SPEECH], err, sizeof err);
    train_config_set(&c, "data.train=x.h5", err, sizeof err);
    snprintf(at, sizeof at, "%s", write_cfg("resolved.cfg", ""));
    TrainConfig back;
    train_config_defaults(&back);
    int wrote = train_config_write(&c, at) == 0;
    rc = train_config_load(&back, at, err, sizeof err);
    /* bytes after the path's NUL may hold an earlier, longer path: compare the string only */
    size_t len = strlen(c.train_path), len_back = strlen(back.train_path);
    memset(c.train_path + len, 0, sizeof c.train_path - len);
    memset(back.train_path + len_back, 0, sizeof back.train_path - len_back);
    check_record(wrote && rc == 0 && !memcmp(&c, &back, sizeof c),
                 "the resolved file reads back to the identical configuration (speech-tiny)");
    for (int i = 0; i < n_written; i++)
        unlink(written[i]);
}

/* ---- initialisation rules (docs/algorithm.md §6.5) ------------------------------------------ */

typedef struct {
    double mean, std, maxabs;
    size_t n;
} Stats;

static Stats stats_of(const float *x, size_t n) {
    Stats s = {0, 0, 0, n};
    for (size_t i = 0; i < n; i++)
        s.mean += x[i], s.maxabs = fmax(s.maxabs, fabs(x[i]));
    s.mean /= (double)n;
    for (size_t i = 0; i < n; i++)
        s.std += (x[i] - s.mean) * (x[i] - s.mean);
    s.std = sqrt(s.std / (double)n);
    return s;
}

/* A model of `modality`'s tiny config with model.init = `init`, initialised from the table. */
static float *init_model(ModelConfig *mc, ParamTable *t, int modality, const char *init,
                         int width) {
    TrainConfig cfg;
    if (tiny_model(mc, &cfg, modality)) return NULL;
    char err[512], kv[64];
    snprintf(kv, sizeof kv, "model.init=%s", init);
    if (train_config_set(&cfg, kv, err, sizeof err)) return check_record(0, err), NULL;
    snprintf(kv, sizeof kv, "model.width=%d", width); /* wide enough for the statistics */
    if (train_config_set(&cfg, kv, err, sizeof err)) return check_record(0, err), NULL;
    snprintf(kv, sizeof kv, "model.ffn=%d", 2 * width);
    train_config_set(&cfg, kv, err, sizeof err);
    Dataset ds = {0};
    ds.vocab_size = VOCAB, ds.pad_id = PAD, ds.mask_id = MASK, ds.eos_id = 2, ds.unk_id = 3;
    train_config_to_model(mc, &cfg, &ds);
    model_declare(t, mc);
    float *x = xalloc(t->total * 4, "init arena");
    ModelParams p;
    ptab_bind(t, &p, x);
    ptab_init_values(t, &p, 11);
    return x;
}

/* std, bound and mean of one tensor (or of block l of a stacked one, l >= 0). */
static void check_init(const ParamTable *t, const float *x, const char *name, int l, double std,
                       double bound, const char *what) {
    const ParamSpec *p = ptab_find(t, name);
    char label[200];
    if (!p) {
        snprintf(label, sizeof label, "init: %s declared", name);
        check_record(0, label);
        return;
    }
    size_t per = l >= 0 ? p->count / (size_t)p->shape[0] : p->count;
    Stats s = stats_of(x + p->offset + (l >= 0 ? (size_t)l * per : 0), per);
    /* std within 5 standard errors of a normal sample's std; bound exact */
    double tol = std > 0 ? 5 * std / sqrt(2.0 * (double)per) + 1e-9 : 0;
    int ok = fabs(s.std - std) <= tol && fabs(s.mean) <= 5 * std / sqrt((double)per) + 1e-12 &&
             (bound <= 0 || s.maxabs <= bound * (1 + 1e-6));
    if (l >= 0)
        snprintf(label, sizeof label, "init %-9s %s[%d]: std %.5f (want %.5f), max %.4f (%s)", what,
                 name, l, s.std, std, s.maxabs, bound > 0 ? "bounded" : "unbounded");
    else
        snprintf(label, sizeof label, "init %-9s %s: std %.5f (want %.5f), max %.4f", what, name,
                 s.std, std, s.maxabs);
    check_record(ok, label);
}

static void test_init_rules(void) {
    printf("-- initialisation rules\n");
    ModelConfig mc;
    ParamTable t;
    /* BEiT: trunc_normal_(std=0.02) cut at +-0.02 has std 0.02 * 0.53956; attn.proj and mlp.fc2
     * of block l (1-based) then divided by sqrt(2 l) */
    const double tn = 0.02 * 0.539560;
    float *x = init_model(&mc, &t, D2V_IMAGE, "beit", 256);
    if (!x) return;
    check_init(&t, x, "image.patch_w", -1, tn, 0.02, "beit");
    check_init(&t, x, "image.cls", -1, tn, 0.02, "beit");
    check_init(&t, x, "image.mask_token", -1, tn, 0.02, "beit");
    check_init(&t, x, "image.pos", -1, tn, 0.02, "beit");
    check_init(&t, x, "image.patch_b", -1, 0, 1e-30, "beit");
    for (int l = 0; l < mc.enc.L; l++) {
        double r = 1 / sqrt(2.0 * (l + 1));
        check_init(&t, x, "enc.qkv_w", l, tn, 0.02, "beit");
        check_init(&t, x, "enc.fc1_w", l, tn, 0.02, "beit");
        check_init(&t, x, "enc.proj_w", l, tn * r, 0.02 * r, "beit");
        check_init(&t, x, "enc.fc2_w", l, tn * r, 0.02 * r, "beit");
    }
    check_init(&t, x, "head.w1", -1, tn, 0.02, "beit");
    check_init(&t, x, "head.b1", -1, 0, 1e-30, "beit");
    free(x), ptab_free(&t);
    /* MAE (the earlier d2v vision init, kept for image-tiny): xavier patch conv, N(0, 0.02)
     * tokens and encoder, nn.Linear's default head */
    x = init_model(&mc, &t, D2V_IMAGE, "mae", 256);
    if (!x) return;
    double K = (double)mc.image.Cin * mc.image.P * mc.image.P, C = mc.enc.C;
    double xa = sqrt(6.0 / (C + K));
    check_init(&t, x, "image.patch_w", -1, xa / sqrt(3.0), xa, "mae");
    check_init(&t, x, "image.mask_token", -1, 0.02, 0, "mae");
    check_init(&t, x, "enc.proj_w", 1, 0.02, 0, "mae");
    check_init(&t, x, "head.w1", -1, 1 / sqrt(C) / sqrt(3.0), 1 / sqrt(C), "mae");
    free(x), ptab_free(&t);
    /* text (fairseq): init_bert_params everywhere, the regression head included */
    x = init_model(&mc, &t, D2V_TEXT, "fairseq", 256);
    if (!x) return;
    check_init(&t, x, "text.tok", -1, 0.02 * sqrt((VOCAB - 1.0) / VOCAB), 0, "fairseq");
    check_init(&t, x, "enc.fc2_w", 1, 0.02, 0, "fairseq");
    check_init(&t, x, "head.w1", -1, 0.02, 0, "fairseq");
    check_init(&t, x, "head.w2", -1, 0.02, 0, "fairseq");
    check_init(&t, x, "head.b1", -1, 0, 1e-30, "fairseq");
    const ParamSpec *tok = ptab_find(&t, "text.tok");
    Stats pad = stats_of(x + tok->offset + (size_t)PAD * mc.enc.C, (size_t)mc.enc.C);
    check_record(pad.maxabs == 0, "init fairseq: the <pad> embedding row is zero");
    free(x), ptab_free(&t);
    /* speech (fairseq data2vec audio): nn.Linear's default final projection */
    x = init_model(&mc, &t, D2V_SPEECH, "fairseq", 256);
    if (!x) return;
    C = mc.enc.C;
    check_init(&t, x, "head.w1", -1, 1 / sqrt(C) / sqrt(3.0), 1 / sqrt(C), "fairseq");
    check_init(&t, x, "enc.qkv_w", 0, 0.02, 0, "fairseq");
    free(x), ptab_free(&t);
}

int main(void) {
    gemm_init(0);
    if (!mkdtemp(dir)) die("%s: cannot create a temporary directory", dir);
    test_accumulation(D2V_IMAGE);
    test_accumulation(D2V_TEXT);
    test_speech_input_dropout();
    test_text_positions_gpt2_pad();
    for (int mod = 0; mod < 3; mod++)
        test_ema_placement(mod);
    for (int mod = 0; mod < 3; mod++)
        test_decay_mask(mod);
    test_config_errors();
    test_init_rules();
    rmdir(dir);
    return check_summary();
}
