/* image_embed.c: the ViT image input encoder (docs/algorithm.md §2.2): a P x P stride-P patch
 * convolution as im2col + GEMM, BEiT's mask token replacing masked patch embeddings, an optional
 * cls token, and learned absolute (BEiT) or fixed 2-D sin-cos (MAE, data2vec 2.0) positions. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/frontends.h"
#include "d2v/util.h"

int image_embed_num_patches(const ImageEmbedConfig *c) { return (c->H / c->P) * (c->W / c->P); }
int image_embed_tokens(const ImageEmbedConfig *c) { return image_embed_num_patches(c) + !!c->cls; }

void image_embed_declare(ParamTable *t, ImageEmbedParams *p, const ImageEmbedConfig *c, int ema) {
    int64_t C = c->C, K = (int64_t)c->Cin * c->P * c->P;
    /* data2vec vision (BEiT): trunc_normal_(0.02) cut at one std for the patch conv and the
     * tokens; otherwise MAE's xavier_uniform over the (C, Cin P P) view and N(0, 0.02) tokens.
     * docs/algorithm.md §6.5 */
    float a = sqrtf(6.0f / (float)(C + K));
    ParamInit w =
        c->init_beit ? PINIT(INIT_TRUNC_NORMAL, 0.02f, 0.02f) : PINIT(INIT_UNIFORM, -a, a);
    ParamInit tok =
        c->init_beit ? PINIT(INIT_TRUNC_NORMAL, 0.02f, 0.02f) : PINIT(INIT_NORMAL, 0.02f, 0);
    ptab_add(t, &p->patch_w, "image.patch_w", SHAPE4(C, c->Cin, c->P, c->P), w, DECAY_YES, ema);
    /* the conv bias: 0 in BEiT's _init_weights; fairseq v2 re-initialises only the weight, so
     * it keeps PyTorch's Conv2d default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
    float bb = 1.0f / sqrtf((float)K);
    ptab_add(t, &p->patch_b, "image.patch_b", SHAPE1(C),
             c->init_beit ? PINIT_ZERO : PINIT(INIT_UNIFORM, -bb, bb), DECAY_1D, ema);
    if (c->cls) ptab_add(t, &p->cls, "image.cls", SHAPE1(C), tok, DECAY_1D, ema);
    /* the official recipe decays the mask token and the relative table (3-D and 2-D tensors
     * there), exempting only 1-D tensors, biases, pos_embed and cls_token */
    if (!c->v2) ptab_add(t, &p->mask_token, "image.mask_token", SHAPE1(C), tok, DECAY_YES, ema);
    if (c->pos == IMAGE_POS_LEARNED)
        ptab_add(t, &p->pos, "image.pos", SHAPE2(image_embed_tokens(c), C), tok, DECAY_1D, ema);
    if (c->pos == IMAGE_POS_RELATIVE) /* BEiT: zeros */
        ptab_add(t, &p->rel_table, "image.rel_pos_table", SHAPE2(image_rel_table_rows(c), c->heads),
                 PINIT_ZERO, DECAY_YES, ema);
}

static void declare_shared(ParamTable *t, void *p, const void *c) {
    image_embed_declare(t, p, c, EMA_SHARED);
}

size_t image_embed_params_layout(ImageEmbedParams *p, float *memory, const ImageEmbedConfig *c) {
    return ptab_module_layout(declare_shared, p, sizeof *p, c, memory);
}

void image_embed_params_init(ImageEmbedParams *p, const ImageEmbedConfig *c, uint64_t seed) {
    ptab_module_init(declare_shared, p, sizeof *p, c, seed);
}

int image_rel_table_rows(const ImageEmbedConfig *c) {
    int gh = c->H / c->P, gw = c->W / c->P;
    return (2 * gh - 1) * (2 * gw - 1) + 3;
}

void image_rel_index(int32_t *index, const ImageEmbedConfig *c) {
    int gh = c->H / c->P, gw = c->W / c->P, Np = gh * gw, off = !!c->cls, T = Np + off;
    int R = image_rel_table_rows(c);
    for (int i = 0; i < Np; i++)
        for (int j = 0; j < Np; j++) {
            int dy = i / gw - j / gw + gh - 1, dx = i % gw - j % gw + gw - 1;
            index[(size_t)(i + off) * T + j + off] = dy * (2 * gw - 1) + dx;
        }
    if (off) { /* BEiT: the cls row, the cls column, and cls->cls */
        for (int j = 0; j < T; j++)
            index[j] = R - 3;
        for (int i = 0; i < T; i++)
            index[(size_t)i * T] = R - 2;
        index[0] = R - 1;
    }
}

void image_rel_bias_forward(const ImageEmbed *e, float *bias, const ImageEmbedParams *p) {
    int T = image_embed_tokens(&e->cfg), NH = e->cfg.heads;
#pragma omp parallel for
    for (int h = 0; h < NH; h++)
        for (size_t ij = 0; ij < (size_t)T * T; ij++)
            bias[(size_t)h * T * T + ij] = p->rel_table[(size_t)e->rel_index[ij] * NH + h];
}

void image_rel_bias_backward(const ImageEmbed *e, ImageEmbedParams *g, const float *dbias) {
    int T = image_embed_tokens(&e->cfg), NH = e->cfg.heads;
#pragma omp parallel for /* one head per thread: its table column has a single writer */
    for (int h = 0; h < NH; h++)
        for (size_t ij = 0; ij < (size_t)T * T; ij++)
            g->rel_table[(size_t)e->rel_index[ij] * NH + h] += dbias[(size_t)h * T * T + ij];
}

void image_sincos_table(float *table, int gh, int gw, int C) {
    int q = C / 4; /* per axis: q frequencies, sin then cos */
    for (int r = 0; r < gh; r++)
        for (int col = 0; col < gw; col++) {
            float *row = table + ((size_t)r * gw + col) * C;
            for (int k = 0; k < q; k++) {
                double w = pow(10000.0, -(double)k / q);
                row[k] = (float)sin(col * w), row[q + k] = (float)cos(col * w);
                row[2 * q + k] = (float)sin(r * w), row[3 * q + k] = (float)cos(r * w);
            }
        }
}

void image_embed_init(ImageEmbed *e, const ImageEmbedConfig *c, int Bmax) {
    memset(e, 0, sizeof *e);
    if (c->P <= 0 || c->H % c->P || c->W % c->P || c->H <= 0 || c->W <= 0)
        die("image embedding: image %dx%d is not a multiple of the patch size %d", c->H, c->W,
            c->P);
    if (c->Cin != 1 && c->Cin != 3) die("image embedding: %d channels (1 or 3 supported)", c->Cin);
    if (c->pos == IMAGE_POS_RELATIVE && c->heads <= 0)
        die("image embedding: the relative position bias needs the head count (got %d)", c->heads);
    if (c->pos == IMAGE_POS_SINCOS && c->C % 4)
        die("image embedding: sin-cos positions need a width divisible by 4 (got %d)", c->C);
    e->cfg = *c, e->Bmax = Bmax;
    size_t Np = image_embed_num_patches(c), K = (size_t)c->Cin * c->P * c->P;
    e->cols = xalloc(Bmax * Np * K * sizeof(float), "image im2col");
    e->mask = xalloc(Bmax * Np, "image mask");
    e->out = xalloc((size_t)Bmax * image_embed_tokens(c) * c->C * sizeof(float), "image tokens");
    e->dpatch = xalloc(Bmax * Np * c->C * sizeof(float), "image backward scratch");
    if (c->pos == IMAGE_POS_RELATIVE) {
        size_t T = (size_t)image_embed_tokens(c);
        e->rel_index = xalloc(T * T * sizeof(int32_t), "relative position index");
        image_rel_index(e->rel_index, c);
    }
    if (c->pos == IMAGE_POS_SINCOS) {
        e->sincos = xalloc(Np * c->C * sizeof(float), "sin-cos positions");
        image_sincos_table(e->sincos, c->H / c->P, c->W / c->P, c->C);
    }
}

void image_embed_free(ImageEmbed *e) {
    free(e->cols), free(e->mask), free(e->out), free(e->dpatch), free(e->sincos);
    free(e->rel_index);
    memset(e, 0, sizeof *e);
}

/* cols[b*Np + p][ci*P*P + py*P + px] = img[b, gy*P + py, gx*P + px, ci]: Conv2d weight order. */
static void patch_im2col(float *cols, const float *img, int B, const ImageEmbedConfig *c) {
    int P = c->P, gh = c->H / P, gw = c->W / P, Cin = c->Cin, K = Cin * P * P;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int gy = 0; gy < gh; gy++)
            for (int gx = 0; gx < gw; gx++) {
                float *dst = cols + (((size_t)b * gh + gy) * gw + gx) * K;
                for (int py = 0; py < P; py++)
                    for (int px = 0; px < P; px++) {
                        const float *src =
                            img + (((size_t)b * c->H + gy * P + py) * c->W + gx * P + px) * Cin;
                        for (int ci = 0; ci < Cin; ci++)
                            dst[ci * P * P + py * P + px] = src[ci];
                    }
            }
}

void image_embed_forward(ImageEmbed *e, const ImageEmbedParams *p, const float *img,
                         const uint8_t *mask, int B) {
    const ImageEmbedConfig *c = &e->cfg;
    if (B > e->Bmax) die("image embedding: batch %d exceeds the arena sized for %d", B, e->Bmax);
    e->B = B;
    int Np = image_embed_num_patches(c), tok = image_embed_tokens(c), C = c->C, off = !!c->cls;
    int K = c->Cin * c->P * c->P;
    if (mask)
        memcpy(e->mask, mask, (size_t)B * Np);
    else
        memset(e->mask, 0, (size_t)B * Np);
    patch_im2col(e->cols, img, B, c);
    for (int b = 0; b < B; b++)
        linear_forward(e->out + ((size_t)b * tok + off) * C, e->cols + (size_t)b * Np * K,
                       p->patch_w, p->patch_b, Np, K, C);
#pragma omp parallel for
    for (int b = 0; b < B; b++) {
        float *x = e->out + (size_t)b * tok * C;
        if (c->cls) memcpy(x, p->cls, C * sizeof(float));
        for (int i = 0; i < Np; i++) {
            float *row = x + (size_t)(off + i) * C;
            if (e->mask[(size_t)b * Np + i]) memcpy(row, p->mask_token, C * sizeof(float));
            if (c->pos == IMAGE_POS_SINCOS)
                for (int j = 0; j < C; j++)
                    row[j] += e->sincos[(size_t)i * C + j];
        }
        if (c->pos == IMAGE_POS_LEARNED)
            for (size_t j = 0; j < (size_t)tok * C; j++)
                x[j] += p->pos[j];
    }
}

void image_embed_backward(ImageEmbed *e, ImageEmbedParams *g, const float *dout) {
    const ImageEmbedConfig *c = &e->cfg;
    int B = e->B, Np = image_embed_num_patches(c), tok = image_embed_tokens(c), C = c->C;
    int off = !!c->cls, K = c->Cin * c->P * c->P;
    /* Small per-token reductions over the batch: threads split channels. */
#pragma omp parallel for
    for (int j = 0; j < C; j++) {
        for (int b = 0; b < B; b++) {
            const float *d = dout + (size_t)b * tok * C;
            if (g->pos)
                for (int i = 0; i < tok; i++)
                    g->pos[(size_t)i * C + j] += d[(size_t)i * C + j];
            if (g->cls) g->cls[j] += d[j];
            for (int i = 0; i < Np; i++)
                if (e->mask[(size_t)b * Np + i]) g->mask_token[j] += d[(size_t)(off + i) * C + j];
        }
    }
#pragma omp parallel for
    for (int b = 0; b < B; b++)
        for (int i = 0; i < Np; i++) {
            float *dst = e->dpatch + ((size_t)b * Np + i) * C;
            if (e->mask[(size_t)b * Np + i])
                memset(dst, 0, C * sizeof(float));
            else
                memcpy(dst, dout + ((size_t)b * tok + off + i) * C, C * sizeof(float));
        }
    linear_backward(NULL, g->patch_w, g->patch_b, e->dpatch, e->cols, NULL, B * Np, K, C);
}
