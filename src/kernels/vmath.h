/* vmath.h: vectorisable exp and erf for the hot element-wise loops (GELU, softmax; simd_impl.c
 * compiles them per ISA level). libm's scalar expf/erff do not vectorise and made GELU and softmax
 * cost a third of a base-size encoder step. Everything here is branch-free, so GCC if-converts it
 * inside `omp simd` loops. */
#ifndef D2V_VMATH_H
#define D2V_VMATH_H

#include <stdint.h>
#include <string.h>

#define VMATH_INLINE static inline __attribute__((always_inline))

/// e^x with relative error ~1e-7 for x in [-87, 88]; 0 below -87 (so exp(-inf) = 0 as masked
/// softmax logits need), e^88 above; NaN gives NaN. Range reduction x = k ln2 + r, degree-7
/// Taylor polynomial in r. Every input, NaN and infinities included, is defined behaviour: the
/// exponent bits are built in unsigned arithmetic (tests/test_simd.c runs them under UBSan in
/// make test-asan).
VMATH_INLINE float exp_approx(float x) {
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float kf = xc * 1.44269504088896341f + 12582912.0f; /* + 1.5 * 2^23 rounds to nearest */
    int32_t kb;
    memcpy(&kb, &kf, sizeof kb);
    float k = kf - 12582912.0f;
    float r = k * -0.693145751953125f + xc; /* ln2 split in two for an exact product */
    r = k * -1.428606765330187e-06f + r;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t bits = ((uint32_t)kb - 0x4B400000u + 127u) << 23; /* 2^k, unsigned: no overflow */
    bits &= -(uint32_t)(x >= -87.0f);                          /* 0 below the range, -inf */
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/// erf(x) with absolute error below 2e-7: erfc(z) = t exp(-z^2 + P(t)), t = 1/(1 + z/2), the
/// Chebyshev fit from Numerical Recipes (erfcc, fractional error < 1.2e-7).
VMATH_INLINE float erf_approx(float x) {
    float z = x < 0 ? -x : x;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float r = 1.0f - t * exp_approx(-z * z + p);
    return x < 0 ? -r : r;
}

/// <a, b> over n floats with 16 explicit partial sums (a fixed summation order on every ISA).
#define VMATH_LANES 16
VMATH_INLINE float dot_lanes(const float *a, const float *b, int n) {
    float acc[VMATH_LANES] = {0};
    int i = 0;
    for (; i + VMATH_LANES <= n; i += VMATH_LANES)
#pragma omp simd
        for (int j = 0; j < VMATH_LANES; j++)
            acc[j] += a[i + j] * b[i + j];
    float s = 0;
    for (int j = 0; j < VMATH_LANES; j++)
        s += acc[j];
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

#endif
