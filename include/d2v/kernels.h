/* kernels.h: forward/backward CPU kernels (BLIS GEMM + OpenMP loops) used by every model piece.
 *
 * Conventions (llm.c): outputs first, then saved state, then inputs, then sizes. Backward kernels
 * ACCUMULATE into every gradient they are given (the caller zeroes once per step); a NULL gradient
 * pointer means "not needed". Activations are row-major, channels last: (B, T, C).
 */
#ifndef D2V_KERNELS_H
#define D2V_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/rng.h"

/* ---- BLIS set-up and GEMM ------------------------------------------------------------------ */

/// Choose the BLIS kernel set before BLIS initialises (AVX-512 "skx" where the CPU has it, unless
/// the user set BLIS_ARCH_TYPE), set BLIS threads from BLIS_NUM_THREADS/OMP_NUM_THREADS or
/// `threads` (>0 wins), verify one GEMM against a naive loop. Returns the kernel set's name.
const char *gemm_init(int threads);
/// Number of threads BLIS uses for calls made outside OpenMP parallel regions.
int gemm_threads(void);
/// ISA level of the element-wise kernels in use: "avx512", "avx2" or "base" (D2V_SIMD forces one).
const char *simd_level(void);

/// Row-major C = alpha * op(A) @ op(B) + beta * C, op(X) = X or X^T; op(A) is M x K, op(B) K x N.
/// lda/ldb/ldc are row strides of the stored matrices. Uses BLIS's threads unless `single` is set
/// (for calls made from inside an OpenMP parallel region).
void gemm_rowmajor(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc, int single);

/* ---- Linear ---------------------------------------------------------------------------------- */

/// out (N, OC) = inp (N, C) @ W^T + bias; W is (OC, C) (PyTorch layout); bias may be NULL.
void linear_forward(float *out, const float *inp, const float *W, const float *bias, int N, int C,
                    int OC);
/// dinp += dout @ W; dW += dout^T @ inp; dbias += column sums of dout.
void linear_backward(float *dinp, float *dW, float *dbias, const float *dout, const float *inp,
                     const float *W, int N, int C, int OC);

/* ---- Normalisation --------------------------------------------------------------------------- */

/// Layer norm over the last dim of (N, C); w, b NULL = parameter-less. Saves mean, rstd (N).
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int N, int C, float eps);
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int N, int C);
/// dinp += dout * GELU'(LN(inp)) with LN's saved statistics and affine (w, b; NULL: none): the
/// GELU backward of y = GELU(LN(x)) without keeping LN(x) (recomputed a row at a time).
void layernorm_gelu_backward(float *dinp, const float *dout, const float *inp, const float *w,
                             const float *b, const float *mean, const float *rstd, int N, int C);

/// Instance norm over time: for each (b, c) of inp (B, T, C), normalise across T (no affine),
/// as data2vec speech targets do (F.instance_norm on B x C x T). Saves mean, rstd (B, C).
void instancenorm_forward(float *out, float *mean, float *rstd, const float *inp, int B, int T,
                          int C, float eps);
void instancenorm_backward(float *dinp, const float *dout, const float *inp, const float *mean,
                           const float *rstd, int B, int T, int C);

/* ---- Pointwise ------------------------------------------------------------------------------- */

/// Exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n);

/// out = a + b.
void residual_forward(float *out, const float *a, const float *b, size_t n);
void residual_backward(float *da, float *db, const float *dout, size_t n);

/// Softmax over the last dim of (N, C); softmax_row does one row of C in place-safe fashion
/// (a row of all -inf gives zeros, not NaN).
void softmax_row(float *y, const float *x, int C);
void softmax_forward(float *out, const float *inp, int N, int C);
void softmax_backward(float *dinp, const float *out, const float *dout, int N, int C);
/// dx += y * (dy - <y, dy>) for one row of C.
void softmax_backward_row(float *dx, const float *y, const float *dy, int C);

/* ---- Counter-based randomness and dropout ---------------------------------------------------- */

/// Inverted dropout over inp (B, n_per_sample): element i of sample b is kept when
/// rng_uniform(rng_key(seed, step, sample_ids[b], site), i) >= p, and scaled by 1/(1-p).
/// sample_ids NULL means sample b has id b. p == 0 copies.
typedef struct {
    uint64_t seed, step, site;
    const int64_t *sample_ids; // (B) global sample index of each row, or NULL
} DropKey;
void dropout_forward(float *out, const float *inp, int B, size_t n_per_sample, float p, DropKey k);
/// dinp += dout * mask / (1-p), with the mask regenerated from the key (nothing stored).
void dropout_backward(float *dinp, const float *dout, int B, size_t n_per_sample, float p,
                      DropKey k);

/// Residual branch used by the encoder blocks:
///   out[b,t,c] = x[b,t,c] + path_b * gamma_c * dropout(branch)[b,t,c]
/// gamma (C) NULL = 1 (layer scale off); path_b is per-sample stochastic depth (drop_path p_path,
/// site k.site + 1) scaled by 1/(1-p_path); element dropout p_drop uses site k.site.
void branch_add_forward(float *out, const float *x, const float *branch, const float *gamma, int B,
                        int T, int C, float p_drop, float p_path, DropKey k);
void branch_add_backward(float *dx, float *dbranch, float *dgamma, const float *dout,
                         const float *branch, const float *gamma, int B, int T, int C, float p_drop,
                         float p_path, DropKey k);

/* ---- Attention ------------------------------------------------------------------------------- */

/// Multi-head scaled-dot-product self-attention.
///   qkv (B, T, 3C): q | k | v, heads of size C/NH contiguous inside each; out (B, T, C).
///   att (B, NH, T, T): softmax probabilities (before attention dropout), saved for backward;
///   or NULL: not stored, the backward recomputes each head's tile (same bits, one more GEMM).
///   key_pad (B, T) uint8, 1 = padding key (masked with -inf); NULL = none.
///   bias (NH, T, T) additive per-head logit bias (ALiBi / relative position); NULL = none.
///   p_drop: attention-probability dropout keyed on k (site k.site, index (h, i, j)).
///   scratch: attention_scratch_size(T) floats (three T x T buffers per OpenMP thread, sized for
///   omp_get_max_threads() at that call: do not raise the thread count afterwards).
size_t attention_scratch_size(int T);
void attention_forward(float *out, float *att, float *scratch, const float *qkv,
                       const uint8_t *key_pad, const float *bias, int B, int T, int C, int NH,
                       float p_drop, DropKey k);
/// dqkv += ..., dbias (NH, T, T) += sum over the batch (NULL = not needed). att, key_pad and
/// bias as given to the forward.
void attention_backward(float *dqkv, float *dbias, float *scratch, const float *dout,
                        const float *qkv, const float *att, const uint8_t *key_pad,
                        const float *bias, int B, int T, int C, int NH, float p_drop, DropKey k);

/// ALiBi (data2vec 2.0 audio, fairseq get_alibi_bias / masked_alibi): logit (b, h, i, j) gains
/// -m[h] |pos[b, i] - pos[b, j]|, pos (B, T) each row's true positions (a clone's kept frames),
/// NULL for 0..T-1. The backward writes dm_bh[b NH + h] = sum over i, j of dLoss/dlogit times
/// -|pos_i - pos_j| (NULL: not needed); the caller sums it over rows in order.
typedef struct {
    const float *m;     // (NH) slope x learned scale, per head
    const int32_t *pos; // (B, T) or NULL
    double *dm_bh;      // (B, NH) backward output, or NULL
} AttnAlibi;
/// attention_forward / attention_backward with ALiBi (al NULL: exactly those).
void attention_forward_ex(float *out, float *att, float *scratch, const float *qkv,
                          const uint8_t *key_pad, const float *bias, const AttnAlibi *al, int B,
                          int T, int C, int NH, float p_drop, DropKey k);
void attention_backward_ex(float *dqkv, float *dbias, float *scratch, const float *dout,
                           const float *qkv, const float *att, const uint8_t *key_pad,
                           const float *bias, const AttnAlibi *al, int B, int T, int C, int NH,
                           float p_drop, DropKey k);

/* ---- Convolution and embedding --------------------------------------------------------------- */

/// 1-D convolution, channels last. inp (B, L, Cin), out (B, Lout, Cout) with
/// Lout = floor((L + 2 pad - K) / stride) + 1; W (Cout, Cin/groups, K) in PyTorch layout;
/// bias (Cout) or NULL. `cols` is scratch of conv1d_cols_size() floats (im2col buffer); backward
/// recomputes it, so it need not hold the forward's contents.
int conv1d_out_len(int L, int K, int stride, int pad);
size_t conv1d_cols_size(int B, int L, int Cin, int Cout, int K, int stride, int pad, int groups);
void conv1d_forward(float *out, float *cols, const float *inp, const float *W, const float *bias,
                    int B, int L, int Cin, int Cout, int K, int stride, int pad, int groups);
void conv1d_backward(float *dinp, float *dW, float *dbias, float *cols, const float *dout,
                     const float *inp, const float *W, int B, int L, int Cin, int Cout, int K,
                     int stride, int pad, int groups);

/// 2-D convolution, stride 1, "same" padding (K odd, pad K/2), channels last: inp (B, H, W, Cin),
/// out (B, H, W, Cout); w (Cout, Cin/groups, K, K) in PyTorch layout; bias (Cout) or NULL; groups
/// divides Cin and Cout. `cols` is scratch of conv2d_cols_size() floats (one group's im2col; the
/// backward recomputes it, so it need not hold the forward's contents).
size_t conv2d_cols_size(int B, int H, int W, int Cin, int K, int groups);
void conv2d_forward(float *out, float *cols, const float *inp, const float *w, const float *bias,
                    int B, int H, int W, int Cin, int Cout, int K, int groups);
void conv2d_backward(float *dinp, float *dw, float *dbias, float *cols, const float *dout,
                     const float *inp, const float *w, int B, int H, int W, int Cin, int Cout,
                     int K, int groups);

/// out (N, C) = table[ids[n]] (table is (V, C)); ids outside [0, V) are a fatal error.
void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int V, int C);
/// dtable[ids[n]] += dout[n] (scatter-add; threads split channels so rows never race).
void embedding_backward(float *dtable, const int32_t *ids, const float *dout, int N, int C);

#endif
