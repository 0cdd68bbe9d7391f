/* decoder.h: the data2vec 2.0 convolutional decoder (docs/algorithm.md §7.1): blocks of grouped
 * conv -> parameter-less layer norm -> GELU with residuals, over time (speech, text) or the patch
 * grid (images), then a projection back to the encoder width. Student only. */
#ifndef D2V_DECODER_H
#define D2V_DECODER_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/kernels.h"
#include "d2v/params.h"

#define DECODER_MAX_LAYERS 16
#define DECODER_LN_EPS 1e-5f // fairseq's LayerNorm default, whatever the model's norm_eps

enum {
    DECODER_INIT_TORCH = 0, // projection nn.Linear's default U(+-1/sqrt(fan_in)): speech and
                            //   images (DecoderBase.reset_parameters after init_bert_params)
    DECODER_INIT_BERT = 1,  // projection N(0, 0.02), zero bias: text (its encoder never resets
                            //   the decoder, so the model-wide init_bert_params stands)
};

typedef struct {
    int dims;        // 1: over the T axis (speech, text); 2: over an H x W grid (images)
    int C;           // encoder width: decoder input and output (target) width
    int D;           // decoder width (decoder_dim)
    int K;           // kernel size (odd)
    int groups;      // conv groups
    int layers;      // conv blocks
    int residual;    // add the block input where shapes match (fairseq decoder_residual)
    int proj_hidden; // 0: proj = Linear(D, C); > 0: Linear(D, proj_hidden) -> GELU ->
                     //   Linear(proj_hidden, C) (text v2's two-layer projection)
    float input_dropout;
    int H, W;      // dims == 2: the patch grid (T = H * W)
    int proj_init; // DECODER_INIT_*; the convs always keep nn.Conv's default init
} DecoderConfig;

typedef struct {
    float *conv_w[DECODER_MAX_LAYERS]; // (D, Cin/groups, K) or (D, Cin/groups, K, K); Cin = C
                                       //   for block 0, D after
    float *conv_b[DECODER_MAX_LAYERS]; // (D)
    float *proj_w, *proj_b;            // (C, D), (C); with proj_hidden P: (P, D), (P)
    float *proj2_w, *proj2_b;          // with proj_hidden P: (C, P), (C)
} DecoderParams;

/// Declare the decoder's tensors ("dec.*"; decayed matrices, exempt-able biases, never averaged
/// by the teacher: EMA_SHARED).
void decoder_declare(ParamTable *t, DecoderParams *p, const DecoderConfig *c);
/// Point p's tensors into `memory` (NULL: only count). Returns the float count used.
size_t decoder_params_layout(DecoderParams *p, float *memory, const DecoderConfig *c);
/// Initialise a bound view by the declared rules. Deterministic in `seed`.
void decoder_params_init(DecoderParams *p, const DecoderConfig *c, uint64_t seed);
/// Whether block i adds its input (decoder_residual and the input already D wide).
int decoder_block_residual(const DecoderConfig *c, int i);

typedef struct {
    DecoderConfig cfg;
    int Bmax, Tmax;
    float *arena; // every activation below, one xalloc
    size_t arena_floats;
    float *x0;                       // (N, C) the input after dropout (NULL: none, x itself)
    float *conv[DECODER_MAX_LAYERS]; // (N, D) conv outputs (LN input)
    float *mean[DECODER_MAX_LAYERS]; // (N) LN statistics
    float *rstd[DECODER_MAX_LAYERS]; // (N)
    float *out[DECODER_MAX_LAYERS];  // (N, D) block outputs where a residual was added; NULL
                                     //   elsewhere (GELU(LN(conv)) is recomputed)
    float *hid;                      // (N, P) first projection output (GELU input), or NULL
    float *y;                        // (N, C) the decoder output
    float *scratch[4];               // (N, max(C, D, P)) each
    float *cols;                     // conv im2col / repacked-weight scratch
    uint8_t *masked;                 // (N) rows that bypassed input dropout (masked_rows)
    /* the last forward */
    int B, T, train, masked_rows;
    const float *x;
    DropKey dk;
} Decoder;

/// Size and allocate the activations for batches up to Bmax x Tmax (dims == 2: Tmax = H W).
void decoder_create(Decoder *d, const DecoderConfig *c, int Bmax, int Tmax);
void decoder_destroy(Decoder *d);
/// Bytes held by the activation arena.
size_t decoder_act_bytes(const Decoder *d);

/// Output (B, T, C) for x (B, T, C). Training applies input dropout (p = input_dropout, site
/// dk.site, index t C + c within a sample), keyed like the encoder's. x and dk.sample_ids must
/// stay valid until decoder_backward.
const float *decoder_forward(Decoder *d, const DecoderParams *p, const float *x, int B, int T,
                             DropKey dk, int train);
/// As decoder_forward, but rows with masked[b T + t] set (the noise vectors the caller put in the
/// masked slots) bypass the input dropout: fairseq drops the encoder output before inserting
/// them (decoder_input in modalities/base.py). masked NULL: every row is dropped out.
const float *decoder_forward_masked(Decoder *d, const DecoderParams *p, const float *x,
                                    const uint8_t *masked, int B, int T, DropKey dk, int train);
/// From dout (B, T, C) of the last forward: accumulates parameter gradients into grads and,
/// unless dx is NULL, the input gradient into dx (B, T, C).
void decoder_backward(Decoder *d, DecoderParams *grads, const DecoderParams *p, const float *dout,
                      float *dx);

#endif
