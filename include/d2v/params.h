/* params.h: the one parameter table. Each module declares each of its tensors once (name, shape,
 * init rule, weight decay, EMA group); the arena layout, initialisation, decay mask, EMA ranges,
 * teacher view, checkpoint and dump tables and the memory report are all derived from it. */
#ifndef D2V_PARAMS_H
#define D2V_PARAMS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    INIT_ZERO,
    INIT_ONE,
    INIT_CONST,        // a
    INIT_NORMAL,       // N(0, a^2)
    INIT_TRUNC_NORMAL, // N(0, a^2) truncated at +-b (BEiT's trunc_normal_: b = a)
    INIT_UNIFORM,      // U[a, b)
} InitKind;

typedef struct {
    InitKind kind;
    float a, b;
    int64_t zero_row;  // >= 0: this row stays zero (nn.Embedding padding_idx); -1: none
    int layer_rescale; // stacked (L, ...) tensor: block l divided by sqrt(2 (l + 1)) (BEiT
                       // fix_init_weight)
} ParamInit;

#define PINIT(kind, a, b) ((ParamInit){(kind), (a), (b), -1, 0})
#define PINIT_ZERO PINIT(INIT_ZERO, 0, 0)
#define PINIT_ONE PINIT(INIT_ONE, 0, 0)

enum {
    DECAY_YES = 0, // always decayed (matrices, embeddings)
    DECAY_1D = 1,  // biases, norms, layer scales, tokens: exempt when optim.exempt_1d is set
};
enum {
    EMA_AVERAGE = 0, // the teacher holds its own copy, averaged after every update
    EMA_SHARED = 1,  // the teacher reads the student's tensor
};

typedef struct {
    int rank;
    int64_t d[4];
} Shape;
#define SHAPE1(a) ((Shape){1, {(a), 0, 0, 0}})
#define SHAPE2(a, b) ((Shape){2, {(a), (b), 0, 0}})
#define SHAPE3(a, b, c) ((Shape){3, {(a), (b), (c), 0}})
#define SHAPE4(a, b, c, d) ((Shape){4, {(a), (b), (c), (d)}})

/// One tensor: its name in checkpoints and dumps, its place in the flat arena, and its rules.
typedef struct {
    char name[48]; // e.g. "enc.qkv_w", "speech.conv_w.3", "head.w1"
    size_t offset, count;
    int rank;
    int64_t shape[4];
    ParamInit init;
    uint8_t decay, ema;
    size_t field; // byte offset, inside the view struct, of the float * that points at it
} ParamSpec;

typedef struct {
    ParamSpec *t;
    int n, cap;
    size_t total;      // floats in the arena
    const char *view;  // the view struct the declarations' field pointers live in
    size_t view_bytes; // its size (bind zeroes it first: absent tensors stay NULL)
} ParamTable;

/// Start a table whose declarations point into the view struct `view` of `bytes` bytes.
void ptab_begin(ParamTable *t, void *view, size_t bytes);
void ptab_free(ParamTable *t);
/// Declare one tensor. `field` is the float * member of the view that will point at it. A zero
/// size declares nothing (an absent optional tensor).
void ptab_add(ParamTable *t, float **field, const char *name, Shape s, ParamInit init, int decay,
              int ema);
const ParamSpec *ptab_find(const ParamTable *t, const char *name);

/// One module's declaration as an untyped callback, for the two helpers below (the per-module
/// *_params_layout / *_params_init the kernel tests use).
typedef void (*ParamDeclare)(ParamTable *t, void *view, const void *cfg);
/// Lay the module's tensors out in `memory` (NULL: count only); returns the float count.
size_t ptab_module_layout(ParamDeclare declare, void *view, size_t bytes, const void *cfg,
                          float *memory);
/// Initialise a bound view of the module by its declared rules.
void ptab_module_init(ParamDeclare declare, void *view, size_t bytes, const void *cfg,
                      uint64_t seed);

/// Point every tensor pointer of `view` into the arena at `base`.
void ptab_bind(const ParamTable *t, void *view, float *base);
/// The teacher's view: averaged tensors in `teacher`, shared ones in the student's `student`.
void ptab_bind_teacher(const ParamTable *t, void *view, float *teacher, float *student);
/// Initialise every tensor of a bound view by its rule, keyed on (seed, tensor name).
void ptab_init_values(const ParamTable *t, void *view, uint64_t seed);
/// 1 where AdamW decays, 0 where it does not (DECAY_1D tensors when exempt_1d).
void ptab_decay_mask(const ParamTable *t, uint8_t *mask, int exempt_1d);

typedef struct {
    size_t offset, count;
} ParamRange;
/// The arena ranges the teacher averages, adjacent tensors merged. Returns how many (<= max).
int ptab_ema_ranges(const ParamTable *t, ParamRange *r, int max);
/// CRC32 (zlib) of each tensor of one arena laid out by the table, into out[t->n].
void ptab_crc32(const ParamTable *t, const float *arena, uint32_t *out);
/// Parameters per module (the name's prefix before the first '.'), for the start-up report:
/// fills up to max names and counts, returns how many modules.
int ptab_modules(const ParamTable *t, char names[][16], size_t *counts, int max);

#endif
