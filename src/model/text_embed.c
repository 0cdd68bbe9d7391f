/* text_embed.c: the text input encoder, fairseq TransformerEncoder.forward_embedding as data2vec
 * text uses it (docs/algorithm.md §2.3): token + learned position embedding (no scaling), layer
 * norm, dropout, padding positions zeroed. Positions follow fairseq's make_positions with
 * padding_idx 1 (real tokens from row 2), independent of the dataset's numeric pad id
 * (frontends.h). */
#include <stdlib.h>
#include <string.h>

#include "d2v/frontends.h"
#include "d2v/util.h"

int text_embed_pos_rows(const TextEmbedConfig *c) {
    return c->max_positions + TEXT_POS_PAD_ROW + 1;
}

void text_embed_declare(ParamTable *t, TextEmbedParams *p, const TextEmbedConfig *c, int ema) {
    int64_t C = c->C;
    /* init_bert_params N(0, 0.02); nn.Embedding(padding_idx): the pad rows stay zero */
    ParamInit e = PINIT(INIT_NORMAL, 0.02f, 0), pe = e;
    e.zero_row = c->pad_id, pe.zero_row = TEXT_POS_PAD_ROW;
    ptab_add(t, &p->tok, "text.tok", SHAPE2(c->V, C), e, DECAY_YES, ema);
    ptab_add(t, &p->pos, "text.pos", SHAPE2(text_embed_pos_rows(c), C), pe, DECAY_YES, ema);
    ptab_add(t, &p->ln_w, "text.ln_w", SHAPE1(C), PINIT_ONE, DECAY_1D, ema);
    ptab_add(t, &p->ln_b, "text.ln_b", SHAPE1(C), PINIT_ZERO, DECAY_1D, ema);
}

static void declare_shared(ParamTable *t, void *p, const void *c) {
    text_embed_declare(t, p, c, EMA_SHARED);
}

size_t text_embed_params_layout(TextEmbedParams *p, float *memory, const TextEmbedConfig *c) {
    return ptab_module_layout(declare_shared, p, sizeof *p, c, memory);
}

void text_embed_params_init(TextEmbedParams *p, const TextEmbedConfig *c, uint64_t seed) {
    ptab_module_init(declare_shared, p, sizeof *p, c, seed);
}

void text_embed_init(TextEmbed *t, const TextEmbedConfig *c, int Bmax, int Tmax) {
    memset(t, 0, sizeof *t);
    if (c->V <= 0 || c->C <= 0 || c->pad_id < 0 || c->pad_id >= c->V || c->max_positions <= 0)
        die("text embedding: bad config V=%d C=%d pad_id=%d max_positions=%d", c->V, c->C,
            c->pad_id, c->max_positions);
    if (Tmax > c->max_positions)
        die("text embedding: sequence length %d exceeds max_positions %d", Tmax, c->max_positions);
    t->cfg = *c, t->Bmax = Bmax, t->Tmax = Tmax;
    size_t N = (size_t)Bmax * Tmax, NC = N * c->C;
    t->tokens = xalloc(N * sizeof(int32_t), "text tokens");
    t->pos_ids = xalloc(N * sizeof(int32_t), "text positions");
    t->pad = xalloc(N, "text padding mask");
    t->sum = xalloc(NC * sizeof(float), "text embedding sum");
    t->mean = xalloc(N * sizeof(float), "text LN mean");
    t->rstd = xalloc(N * sizeof(float), "text LN rstd");
    t->out = xalloc(NC * sizeof(float), "text embedding output");
    for (int i = 0; i < 2; i++)
        t->dbuf[i] = xalloc(NC * sizeof(float), "text backward scratch");
}

void text_embed_free(TextEmbed *t) {
    free(t->tokens), free(t->pos_ids), free(t->pad), free(t->sum), free(t->mean), free(t->rstd);
    free(t->out), free(t->dbuf[0]), free(t->dbuf[1]);
    memset(t, 0, sizeof *t);
}

/* Zero the rows of x (N, C) at padding positions. */
static void zero_pads(float *x, const uint8_t *pad, size_t N, int C) {
    for (size_t n = 0; n < N; n++)
        if (pad[n]) memset(x + n * C, 0, C * sizeof(float));
}

void text_embed_forward(TextEmbed *t, const TextEmbedParams *p, const int32_t *tokens, int B, int T,
                        int train, DropKey k) {
    const TextEmbedConfig *c = &t->cfg;
    if (B > t->Bmax || T > t->Tmax)
        die("text embedding: batch %d x %d exceeds the arena sized for %d x %d", B, T, t->Bmax,
            t->Tmax);
    t->B = B, t->T = T;
    size_t N = (size_t)B * T;
    int C = c->C;
    memcpy(t->tokens, tokens, N * sizeof(int32_t));
    for (int b = 0; b < B; b++) { /* make_positions: cumsum over non-pad, offset padding_idx 1 */
        int count = 0;
        for (int i = 0; i < T; i++) {
            size_t n = (size_t)b * T + i;
            t->pad[n] = tokens[n] == c->pad_id;
            t->pos_ids[n] = t->pad[n] ? TEXT_POS_PAD_ROW : TEXT_POS_PAD_ROW + ++count;
        }
    }
    embedding_forward(t->sum, tokens, p->tok, (int)N, c->V, C);
    embedding_forward(t->out, t->pos_ids, p->pos, (int)N, text_embed_pos_rows(c), C);
    residual_forward(t->sum, t->sum, t->out, N * C);
    layernorm_forward(t->out, t->mean, t->rstd, t->sum, p->ln_w, p->ln_b, (int)N, C, c->ln_eps);
    if (train && c->dropout > 0) dropout_forward(t->out, t->out, B, (size_t)T * C, c->dropout, k);
    zero_pads(t->out, t->pad, N, C);
}

void text_embed_backward(TextEmbed *t, TextEmbedParams *g, const TextEmbedParams *p,
                         const float *dout, int train, DropKey k) {
    const TextEmbedConfig *c = &t->cfg;
    size_t N = (size_t)t->B * t->T, NC = N * c->C;
    float *d_drop = t->dbuf[0], *d_sum = t->dbuf[1];
    memcpy(d_drop, dout, NC * sizeof(float));
    zero_pads(d_drop, t->pad, N, c->C);
    float *d_ln = d_drop;
    if (train && c->dropout > 0) {
        memset(d_sum, 0, NC * sizeof(float));
        dropout_backward(d_sum, d_drop, t->B, (size_t)t->T * c->C, c->dropout, k);
        d_ln = d_sum, d_sum = d_drop;
    }
    memset(d_sum, 0, NC * sizeof(float));
    layernorm_backward(d_sum, g->ln_w, g->ln_b, d_ln, t->sum, p->ln_w, t->mean, t->rstd, (int)N,
                       c->C);
    zero_pads(d_sum, t->pad, N, c->C); /* padding_idx rows never receive gradient */
    embedding_backward(g->tok, t->tokens, d_sum, (int)N, c->C);
    embedding_backward(g->pos, t->pos_ids, d_sum, (int)N, c->C);
}
