/* model_internal.h: the Model struct, shared by model.c (v1 and dispatch) and model_v2.c
 * (data2vec 2.0); nothing outside src/d2v includes it. */
#ifndef D2V_MODEL_INTERNAL_H
#define D2V_MODEL_INTERNAL_H

#include "d2v/model.h"

struct Model {
    ModelConfig c;
    const FrontendOps *ops;
    void *fe;
    int Bmax, Tmax, B, T, M;
    Encoder enc_s, enc_t;
    Head head;
    uint8_t *sel;              // (B, T) loss positions
    float *targets, *gathered; // (M, C) rows
    float *dpred, *dgathered;  // head gradients
    float *dout;               // (B, T, C) gradient of the student's encoder output
    float *dfront;             // (B, T, C) gradient of the encoder input
    float *tscratch;           // targets_build scratch
    float *layers[64];         // teacher top-K layer pointers
    double phase[PHASE_NUM];   // seconds per phase
    GradHook hook;             // gradient-ready callback (the trainer's bucketed allreduce)
    void *hook_ctx;
    struct V2State *v2; // data2vec 2.0 state (model_v2.c), or NULL: v1 or features only
    int features_only;  // model_create_features: fe, enc_t and the final-norm scratch
};

/* data2vec 2.0 (model_v2.c) */
void v2_create(Model *m, int Bmax);
void v2_destroy(Model *m);
void v2_micro_step(Model *m, const ModelParams *s, const ModelParams *t, ModelParams *g,
                   const Batch *b, uint64_t seed, uint64_t step, MicroResult *out);
ModelTrace v2_trace(const Model *m, const Batch *b);

#endif
