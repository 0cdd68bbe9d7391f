/* bpe.c: byte-level BPE (GPT-2 / RoBERTa): GPT-2's pre-tokenizer run on bytes, an incremental
 * trainer (pair counts, a pair -> words index and a lazy max-heap, as in HF tokenizers), encoding
 * by merge rank with a word cache, and vocab.json/merges.txt (json-c) and HDF5 storage. How it
 * differs from GPT-2's encoder.py is listed in docs/datasets.md (text section). */
#define _POSIX_C_SOURCE 200809L
#include "bpe.h"

#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe_unicode.h"
#include "d2v/h5io.h"
#include "d2v/util.h"

const char *const bpe_special_names[BPE_N_SPECIAL] = {"<s>", "<pad>", "</s>", "<unk>", "<mask>"};
static const char *const special_attrs[BPE_N_SPECIAL] = {"bos_id", "pad_id", "eos_id", "unk_id",
                                                         "mask_id"};

#define CACHE_MAX_WORDS (1u << 20) // encode cache entries; later new words are not cached
#define CACHE_MAX_BYTES 256        // longer words are rare and not worth caching
#define DEAD INT32_MIN             // a symbol merged into its left neighbour

static int fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && n) vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Grow p (cap elements of `size` bytes) to hold at least `need`, doubling. */
static void *reserve_at(void *p, size_t *cap, size_t need, size_t size, const char *what) {
    if (need <= *cap) return p;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = realloc(p, c * size);
    if (!q) die("out of memory growing %s to %zu entries", what, c);
    *cap = c;
    return q;
}
#define RESERVE(ptr, cap, need, what)                                                              \
    ((ptr) = reserve_at((ptr), &(cap), (need), sizeof *(ptr), what))

/* Resize p to n elements of `size` bytes; dies naming `what`. */
static void *resize_n(void *p, size_t n, size_t size, const char *what) {
    void *q = realloc(p, (n ? n : 1) * size);
    if (!q) die("out of memory growing %s to %zu entries", what, n);
    return q;
}

static void *checked_calloc(size_t n, size_t size, const char *what) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die("out of memory allocating %s", what);
    return p;
}

static char *checked_strdup(const char *s) {
    char *d = strdup(s);
    if (!d) die("out of memory copying a token");
    return d;
}

/* ---- the byte-to-unicode alphabet ---- */

/* GPT-2 maps each byte to a printable code point so tokens are readable strings: the printable
 * Latin-1 bytes map to themselves and the other 68 to 256, 257, ... in byte order. */
static uint16_t byte_cp[256];   // byte -> code point
static int16_t cp_byte[324];    // code point (< 324) -> byte, or -1
static char byte_str[256][3];   // UTF-8 of byte_cp
static uint8_t byte_order[256]; // bytes sorted by code point: GPT-2's vocabulary order
static int alphabet_ready;

static void alphabet_init(void) {
    if (alphabet_ready) return;
    int extra = 0;
    for (int cp = 0; cp < 324; cp++)
        cp_byte[cp] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        byte_cp[b] = (uint16_t)(printable ? b : 256 + extra++);
        cp_byte[byte_cp[b]] = (int16_t)b;
        unsigned cp = byte_cp[b];
        if (cp < 0x80) {
            byte_str[b][0] = (char)cp;
        } else {
            byte_str[b][0] = (char)(0xC0 | cp >> 6);
            byte_str[b][1] = (char)(0x80 | (cp & 0x3F));
        }
    }
    for (int cp = 0, k = 0; cp < 324; cp++)
        if (cp_byte[cp] >= 0) byte_order[k++] = (uint8_t)cp_byte[cp];
    alphabet_ready = 1;
}

const char *bpe_byte_token(int byte) {
    alphabet_init();
    return byte_str[byte & 0xFF];
}

/* ---- pre-tokenizer ---- */

enum { CL_LETTER, CL_NUMBER, CL_SPACE, CL_OTHER };

/* Length (1-4) of the well-formed UTF-8 sequence at s[0..n) and its code point, or 0. */
static size_t utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xC2 || c > 0xF4) return 0;
    size_t len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (n < len) return 0;
    uint8_t lo = 0x80, hi = 0xBF; // second-byte limits exclude overlongs, surrogates, > U+10FFFF
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
    if (s[1] < lo || s[1] > hi) return 0;
    uint32_t v = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    *cp = v;
    return len;
}

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static int class_of_ascii(uint8_t c) {
    if ((uint8_t)((c | 0x20) - 'a') < 26) return CL_LETTER;
    if ((uint8_t)(c - '0') < 10) return CL_NUMBER;
    if (c == ' ' || (c >= 9 && c <= 13)) return CL_SPACE;
    return CL_OTHER;
}

static int class_of_cp(uint32_t cp) {
    // \s: the White_Space code points above ASCII, as the regex module matches them
    if (cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
        cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000)
        return CL_SPACE;
    if (in_ranges(bpe_letter_ranges, sizeof bpe_letter_ranges / sizeof *bpe_letter_ranges, cp))
        return CL_LETTER;
    if (in_ranges(bpe_number_ranges, sizeof bpe_number_ranges / sizeof *bpe_number_ranges, cp))
        return CL_NUMBER;
    return CL_OTHER;
}

/* Class of the character at s[i] and its length in *clen; an invalid byte is one CL_OTHER. */
static inline int class_at(const uint8_t *s, size_t n, size_t i, size_t *clen) {
    if (s[i] < 0x80) {
        *clen = 1;
        return class_of_ascii(s[i]);
    }
    uint32_t cp;
    size_t l = utf8_decode(s + i, n - i, &cp);
    *clen = l ? l : 1;
    return l ? class_of_cp(cp) : CL_OTHER;
}

size_t bpe_pretok_next(const char *text, size_t len, size_t pos) {
    const uint8_t *s = (const uint8_t *)text;
    size_t i = pos, l;
    if (s[i] == '\'' && i + 1 < len) { // 's 't 'm 'd 're 've 'll (ASCII, case-sensitive)
        uint8_t a = s[i + 1], b = i + 2 < len ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
            return i + 3;
    }
    int cls = class_at(s, len, i, &l);
    size_t j = i;
    if (s[i] == ' ' && i + 1 < len) { // " ?X+": one leading space joins a following non-space run
        int next = class_at(s, len, i + 1, &l);
        if (next != CL_SPACE) cls = next, j = i + 1;
    }
    if (cls != CL_SPACE) {
        while (j < len && class_at(s, len, j, &l) == cls)
            j += l;
        return j;
    }
    // \s+(?!\S)|\s+ : a whitespace run leaves its last character to the word that follows it
    size_t k = i, last = i, count = 0;
    while (k < len && class_at(s, len, k, &l) == CL_SPACE)
        last = k, k += l, count++;
    return k == len || count == 1 ? k : last;
}

/* ---- hash tables ---- */

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

/* Byte strings -> dense entry numbers 0, 1, ... in insertion order; keys are kept NUL-terminated in
 * one pool. Open addressing with linear probing, at most half full. */
typedef struct {
    uint32_t *slot; // (cap) entry + 1, 0 = empty
    size_t cap;     // power of two
    size_t n, n_cap;
    uint64_t *hash; // (n) per entry
    size_t *off;    // (n) key offset in pool
    uint32_t *len;  // (n) key length
    char *pool;
    size_t pool_len, pool_cap;
} StrMap;

static void strmap_free(StrMap *m) {
    free(m->slot), free(m->hash), free(m->off), free(m->len), free(m->pool);
    memset(m, 0, sizeof *m);
}

static void strmap_rehash(StrMap *m, size_t cap) {
    free(m->slot);
    m->slot = checked_calloc(cap, sizeof *m->slot, "hash table");
    m->cap = cap;
    for (size_t e = 0; e < m->n; e++) {
        size_t j = m->hash[e] & (cap - 1);
        while (m->slot[j])
            j = (j + 1) & (cap - 1);
        m->slot[j] = (uint32_t)e + 1;
    }
}

static int64_t strmap_find(const StrMap *m, const void *key, size_t len, uint64_t h) {
    if (!m->cap) return -1;
    for (size_t j = h & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        uint32_t e = m->slot[j];
        if (!e) return -1;
        e--;
        if (m->hash[e] == h && m->len[e] == len && !memcmp(m->pool + m->off[e], key, len)) return e;
    }
}

/* Add a key known to be absent; returns its entry number. */
static size_t strmap_add(StrMap *m, const void *key, size_t len, uint64_t h) {
    if (2 * (m->n + 1) > m->cap) strmap_rehash(m, m->cap ? 2 * m->cap : 1024);
    if (m->n == m->n_cap) {
        m->n_cap = m->n_cap ? 2 * m->n_cap : 1024;
        m->hash = resize_n(m->hash, m->n_cap, sizeof *m->hash, "hash keys");
        m->off = resize_n(m->off, m->n_cap, sizeof *m->off, "hash keys");
        m->len = resize_n(m->len, m->n_cap, sizeof *m->len, "hash keys");
    }
    RESERVE(m->pool, m->pool_cap, m->pool_len + len + 1, "hash key bytes");
    memcpy(m->pool + m->pool_len, key, len);
    m->pool[m->pool_len + len] = '\0';
    size_t e = m->n++;
    m->hash[e] = h, m->off[e] = m->pool_len, m->len[e] = (uint32_t)len;
    m->pool_len += len + 1;
    size_t j = h & (m->cap - 1);
    while (m->slot[j])
        j = (j + 1) & (m->cap - 1);
    m->slot[j] = (uint32_t)e + 1;
    return e;
}

/* (left id, right id) -> dense entry numbers in insertion order. */
typedef struct {
    uint32_t *slot; // (cap) entry + 1, 0 = empty
    size_t cap;
    uint64_t *key; // (n)
    size_t n, n_cap;
} PairMap;

static inline uint64_t pair_key(int32_t a, int32_t b) {
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}
static inline size_t pair_hash(uint64_t k) {
    k *= 0x9E3779B97F4A7C15ull;
    return (size_t)(k ^ (k >> 29));
}

static void pairmap_free(PairMap *m) {
    free(m->slot), free(m->key);
    memset(m, 0, sizeof *m);
}

static int64_t pairmap_find(const PairMap *m, uint64_t k) {
    if (!m->cap) return -1;
    for (size_t j = pair_hash(k) & (m->cap - 1);; j = (j + 1) & (m->cap - 1)) {
        uint32_t e = m->slot[j];
        if (!e) return -1;
        if (m->key[e - 1] == k) return e - 1;
    }
}

static size_t pairmap_add(PairMap *m, uint64_t k) {
    if (2 * (m->n + 1) > m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 1024;
        free(m->slot);
        m->slot = checked_calloc(cap, sizeof *m->slot, "pair table");
        m->cap = cap;
        for (size_t e = 0; e < m->n; e++) {
            size_t j = pair_hash(m->key[e]) & (cap - 1);
            while (m->slot[j])
                j = (j + 1) & (cap - 1);
            m->slot[j] = (uint32_t)e + 1;
        }
    }
    RESERVE(m->key, m->n_cap, m->n + 1, "pair keys");
    size_t e = m->n++;
    m->key[e] = k;
    size_t j = pair_hash(k) & (m->cap - 1);
    while (m->slot[j])
        j = (j + 1) & (m->cap - 1);
    m->slot[j] = (uint32_t)e + 1;
    return e;
}

/* ---- the lookup index of a vocabulary ---- */

struct BpeIndex {
    StrMap tokens;   // token string -> id (entry i is token i)
    PairMap ranks;   // (left, right) -> merge rank (entry r is merge r)
    char *tok_bytes; // decoded bytes of token i: tok_bytes[tok_off[i] .. tok_off[i + 1])
    size_t *tok_off; // (n_vocab + 1)
    // encode cache: word bytes -> ids cache_ids[cache_off[e] .. + cache_len[e]]
    StrMap cache;
    size_t *cache_off, cache_cap;
    uint32_t *cache_len;
    int32_t *cache_ids;
    size_t cache_ids_len, cache_ids_cap;
    // one word's merge state
    int32_t *sym, *prev, *next; // (word_cap) symbol ids and the linked list over them
    size_t word_cap;
    uint64_t *heap; // (heap_cap) rank << 32 | position, a min-heap
    size_t heap_cap;
};

static int32_t token_id(const Bpe *b, const char *s, size_t len) {
    return (int32_t)strmap_find(&b->index->tokens, s, len, hash_bytes(s, len));
}

static int32_t merge_rank(const BpeIndex *x, int32_t a, int32_t b) {
    if (a < 0 || b < 0) return -1;
    return (int32_t)pairmap_find(&x->ranks, pair_key(a, b));
}

void bpe_free(Bpe *b) {
    for (int32_t i = 0; b->vocab && i < b->n_vocab; i++)
        free(b->vocab[i]);
    free(b->vocab), free(b->merges);
    BpeIndex *x = b->index;
    if (x) {
        strmap_free(&x->tokens), pairmap_free(&x->ranks), strmap_free(&x->cache);
        free(x->tok_bytes), free(x->tok_off), free(x->cache_off), free(x->cache_len);
        free(x->cache_ids), free(x->sym), free(x->prev), free(x->next), free(x->heap);
        free(x);
    }
    memset(b, 0, sizeof *b);
}

/* Take ownership of vocab (n strings, in id order): token map, byte ids, decoded token bytes. */
static int build_tokens(Bpe *b, char **vocab, int32_t n, const char *src, char *err,
                        size_t errlen) {
    alphabet_init();
    memset(b, 0, sizeof *b);
    b->vocab = vocab, b->n_vocab = n;
    BpeIndex *x = b->index = checked_calloc(1, sizeof *x, "tokenizer index");
    if (n <= 0) return fail(err, errlen, "%s: empty vocabulary", src);
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        size_t len = strlen(vocab[i]);
        uint64_t h = hash_bytes(vocab[i], len);
        int64_t dup = strmap_find(&x->tokens, vocab[i], len, h);
        if (dup >= 0)
            return fail(err, errlen, "%s: token %d '%s' repeats token %lld", src, i, vocab[i],
                        (long long)dup);
        strmap_add(&x->tokens, vocab[i], len, h);
        total += len;
    }
    for (int c = 0; c < 256; c++)
        b->byte_id[c] = token_id(b, byte_str[c], strlen(byte_str[c]));
    // Decoded bytes: alphabet characters back to their byte, anything else (such as the special
    // tokens' own characters outside the alphabet) kept as its UTF-8.
    x->tok_bytes = checked_calloc(total + 1, 1, "token bytes");
    x->tok_off = checked_calloc((size_t)n + 1, sizeof *x->tok_off, "token offsets");
    size_t k = 0;
    for (int32_t i = 0; i < n; i++) {
        const uint8_t *s = (const uint8_t *)vocab[i];
        size_t len = strlen(vocab[i]);
        x->tok_off[i] = k;
        for (size_t p = 0; p < len;) {
            uint32_t cp;
            size_t l = utf8_decode(s + p, len - p, &cp);
            if (l && cp < 324 && cp_byte[cp] >= 0) {
                x->tok_bytes[k++] = (char)cp_byte[cp];
                p += l;
            } else {
                l = l ? l : 1;
                memcpy(x->tok_bytes + k, s + p, l);
                k += l, p += l;
            }
        }
    }
    x->tok_off[n] = k;
    return 0;
}

/* Merges from (left, right) id pairs in rank order; each merged token must be in the vocabulary
 * (it is the concatenation of the two strings). */
static int build_merges(Bpe *b, const int32_t *lr, int32_t n, const char *src, char *err,
                        size_t errlen) {
    BpeIndex *x = b->index;
    b->merges = checked_calloc((size_t)n * 3, sizeof(int32_t), "merges");
    b->n_merges = n;
    char *cat = NULL;
    size_t cat_cap = 0;
    for (int32_t r = 0; r < n; r++) {
        int32_t l = lr[2 * r], rt = lr[2 * r + 1];
        if (l < 0 || l >= b->n_vocab || rt < 0 || rt >= b->n_vocab) {
            free(cat);
            return fail(err, errlen, "%s: merge %d refers to token ids %d, %d outside 0..%d", src,
                        r, l, rt, b->n_vocab - 1);
        }
        size_t la = strlen(b->vocab[l]), lb = strlen(b->vocab[rt]);
        RESERVE(cat, cat_cap, la + lb + 1, "merge string");
        memcpy(cat, b->vocab[l], la), memcpy(cat + la, b->vocab[rt], lb);
        int32_t z = token_id(b, cat, la + lb);
        if (z < 0 || pairmap_find(&x->ranks, pair_key(l, rt)) >= 0) {
            cat[la + lb] = '\0';
            int rc = fail(err, errlen,
                          z < 0 ? "%s: merge %d (%s %s) makes '%s', which is not in the vocabulary"
                                : "%s: merge %d (%s %s) repeats an earlier merge (made '%s')",
                          src, r, b->vocab[l], b->vocab[rt], cat);
            free(cat);
            return rc;
        }
        pairmap_add(&x->ranks, pair_key(l, rt));
        b->merges[3 * r] = l, b->merges[3 * r + 1] = rt, b->merges[3 * r + 2] = z;
    }
    free(cat);
    return 0;
}

static int set_specials(Bpe *b, const int32_t special[BPE_N_SPECIAL], const char *src, char *err,
                        size_t errlen) {
    for (int s = 0; s < BPE_N_SPECIAL; s++) {
        if (special[s] < 0 || special[s] >= b->n_vocab)
            return fail(err, errlen, "%s: %s id %d is outside the vocabulary (0..%d)", src,
                        special_attrs[s], special[s], b->n_vocab - 1);
        b->special[s] = special[s];
    }
    return 0;
}

/* "left right" -> ids; returns 0, -1 when malformed, -2 when a token is unknown. */
static int parse_merge(const Bpe *b, const char *s, size_t len, int32_t *l, int32_t *r) {
    const char *sp = memchr(s, ' ', len);
    if (!sp || sp == s || sp == s + len - 1 || memchr(sp + 1, ' ', (size_t)(s + len - sp - 1)))
        return -1;
    *l = token_id(b, s, (size_t)(sp - s));
    *r = token_id(b, sp + 1, (size_t)(s + len - sp - 1));
    return *l < 0 || *r < 0 ? -2 : 0;
}

int bpe_init_strings(Bpe *b, const char *const *vocab, int32_t n_vocab, const char *const *merges,
                     int32_t n_merges, const int32_t special[BPE_N_SPECIAL], const char *src,
                     char *err, size_t errlen) {
    char **v = checked_calloc((size_t)(n_vocab > 0 ? n_vocab : 1), sizeof(char *), "vocabulary");
    for (int32_t i = 0; i < n_vocab; i++)
        v[i] = checked_strdup(vocab[i]);
    int32_t *lr = checked_calloc((size_t)n_merges * 2 + 1, sizeof(int32_t), "merges");
    int rc = build_tokens(b, v, n_vocab, src, err, errlen);
    for (int32_t r = 0; rc == 0 && r < n_merges; r++) {
        int p = parse_merge(b, merges[r], strlen(merges[r]), &lr[2 * r], &lr[2 * r + 1]);
        if (p == -1)
            rc = fail(err, errlen, "%s: merge %d '%s' is not \"left right\"", src, r, merges[r]);
        if (p == -2)
            rc = fail(err, errlen, "%s: merge %d '%s' uses a token not in the vocabulary", src, r,
                      merges[r]);
    }
    if (rc == 0) rc = build_merges(b, lr, n_merges, src, err, errlen);
    if (rc == 0) rc = set_specials(b, special, src, err, errlen);
    free(lr);
    if (rc) bpe_free(b);
    return rc;
}

/* ---- training ---- */

struct BpeCounts {
    StrMap words;
    int64_t *count; // (words.n)
    size_t count_cap;
};

BpeCounts *bpe_counts_alloc(void) { return checked_calloc(1, sizeof(BpeCounts), "word counts"); }

void bpe_counts_add(BpeCounts *c, const char *text, size_t len) {
    for (size_t pos = 0; pos < len;) {
        size_t end = bpe_pretok_next(text, len, pos);
        uint64_t h = hash_bytes(text + pos, end - pos);
        int64_t e = strmap_find(&c->words, text + pos, end - pos, h);
        if (e < 0) {
            e = (int64_t)strmap_add(&c->words, text + pos, end - pos, h);
            RESERVE(c->count, c->count_cap, (size_t)e + 1, "word counts");
            c->count[e] = 0;
        }
        c->count[e]++;
        pos = end;
    }
}

size_t bpe_counts_words(const BpeCounts *c) { return c->words.n; }

void bpe_counts_free(BpeCounts *c) {
    if (!c) return;
    strmap_free(&c->words);
    free(c->count);
    free(c);
}

typedef struct {
    int32_t *w; // words that contain (or once contained) the pair; may repeat across steps
    uint32_t n, cap;
} WordList;

typedef struct {
    int64_t count;
    int32_t left, right, pair;
} HeapItem;

/* Training state: every distinct word as a symbol sequence, and every adjacent pair with its
 * frequency-weighted count and the words it occurs in. */
typedef struct {
    size_t n_words;
    const int64_t *wcount; // (n_words) word frequency
    size_t *woff;          // (n_words) start of the word in sym
    uint32_t *wlen;        // (n_words) current symbols
    int32_t *wstamp;       // (n_words) last merge step that rewrote the word
    int32_t *sym;          // all words' symbols, each word shrinking in place
    PairMap pairs;
    size_t p_cap;
    int64_t *pcount;                  // (pairs.n)
    int32_t *pleft, *pright, *ptouch; // (pairs.n) ids, and last step that pushed the pair
    WordList *plist;                  // (pairs.n)
    HeapItem *heap;
    size_t heap_n, heap_cap;
} Trainer;

static int32_t trainer_pair(Trainer *t, int32_t a, int32_t b) {
    uint64_t k = pair_key(a, b);
    int64_t p = pairmap_find(&t->pairs, k);
    if (p >= 0) return (int32_t)p;
    p = (int64_t)pairmap_add(&t->pairs, k);
    if ((size_t)p >= t->p_cap) {
        size_t c = t->p_cap = t->p_cap ? 2 * t->p_cap : 4096;
        t->pcount = resize_n(t->pcount, c, sizeof *t->pcount, "BPE pair table");
        t->pleft = resize_n(t->pleft, c, sizeof *t->pleft, "BPE pair table");
        t->pright = resize_n(t->pright, c, sizeof *t->pright, "BPE pair table");
        t->ptouch = resize_n(t->ptouch, c, sizeof *t->ptouch, "BPE pair table");
        t->plist = resize_n(t->plist, c, sizeof *t->plist, "BPE pair table");
    }
    t->pcount[p] = 0, t->pleft[p] = a, t->pright[p] = b, t->ptouch[p] = -1;
    memset(&t->plist[p], 0, sizeof t->plist[p]);
    return (int32_t)p;
}

static void wordlist_add(WordList *l, int32_t w) {
    if (l->n && l->w[l->n - 1] == w) return; // the same word listed twice in a row
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 4;
        l->w = resize_n(l->w, l->cap, sizeof *l->w, "a BPE pair's word list");
    }
    l->w[l->n++] = w;
}

/* Max-heap order: higher count first, then the smaller (left, right) pair. */
static int heap_before(const HeapItem *a, const HeapItem *b) {
    if (a->count != b->count) return a->count > b->count;
    if (a->left != b->left) return a->left < b->left;
    return a->right < b->right;
}

static void heap_push(Trainer *t, int32_t p) {
    RESERVE(t->heap, t->heap_cap, t->heap_n + 1, "BPE pair heap");
    HeapItem it = {t->pcount[p], t->pleft[p], t->pright[p], p};
    size_t i = t->heap_n++;
    while (i > 0 && heap_before(&it, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    t->heap[i] = it;
}

static HeapItem heap_pop(Trainer *t) {
    HeapItem top = t->heap[0], last = t->heap[--t->heap_n];
    size_t i = 0, n = t->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && heap_before(&t->heap[c + 1], &t->heap[c])) c++;
        if (!heap_before(&t->heap[c], &last)) break;
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (n) t->heap[i] = last;
    return top;
}

/* The most frequent pair. Heap entries are not updated when counts fall, so a stale entry is
 * pushed back with its current count; pairs only gain counts when they are pushed anew. */
static int trainer_best(Trainer *t, HeapItem *best) {
    while (t->heap_n) {
        HeapItem it = heap_pop(t);
        int64_t now = t->pcount[it.pair];
        if (now == it.count && now > 0) {
            *best = it;
            return 1;
        }
        if (now > 0 && now < it.count) heap_push(t, it.pair);
    }
    return 0;
}

static void trainer_free(Trainer *t) {
    for (size_t p = 0; p < t->pairs.n; p++)
        free(t->plist[p].w);
    free(t->woff), free(t->wlen), free(t->wstamp), free(t->sym);
    pairmap_free(&t->pairs);
    free(t->pcount), free(t->pleft), free(t->pright), free(t->ptouch), free(t->plist);
    free(t->heap);
}

int bpe_train(Bpe *out, const BpeCounts *c, int32_t vocab_size, char *err, size_t errlen) {
    alphabet_init();
    memset(out, 0, sizeof *out);
    const int32_t base = BPE_N_SPECIAL + 256; // 4 specials and <mask>, 256 bytes
    if (vocab_size < base)
        return fail(err, errlen,
                    "vocabulary size %d is below %d (5 special tokens and 256 byte tokens)",
                    vocab_size, base);
    if (!c || c->words.n == 0) return fail(err, errlen, "no text to train the vocabulary on");

    // Vocabulary: <s> <pad> </s> <unk>, the bytes in GPT-2's order, merges, then <mask>.
    StrMap toks = {0};
    size_t v_cap = 0;
    char **vocab = NULL;
    int32_t nv = 0;
    RESERVE(vocab, v_cap, (size_t)base, "vocabulary");
    for (int s = 0; s < BPE_MASK; s++)
        vocab[nv++] = checked_strdup(bpe_special_names[s]);
    for (int k = 0; k < 256; k++)
        vocab[nv++] = checked_strdup(byte_str[byte_order[k]]);
    for (int32_t i = 0; i < nv; i++)
        strmap_add(&toks, vocab[i], strlen(vocab[i]), hash_bytes(vocab[i], strlen(vocab[i])));
    int32_t byte_tok[256];
    for (int k = 0; k < 256; k++)
        byte_tok[byte_order[k]] = BPE_MASK + k;

    Trainer t;
    memset(&t, 0, sizeof t);
    const StrMap *words = &c->words;
    t.n_words = words->n;
    t.wcount = c->count;
    t.woff = checked_calloc(t.n_words, sizeof *t.woff, "word offsets");
    t.wlen = checked_calloc(t.n_words, sizeof *t.wlen, "word lengths");
    t.wstamp = checked_calloc(t.n_words, sizeof *t.wstamp, "word stamps");
    t.sym = checked_calloc(words->pool_len, sizeof *t.sym, "word symbols");
    size_t k = 0;
    for (size_t w = 0; w < t.n_words; w++) {
        const uint8_t *s = (const uint8_t *)words->pool + words->off[w];
        t.woff[w] = k, t.wlen[w] = words->len[w], t.wstamp[w] = -1;
        for (uint32_t i = 0; i < words->len[w]; i++)
            t.sym[k++] = byte_tok[s[i]];
        for (uint32_t i = 0; i + 1 < t.wlen[w]; i++) {
            int32_t p = trainer_pair(&t, t.sym[t.woff[w] + i], t.sym[t.woff[w] + i + 1]);
            t.pcount[p] += t.wcount[w];
            wordlist_add(&t.plist[p], (int32_t)w);
        }
    }
    for (size_t p = 0; p < t.pairs.n; p++)
        heap_push(&t, (int32_t)p);

    int32_t *lr = NULL, *touched = NULL;
    size_t lr_cap = 0, touched_cap = 0, n_merges = 0;
    char *cat = NULL;
    size_t cat_cap = 0;
    HeapItem best;
    for (int32_t step = 0; nv + 1 < vocab_size && trainer_best(&t, &best); step++) {
        int32_t a = best.left, b = best.right;
        size_t la = strlen(vocab[a]), lb = strlen(vocab[b]);
        RESERVE(cat, cat_cap, la + lb + 1, "merge string");
        memcpy(cat, vocab[a], la), memcpy(cat + la, vocab[b], lb);
        cat[la + lb] = '\0';
        // Two different merges can spell the same string; the token then keeps its first id.
        uint64_t h = hash_bytes(cat, la + lb);
        int32_t z = (int32_t)strmap_find(&toks, cat, la + lb, h);
        if (z < 0) {
            RESERVE(vocab, v_cap, (size_t)nv + 1, "vocabulary");
            vocab[nv] = checked_strdup(cat);
            strmap_add(&toks, cat, la + lb, h);
            z = nv++;
        }
        RESERVE(lr, lr_cap, 2 * n_merges + 2, "merges");
        lr[2 * n_merges] = a, lr[2 * n_merges + 1] = b, n_merges++;

        WordList list = t.plist[best.pair];
        memset(&t.plist[best.pair], 0, sizeof list);
        size_t n_touched = 0;
        for (uint32_t li = 0; li < list.n; li++) {
            int32_t w = list.w[li];
            if (t.wstamp[w] == step) continue;
            int32_t *s = t.sym + t.woff[w];
            uint32_t n = t.wlen[w], i = 0;
            while (i + 1 < n && !(s[i] == a && s[i + 1] == b))
                i++;
            if (i + 1 >= n) continue; // an older listing: the pair has left this word
            t.wstamp[w] = step;
            int64_t cw = t.wcount[w];
            // Recount the word's pairs around the merge: remove them all, merge left to right,
            // add the new sequence's pairs back; only pairs with z are new to the word.
            for (i = 0; i + 1 < n; i++)
                t.pcount[pairmap_find(&t.pairs, pair_key(s[i], s[i + 1]))] -= cw;
            uint32_t m = 0;
            for (i = 0; i < n;) {
                if (i + 1 < n && s[i] == a && s[i + 1] == b)
                    s[m++] = z, i += 2;
                else
                    s[m++] = s[i++];
            }
            t.wlen[w] = m;
            for (i = 0; i + 1 < m; i++) {
                int32_t q = trainer_pair(&t, s[i], s[i + 1]);
                t.pcount[q] += cw;
                if (s[i] != z && s[i + 1] != z) continue;
                wordlist_add(&t.plist[q], w);
                if (t.ptouch[q] != step) {
                    t.ptouch[q] = step;
                    RESERVE(touched, touched_cap, n_touched + 1, "touched pairs");
                    touched[n_touched++] = q;
                }
            }
        }
        free(list.w);
        for (size_t i = 0; i < n_touched; i++)
            if (t.pcount[touched[i]] > 0) heap_push(&t, touched[i]);
    }
    free(cat), free(touched);
    trainer_free(&t);

    int rc = 0;
    if (strmap_find(&toks, "<mask>", 6, hash_bytes("<mask>", 6)) >= 0)
        rc = fail(err, errlen, "trained vocabulary already has a '<mask>' token");
    strmap_free(&toks);
    if (rc) {
        for (int32_t i = 0; i < nv; i++)
            free(vocab[i]);
        free(vocab), free(lr);
        return rc;
    }
    RESERVE(vocab, v_cap, (size_t)nv + 1, "vocabulary");
    vocab[nv++] = checked_strdup(bpe_special_names[BPE_MASK]);
    int32_t special[BPE_N_SPECIAL] = {0, 1, 2, 3, nv - 1};
    rc = build_tokens(out, vocab, nv, "trained vocabulary", err, errlen);
    if (rc == 0) rc = build_merges(out, lr, (int32_t)n_merges, "trained vocabulary", err, errlen);
    if (rc == 0) rc = set_specials(out, special, "trained vocabulary", err, errlen);
    free(lr);
    if (rc) bpe_free(out);
    return rc;
}

/* ---- encoding and decoding ---- */

void bpe_ids_free(BpeIds *v) {
    free(v->ids);
    memset(v, 0, sizeof *v);
}

static void ids_push(BpeIds *v, const int32_t *ids, size_t n) {
    RESERVE(v->ids, v->cap, v->n + n, "token ids");
    memcpy(v->ids + v->n, ids, n * sizeof *ids);
    v->n += n;
}

static void heap_push_u64(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0 && v < h[(i - 1) / 2]) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static uint64_t heap_pop_u64(uint64_t *h, size_t *n) {
    uint64_t top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= last) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

/* BPE of one word: start from its bytes and apply the lowest-ranked merge present, leftmost
 * first, until none applies. This heap form (HF tokenizers) equals GPT-2's bpe() loop whenever
 * each merge's parts come from earlier merges, as in every trained or GPT-2 merge list. */
static void merge_word(Bpe *b, const uint8_t *w, size_t n, BpeIds *out) {
    BpeIndex *x = b->index;
    if (n > x->word_cap) {
        x->word_cap = 2 * n;
        x->sym = resize_n(x->sym, x->word_cap, sizeof *x->sym, "word symbols");
        x->prev = resize_n(x->prev, x->word_cap, sizeof *x->prev, "word symbols");
        x->next = resize_n(x->next, x->word_cap, sizeof *x->next, "word symbols");
    }
    RESERVE(x->heap, x->heap_cap, 3 * n, "merge heap"); // n - 1 first pairs, <= 2 per merge
    int32_t *sym = x->sym, *prev = x->prev, *next = x->next;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        sym[i] = b->byte_id[w[i]];
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t r = merge_rank(x, sym[i], sym[i + 1]);
        if (r >= 0) heap_push_u64(x->heap, &hn, (uint64_t)r << 32 | i);
    }
    while (hn) {
        uint64_t e = heap_pop_u64(x->heap, &hn);
        int32_t r = (int32_t)(e >> 32), i = (int32_t)(e & 0xFFFFFFFF), j = next[i];
        const int32_t *m = b->merges + 3 * (size_t)r;
        if (sym[i] != m[0] || j < 0 || sym[j] != m[1]) continue; // stale: a neighbour merged
        sym[i] = m[2], sym[j] = DEAD;
        next[i] = next[j];
        if (next[j] >= 0) prev[next[j]] = i;
        int32_t q;
        if (prev[i] >= 0 && (q = merge_rank(x, sym[prev[i]], sym[i])) >= 0)
            heap_push_u64(x->heap, &hn, (uint64_t)q << 32 | (uint32_t)prev[i]);
        if (next[i] >= 0 && (q = merge_rank(x, sym[i], sym[next[i]])) >= 0)
            heap_push_u64(x->heap, &hn, (uint64_t)q << 32 | (uint32_t)i);
    }
    RESERVE(out->ids, out->cap, out->n + n, "token ids");
    for (int32_t i = 0; i >= 0; i = next[i])
        out->ids[out->n++] = sym[i] >= 0 ? sym[i] : b->special[BPE_UNK];
}

static void encode_word(Bpe *b, const uint8_t *w, size_t n, BpeIds *out) {
    BpeIndex *x = b->index;
    if (n == 1) {
        int32_t id = b->byte_id[w[0]] >= 0 ? b->byte_id[w[0]] : b->special[BPE_UNK];
        ids_push(out, &id, 1);
        return;
    }
    uint64_t h = hash_bytes(w, n);
    int64_t e = strmap_find(&x->cache, w, n, h);
    if (e >= 0) {
        ids_push(out, x->cache_ids + x->cache_off[e], x->cache_len[e]);
        return;
    }
    size_t start = out->n;
    merge_word(b, w, n, out);
    if (x->cache.n >= CACHE_MAX_WORDS || n > CACHE_MAX_BYTES) return;
    e = (int64_t)strmap_add(&x->cache, w, n, h);
    size_t m = out->n - start;
    if ((size_t)e >= x->cache_cap) {
        x->cache_cap = x->cache_cap ? 2 * x->cache_cap : 4096;
        x->cache_off = resize_n(x->cache_off, x->cache_cap, sizeof *x->cache_off, "encode cache");
        x->cache_len = resize_n(x->cache_len, x->cache_cap, sizeof *x->cache_len, "encode cache");
    }
    RESERVE(x->cache_ids, x->cache_ids_cap, x->cache_ids_len + m, "encode cache");
    memcpy(x->cache_ids + x->cache_ids_len, out->ids + start, m * sizeof(int32_t));
    x->cache_off[e] = x->cache_ids_len, x->cache_len[e] = (uint32_t)m;
    x->cache_ids_len += m;
}

void bpe_encode(Bpe *b, const char *text, size_t len, BpeIds *out) {
    for (size_t pos = 0; pos < len;) {
        size_t end = bpe_pretok_next(text, len, pos);
        encode_word(b, (const uint8_t *)text + pos, end - pos, out);
        pos = end;
    }
}

int bpe_decode(const Bpe *b, const int32_t *ids, size_t n, char *buf, size_t cap, size_t *len) {
    const BpeIndex *x = b->index;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= b->n_vocab) {
            *len = k;
            return -1;
        }
        size_t off = x->tok_off[ids[i]], m = x->tok_off[ids[i] + 1] - off;
        if (k < cap) memcpy(buf + k, x->tok_bytes + off, m < cap - k ? m : cap - k);
        k += m;
    }
    *len = k;
    return 0;
}

/* ---- GPT-2 files ---- */

static char *read_file_alloc(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (cap - n - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) free(buf);
            buf = nb, cap *= 2;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf) die("%s: out of memory reading the file", path);
    if (bad) {
        free(buf);
        fail(err, errlen, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

int bpe_load_gpt2(Bpe *b, const char *vocab_json, const char *merges_txt, char *err,
                  size_t errlen) {
    memset(b, 0, sizeof *b);
    if (access(vocab_json, R_OK) != 0)
        return fail(err, errlen, "%s: cannot open: %s", vocab_json, strerror(errno));
    json_object *root = json_object_from_file(vocab_json);
    if (!root || !json_object_is_type(root, json_type_object)) {
        const char *why = root ? "not a JSON object" : json_util_get_last_err();
        char msg[256];
        snprintf(msg, sizeof msg, "%s", why ? why : "invalid JSON");
        msg[strcspn(msg, "\n")] = '\0';
        json_object_put(root);
        return fail(err, errlen, "%s: expected {\"token\": id, ...}: %s", vocab_json, msg);
    }
    int32_t n = (int32_t)json_object_object_length(root);
    char **vocab = checked_calloc((size_t)n + BPE_N_SPECIAL, sizeof(char *), "vocabulary");
    int rc = 0;
    struct json_object_iterator it = json_object_iter_begin(root), end = json_object_iter_end(root);
    for (; rc == 0 && !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
        const char *name = json_object_iter_peek_name(&it);
        json_object *val = json_object_iter_peek_value(&it);
        int64_t id = json_object_is_type(val, json_type_int) ? json_object_get_int64(val) : -1;
        if (id < 0 || id >= n)
            rc = fail(err, errlen, "%s: token '%s' has id %s; ids must be 0..%d", vocab_json, name,
                      json_object_to_json_string(val), n - 1);
        else if (vocab[id])
            rc = fail(err, errlen, "%s: tokens '%s' and '%s' share id %lld", vocab_json, vocab[id],
                      name, (long long)id);
        else
            vocab[id] = checked_strdup(name);
    }
    json_object_put(root);
    if (rc) {
        for (int32_t i = 0; i < n; i++)
            free(vocab[i]);
        free(vocab);
        return rc;
    }
    int32_t special[BPE_N_SPECIAL];
    int32_t n_file = n;
    for (int s = 0; s < BPE_N_SPECIAL; s++) {
        special[s] = -1;
        for (int32_t i = 0; i < n_file && special[s] < 0; i++)
            if (!strcmp(vocab[i], bpe_special_names[s])) special[s] = i;
        if (special[s] < 0) vocab[n] = checked_strdup(bpe_special_names[s]), special[s] = n++;
    }
    if (build_tokens(b, vocab, n, vocab_json, err, errlen) < 0) {
        bpe_free(b);
        return -1;
    }

    size_t len;
    char *text = read_file_alloc(merges_txt, &len, err, errlen);
    if (!text) {
        bpe_free(b);
        return -1;
    }
    int32_t *lr = NULL;
    size_t lr_cap = 0, n_merges = 0, line = 0;
    for (char *p = text; rc == 0 && p < text + len;) {
        char *e = memchr(p, '\n', (size_t)(text + len - p));
        size_t l = e ? (size_t)(e - p) : (size_t)(text + len - p);
        line++;
        if (l && p[l - 1] == '\r') l--;
        int skip = l == 0 || (line == 1 && l >= 8 && !memcmp(p, "#version", 8));
        if (!skip) {
            RESERVE(lr, lr_cap, 2 * n_merges + 2, "merges");
            int pr = parse_merge(b, p, l, &lr[2 * n_merges], &lr[2 * n_merges + 1]);
            if (pr == -1)
                rc = fail(err, errlen, "%s:%zu: expected \"left right\", got '%.*s'", merges_txt,
                          line, (int)(l < 80 ? l : 80), p);
            else if (pr == -2)
                rc = fail(err, errlen, "%s:%zu: '%.*s' uses a token that is not in %s", merges_txt,
                          line, (int)(l < 80 ? l : 80), p, vocab_json);
            n_merges++;
        }
        if (!e) break;
        p = e + 1;
    }
    free(text);
    if (rc == 0 && n_merges > INT32_MAX / 3)
        rc = fail(err, errlen, "%s: too many merges", merges_txt);
    if (rc == 0) rc = build_merges(b, lr, (int32_t)n_merges, merges_txt, err, errlen);
    if (rc == 0) rc = set_specials(b, special, vocab_json, err, errlen);
    free(lr);
    if (rc) bpe_free(b);
    return rc;
}

/* Write data to path via a temporary name in the same directory, renamed when complete. */
static int write_atomic(const char *path, const char *data, size_t len, char *err, size_t errlen) {
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return fail(err, errlen, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return fail(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
    int ok = fwrite(data, 1, len, f) == len;
    ok = (fclose(f) == 0) && ok;
    if (!ok) {
        unlink(tmp);
        return fail(err, errlen, "%s: cannot write (disk full?)", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return fail(err, errlen, "%s: cannot rename into place: %s", path, strerror(e));
    }
    return 0;
}

/* Merge strings "left right" in rank order: n pointers into one buffer (free both). */
static char **merge_strings_alloc(const Bpe *b, char **buf) {
    size_t total = 1;
    for (int32_t r = 0; r < b->n_merges; r++)
        total += strlen(b->vocab[b->merges[3 * r]]) + strlen(b->vocab[b->merges[3 * r + 1]]) + 2;
    char *p = *buf = checked_calloc(total, 1, "merge strings");
    char **s = checked_calloc((size_t)b->n_merges + 1, sizeof(char *), "merge strings");
    for (int32_t r = 0; r < b->n_merges; r++) {
        s[r] = p;
        p += sprintf(p, "%s %s", b->vocab[b->merges[3 * r]], b->vocab[b->merges[3 * r + 1]]) + 1;
    }
    return s;
}

int bpe_save_gpt2(const Bpe *b, const char *vocab_json, const char *merges_txt, char *err,
                  size_t errlen) {
    json_object *o = json_object_new_object();
    if (!o) die("out of memory building %s", vocab_json);
    for (int32_t i = 0; i < b->n_vocab; i++)
        json_object_object_add(o, b->vocab[i], json_object_new_int(i));
    size_t jlen = 0;
    const char *js = json_object_to_json_string_length(
        o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &jlen);
    int rc = js ? write_atomic(vocab_json, js, jlen, err, errlen)
                : fail(err, errlen, "%s: cannot serialise the vocabulary", vocab_json);
    json_object_put(o);
    if (rc) return rc;
    char *buf;
    char **m = merge_strings_alloc(b, &buf);
    size_t total = 16;
    for (int32_t r = 0; r < b->n_merges; r++)
        total += strlen(m[r]) + 1;
    char *text = checked_calloc(total, 1, "merges.txt");
    size_t k = (size_t)sprintf(text, "#version: 0.2\n");
    for (int32_t r = 0; r < b->n_merges; r++)
        k += (size_t)sprintf(text + k, "%s\n", m[r]);
    rc = write_atomic(merges_txt, text, k, err, errlen);
    free(text), free(m), free(buf);
    return rc;
}

/* ---- HDF5 ---- */

void bpe_write_h5(const Bpe *b, hid_t file) {
    hid_t g = h5_group_create(file, "tokenizer");
    h5_write_strings(g, "vocab", (const char *const *)b->vocab, (size_t)b->n_vocab);
    char *buf;
    char **m = merge_strings_alloc(b, &buf);
    h5_write_strings(g, "merges", (const char *const *)m, (size_t)b->n_merges);
    free(m), free(buf);
    h5_close(g);
    h5_attr_i32(file, "vocab_size", b->n_vocab);
    for (int s = 0; s < BPE_N_SPECIAL; s++)
        h5_attr_i32(file, special_attrs[s], b->special[s]);
    h5_attr_str(file, "tokenizer", "byte-bpe");
}

int bpe_read_h5(Bpe *b, hid_t file, const char *path, char *err, size_t errlen) {
    memset(b, 0, sizeof *b);
    char kind[64];
    if (h5_read_attr_str(file, path, "tokenizer", kind, sizeof kind, err, errlen) < 0) return -1;
    char pr[32];
    if (strcmp(kind, "byte-bpe"))
        return fail(err, errlen, "%s: tokenizer '%s' is not byte-bpe", path,
                    str_printable(kind, pr, sizeof pr));
    int64_t vs, id[BPE_N_SPECIAL];
    if (h5_read_attr_i64(file, path, "vocab_size", &vs, err, errlen) < 0) return -1;
    for (int s = 0; s < BPE_N_SPECIAL; s++)
        if (h5_read_attr_i64(file, path, special_attrs[s], &id[s], err, errlen) < 0) return -1;
    size_t nv = 0, nm = 0;
    char **v = h5_read_strings(file, path, "tokenizer/vocab", &nv, err, errlen);
    if (!v) return -1;
    char **m = h5_read_strings(file, path, "tokenizer/merges", &nm, err, errlen);
    int rc = m ? 0 : -1;
    if (rc == 0 && (int64_t)nv != vs)
        rc = fail(err, errlen, "%s: vocab_size is %lld but /tokenizer/vocab has %zu tokens", path,
                  (long long)vs, nv);
    if (rc == 0 && (nv > INT32_MAX || nm > INT32_MAX / 3))
        rc = fail(err, errlen, "%s: tokenizer too large", path);
    int32_t special[BPE_N_SPECIAL];
    for (int s = 0; s < BPE_N_SPECIAL; s++)
        special[s] = id[s] < 0 || id[s] > INT32_MAX ? -1 : (int32_t)id[s];
    if (rc == 0)
        rc = bpe_init_strings(b, (const char *const *)v, (int32_t)nv, (const char *const *)m,
                              (int32_t)nm, special, path, err, errlen);
    h5_free_strings(v, nv), h5_free_strings(m, nm);
    return rc;
}

/* ---- broadcast form: magic, counts and special ids, NUL-terminated tokens, merge id pairs ---- */

static const char pack_magic[8] = "D2VBPE1";

char *bpe_pack_alloc(const Bpe *b, size_t *len) {
    size_t n = sizeof pack_magic + (2 + BPE_N_SPECIAL) * sizeof(int32_t) +
               (size_t)b->n_merges * 2 * sizeof(int32_t);
    for (int32_t i = 0; i < b->n_vocab; i++)
        n += strlen(b->vocab[i]) + 1;
    char *buf = checked_calloc(n, 1, "packed tokenizer"), *p = buf;
    int32_t head[2 + BPE_N_SPECIAL] = {b->n_vocab, b->n_merges};
    memcpy(head + 2, b->special, sizeof b->special);
    memcpy(p, pack_magic, sizeof pack_magic), p += sizeof pack_magic;
    memcpy(p, head, sizeof head), p += sizeof head;
    for (int32_t i = 0; i < b->n_vocab; i++) {
        size_t l = strlen(b->vocab[i]) + 1;
        memcpy(p, b->vocab[i], l), p += l;
    }
    for (int32_t r = 0; r < b->n_merges; r++, p += 2 * sizeof(int32_t))
        memcpy(p, b->merges + 3 * (size_t)r, 2 * sizeof(int32_t));
    *len = n;
    return buf;
}

int bpe_unpack(Bpe *b, const char *buf, size_t len, char *err, size_t errlen) {
    memset(b, 0, sizeof *b);
    int32_t head[2 + BPE_N_SPECIAL];
    const char *p = buf, *end = buf + len;
    if (len < sizeof pack_magic + sizeof head || memcmp(p, pack_magic, sizeof pack_magic))
        return fail(err, errlen, "broadcast tokenizer: bad header");
    memcpy(head, p + sizeof pack_magic, sizeof head);
    p += sizeof pack_magic + sizeof head;
    int32_t nv = head[0], nm = head[1];
    if (nv <= 0 || nm < 0) return fail(err, errlen, "broadcast tokenizer: bad counts");
    char **vocab = checked_calloc((size_t)nv, sizeof(char *), "vocabulary");
    for (int32_t i = 0; i < nv; i++) {
        const char *z = p < end ? memchr(p, '\0', (size_t)(end - p)) : NULL;
        if (!z) {
            for (int32_t j = 0; j < i; j++)
                free(vocab[j]);
            free(vocab);
            return fail(err, errlen, "broadcast tokenizer: truncated");
        }
        vocab[i] = checked_strdup(p);
        p = z + 1;
    }
    int rc = build_tokens(b, vocab, nv, "broadcast tokenizer", err, errlen);
    if (rc == 0 && (size_t)(end - p) != (size_t)nm * 2 * sizeof(int32_t))
        rc = fail(err, errlen, "broadcast tokenizer: truncated merges");
    if (rc == 0) {
        int32_t *lr = checked_calloc((size_t)nm * 2 + 1, sizeof(int32_t), "merges");
        memcpy(lr, p, (size_t)nm * 2 * sizeof(int32_t));
        rc = build_merges(b, lr, nm, "broadcast tokenizer", err, errlen);
        free(lr);
    }
    if (rc == 0) rc = set_specials(b, head + 2, "broadcast tokenizer", err, errlen);
    if (rc) bpe_free(b);
    return rc;
}
