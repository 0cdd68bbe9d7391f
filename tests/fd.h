/* fd.h: central-difference gradient check shared by the whole-model gradient tests. */
#ifndef D2V_TEST_FD_H
#define D2V_TEST_FD_H

#include <math.h>
#include <stdio.h>

#include "check.h"

/// The forward under test as a closure: returns loss = sum(out * r) in double.
typedef double (*FdLoss)(void *ctx);

/// Central differences on up to `max_checks` elements of x (a fixed stride sample beyond that)
/// against the analytic gradient ana. An element fails when |num - ana| exceeds
/// 3e-3 max|ana| + 2e-2 |ana|: loose enough for fp32 forwards, tight enough that a wrong or
/// missing term fails. Records a labelled result unless quiet; returns 1 when all agree.
static inline int fd_tensor(const char *label, FdLoss loss, void *ctx, float *x, const float *ana,
                            size_t n, size_t max_checks, int quiet) {
    double amax = 0;
    for (size_t i = 0; i < n; i++)
        amax = fmax(amax, fabs(ana[i]));
    size_t step = n > max_checks ? n / max_checks : 1;
    double worst = 0;
    for (size_t i = (n > max_checks ? 3 % step : 0); i < n; i += step) {
        float h = 1e-2f * fmaxf(1.0f, fabsf(x[i])), x0 = x[i];
        x[i] = x0 + h;
        double lp = loss(ctx);
        x[i] = x0 - h;
        double lm = loss(ctx);
        x[i] = x0;
        double num = (lp - lm) / (2.0 * h);
        double err = fabs(num - ana[i]) / (3e-3 * amax + 2e-2 * fabs(ana[i]) + 1e-6);
        if (err > worst) worst = err;
    }
    if (quiet) return worst <= 1.0;
    char buf[160];
    snprintf(buf, sizeof buf, "fd %-30s max|g|=%.3e score=%.3f", label, amax, worst);
    return check_record(worst <= 1.0 && amax > 0, buf);
}

#endif
