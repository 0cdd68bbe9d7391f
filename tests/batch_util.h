/* batch_util.h: batch helpers shared by the model-level tests. */
#ifndef D2V_TEST_BATCH_UTIL_H
#define D2V_TEST_BATCH_UTIL_H

#include "d2v/dataset.h"

/* Rows [first, first + B) of b as a batch of its own (views, no copies). */
static inline Batch half_of(const Batch *b, int first, int B) {
    Batch h = *b;
    h.B = B, h.ids = b->ids + first;
    if (b->tokens) h.tokens = b->tokens + (size_t)first * b->T;
    if (b->images) h.images = b->images + (size_t)first * b->H * b->W * b->C;
    if (b->audio) h.audio = b->audio + (size_t)first * b->S;
    return h;
}

#endif
