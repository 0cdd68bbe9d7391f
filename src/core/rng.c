/* rng.c: the counter-based hash behind every random draw (splitmix64 chains) and keyed streams. */
#include "d2v/rng.h"

#include <math.h>

float rng_normal(uint64_t key, uint64_t index) {
    double u1 = ((rng_mix64(key ^ rng_mix64(2 * index)) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (rng_mix64(key ^ rng_mix64(2 * index + 1)) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t rng_hash_name(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Streams are tagged with this domain ("mask" in ASCII) before they reach rng_key, so a stream
 * and a dropout site never share a key. */
#define STREAM_DOMAIN 0x6D61736B00000000ull

RngStream rng_stream(uint64_t seed, uint64_t epoch, uint64_t sample, RngStreamId id) {
    RngStream r = {rng_key(seed, epoch, sample, STREAM_DOMAIN ^ (uint64_t)id), 0};
    return r;
}

static uint64_t stream_bits(RngStream *r) { return rng_key(r->key, r->counter++, 0, 0); }

double rng_stream_uniform(RngStream *r) {
    return (double)(stream_bits(r) >> 11) * (1.0 / 9007199254740992.0);
}

int64_t rng_stream_int(RngStream *r, int64_t lo, int64_t hi) {
    uint64_t span = (uint64_t)hi - (uint64_t)lo + 1; /* 0 means the full 2^64 range */
    if (span == 0) return (int64_t)stream_bits(r);
    uint64_t reject = (0 - span) % span, x; /* rejection below 2^64 mod span: no modulo bias */
    do
        x = stream_bits(r);
    while (x < reject);
    return (int64_t)((uint64_t)lo + x % span);
}
