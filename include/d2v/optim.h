/* optim.h: AdamW with decoupled weight decay, the learning-rate schedules data2vec uses (cosine
 * with warmup, tri-stage, linear), and global gradient-norm clipping (docs/algorithm.md §5.1-§5.2).
 */
#ifndef D2V_OPTIM_H
#define D2V_OPTIM_H

#include <stddef.h>
#include <stdint.h>

enum { LR_COSINE = 0, LR_TRI_STAGE = 1, LR_LINEAR = 2, LR_CONSTANT = 3 };

typedef struct {
    int kind;
    double lr, lr_min;     // peak and final (cosine: lr_min; tri-stage: final_lr_scale * lr)
    int64_t warmup, total; // updates
    double warmup_init;    // lr at step 0 of warmup (cosine/linear); tri-stage: init_scale*lr
    double tri_hold_frac,
        tri_decay_frac; // tri-stage: hold and decay shares of total (warmup =
                        //   warmup updates); decay is exponential to lr_min (fairseq)
} LrSchedule;

/// Learning rate for update n (0-based).
double lr_at(const LrSchedule *s, int64_t n);

/* Where eps enters the denominator (bc1, bc2 = 1 - beta1^t, 1 - beta2^t):
 *   torch    torch.optim.AdamW:   p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
 *   fairseq  fairseq/optim/adam.py: p -= lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps)
 * The same update but for eps, which fairseq effectively scales by 1/sqrt(bc2) (large early
 * in training: 1/sqrt(1 - 0.98) = 7x at step 1). Both decay decoupled, p -= lr*wd*p first. */
enum { ADAM_EPS_TORCH = 0, ADAM_EPS_FAIRSEQ = 1 };

typedef struct {
    double beta1, beta2, eps, weight_decay;
    int eps_mode; // ADAM_EPS_TORCH (0) or ADAM_EPS_FAIRSEQ
} AdamW;

/// One AdamW step over n parameters: m, v updated; p -= lr * wd_mask * weight_decay * p, then
/// the bias-corrected Adam step with eps placed per o->eps_mode, for step t (1-based). decay (n)
/// may be NULL (all decayed) or hold 0/1 per parameter (0: biases, norms, other 1-D tensors when
/// exempt).
void adamw_step(float *p, float *m, float *v, const float *g, const uint8_t *decay, size_t n,
                const AdamW *o, double lr, int64_t t);

/// L2 norm of g (n floats), accumulated in double.
double grad_norm(const float *g, size_t n);
/// Scale g so its norm is at most max_norm (> 0); returns the factor applied (1 if none).
double clip_grad_norm(float *g, size_t n, double norm, double max_norm);

#endif
