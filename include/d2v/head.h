/* head.h: the student's regression head on the masked positions: an optional affine layer norm
 * (BEiT's final norm), then Linear(C, C), or Linear(C, 2C) -> GELU -> Linear(2C, C) for text. */
#ifndef D2V_HEAD_H
#define D2V_HEAD_H

#include "d2v/params.h"

enum {
    HEAD_INIT_TORCH = 0, // nn.Linear's default, U(+-1/sqrt(fan_in)) (fairseq data2vec audio)
    HEAD_INIT_BERT = 1,  // init_bert_params: N(0, 0.02), zero bias (data2vec text)
    HEAD_INIT_BEIT = 2,  // trunc_normal_(0.02) cut at +-0.02, zero bias (data2vec vision)
};

typedef struct {
    int C;
    int layers;     // 1 or 2
    int final_norm; // 1: affine LN over C before the projection
    float final_norm_eps;
    int init; // HEAD_INIT_*
    int ema;  // EMA_AVERAGE (vision averages the whole model) or EMA_SHARED
} HeadConfig;

typedef struct {
    float *ln_w, *ln_b; // (C) when final_norm
    float *w1, *b1;     // (H, C), (H); H = C (1 layer) or 2C
    float *w2, *b2;     // (C, H), (C) when layers == 2
} HeadParams;

void head_declare(ParamTable *t, HeadParams *p, const HeadConfig *c);

typedef struct {
    HeadConfig cfg;
    int Mmax, M;
    const float *x;                   // (M, C) the last forward's input
    float *normed, *mean, *rstd;      // final norm: (M, C), (M), (M)
    float *hid, *hid_act, *pred;      // (M, H), (M, H), (M, C)
    float *dnormed, *dhid, *dhid_act; // backward scratch
} Head;

void head_init(Head *h, const HeadConfig *c, int Mmax);
void head_free(Head *h);
/// Predictions (M, C) for the rows x (M, C); x must stay valid until head_backward.
const float *head_forward(Head *h, const HeadParams *p, const float *x, int M);
/// From dpred (M, C): accumulates parameter gradients into g and the input gradient into dx.
void head_backward(Head *h, HeadParams *g, const HeadParams *p, const float *dpred, float *dx);

#endif
