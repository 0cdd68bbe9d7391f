/* check.h: tiny header-only test harness: CHECK, tensor comparison, and the closing
 * "N passed, N failed" line with a non-zero exit on any failure. */
#ifndef D2V_CHECK_H
#define D2V_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int check_passed_ = 0, check_failed_ = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            check_passed_++;                                                                       \
        } else {                                                                                   \
            check_failed_++;                                                                       \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                 \
        }                                                                                          \
    } while (0)

/// Record one named result (used by the comparison helpers below).
static inline int check_record(int ok, const char *label) {
    if (ok)
        check_passed_++;
    else
        check_failed_++;
    printf("%s %s\n", ok ? "ok  " : "FAIL", label);
    return ok;
}

/// Max |got - want| / (atol + rtol * |want|) <= 1 for every element, printing worst element.
/// Returns 1 when within tolerance. `quiet` only computes (for negative controls).
static inline int check_tensor_q(const char *label, const float *got, const float *want, size_t n,
                                 double atol, double rtol, int quiet) {
    double worst = 0, max_abs = 0, max_rel = 0;
    size_t iw = 0;
    int finite = 1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) finite = 0;
        double d = fabs((double)got[i] - want[i]);
        double r = d / (atol + rtol * fabs((double)want[i]));
        if (d > max_abs) max_abs = d;
        double rel = d / (fabs((double)want[i]) + 1e-30);
        if (rel > max_rel && fabs((double)want[i]) > atol) max_rel = rel;
        if (r > worst) worst = r, iw = i;
    }
    int ok = finite && worst <= 1.0;
    if (!quiet) {
        char buf[512];
        snprintf(buf, sizeof buf, "%-40s n=%-7zu max_abs=%.2e max_rel=%.2e%s", label, n, max_abs,
                 max_rel, finite ? "" : " NON-FINITE");
        check_record(ok, buf);
        if (!ok && n)
            printf("     worst at %zu: got %.8g want %.8g (atol %.1e rtol %.1e)\n", iw,
                   (double)got[iw], (double)want[iw], atol, rtol);
    }
    return ok;
}
#define check_tensor(label, got, want, n, atol, rtol)                                              \
    check_tensor_q(label, got, want, n, atol, rtol, 0)

/// Finish: print the closing line and return the process exit status.
static inline int check_summary(void) {
    printf("%d passed, %d failed\n", check_passed_, check_failed_);
    return check_failed_ ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
