/* decoder.c: the data2vec 2.0 convolutional decoder (docs/algorithm.md §7.1): input dropout, then
 * per block conv (groups, "same" padding) -> parameter-less LN -> GELU, a residual where the
 * widths match, then Linear(D, C) or Linear(D, P) -> GELU -> Linear(P, C). */
#include "d2v/decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/util.h"

static int in_dim(const DecoderConfig *c, int i) { return i ? c->D : c->C; }

static int widest(const DecoderConfig *c) {
    int m = c->C > c->D ? c->C : c->D;
    return c->proj_hidden > m ? c->proj_hidden : m;
}

static void zero(float *x, size_t n) { memset(x, 0, n * sizeof(float)); }

static void check_config(const DecoderConfig *c) {
    if (c->dims != 1 && c->dims != 2) die("decoder: dims %d (1 or 2)", c->dims);
    if (c->C <= 0 || c->D <= 0 || c->proj_hidden < 0)
        die("decoder: widths C=%d D=%d proj_hidden=%d", c->C, c->D, c->proj_hidden);
    if (c->K <= 0 || c->K % 2 == 0) die("decoder: kernel %d must be odd", c->K);
    if (c->groups <= 0 || c->C % c->groups || c->D % c->groups)
        die("decoder: %d groups must divide C=%d and D=%d", c->groups, c->C, c->D);
    if (c->layers <= 0 || c->layers > DECODER_MAX_LAYERS)
        die("decoder: %d layers (1..%d)", c->layers, DECODER_MAX_LAYERS);
    if (!(c->input_dropout >= 0 && c->input_dropout < 1))
        die("decoder: input dropout %g outside [0, 1)", (double)c->input_dropout);
    if (c->dims == 2 && (c->H <= 0 || c->W <= 0)) die("decoder: 2-D grid %d x %d", c->H, c->W);
    if (c->proj_init != DECODER_INIT_TORCH && c->proj_init != DECODER_INIT_BERT)
        die("decoder: unknown projection init %d", c->proj_init);
}

int decoder_block_residual(const DecoderConfig *c, int i) {
    /* fairseq DecoderBase.add_residual: only when the block input has the output's channels */
    return c->residual && in_dim(c, i) == c->D;
}

/* nn.Linear's default (kaiming_uniform_ with a = sqrt 5) is U(+-1/sqrt(fan_in)) for weight and
 * bias alike; nn.Conv1d / nn.Conv2d use the same rule with fan_in = Cin/groups * K^dims. */
static ParamInit torch_uniform(int64_t fan_in) {
    float a = 1.0f / sqrtf((float)fan_in);
    return PINIT(INIT_UNIFORM, -a, a);
}

static void declare_linear(ParamTable *t, float **w, float **b, const char *wn, const char *bn,
                           int64_t out, int64_t in, int init) {
    ParamInit wi = init == DECODER_INIT_BERT ? PINIT(INIT_NORMAL, 0.02f, 0) : torch_uniform(in);
    ParamInit bi = init == DECODER_INIT_BERT ? PINIT_ZERO : torch_uniform(in);
    ptab_add(t, w, wn, SHAPE2(out, in), wi, DECAY_YES, EMA_SHARED);
    ptab_add(t, b, bn, SHAPE1(out), bi, DECAY_1D, EMA_SHARED);
}

void decoder_declare(ParamTable *t, DecoderParams *p, const DecoderConfig *c) {
    check_config(c);
    int64_t C = c->C, D = c->D, K = c->K, P = c->proj_hidden;
    char wn[48], bn[48];
    for (int i = 0; i < c->layers; i++) {
        int64_t cg = in_dim(c, i) / c->groups, fan_in = cg * K * (c->dims == 2 ? K : 1);
        Shape s = c->dims == 2 ? SHAPE4(D, cg, K, K) : SHAPE3(D, cg, K);
        snprintf(wn, sizeof wn, "dec.conv_w.%d", i);
        snprintf(bn, sizeof bn, "dec.conv_b.%d", i);
        ptab_add(t, &p->conv_w[i], wn, s, torch_uniform(fan_in), DECAY_YES, EMA_SHARED);
        ptab_add(t, &p->conv_b[i], bn, SHAPE1(D), torch_uniform(fan_in), DECAY_1D, EMA_SHARED);
    }
    declare_linear(t, &p->proj_w, &p->proj_b, "dec.proj_w", "dec.proj_b", P ? P : C, D,
                   c->proj_init);
    if (P)
        declare_linear(t, &p->proj2_w, &p->proj2_b, "dec.proj2_w", "dec.proj2_b", C, P,
                       c->proj_init);
}

static void declare_any(ParamTable *t, void *p, const void *c) { decoder_declare(t, p, c); }

size_t decoder_params_layout(DecoderParams *p, float *memory, const DecoderConfig *c) {
    return ptab_module_layout(declare_any, p, sizeof *p, c, memory);
}

void decoder_params_init(DecoderParams *p, const DecoderConfig *c, uint64_t seed) {
    ptab_module_init(declare_any, p, sizeof *p, c, seed);
}

static size_t cols_size(const DecoderConfig *c, int Bmax, int Tmax) {
    size_t m = 0;
    for (int i = 0; i < c->layers && i < 2; i++) { /* blocks >= 1 all have block 1's shape */
        size_t s = c->dims == 2 ? conv2d_cols_size(Bmax, c->H, c->W, in_dim(c, i), c->K, c->groups)
                                : conv1d_cols_size(Bmax, Tmax, in_dim(c, i), c->D, c->K, 1,
                                                   c->K / 2, c->groups);
        if (s > m) m = s;
    }
    return m;
}

void decoder_create(Decoder *d, const DecoderConfig *c, int Bmax, int Tmax) {
    memset(d, 0, sizeof *d);
    check_config(c);
    if (Bmax <= 0 || Tmax <= 0) die("decoder: arena for %d x %d", Bmax, Tmax);
    if (c->dims == 2 && Tmax != c->H * c->W)
        die("decoder: 2-D grid %d x %d holds %d positions, not %d", c->H, c->W, c->H * c->W, Tmax);
    d->cfg = *c, d->Bmax = Bmax, d->Tmax = Tmax;
    size_t N = (size_t)Bmax * Tmax, C = c->C, D = c->D, P = c->proj_hidden, M = widest(c);
    /* Offsets first, then one allocation: the LN output and GELU output of each block are never
     * stored (recomputed from conv in the backward), nor the block output where no residual was
     * added (it is GELU(LN(conv)) again). */
    size_t off = 0, o_x0 = 0, o_conv[DECODER_MAX_LAYERS], o_mean[DECODER_MAX_LAYERS];
    size_t o_out[DECODER_MAX_LAYERS], o_hid = 0, o_scr[4];
    if (c->input_dropout > 0) o_x0 = off, off += N * C;
    for (int i = 0; i < c->layers; i++) {
        o_conv[i] = off, off += N * D;
        o_mean[i] = off, off += 2 * N;
        o_out[i] = off, off += decoder_block_residual(c, i) ? N * D : 0;
    }
    if (P) o_hid = off, off += N * P;
    size_t o_y = off;
    off += N * C;
    for (int s = 0; s < 4; s++)
        o_scr[s] = off, off += N * M;
    size_t o_cols = off;
    off += cols_size(c, Bmax, Tmax);
    d->arena_floats = off;
    d->arena = xalloc(off * sizeof(float), "decoder activations");
    float *a = d->arena;
    if (c->input_dropout > 0) d->x0 = a + o_x0;
    for (int i = 0; i < c->layers; i++) {
        d->conv[i] = a + o_conv[i];
        d->mean[i] = a + o_mean[i], d->rstd[i] = a + o_mean[i] + N;
        d->out[i] = decoder_block_residual(c, i) ? a + o_out[i] : NULL;
    }
    if (P) d->hid = a + o_hid;
    d->y = a + o_y;
    for (int s = 0; s < 4; s++)
        d->scratch[s] = a + o_scr[s];
    d->cols = a + o_cols;
    d->masked = xalloc(N, "decoder masked rows");
}

void decoder_destroy(Decoder *d) {
    free(d->arena), free(d->masked);
    memset(d, 0, sizeof *d);
}

size_t decoder_act_bytes(const Decoder *d) {
    return d->arena_floats * sizeof(float) + (size_t)d->Bmax * d->Tmax;
}

static void conv_forward(Decoder *d, float *out, const float *in, const DecoderParams *p, int i) {
    const DecoderConfig *c = &d->cfg;
    if (c->dims == 2)
        conv2d_forward(out, d->cols, in, p->conv_w[i], p->conv_b[i], d->B, c->H, c->W, in_dim(c, i),
                       c->D, c->K, c->groups);
    else
        conv1d_forward(out, d->cols, in, p->conv_w[i], p->conv_b[i], d->B, d->T, in_dim(c, i), c->D,
                       c->K, 1, c->K / 2, c->groups);
}

static void conv_backward(Decoder *d, float *din, DecoderParams *g, const float *dconv,
                          const float *in, const DecoderParams *p, int i) {
    const DecoderConfig *c = &d->cfg;
    if (c->dims == 2)
        conv2d_backward(din, g->conv_w[i], g->conv_b[i], d->cols, dconv, in, p->conv_w[i], d->B,
                        c->H, c->W, in_dim(c, i), c->D, c->K, c->groups);
    else
        conv1d_backward(din, g->conv_w[i], g->conv_b[i], d->cols, dconv, in, p->conv_w[i], d->B,
                        d->T, in_dim(c, i), c->D, c->K, 1, c->K / 2, c->groups);
}

/* Block i's output: stored where a residual was added, else GELU(LN(conv)) recomputed into buf
 * (the same kernels on the same input as the forward: the same bits). */
static const float *block_out(Decoder *d, int i, float *buf) {
    if (d->out[i]) return d->out[i];
    size_t N = (size_t)d->B * d->T, D = d->cfg.D;
    layernorm_forward(buf, NULL, NULL, d->conv[i], NULL, NULL, (int)N, (int)D, DECODER_LN_EPS);
    gelu_forward(buf, buf, N * D);
    return buf;
}

static int dropping(const Decoder *d) { return d->train && d->cfg.input_dropout > 0; }

const float *decoder_forward_masked(Decoder *d, const DecoderParams *p, const float *x,
                                    const uint8_t *masked, int B, int T, DropKey dk, int train) {
    const DecoderConfig *c = &d->cfg;
    if (B <= 0 || T <= 0 || B > d->Bmax || T > d->Tmax)
        die("decoder: batch %d x %d outside the arena sized for %d x %d", B, T, d->Bmax, d->Tmax);
    if (c->dims == 2 && T != c->H * c->W)
        die("decoder: %d positions for a %d x %d grid", T, c->H, c->W);
    d->B = B, d->T = T, d->train = train, d->dk = dk, d->x = x, d->masked_rows = masked != NULL;
    size_t N = (size_t)B * T, C = c->C, D = c->D, P = c->proj_hidden;
    if (masked) memcpy(d->masked, masked, N);
    const float *in = x;
    if (dropping(d)) {
        dropout_forward(d->x0, x, B, (size_t)T * C, c->input_dropout, dk);
        if (masked)
            for (size_t n = 0; n < N; n++)
                if (masked[n]) memcpy(d->x0 + n * C, x + n * C, C * sizeof(float));
        in = d->x0;
    }
    float *z = d->scratch[0];
    for (int i = 0; i < c->layers; i++) {
        float *o = d->out[i] ? d->out[i] : d->scratch[1 + i % 2]; /* never the block's input */
        conv_forward(d, d->conv[i], in, p, i);
        layernorm_forward(z, d->mean[i], d->rstd[i], d->conv[i], NULL, NULL, (int)N, (int)D,
                          DECODER_LN_EPS);
        gelu_forward(o, z, N * D);
        if (decoder_block_residual(c, i)) residual_forward(o, o, in, N * D);
        in = o;
    }
    if (P) {
        linear_forward(d->hid, in, p->proj_w, p->proj_b, (int)N, (int)D, (int)P);
        gelu_forward(z, d->hid, N * P);
        linear_forward(d->y, z, p->proj2_w, p->proj2_b, (int)N, (int)P, (int)C);
    } else {
        linear_forward(d->y, in, p->proj_w, p->proj_b, (int)N, (int)D, (int)C);
    }
    return d->y;
}

const float *decoder_forward(Decoder *d, const DecoderParams *p, const float *x, int B, int T,
                             DropKey dk, int train) {
    return decoder_forward_masked(d, p, x, NULL, B, T, dk, train);
}

void decoder_backward(Decoder *d, DecoderParams *g, const DecoderParams *p, const float *dout,
                      float *dx) {
    const DecoderConfig *c = &d->cfg;
    size_t N = (size_t)d->B * d->T, C = c->C, D = c->D, P = c->proj_hidden;
    float **s = d->scratch; /* s[2] holds recomputed block outputs; s[3] / s[1] d(block out) */
    float *dcur = s[3], *dprev = s[1], *t;
    const float *u = block_out(d, c->layers - 1, s[2]);
    zero(dcur, N * D);
    if (P) {
        gelu_forward(s[0], d->hid, N * P); /* the second projection's input, recomputed */
        zero(s[1], N * P);
        linear_backward(s[1], g->proj2_w, g->proj2_b, dout, s[0], p->proj2_w, (int)N, (int)P,
                        (int)C);
        zero(s[0], N * P);
        gelu_backward(s[0], d->hid, s[1], N * P);
        linear_backward(dcur, g->proj_w, g->proj_b, s[0], u, p->proj_w, (int)N, (int)D, (int)P);
    } else {
        linear_backward(dcur, g->proj_w, g->proj_b, dout, u, p->proj_w, (int)N, (int)D, (int)C);
    }
    for (int i = c->layers - 1; i >= 0; i--) { /* dcur = dLoss / d(block i's output) */
        size_t nin = N * in_dim(c, i);
        int need_din = i > 0 || dx;
        if (need_din) {
            if (decoder_block_residual(c, i))
                memcpy(dprev, dcur, nin * sizeof(float));
            else
                zero(dprev, nin);
        }
        zero(s[0], N * D); /* d(LN output) = dcur GELU'(LN(conv)), LN recomputed per row */
        layernorm_gelu_backward(s[0], dcur, d->conv[i], NULL, NULL, d->mean[i], d->rstd[i], (int)N,
                                (int)D);
        zero(dcur, N * D); /* dcur becomes d(conv output) */
        layernorm_backward(dcur, NULL, NULL, s[0], d->conv[i], NULL, d->mean[i], d->rstd[i], (int)N,
                           (int)D);
        const float *in = i ? block_out(d, i - 1, s[2]) : (dropping(d) ? d->x0 : d->x);
        conv_backward(d, need_din ? dprev : NULL, g, dcur, in, p, i);
        t = dcur, dcur = dprev, dprev = t;
    }
    if (!dx) return;
    /* dcur = dLoss / d(input after dropout) */
    if (!dropping(d)) {
        for (size_t n = 0; n < N * C; n++)
            dx[n] += dcur[n];
        return;
    }
    if (!d->masked_rows) {
        dropout_backward(dx, dcur, d->B, (size_t)d->T * C, c->input_dropout, d->dk);
        return;
    }
    float *dd = dprev; /* the mask regenerated from the key; masked rows passed through */
    zero(dd, N * C);
    dropout_backward(dd, dcur, d->B, (size_t)d->T * C, c->input_dropout, d->dk);
    for (size_t n = 0; n < N; n++) {
        const float *src = d->masked[n] ? dcur + n * C : dd + n * C;
        for (size_t j = 0; j < C; j++)
            dx[n * C + j] += src[j];
    }
}
