/* encoder.h: the transformer encoder stack (post-LN for speech/text, pre-LN + layer scale for
 * vision), with parameters in a caller-owned flat arena and activations in arenas sized once. */
#ifndef D2V_ENCODER_H
#define D2V_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/params.h"

typedef struct {
    int L, C, NH, F;        // blocks, width, heads, FFN width
    int pre_ln;             // 1: pre-LN BEiT block (vision v1); 0: post-LN (speech, text)
    float layer_scale_init; // > 0: learned per-channel scale on both branches (BEiT gamma)
    int k_bias;             // 0: key projection has no bias (BEiT: q and v bias only)
    float ln_eps;           // 1e-5 speech/text, 1e-6 vision
    float attn_dropout;     // on attention probabilities
    float act_dropout;      // after the FFN GELU
    float resid_dropout;    // on each branch before its residual add
    float layerdrop;        // probability of skipping a whole block in a training step
    float drop_path;        // per-sample stochastic depth, linear in depth from 0 to this
    int init_beit;          // 1: BEiT's trunc_normal_ + fix_init_weight; 0: init_bert_params
    int store_attention;    // 1: keep the (B, NH, T, T) probabilities for the backward; 0:
                            //   recompute them per head there (docs/performance.md)
    int keep_attn_out;      // 1: the forward-only mode also keeps every block's attn_out
                            //   (target.tensor = "attn", the paper's §5.4 ablation)
} EncoderConfig;

#define ENCODER_NUM_PARAMS 14
typedef struct {
    float *ln1_w, *ln1_b;   // (L, C)
    float *qkv_w;           // (L, 3C, C)  q | k | v rows
    float *qkv_b;           // (L, 3C)
    float *proj_w;          // (L, C, C)
    float *proj_b;          // (L, C)
    float *ln2_w, *ln2_b;   // (L, C)
    float *fc1_w;           // (L, F, C)
    float *fc1_b;           // (L, F)
    float *fc2_w;           // (L, C, F)
    float *fc2_b;           // (L, C)
    float *gamma1, *gamma2; // (L, C) when layer_scale_init > 0, else empty
} EncoderParams;

/// Element count of each parameter tensor, in EncoderParams order.
void encoder_param_sizes(size_t sizes[ENCODER_NUM_PARAMS], const EncoderConfig *cfg);
/// Declare the stacked (L, ...) tensors in the parameter table (docs/architecture.md).
void encoder_declare(ParamTable *t, EncoderParams *p, const EncoderConfig *cfg);
/// Point p's tensors into `memory` (NULL: only count). Returns the float count used.
size_t encoder_params_layout(EncoderParams *p, float *memory, const EncoderConfig *cfg);
/// Initialise a bound view by the declared rules (init_bert_params or BEiT's), layer scale =
/// layer_scale_init. Deterministic in `seed`.
void encoder_params_init(EncoderParams *p, const EncoderConfig *cfg, uint64_t seed);
/// Enforce structural zeros (no key bias) on parameters or their gradients.
void encoder_params_constrain(EncoderParams *p, const EncoderConfig *cfg);

/// One forward/backward call's inputs besides x.
typedef struct {
    int B, T;
    const uint8_t *key_pad;    // (B, T) 1 = padding key, or NULL
    const float *attn_bias;    // (NH, T, T) additive logit bias shared by all blocks, or NULL
    int train;                 // dropout, layerdrop and drop path on
    uint64_t seed, step;       // dropout keys: hash(seed, step, sample id, site)
    const int64_t *sample_ids; // (B) global sample index of each row, or NULL for 0..B-1
    /* backward only: called as each block's parameter gradients are complete (block L-1
     * first), so their allreduce can start while earlier blocks run; NULL: none */
    void (*block_done)(void *ctx, int layer);
    void *block_ctx;
    /* ALiBi (data2vec 2.0 audio): every block's logits gain -alibi[h] |pos_i - pos_j| */
    const float *alibi;       // (NH) per-head slope x learned scale, or NULL: none
    const int32_t *alibi_pos; // (B, T) each row's true positions (kept frames), NULL: 0..T-1
    float *dalibi;            // backward: (NH) += dLoss/d alibi over blocks and rows, or NULL
} EncoderRun;

/// Per-layer views of one block's activations (N = B*T).
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; // (N, C), (N), (N)
    float *qkv;                       // (N, 3C)
    float *att;                       // (B, NH, T, T) softmax probabilities, or NULL (recomputed)
    float *atty;                      // (N, C) attention output before out-projection
    float *attproj;                   // (N, C)
    float *res1;                      // (N, C) input + attention branch
    float *ln2, *ln2_mean, *ln2_rstd; // (N, C), (N), (N)
    float *fch;                       // (N, F) fc1 output (GELU input)
    float *fcg;                       // (N, F) GELU output after activation dropout (fc2 input)
    float *ffn;                       // (N, C) fc2 output
    float *ffn_out;                   // (N, C) branch of the last residual: gamma2 * ffn (= ffn)
    float *res2;                      // (N, C) second residual sum
    float *out;                       // (N, C) block output: ln2 (post-LN) or res2 (pre-LN)
    float *attn_out;                  // (N, C) branch of the first residual: gamma1 * attproj
                                      //   (= attproj without layer scale), before dropout
} BlockActs;

typedef struct {
    EncoderConfig cfg;
    int Bmax, Tmax, keep_caches;
    float *act_memory;  // forward activations (all layers when keep_caches, else one
    size_t act_count;   //   layer of scratch plus the per-layer ffn_out and out)
    float *grad_memory; // backward scratch (keep_caches only)
    size_t grad_count;
    float *att_scratch; // per-thread T x T buffers for attention
    size_t att_scratch_count;
    size_t field_offset[17], field_stride[17], field_size[17]; // per activation field (encoder.c)
    uint8_t *dropped; // (L) blocks skipped by layerdrop in the last forward
    double *alibi_dm; // (Bmax, NH) one block's ALiBi slope gradients per row
    int B, T;         // shape of the last forward
} Encoder;

/// Size and allocate the activation arenas for batches up to Bmax x Tmax. keep_caches = 0 is the
/// forward-only mode (the EMA teacher): no backward state, only per-block outputs are kept.
void encoder_init(Encoder *e, const EncoderConfig *cfg, int Bmax, int Tmax, int keep_caches);
void encoder_free(Encoder *e);
/// MiB held by the activation arenas.
double encoder_act_mib(const Encoder *e);

/// Run the L blocks on x (B, T, C).
void encoder_forward(Encoder *e, const EncoderParams *p, const float *x, const EncoderRun *run);
/// Views of layer l's activations for the last forward (only ffn_out/out, and attn_out under
/// keep_attn_out, valid without caches).
BlockActs encoder_block(const Encoder *e, int l);
/// Final output (B, T, C) of the last forward.
const float *encoder_output(const Encoder *e);
/// Backward from dout (B, T, C) = dLoss/d(final output). Accumulates into grads, dx (B, T, C)
/// and dattn_bias (NH, T, T); either pointer may be NULL.
void encoder_backward(Encoder *e, EncoderParams *grads, float *dx, float *dattn_bias,
                      const EncoderParams *p, const float *x, const EncoderRun *run,
                      const float *dout);

/// Per-kernel wall time of encoder forward/backward calls, for `make bench`.
enum {
    PROF_LINEAR,
    PROF_ATTENTION,
    PROF_LAYERNORM,
    PROF_GELU,
    PROF_RESIDUAL,
    PROF_MEMORY,
    PROF_NUM
};
extern const char *const encoder_prof_names[PROF_NUM];
extern double encoder_prof_seconds[PROF_NUM];
extern int encoder_prof_on;

#endif
