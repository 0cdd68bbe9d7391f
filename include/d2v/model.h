/* model.h: one data2vec model: a modality front-end, the transformer encoder, the student's
 * final norm and regression head, and the EMA teacher that shares or averages each part as the
 * spec's per-modality table says (§6). Parameters, gradients, AdamW moments and the teacher are
 * flat arenas of one layout; activations are sized once for the largest batch. */
#ifndef D2V_MODEL_H
#define D2V_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/dataset.h"
#include "d2v/encoder.h"
#include "d2v/frontends.h"
#include "d2v/masking.h"

typedef struct {
    int modality; // D2V_TEXT / D2V_IMAGE / D2V_SPEECH
    TextEmbedConfig text;
    ImageEmbedConfig image;
    SpeechEmbedConfig speech;
    EncoderConfig enc;
    int final_norm; // student LN (affine) on the encoder output before the head (BEiT)
    float final_norm_eps;
    int head_layers; // 1: Linear(C, C); 2: Linear(C, 2C) -> GELU -> Linear(2C, C) (text)
    /* targets (§4) */
    int top_k;             // K blocks averaged
    int target_ffn;        // 1: FFN branch before the last residual; 0: end of block (vision)
    int target_norm;       // TARGET_NORM_* per layer
    int target_final_norm; // LN over C after averaging (vision)
    float target_eps;
    /* loss (§5) */
    float loss_beta;  // 0: L2; > 0: smooth L1 with this beta
    float loss_scale; // <= 0: 1 / sqrt(C)
    /* teacher sharing (§6): EMA the front-end too (vision), or reuse the student's (text, speech:
     * speech still averages the encoder layer norm, and shares the positional convolution) */
    int ema_frontend;
    /* masking (§3) */
    TextMaskConfig text_mask;
    BlockMaskConfig image_mask;
    SpanMaskConfig speech_mask;
} ModelConfig;

typedef struct {
    TextEmbedParams text;
    ImageEmbedParams image;
    SpeechEmbedParams speech;
    EncoderParams enc;
    float *final_ln_w, *final_ln_b; // (C)
    float *head_w1, *head_b1;       // (H1, C), (H1); H1 = C (1 layer) or 2C
    float *head_w2, *head_b2;       // (C, 2C), (C) when head_layers == 2
} ModelParams;

/// Lay the parameters out in `memory` (NULL: count only); returns the float count.
size_t model_params_layout(ModelParams *p, float *memory, const ModelConfig *c);
void model_params_init(ModelParams *p, const ModelConfig *c, uint64_t seed);
/// 1 for each parameter AdamW decays; 0 for biases, norms and other 1-D tensors when
/// exempt_1d (data2vec 2.0 / timm), everything decayed otherwise (fairseq v1).
void model_decay_mask(uint8_t *mask, const ModelConfig *c, int exempt_1d);

typedef struct {
    size_t offset, count;
} ParamRange;
/// The arena ranges the teacher averages (EMA); the rest of the teacher is the student's own
/// parameters. Returns the number of ranges (<= 4).
int model_ema_ranges(ParamRange *r, const ModelConfig *c);
/// Teacher parameter view: EMA'd tensors in `teacher_memory`, shared ones the student's.
void model_teacher_view(ModelParams *t, const ModelParams *student, float *teacher_memory,
                        const ModelConfig *c);

/// One parameter tensor's place in the flat arena (for dumps, checkpoints and export).
typedef struct {
    char name[48]; // e.g. "enc.qkv_w", "speech.conv_w.3", "head_w1"
    size_t offset, count;
    int rank;
    int64_t shape[4];
} ParamInfo;
/// Fill up to max entries in arena order; returns the number of tensors.
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
void model_destroy(Model *m);
/// Forward both networks on a batch, build targets, the loss, and (train) accumulate the
/// student's un-normalised parameter gradients into grads. seed/step key dropout and masks.
void model_micro_step(Model *m, const ModelParams *student, const ModelParams *teacher,
                      ModelParams *grads, const Batch *b, uint64_t seed, uint64_t step,
                      MicroResult *out);
/// Frozen features for evaluation: the encoder on the unmasked input (no dropout) with the
/// given parameters, the final block output averaged over tokens (patches only for images,
/// real tokens for text), out (B, C).
void model_features(Model *m, const ModelParams *p, const Batch *b, float *out);
/// Model width C.
int model_width(const ModelConfig *c);
/// MiB of the activation arenas.
double model_act_mib(const Model *m);

/// Seconds spent in each phase of model_micro_step since the last reset (for benchmarks).
enum { PHASE_TEACHER, PHASE_STUDENT_FWD, PHASE_LOSS, PHASE_BACKWARD, PHASE_NUM };
extern const char *const model_phase_names[PHASE_NUM];
void model_phase_times(const Model *m, double out[PHASE_NUM]);
void model_phase_reset(Model *m);

/// Everything needed to check one micro-step independently (for --dump-step); valid after
/// model_micro_step. Shapes: masks (B, T) uint8, targets/preds (M, C), student input tokens.
typedef struct {
    int B, T, C, M;
    const uint8_t *sel;            // (B, T) positions in the loss
    const uint8_t *mask;           // (B, T) (image: (B, Np)) positions masked in the student input
    const int32_t *student_tokens; // text: (B, T) student input ids
    const float *targets, *preds;  // (M, C)
    float *const *teacher_layers;  // top_k x (B, T, C)
} ModelTrace;
ModelTrace model_trace(const Model *m);

#endif
