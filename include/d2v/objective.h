/* objective.h: the data2vec learning objective (docs/algorithm.md §1.2-§1.5, §4): teacher targets
 * from the top-K blocks, the regression loss on masked positions, the collapse statistics, and the
 * EMA teacher update with its decay schedule. */
#ifndef D2V_OBJECTIVE_H
#define D2V_OBJECTIVE_H

#include <stddef.h>
#include <stdint.h>

enum { TARGET_NORM_NONE = 0, TARGET_NORM_INSTANCE = 1, TARGET_NORM_LAYER = 2 };

/// y (M, C) = final_norm( (1/K) sum_{l in top K} norm_l(a^l) ) at the M masked positions.
///   layers[k] (B, T, C), k = 0..K-1: the K teacher block outputs (FFN branch or end of block).
///   layer_norm: TARGET_NORM_INSTANCE (over time per (b, c): speech), TARGET_NORM_LAYER
///   (parameter-less LN over C: text, vision) or none; both with `eps` (fairseq: 1e-5).
///   final_layer_norm: parameter-less LN over C after averaging (vision v1), 0 = off.
///   sel (B, T) uint8: 1 = this position is a target (masked). Returns M.
///   scratch: (B, T, C) floats for one normalised layer plus 2*B*C statistics.
int targets_build(float *y, float *const *layers, int K, int B, int T, int C, int layer_norm,
                  int final_layer_norm, float eps, const uint8_t *sel, float *scratch);

/// Regression loss summed over the M rows and C dims, times `scale` (1/sqrt(C) for speech and
/// vision-v2, 1 for text). beta > 0: smooth L1 (0.5 d^2 / beta inside |d| <= beta, else
/// |d| - 0.5 beta); beta == 0: squared error. dpred (M, C), when given, receives
/// d(loss)/d(pred) * grad_scale (overwritten). Returns the summed loss (double).
double regression_loss(float *dpred, const float *pred, const float *y, int M, int C, float beta,
                       float scale, float grad_scale);

/// fairseq compute_var partial sums over rows of x (M, C): count, sum and sum of squares per
/// channel, accumulated into stats (1 + 2C doubles) so ranks can allreduce them first.
void var_stats_accumulate(double *stats, const float *x, int M, int C);
/// mean over channels of sqrt(var_c + 1e-6) from the (allreduced) stats; 0 if fewer than 2 rows.
double var_from_stats(const double *stats, int C);

/// EMA decay after n completed updates: linear tau0 -> tau_end over tau_steps, then tau_end.
double ema_tau(double tau0, double tau_end, int64_t tau_steps, int64_t n);
/// teacher = tau * teacher + (1 - tau) * student over n floats (tau >= 1: no change).
void ema_update(float *teacher, const float *student, size_t n, double tau);

#endif
