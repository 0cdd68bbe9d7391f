/* frontend.h: the modality interface. A front-end turns a batch into the encoder's input for the
 * student (masked, training) and the teacher (unmasked, no dropout), declares its parameters,
 * draws its masks, runs its backward, and names its arrays for step dumps. model.c dispatches
 * through frontend_ops() alone; adding a modality is one file implementing this (see
 * docs/architecture.md, "Adding a modality"). */
#ifndef D2V_FRONTEND_H
#define D2V_FRONTEND_H

#include <stdint.h>

#include "d2v/kernels.h"
#include "d2v/params.h"

struct ModelConfig;
struct ModelParams;
struct Batch;

/// What a front-end hands the encoder.
typedef struct {
    const float *x;     // (B, T, C) encoder input
    const uint8_t *pad; // (B, T) 1 = padding key, or NULL
    const float *bias;  // (NH, T, T) additive attention bias, or NULL
    float *dbias;       // its gradient buffer (student only), or NULL
    const float *alibi; // (NH) ALiBi slope x learned scale per head (v2 speech), or NULL
    float *dalibi;      // its gradient buffer (student only), zeroed by the forward, or NULL
} FrontOut;

/// One named array of the last batch, for --dump-step (docs/dump-step.md).
typedef struct {
    const char *name;
    int type; // TRACE_U8, TRACE_I32, TRACE_F32
    int rank;
    int64_t dims[4];
    const void *data;
} TraceArray;
enum { TRACE_U8, TRACE_I32, TRACE_F32 };
#define FRONT_MAX_TRACE 6 // the front-end's arrays, plus two of v2's

typedef struct {
    const char *name;
    /// Declare the parameters into the table; p is the model's view (fill the member you own).
    void (*declare)(ParamTable *t, struct ModelParams *p, const struct ModelConfig *c);
    /// Activations for batches up to Bmax of up to `len` (text: tokens; speech: samples;
    /// images: unused). *Tmax receives the longest token sequence.
    void *(*create)(const struct ModelConfig *c, int Bmax, int len, int *Tmax);
    void (*destroy)(void *fe);
    /// Tokens T of this batch; speech runs the shared conv feature extractor here (params s).
    int (*begin)(void *fe, const struct ModelParams *s, const struct Batch *b);
    /// Draw the student's input mask (kept inside) and the loss positions sel (B, T).
    void (*mask)(void *fe, const struct Batch *b, uint64_t seed, uint8_t *sel);
    /// student = 1: masked input, dropout on; 0: the unmasked input, no dropout (teacher,
    /// features). Keeps separate activations for the two.
    FrontOut (*forward)(void *fe, const struct ModelParams *p, const struct Batch *b, int student,
                        DropKey dk);
    /// dx (B, T, C) = dLoss/d(encoder input), plus dbias if the forward had a bias.
    void (*backward)(void *fe, struct ModelParams *g, const struct ModelParams *s, const float *dx,
                     DropKey dk);
    /// First token of the features' mean pool (1 skips a cls token); NULL: 0.
    int (*pool_first)(const struct ModelConfig *c);
    /// The batch and mask arrays of the last step; returns how many (<= FRONT_MAX_TRACE).
    int (*trace)(const void *fe, const struct Batch *b, TraceArray *out);
    /// data2vec 2.0 (docs/algorithm.md §7.2). The local features of the *unmasked* batch
    /// (B, T, C): student = 1 in the student's activations, dropout on (`backward` then gives
    /// their gradient); 0 the teacher's own copy (images). NULL: no v2 path for the modality.
    FrontOut (*v2_local)(void *fe, const struct ModelParams *p, const struct Batch *b, int student,
                         DropKey dk);
    /// The context after the gather: x (R, Tk, C) -> (R, v2_extra + Tk, C) (images: the cls
    /// token, then a layer norm); student 0 for the teacher's full sequences. NULL: identity.
    const float *(*v2_context)(void *fe, const struct ModelParams *p, const float *x, int R, int Tk,
                               int student);
    /// dx (R, Tk, C) = the student context's input gradient from dout (R, v2_extra + Tk, C),
    /// parameter gradients accumulated into g.
    void (*v2_context_backward)(void *fe, struct ModelParams *g, const struct ModelParams *p,
                                const float *dout, float *dx);
    int v2_extra; // tokens v2_context prepends (the cls token)
    /// data2vec 2.0 with a relative positional encoder (speech, docs/algorithm.md §7.3), in
    /// place of the gather and v2_context: each clone's context from the full local features x
    /// (B, T, C) and its kept positions keep (B M, Tk), the positions computed over the whole
    /// zero-filled sequence; .x (B M, Tk, C), .alibi for the encoder. student 0 (teacher,
    /// features): keep NULL, M = 1, Tk = T, the unmasked sequence, no dropout.
    FrontOut (*v2_context_full)(void *fe, const struct ModelParams *p, const float *x,
                                const int32_t *keep, int B, int M, int T, int Tk, int student,
                                DropKey dk);
    /// dout (B M, Tk, C) and the encoder's dalibi -> parameter gradients into g and
    /// dx (B, T, C) += the local features' gradient.
    void (*v2_context_full_backward)(void *fe, struct ModelParams *g, const struct ModelParams *p,
                                     const float *dout, float *dx);
} FrontendOps;

/// The front-end of a modality (D2V_TEXT, D2V_IMAGE, D2V_SPEECH).
const FrontendOps *frontend_ops(int modality);

extern const FrontendOps frontend_text, frontend_image, frontend_speech;

#endif
