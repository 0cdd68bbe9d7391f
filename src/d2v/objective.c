/* objective.c: data2vec targets (top-K average of normalised teacher blocks), the smooth-L1 / L2
 * regression loss, the target/prediction variance used by the collapse guard, and the EMA. */
#include "d2v/objective.h"

#include <math.h>
#include <string.h>

#include "d2v/kernels.h"

int targets_build(float *y, float *const *layers, int K, int B, int T, int C, int layer_norm,
                  int final_layer_norm, float eps, const uint8_t *sel, float *scratch) {
    size_t N = (size_t)B * T;
    int M = 0;
    for (size_t n = 0; n < N; n++)
        M += sel[n] != 0;
    memset(y, 0, sizeof(float) * (size_t)M * C);
    float *norm = scratch, *s1 = scratch + N * C, *s2 = s1 + (size_t)B * C;
    for (int k = 0; k < K; k++) {
        const float *a = layers[k];
        /* IN statistics cover every time step (fairseq normalises the whole unpadded sequence),
         * then only masked rows are kept. */
        if (layer_norm == TARGET_NORM_INSTANCE)
            instancenorm_forward(norm, s1, s2, a, B, T, C, eps);
        else if (layer_norm == TARGET_NORM_LAYER)
            layernorm_forward(norm, NULL, NULL, a, NULL, NULL, (int)N, C, eps);
        else
            memcpy(norm, a, sizeof(float) * N * C);
        int m = 0;
        for (size_t n = 0; n < N; n++) {
            if (!sel[n]) continue;
            float *dst = y + (size_t)m++ * C;
            const float *src = norm + n * C;
            for (int c = 0; c < C; c++)
                dst[c] += src[c] / K;
        }
    }
    if (final_layer_norm) layernorm_forward(y, NULL, NULL, y, NULL, NULL, M, C, eps);
    return M;
}

double regression_loss(float *dpred, const float *pred, const float *y, int M, int C, float beta,
                       float scale, float grad_scale) {
    double total = 0;
#pragma omp parallel for reduction(+ : total)
    for (int m = 0; m < M; m++) {
        double row = 0;
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)m * C + c;
            float d = pred[i] - y[i], g;
            if (beta > 0 && fabsf(d) > beta) {
                row += fabsf(d) - 0.5 * beta;
                g = d > 0 ? 1.0f : -1.0f;
            } else if (beta > 0) {
                row += 0.5 * d * d / beta;
                g = d / beta;
            } else {
                row += (double)d * d;
                g = 2.0f * d;
            }
            if (dpred) dpred[i] = g * scale * grad_scale;
        }
        total += row;
    }
    return total * scale;
}

void var_stats_accumulate(double *stats, const float *x, int M, int C) {
    stats[0] += M;
    for (int m = 0; m < M; m++)
        for (int c = 0; c < C; c++) {
            double v = x[(size_t)m * C + c];
            stats[1 + c] += v, stats[1 + C + c] += v * v;
        }
}

double var_from_stats(const double *stats, int C) {
    double n = stats[0], s = 0;
    if (n < 2) return 0;
    for (int c = 0; c < C; c++) { /* unbiased variance per channel, as torch.var */
        double var = stats[1 + C + c] / (n - 1) - stats[1 + c] * stats[1 + c] / (n * (n - 1));
        s += sqrt((var > 0 ? var : 0) + 1e-6);
    }
    return s / C;
}

double ema_tau(double tau0, double tau_end, int64_t tau_steps, int64_t n) {
    if (n >= tau_steps || tau_steps <= 0) return tau_end;
    return tau_end - (tau_end - tau0) * (1.0 - (double)n / tau_steps);
}

void ema_update(float *teacher, const float *student, size_t n, double tau) {
    if (tau >= 1.0) return;
    float t = (float)tau, s = (float)(1.0 - tau);
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        teacher[i] = t * teacher[i] + s * student[i];
}
