/* frontends.h: the modality input encoders that feed the transformer: text token embedding,
 * ViT patch embedding, and the wav2vec 2.0 conv feature extractor with the convolutional
 * positional encoder (docs/algorithm.md §2). Parameters live in caller-owned arenas (layout
 * functions as for the encoder); activations are allocated once at init for the largest batch. */
#ifndef D2V_FRONTENDS_H
#define D2V_FRONTENDS_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/kernels.h"
#include "d2v/params.h"

/* ---- text ------------------------------------------------------------------------------------ */

/* Learned positions, numbered as fairseq's make_positions with RoBERTa's padding_idx 1 whatever
 * the dataset's pad id: row TEXT_POS_PAD_ROW (kept zero, no gradient) at padding, rows 2..T+1 for
 * the real tokens, so max_positions + 2 rows (514 for 512, as RoBERTa). fairseq offsets by the
 * numeric pad id itself, which with a GPT-2 vocab.json (<pad> 50258) would make a 50771-row table
 * for 512 positions; with pad 1 the two numberings are the same. */
#define TEXT_POS_PAD_ROW 1

typedef struct {
    int V, C;          // vocabulary size, model width
    int max_positions; // 512: longest sequence (positions table has max_positions + 2 rows)
    int pad_id;        // <pad> (1 in RoBERTa's dictionary): its token row is zero
    float ln_eps;      // embedding layer norm eps (1e-5)
    float dropout;     // after the embedding layer norm (0.1)
} TextEmbedConfig;

#define TEXT_EMBED_NUM_PARAMS 4
typedef struct {
    float *tok;         // (V, C)
    float *pos;         // (max_positions + 2, C) learned positions, row 1 for padding
    float *ln_w, *ln_b; // (C)
} TextEmbedParams;

/// Declare the tensors (ema: EMA_AVERAGE or EMA_SHARED, the teacher's sharing of the front-end).
void text_embed_declare(ParamTable *t, TextEmbedParams *p, const TextEmbedConfig *c, int ema);
size_t text_embed_params_layout(TextEmbedParams *p, float *memory, const TextEmbedConfig *c);
/// Rows of the position table: max_positions + 2 (TEXT_POS_PAD_ROW above).
int text_embed_pos_rows(const TextEmbedConfig *c);
/// init_bert_params: N(0, 0.02) with the pad rows (token pad_id, position TEXT_POS_PAD_ROW)
/// zeroed; LN (1, 0).
void text_embed_params_init(TextEmbedParams *p, const TextEmbedConfig *c, uint64_t seed);

typedef struct {
    TextEmbedConfig cfg;
    int Bmax, Tmax, B, T;
    int32_t *tokens;    // (B, T) copy of the input ids
    int32_t *pos_ids;   // (B, T) position row: 1 + cumsum(tok != pad), TEXT_POS_PAD_ROW at pads
    uint8_t *pad;       // (B, T) 1 = padding (the encoder's key padding mask)
    float *sum;         // (B, T, C) token + position embedding (layer norm input)
    float *mean, *rstd; // (B, T)
    float *out;         // (B, T, C) LN -> dropout -> zeroed at padding
    float *dbuf[2];     // (B, T, C) backward scratch
} TextEmbed;

void text_embed_init(TextEmbed *t, const TextEmbedConfig *c, int Bmax, int Tmax);
void text_embed_free(TextEmbed *t);
/// x = zero_pad(dropout(LN(tok[ids] + pos[positions]))) into t->out (fairseq
/// TransformerEncoder.forward_embedding with no_scale_embedding, layernorm_embedding).
/// train = 0 turns dropout off; k keys the dropout (site k.site).
void text_embed_forward(TextEmbed *t, const TextEmbedParams *p, const int32_t *tokens, int B, int T,
                        int train, DropKey k);
/// Accumulates parameter gradients from dout (B, T, C).
void text_embed_backward(TextEmbed *t, TextEmbedParams *g, const TextEmbedParams *p,
                         const float *dout, int train, DropKey k);

/* ---- image ----------------------------------------------------------------------------------- */

enum { IMAGE_POS_NONE = 0, IMAGE_POS_LEARNED = 1, IMAGE_POS_SINCOS = 2, IMAGE_POS_RELATIVE = 3 };

typedef struct {
    int H, W, Cin; // image size (multiples of P) and channels (1 or 3)
    int P, C;      // patch size, model width
    int cls;       // 1: prepend a learned cls token
    int pos;       // IMAGE_POS_*: learned absolute over cls + patches (BEiT abs_pos_emb), fixed
                   // 2-D sin-cos over the patches only (MAE / data2vec 2.0), none, or BEiT's
                   // shared relative position bias (data2vec v1 vision: an attention logit bias)
    int heads;     // attention heads (the relative bias has one table column per head)
    int init_beit; // 1: BEiT's trunc_normal_ init; 0: MAE's xavier patch conv, N(0, 0.02) tokens
    int v2;        // data2vec 2.0: no mask token (the student never sees masked patches)
} ImageEmbedConfig;

#define IMAGE_EMBED_NUM_PARAMS 6
typedef struct {
    float *patch_w;    // (C, Cin, P, P) Conv2d weight
    float *patch_b;    // (C)
    float *cls;        // (C) or empty
    float *mask_token; // (C)
    float *pos;        // (cls + Np, C) when IMAGE_POS_LEARNED, else empty
    float *rel_table;  // ((2gh-1)(2gw-1) + 3, heads) when IMAGE_POS_RELATIVE, else empty
    /* data2vec 2.0 (frontend_image.c): the cls token and layer norm of the student's context */
    float *v2_cls, *v2_ln_w, *v2_ln_b; // (C) each
} ImageEmbedParams;

void image_embed_declare(ParamTable *t, ImageEmbedParams *p, const ImageEmbedConfig *c, int ema);
size_t image_embed_params_layout(ImageEmbedParams *p, float *memory, const ImageEmbedConfig *c);
/// Patch weights xavier-uniform over the (C, Cin*P*P) view, bias 0, cls/mask/pos N(0, 0.02).
void image_embed_params_init(ImageEmbedParams *p, const ImageEmbedConfig *c, uint64_t seed);
int image_embed_num_patches(const ImageEmbedConfig *c);
/// Tokens per image: patches plus the cls token when enabled.
int image_embed_tokens(const ImageEmbedConfig *c);
/// Fixed 2-D sin-cos table (Np, C), C a multiple of 4: first C/2 dims encode the patch column,
/// second C/2 the row; each half is [sin(pos w_k), cos(pos w_k)], w_k = 10000^(-k/(C/4)).
void image_sincos_table(float *table, int gh, int gw, int C);
/// Rows of the relative bias table: one per (dy, dx) offset, plus cls->patch, patch->cls and
/// cls->cls (BEiT's three extra entries).
int image_rel_table_rows(const ImageEmbedConfig *c);
/// BEiT relative_position_index (tokens x tokens): (dy + gh-1) * (2gw-1) + (dx + gw-1) between
/// patches; rows-3 for cls->patch, rows-2 for patch->cls, rows-1 for cls->cls.
void image_rel_index(int32_t *index, const ImageEmbedConfig *c);

typedef struct {
    ImageEmbedConfig cfg;
    int Bmax, B;
    float *cols;        // (B*Np, Cin*P*P) im2col of the last input
    float *sincos;      // (Np, C) fixed table when IMAGE_POS_SINCOS
    uint8_t *mask;      // (B, Np) copy of the last mask (all zero when none)
    float *out;         // (B, tokens, C)
    float *dpatch;      // (B*Np, C) backward scratch
    int32_t *rel_index; // (tokens, tokens) when IMAGE_POS_RELATIVE
} ImageEmbed;

void image_embed_init(ImageEmbed *e, const ImageEmbedConfig *c, int Bmax);
void image_embed_free(ImageEmbed *e);
/// img (B, H, W, Cin) normalised floats; mask (B, Np) 1 = replace that patch embedding by the
/// mask token (BEiT: before cls and positions), or NULL. Output in e->out.
void image_embed_forward(ImageEmbed *e, const ImageEmbedParams *p, const float *img,
                         const uint8_t *mask, int B);
void image_embed_backward(ImageEmbed *e, ImageEmbedParams *g, const float *dout);
/// The shared attention bias (heads, T, T) from the relative table (IMAGE_POS_RELATIVE).
void image_rel_bias_forward(const ImageEmbed *e, float *bias, const ImageEmbedParams *p);
/// dtable += the bias gradient (heads, T, T) gathered back to table rows.
void image_rel_bias_backward(const ImageEmbed *e, ImageEmbedParams *g, const float *dbias);

/* ---- speech ---------------------------------------------------------------------------------- */

#define SPEECH_MAX_CONV 16
typedef struct {
    int n_conv;                        // 7
    int conv_dim[SPEECH_MAX_CONV];     // 512 each
    int conv_k[SPEECH_MAX_CONV];       // 10, 3, 3, 3, 3, 2, 2
    int conv_s[SPEECH_MAX_CONV];       // 5, 2, 2, 2, 2, 2, 2
    int C;                             // model width (768)
    int pos_layers, pos_k, pos_groups; // 5, 19, 16: convolutional positional encoder
    float ln_eps;                      // 1e-5 everywhere
    float dropout;                     // after the encoder LN, student only (model.dropout, 0.1)
    int v2;          // data2vec 2.0 (docs/algorithm.md §7.3): no mask embedding, the teacher
                     //   averages the positional convs
    int alibi_heads; // v2: > 0 adds ALiBi biases with a learned scale per head (speech.alibi)
} SpeechEmbedConfig;

/// Parameter tensors: per conv layer i weight (dim_i, dim_{i-1}, k_i) + LN (dim_i) x2; feature
/// LN (D) x2; projection (C, D) + (C); mask embedding (C); per pos-conv layer weight
/// (C, C/groups, k) + bias (C); encoder LN (C) x2.
typedef struct {
    float *conv_w[SPEECH_MAX_CONV], *conv_ln_w[SPEECH_MAX_CONV], *conv_ln_b[SPEECH_MAX_CONV];
    float *feat_ln_w, *feat_ln_b;
    float *proj_w, *proj_b;
    float *mask_emb;
    float *pos_w[SPEECH_MAX_CONV], *pos_b[SPEECH_MAX_CONV];
    float *enc_ln_w, *enc_ln_b;
    float *alibi_scale; // v2 with ALiBi: (heads) learned scale of each head's slope (init 1)
} SpeechEmbedParams;

/// speech.enc_ln_* are always averaged; `ema` applies to the rest.
void speech_embed_declare(ParamTable *t, SpeechEmbedParams *p, const SpeechEmbedConfig *c, int ema);
size_t speech_embed_params_layout(SpeechEmbedParams *p, float *memory, const SpeechEmbedConfig *c);
/// Conv weights kaiming-normal (fan_in), LNs (1, 0), projection and pos convs PyTorch default
/// (uniform +-1/sqrt(fan_in)), mask embedding U[0, 1) (wav2vec2).
void speech_embed_params_init(SpeechEmbedParams *p, const SpeechEmbedConfig *c, uint64_t seed);
/// Frames produced from S samples: floor((L - k)/s + 1) per conv layer (0 if too short).
int speech_num_frames(const SpeechEmbedConfig *c, int S);

typedef struct {
    SpeechEmbedConfig cfg;
    int Bmax, Smax, Tmax, B, S, T;
    int Lin[SPEECH_MAX_CONV + 1];     // sequence length entering conv layer i (Lin[n_conv] = T)
    float *wav;                       // (B, S) copy of the input waveform
    float *conv_out[SPEECH_MAX_CONV]; // (B, L_{i+1}, dim_i) conv output of layers >= 1 (LN input);
                                      // LN and GELU outputs are recomputed in the backward
    float *conv_mean[SPEECH_MAX_CONV], *conv_rstd[SPEECH_MAX_CONV];
    float *act;                             // one layer's LN / GELU output (largest layer)
    float *feat_ln, *feat_mean, *feat_rstd; // (B, T, D), (B, T) x2
    float *features;                        // (B, T, C) projected features: the teacher's input
    float *cols;                            // im2col scratch (largest layer)
    float *dbuf[2];                         // backward scratch (largest activation) x2
} SpeechFeatures;

/// Stage 1, shared by student and teacher (docs/algorithm.md §4.1: the extractor is not averaged):
/// waveform (B, S)
/// -> conv stack (conv, LN over channels, GELU) -> LN -> projection, into f->features.
void speech_features_init(SpeechFeatures *f, const SpeechEmbedConfig *c, int Bmax, int Smax);
void speech_features_free(SpeechFeatures *f);
void speech_features_forward(SpeechFeatures *f, const SpeechEmbedParams *p, const float *wav, int B,
                             int S);
/// dfeatures (B, T, C) -> parameter gradients of stage 1.
void speech_features_backward(SpeechFeatures *f, SpeechEmbedParams *g, const SpeechEmbedParams *p,
                              const float *dfeatures);

typedef struct {
    SpeechEmbedConfig cfg;
    int Bmax, Tmax, B, T, keep_caches;
    float *masked;                   // (B, T, C) features with masked frames = mask_emb
    uint8_t *mask;                   // (B, T)
    float *pos_out[SPEECH_MAX_CONV]; // (B, T, C) conv output of pos layer j (pre-LN)
    float *pos_ln[SPEECH_MAX_CONV];  // (B, T, C) parameter-less LN output (GELU input)
    float *pos_mean[SPEECH_MAX_CONV], *pos_rstd[SPEECH_MAX_CONV];
    float *pos_act[SPEECH_MAX_CONV]; // (B, T, C) GELU output
    float *sum;                      // (B, T, C) masked + pos_conv(masked)
    float *ln_mean, *ln_rstd;        // (B, T)
    float *out;                      // (B, T, C) encoder LN -> dropout: the transformer input
    float *cols;                     // im2col scratch
    float *dbuf[3];                  // backward scratch
} SpeechContext;

/// Stage 2: mask embedding at masked frames, x + pos_conv(x), layer norm, dropout (wav2vec2
/// TransformerEncoder.extract_features of the post-LN encoder). keep_caches = 0: forward-only
/// (the teacher, which sees no mask). train = 0 turns dropout off (the teacher runs in eval
/// mode); k keys the dropout (site k.site).
void speech_context_init(SpeechContext *s, const SpeechEmbedConfig *c, int Bmax, int Tmax,
                         int keep_caches);
void speech_context_free(SpeechContext *s);
void speech_context_forward(SpeechContext *s, const SpeechEmbedParams *p, const float *features,
                            const uint8_t *mask, int B, int T, int train, DropKey k);
/// Accumulates into parameter gradients and dfeatures (B, T, C); train and k as in the forward.
void speech_context_backward(SpeechContext *s, SpeechEmbedParams *g, const SpeechEmbedParams *p,
                             const float *dout, float *dfeatures, int train, DropKey k);

/* ---- speech, data2vec 2.0 (docs/algorithm.md §7.3, fairseq AudioEncoder with remove_masked) -- */

typedef struct {
    SpeechEmbedConfig cfg;
    int Rmax, Tmax, Tkmax;
    int B, M, R, T, Tk, train;
    const int32_t *keep;             // (R, Tk) the last forward's kept frames (caller-owned)
    DropKey k;                       // the last forward's dropout key (per row)
    float *zin;                      // (R, T, C) each clone's features, masked frames zeroed
    float *pos_out[SPEECH_MAX_CONV]; // (R, T, C) per positional layer: conv output (LN input)
    float *pos_ln[SPEECH_MAX_CONV];  //   LN output (GELU input)
    float *pos_act[SPEECH_MAX_CONV]; //   GELU output
    float *pos_mean[SPEECH_MAX_CONV], *pos_rstd[SPEECH_MAX_CONV]; // (R, T)
    float *sum;               // (R, Tk, C) kept features + positions at the kept frames
    float *ln_mean, *ln_rstd; // (R, Tk)
    float *out;               // (R, Tk, C) encoder LN -> dropout: the student's input
    float *cols;              // im2col scratch
    float *dbuf[3];           // (R, T, C) backward scratch
    float *dsum;              // (R, Tk, C)
} SpeechContextV2;

/// The student's context for R = B M clones of T frames keeping Tk each: zin = the features
/// with the masked frames zeroed (encoder_zero_mask), pos = the positional conv stack over
/// the whole zin, then per kept frame x + pos, the encoder layer norm and dropout (the
/// context encoder's, keyed per row by k.sample_ids). keep (R, Tk): ascending kept frames of
/// row r = b M + m. Sized for Rmax rows of up to Tmax frames keeping up to Tkmax.
void speech_v2_context_init(SpeechContextV2 *s, const SpeechEmbedConfig *c, int Rmax, int Tmax,
                            int Tkmax);
void speech_v2_context_free(SpeechContextV2 *s);
const float *speech_v2_context_forward(SpeechContextV2 *s, const SpeechEmbedParams *p,
                                       const float *features, const int32_t *keep, int B, int M,
                                       int T, int Tk, int train, DropKey k);
/// dout (R, Tk, C) -> parameter gradients and dfeatures (B, T, C) += (the clones of a sample
/// summed in clone order).
void speech_v2_context_backward(SpeechContextV2 *s, SpeechEmbedParams *g,
                                const SpeechEmbedParams *p, const float *dout, float *dfeatures);

/// ALiBi slopes of `heads` heads (fairseq get_alibi's get_slopes: 2^(-8 (i+1) / n) for a power
/// of two n, else those of the power below plus every other one of twice that).
void alibi_slopes(float *out, int heads);

#endif
