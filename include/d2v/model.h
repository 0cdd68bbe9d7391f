/* model.h: one data2vec model: a modality front-end (frontend.h), the transformer encoder, the
 * student's regression head, and the EMA teacher that shares or averages each tensor as its
 * declaration says (docs/algorithm.md §4.1). Parameters, gradients, AdamW moments and the teacher
 * are flat arenas of one table's layout; activations are sized once for the largest batch. */
#ifndef D2V_MODEL_H
#define D2V_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/dataset.h"
#include "d2v/decoder.h"
#include "d2v/encoder.h"
#include "d2v/frontend.h"
#include "d2v/frontends.h"
#include "d2v/head.h"
#include "d2v/masking.h"
#include "d2v/params.h"

/// data2vec 2.0 (docs/algorithm.md §7.2).
#define V2_MAX_CLONES 256
typedef struct {
    int clones;        // M masks per sample; one teacher pass serves them all
    V2MaskConfig mask; // kind, mask_prob, block, adjust (T or H, W set per batch)
    float noise_std;   // N(0, noise_std^2) vectors in the masked slots of the decoder input
    float cls_loss;    // images: weight of the cls token's loss (0: none)
    DecoderConfig dec;
} V2Config;

typedef struct ModelConfig {
    int modality; // D2V_TEXT / D2V_IMAGE / D2V_SPEECH
    int v2;       // 1: data2vec 2.0 (visible-only student, decoder, multi-mask); 0: v1
    V2Config v2c;
    TextEmbedConfig text;
    ImageEmbedConfig image;
    SpeechEmbedConfig speech;
    EncoderConfig enc;
    HeadConfig head;
    /* targets (docs/algorithm.md §1.3, §4.2) */
    int top_k;             // K blocks averaged
    int target_ffn;        // 1: FFN branch before the last residual; 0: end of block (vision)
    int target_attn;       // 1: self-attention branch before its residual (ablation; not v2)
    int target_norm;       // TARGET_NORM_* per layer
    int target_final_norm; // LN over C after averaging (vision)
    float target_eps;
    /* loss (§1.4) */
    float loss_beta;  // 0: L2; > 0: smooth L1 with this beta
    float loss_scale; // <= 0: 1 / sqrt(C)
    /* teacher sharing (§4.1): average the front-end too (vision), or reuse the student's (text,
     * speech: speech still averages the encoder layer norm, and shares the positional conv) */
    int ema_frontend;
    /* masking (§3) */
    TextMaskConfig text_mask;
    BlockMaskConfig image_mask;
    SpanMaskConfig speech_mask;
} ModelConfig;

/// A view of one arena (student, gradients or teacher): pointers into it, from the table.
typedef struct ModelParams {
    union { /* the front-end's tensors: the member of the config's modality */
        TextEmbedParams text;
        ImageEmbedParams image;
        SpeechEmbedParams speech;
    };
    EncoderParams enc;
    HeadParams head;   // v1
    DecoderParams dec; // v2
} ModelParams;

/// The model's parameter table: front-end, encoder, head, in arena order. Free with ptab_free.
void model_declare(ParamTable *t, const ModelConfig *c);

/* Conveniences derived from the table, for callers without one. */
/// Lay the parameters out in `memory` (NULL: count only); returns the float count.
size_t model_params_layout(ModelParams *p, float *memory, const ModelConfig *c);
/// Initialise a bound view by the declared rules.
void model_params_init(ModelParams *p, const ModelConfig *c, uint64_t seed);
/// 1 for each parameter AdamW decays (DECAY_1D tensors exempt when exempt_1d).
void model_decay_mask(uint8_t *mask, const ModelConfig *c, int exempt_1d);
/// The arena ranges the teacher averages (EMA). Returns the number of ranges (<= max).
int model_ema_ranges(ParamRange *r, int max, const ModelConfig *c);
/// Teacher parameter view: averaged tensors in `teacher_memory`, shared ones the student's.
void model_teacher_view(ModelParams *t, const ModelParams *student, float *teacher_memory,
                        const ModelConfig *c);

/// One parameter tensor's place in the arena (for dumps, checkpoints and export).
typedef ParamSpec ParamInfo;
/// Copy up to max entries in arena order; returns the number of tensors.
int model_param_table(ParamInfo *out, int max, const ModelConfig *c);

/// What one micro-batch produced.
typedef struct {
    double loss_sum;    // summed over masked positions and dims (times the loss scale)
    int64_t masked;     // positions in the loss
    double *pred_stats; // (1 + 2C) variance sums of predictions (caller-owned)
    double *target_stats;
} MicroResult;

typedef struct Model Model;

/// Allocate activations for batches of up to Bmax samples (text: T tokens; image: H x W;
/// speech: up to Smax samples).
Model *model_create(const ModelConfig *c, int Bmax, int T_or_Smax);
/// The same for model_features / model_features_multi alone: the front-end and one encoder
/// without training state (no student, head, targets or v2 clones). Training calls die.
Model *model_create_features(const ModelConfig *c, int Bmax, int T_or_Smax);
void model_destroy(Model *m);
/// Forward both networks on a batch, build targets, the loss, and (train) accumulate the
/// student's un-normalised parameter gradients into grads. seed/step key dropout and masks.
void model_micro_step(Model *m, const ModelParams *student, const ModelParams *teacher,
                      ModelParams *grads, const Batch *b, uint64_t seed, uint64_t step,
                      MicroResult *out);
/// Called in model_micro_step's backward as each part's parameter gradients are complete:
/// GRAD_HEAD, then GRAD_BLOCK for blocks L-1 .. 0, then GRAD_FRONT (the trainer starts their
/// allreduce there). NULL: none.
enum { GRAD_HEAD, GRAD_BLOCK, GRAD_FRONT };
typedef void (*GradHook)(void *ctx, int part, int layer);
void model_set_grad_hook(Model *m, GradHook fn, void *ctx);
/// Frozen features for evaluation: the encoder on the unmasked input (no dropout) with the
/// given parameters, the final block output averaged over tokens (patches only for images,
/// real tokens for text), out (B, C).
void model_features(Model *m, const ModelParams *p, const Batch *b, float *out);
/// The feature variants of one forward (docs/evaluation.md), each (B, C); NULL ones are skipped.
/// Pooled as model_features pools: over the patches (not cls) of images, the real tokens of
/// text, every frame of speech.
typedef struct {
    float *mean_final; // the final block output, averaged: model_features
    float *mean_norm;  // the final norm (model_final_norm) on each token, then averaged
    float *first;      // the final block output at token 0: the cls token (images), <s> (text)
    float *mean_lastk; // the average of the last `last_k` block outputs, averaged over tokens
    int last_k;        // 1 .. L (used only with mean_lastk)
} ModelFeatures;
/// One unmasked forward without dropout (as model_features) filling every requested variant.
/// mean_norm needs model_final_norm; it uses p's copy of the norm (the teacher's own for vision,
/// where the teacher averages the whole model).
void model_features_multi(Model *m, const ModelParams *p, const Batch *b, const ModelFeatures *f);
/// 1 when the architecture ends in a final norm after the last block (vision: BEiT's final
/// LayerNorm, head.ln_*); 0 for post-LN stacks, whose blocks each end in their own norm.
int model_final_norm(const ModelConfig *c);
/// Model width C.
int model_width(const ModelConfig *c);
/// v2: the share of each row's tokens the last micro-step masked (fairseq's masked_pct); v1: 0.
double model_masked_pct(const Model *m);

/// Seconds spent in each phase of model_micro_step since the last reset (for benchmarks).
enum { PHASE_TEACHER, PHASE_STUDENT_FWD, PHASE_LOSS, PHASE_BACKWARD, PHASE_NUM };
extern const char *const model_phase_names[PHASE_NUM];
void model_phase_times(const Model *m, double out[PHASE_NUM]);
void model_phase_reset(Model *m);

/// Everything needed to check one micro-step independently (for --dump-step); valid after
/// model_micro_step. Shapes: sel (B, T), targets/preds (M, C), teacher layers (B, T, C).
typedef struct {
    int B, T, C, M;
    const uint8_t *sel;           // (B, T) positions in the loss
    const float *targets, *preds; // (M, C)
    float *const *teacher_layers; // top_k x (B, T, C)
    int n_arrays;                 // the front-end's batch and mask arrays
    TraceArray arrays[FRONT_MAX_TRACE];
    int rows; // rows of sel: B (v1), or B x clones (v2: sel is then the masks, row b M + m)
} ModelTrace;
ModelTrace model_trace(const Model *m, const Batch *b);

#endif
