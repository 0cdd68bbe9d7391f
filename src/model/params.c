/* params.c: the parameter table: declaration, arena binding, init rules, decay mask, EMA ranges. */
#include "d2v/params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "d2v/rng.h"
#include "d2v/util.h"

void ptab_begin(ParamTable *t, void *view, size_t bytes) {
    memset(t, 0, sizeof *t);
    t->view = view, t->view_bytes = bytes;
}

void ptab_free(ParamTable *t) {
    free(t->t);
    memset(t, 0, sizeof *t);
}

void ptab_add(ParamTable *t, float **field, const char *name, Shape s, ParamInit init, int decay,
              int ema) {
    size_t count = 1;
    for (int i = 0; i < s.rank; i++)
        count *= (size_t)s.d[i];
    if (count == 0 || s.rank == 0) return;
    const char *f = (const char *)field;
    if (f < t->view || f + sizeof(float *) > t->view + t->view_bytes)
        die("params: tensor '%s' does not point into its view", name);
    if (ptab_find(t, name)) die("params: tensor '%s' declared twice", name);
    if (init.kind == INIT_TRUNC_NORMAL && !(init.b > 0 && init.a > 0))
        die("params: tensor '%s': a truncated normal needs a positive std and cut", name);
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->t = realloc(t->t, sizeof *t->t * (size_t)t->cap);
        if (!t->t) die("params: out of memory for %d tensors", t->cap);
    }
    ParamSpec *p = &t->t[t->n++];
    memset(p, 0, sizeof *p);
    if (snprintf(p->name, sizeof p->name, "%s", name) >= (int)sizeof p->name)
        die("params: tensor name '%s' too long", name);
    p->offset = t->total, p->count = count, p->rank = s.rank;
    memcpy(p->shape, s.d, sizeof p->shape);
    p->init = init, p->decay = (uint8_t)decay, p->ema = (uint8_t)ema;
    p->field = (size_t)(f - t->view);
    t->total += count; /* contiguous: the arena is the tensors, nothing between them */
}

const ParamSpec *ptab_find(const ParamTable *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->t[i].name, name)) return &t->t[i];
    return NULL;
}

static float **slot(void *view, const ParamSpec *p) { return (float **)((char *)view + p->field); }

void ptab_bind(const ParamTable *t, void *view, float *base) {
    memset(view, 0, t->view_bytes);
    for (int i = 0; i < t->n; i++)
        *slot(view, &t->t[i]) = base + t->t[i].offset;
}

void ptab_bind_teacher(const ParamTable *t, void *view, float *teacher, float *student) {
    memset(view, 0, t->view_bytes);
    for (int i = 0; i < t->n; i++)
        *slot(view, &t->t[i]) = (t->t[i].ema == EMA_AVERAGE ? teacher : student) + t->t[i].offset;
}

/* Truncated normal by rejection on the element's own counter draws: keyed, so thread-safe and
 * reproducible; with a cut at one std, 1.5 draws per element on average. */
static float trunc_normal(uint64_t key, size_t i, float std, float cut) {
    for (uint64_t k = 0; k < 64; k++) {
        float z = std * rng_normal(key, (uint64_t)i * 64 + k);
        if (fabsf(z) <= cut) return z;
    }
    return 0.0f;
}

void ptab_init_values(const ParamTable *t, void *view, uint64_t seed) {
    for (int i = 0; i < t->n; i++) {
        const ParamSpec *p = &t->t[i];
        float *x = *slot(view, p);
        const ParamInit *r = &p->init;
        uint64_t key = rng_key(seed, RNG_INIT, rng_hash_name(p->name), 0);
#pragma omp parallel for schedule(static)
        for (size_t j = 0; j < p->count; j++) {
            float v = 0;
            switch (r->kind) {
            case INIT_ZERO:
                v = 0;
                break;
            case INIT_ONE:
                v = 1;
                break;
            case INIT_CONST:
                v = r->a;
                break;
            case INIT_NORMAL:
                v = r->a * rng_normal(key, j);
                break;
            case INIT_TRUNC_NORMAL:
                v = trunc_normal(key, j, r->a, r->b);
                break;
            case INIT_UNIFORM:
                v = r->a + (r->b - r->a) * rng_uniform(key, j);
                break;
            }
            x[j] = v;
        }
        size_t row = p->rank > 1 ? p->count / (size_t)p->shape[0] : 1;
        if (r->zero_row >= 0) {
            if (p->rank != 2 || r->zero_row >= p->shape[0])
                die("params: '%s' has no row %lld to zero", p->name, (long long)r->zero_row);
            memset(x + (size_t)r->zero_row * row, 0, sizeof(float) * row);
        }
        if (r->layer_rescale)
            for (int64_t l = 0; l < p->shape[0]; l++) {
                float s = 1.0f / sqrtf(2.0f * (float)(l + 1));
                for (size_t j = 0; j < row; j++)
                    x[(size_t)l * row + j] *= s;
            }
    }
}

void ptab_decay_mask(const ParamTable *t, uint8_t *mask, int exempt_1d) {
    for (int i = 0; i < t->n; i++)
        memset(mask + t->t[i].offset, !(exempt_1d && t->t[i].decay == DECAY_1D), t->t[i].count);
}

int ptab_ema_ranges(const ParamTable *t, ParamRange *r, int max) {
    int n = 0;
    for (int i = 0; i < t->n; i++) {
        const ParamSpec *p = &t->t[i];
        if (p->ema != EMA_AVERAGE) continue;
        if (n > 0 && r[n - 1].offset + r[n - 1].count == p->offset)
            r[n - 1].count += p->count;
        else {
            if (n == max) die("params: more than %d EMA ranges", max);
            r[n++] = (ParamRange){p->offset, p->count};
        }
    }
    return n;
}

int ptab_modules(const ParamTable *t, char names[][16], size_t *counts, int max) {
    int n = 0;
    for (int i = 0; i < t->n; i++) {
        char m[16];
        snprintf(m, sizeof m, "%.*s", (int)strcspn(t->t[i].name, "."), t->t[i].name);
        int k = 0;
        while (k < n && strcmp(names[k], m))
            k++;
        if (k == n) {
            if (n == max) continue;
            snprintf(names[n], 16, "%s", m), counts[n++] = 0;
        }
        counts[k] += t->t[i].count;
    }
    return n;
}

size_t ptab_module_layout(ParamDeclare declare, void *view, size_t bytes, const void *cfg,
                          float *memory) {
    ParamTable t;
    ptab_begin(&t, view, bytes);
    declare(&t, view, cfg); /* records field offsets only: the view is written by ptab_bind */
    if (memory) ptab_bind(&t, view, memory);
    size_t n = t.total;
    ptab_free(&t);
    return n;
}

void ptab_module_init(ParamDeclare declare, void *view, size_t bytes, const void *cfg,
                      uint64_t seed) {
    ParamTable t;
    ptab_begin(&t, view, bytes);
    declare(&t, view, cfg);
    ptab_init_values(&t, view, seed);
    ptab_free(&t);
}

void ptab_crc32(const ParamTable *t, const float *arena, uint32_t *out) {
    for (int i = 0; i < t->n; i++) {
        const Bytef *p = (const Bytef *)(arena + t->t[i].offset);
        uLong crc = crc32(0L, Z_NULL, 0);
        size_t left = t->t[i].count * sizeof(float);
        while (left > 0) { /* crc32 takes a uInt length */
            uInt n = left > (1u << 30) ? 1u << 30 : (uInt)left;
            crc = crc32(crc, p, n);
            p += n, left -= n;
        }
        out[i] = (uint32_t)crc;
    }
}
