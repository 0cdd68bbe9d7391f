/* head.c: the regression head (docs/algorithm.md §1.4): final norm, one or two linear layers. */
#include "d2v/head.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/kernels.h"
#include "d2v/util.h"

static int hidden(const HeadConfig *c) { return c->layers == 2 ? 2 * c->C : c->C; }

static ParamInit weight_init(const HeadConfig *c, int fan_in) {
    if (c->init == HEAD_INIT_BERT) return PINIT(INIT_NORMAL, 0.02f, 0);
    if (c->init == HEAD_INIT_BEIT) return PINIT(INIT_TRUNC_NORMAL, 0.02f, 0.02f);
    float a = 1.0f / sqrtf((float)fan_in);
    return PINIT(INIT_UNIFORM, -a, a);
}

static ParamInit bias_init(const HeadConfig *c, int fan_in) {
    return c->init == HEAD_INIT_TORCH ? weight_init(c, fan_in) : PINIT_ZERO;
}

void head_declare(ParamTable *t, HeadParams *p, const HeadConfig *c) {
    int64_t C = c->C, H = hidden(c);
    if (c->final_norm) {
        ptab_add(t, &p->ln_w, "head.ln_w", SHAPE1(C), PINIT_ONE, DECAY_1D, c->ema);
        ptab_add(t, &p->ln_b, "head.ln_b", SHAPE1(C), PINIT_ZERO, DECAY_1D, c->ema);
    }
    ptab_add(t, &p->w1, "head.w1", SHAPE2(H, C), weight_init(c, (int)C), DECAY_YES, c->ema);
    ptab_add(t, &p->b1, "head.b1", SHAPE1(H), bias_init(c, (int)C), DECAY_1D, c->ema);
    if (c->layers == 2) {
        ptab_add(t, &p->w2, "head.w2", SHAPE2(C, H), weight_init(c, (int)H), DECAY_YES, c->ema);
        ptab_add(t, &p->b2, "head.b2", SHAPE1(C), bias_init(c, (int)H), DECAY_1D, c->ema);
    }
}

void head_init(Head *h, const HeadConfig *c, int Mmax) {
    memset(h, 0, sizeof *h);
    if (c->layers != 1 && c->layers != 2) die("head: %d layers (1 or 2)", c->layers);
    h->cfg = *c, h->Mmax = Mmax;
    size_t MC = (size_t)Mmax * c->C, MH = (size_t)Mmax * hidden(c);
    if (c->final_norm) {
        h->normed = xalloc(MC * 4, "head norm"), h->dnormed = xalloc(MC * 4, "d head norm");
        h->mean = xalloc((size_t)Mmax * 4, "head norm mean");
        h->rstd = xalloc((size_t)Mmax * 4, "head norm rstd");
    }
    if (c->layers == 2) {
        h->hid = xalloc(MH * 4, "head hidden"), h->hid_act = xalloc(MH * 4, "head GELU");
        h->dhid = xalloc(MH * 4, "d head hidden"), h->dhid_act = xalloc(MH * 4, "d head GELU");
    }
    h->pred = xalloc(MC * 4, "predictions");
}

void head_free(Head *h) {
    free(h->normed), free(h->dnormed), free(h->mean), free(h->rstd), free(h->hid);
    free(h->hid_act), free(h->dhid), free(h->dhid_act), free(h->pred);
    memset(h, 0, sizeof *h);
}

const float *head_forward(Head *h, const HeadParams *p, const float *x, int M) {
    const HeadConfig *c = &h->cfg;
    int C = c->C, H = hidden(c);
    if (M > h->Mmax) die("head: %d rows, sized for %d", M, h->Mmax);
    h->M = M, h->x = x;
    if (c->final_norm) {
        layernorm_forward(h->normed, h->mean, h->rstd, x, p->ln_w, p->ln_b, M, C,
                          c->final_norm_eps);
        x = h->normed;
    }
    if (c->layers == 2) {
        linear_forward(h->hid, x, p->w1, p->b1, M, C, H);
        gelu_forward(h->hid_act, h->hid, (size_t)M * H);
        linear_forward(h->pred, h->hid_act, p->w2, p->b2, M, H, C);
    } else {
        linear_forward(h->pred, x, p->w1, p->b1, M, C, C);
    }
    return h->pred;
}

void head_backward(Head *h, HeadParams *g, const HeadParams *p, const float *dpred, float *dx) {
    const HeadConfig *c = &h->cfg;
    int M = h->M, C = c->C, H = hidden(c);
    const float *x = c->final_norm ? h->normed : h->x;
    float *dh = dx;
    if (c->final_norm) memset(h->dnormed, 0, sizeof(float) * M * C), dh = h->dnormed;
    if (c->layers == 2) {
        memset(h->dhid, 0, sizeof(float) * M * H);
        linear_backward(h->dhid, g->w2, g->b2, dpred, h->hid_act, p->w2, M, H, C);
        memset(h->dhid_act, 0, sizeof(float) * M * H);
        gelu_backward(h->dhid_act, h->hid, h->dhid, (size_t)M * H);
        linear_backward(dh, g->w1, g->b1, h->dhid_act, x, p->w1, M, C, H);
    } else {
        linear_backward(dh, g->w1, g->b1, dpred, x, p->w1, M, C, C);
    }
    if (c->final_norm)
        layernorm_backward(dx, g->ln_w, g->ln_b, h->dnormed, h->x, p->ln_w, h->mean, h->rstd, M, C);
}
