/* optim.c: AdamW (decoupled weight decay, fairseq/torch semantics), learning-rate schedules and
 * gradient-norm clipping over the flat gradient arena. */
#include "d2v/optim.h"

#include <math.h>

static double warmup_lr(const LrSchedule *s, int64_t n) {
    return s->warmup_init + (s->lr - s->warmup_init) * (double)n / (double)s->warmup;
}

double lr_at(const LrSchedule *s, int64_t n) {
    const double pi = 3.14159265358979323846;
    if (s->kind == LR_CONSTANT) return s->lr;
    if (n < s->warmup) return warmup_lr(s, n);
    if (s->kind == LR_TRI_STAGE) { /* fairseq tri_stage: warmup, hold, exponential decay */
        int64_t hold = (int64_t)(s->tri_hold_frac * s->total);
        int64_t decay = (int64_t)(s->tri_decay_frac * s->total);
        int64_t t = n - s->warmup;
        if (t < hold) return s->lr;
        t -= hold;
        if (t == 0) return s->lr;
        if (t < decay) return s->lr * exp(log(s->lr_min / s->lr) * (double)t / (double)decay);
        return s->lr_min;
    }
    /* cosine (fairseq): half a cosine from lr to lr_min; linear: a straight line */
    double T = (double)(s->total - s->warmup), t = (double)(n - s->warmup);
    double f = T > 0 ? (t < T ? t / T : 1.0) : 1.0;
    if (s->kind == LR_LINEAR) return s->lr + (s->lr_min - s->lr) * f;
    return s->lr_min + 0.5 * (s->lr - s->lr_min) * (1 + cos(pi * f));
}

void adamw_step(float *p, float *m, float *v, const float *g, const uint8_t *decay, size_t n,
                const AdamW *o, double lr, int64_t t) {
    float b1 = (float)o->beta1, b2 = (float)o->beta2;
    double bc1 = 1.0 - pow(o->beta1, (double)t), bc2 = 1.0 - pow(o->beta2, (double)t);
    float step = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)), eps = (float)o->eps;
    if (o->eps_mode == ADAM_EPS_FAIRSEQ) /* fairseq Adam.step: denom = sqrt(v) + eps */
        step = (float)(lr * sqrt(bc2) / bc1), inv_sqrt_bc2 = 1.0f;
    float wd = (float)(lr * o->weight_decay);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        /* torch.optim.AdamW order: decay first, on the pre-update parameter */
        if (!decay || decay[i]) p[i] -= wd * p[i];
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        p[i] -= step * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
    }
}

double grad_norm(const float *g, size_t n) {
    /* A fixed split into 256 chunks summed in order: the same bits for any thread count, so
     * every rank computes the same clip factor from the same (allreduced) gradients. */
    enum { CHUNKS = 256 };
    double part[CHUNKS];
#pragma omp parallel for schedule(static)
    for (int c = 0; c < CHUNKS; c++) {
        size_t lo = n * (size_t)c / CHUNKS, hi = n * (size_t)(c + 1) / CHUNKS;
        double s = 0;
        for (size_t i = lo; i < hi; i++)
            s += (double)g[i] * g[i];
        part[c] = s;
    }
    double s = 0;
    for (int c = 0; c < CHUNKS; c++)
        s += part[c];
    return sqrt(s);
}

double clip_grad_norm(float *g, size_t n, double norm, double max_norm) {
    if (max_norm <= 0 || norm <= max_norm) return 1.0;
    float f = (float)(max_norm / (norm + 1e-6)); /* torch clip_grad_norm_ */
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        g[i] *= f;
    return f;
}
