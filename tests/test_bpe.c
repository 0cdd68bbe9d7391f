/* test_bpe.c: byte-level BPE: the byte alphabet, GPT-2 pre-tokenizer cases, a hand-worked merge
 * sequence, the incremental trainer and the cached encoder against naive reference versions, exact
 * round trips (multibyte UTF-8, invalid bytes), the hand-made vocab.json/merges.txt fixture, and
 * the vocab.json, HDF5 and broadcast forms. Run from the repository root. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bpe.h"
#include "check.h"
#include "d2v/h5io.h"

#define FIXTURE_VOCAB "tests/fixtures/bpe/vocab.json"
#define FIXTURE_MERGES "tests/fixtures/bpe/merges.txt"

static char tmpdir[] = "/tmp/test_bpe.XXXXXX";

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, strlen(text), f) != strlen(text) || fclose(f)) {
        printf("FAIL cannot write %s\n", path);
        exit(1);
    }
}

/* Pre-tokens of s joined with '|' into out. */
static void pretok_join(const char *s, char *out, size_t cap) {
    size_t n = strlen(s), k = 0;
    for (size_t p = 0; p < n;) {
        size_t e = bpe_pretok_next(s, n, p);
        k += (size_t)snprintf(out + k, cap - k, "%s%.*s", p ? "|" : "", (int)(e - p), s + p);
        p = e;
    }
}

static void test_alphabet(void) {
    CHECK(!strcmp(bpe_byte_token('A'), "A"));
    CHECK(!strcmp(bpe_byte_token(' '), "\u0120"));  // 'Ġ': byte 32 is the 33rd non-printable
    CHECK(!strcmp(bpe_byte_token('\n'), "\u010A")); // 'Ċ'
    CHECK(!strcmp(bpe_byte_token(0), "\u0100"));    // 'Ā'
    CHECK(!strcmp(bpe_byte_token(0xAD), "\u0143")); // soft hyphen, the last one: 'Ń'
    CHECK(!strcmp(bpe_byte_token(0xE9), "\u00E9")); // printable Latin-1 maps to itself
}

/* Expected splits worked out from GPT-2's pattern (and checked with Python's regex module). */
static void test_pretokenizer(void) {
    static const char *const cases[][2] = {
        {"Hello world's  test\n\nfoo 123abc", "Hello| world|'s| | test|\n|\n|foo| 123|abc"},
        {"I'm here. IT'S 'tis  ", "I|'m| here|.| IT|'|S| '|tis|  "},
        {"na\u00EFve caf\u00E9 \u6771\u4EAC\u30BF\u30EF\u30FC hi \U0001F600\U0001F600!",
         "na\u00EFve| caf\u00E9| \u6771\u4EAC\u30BF\u30EF\u30FC| hi| \U0001F600\U0001F600!"},
        {"x\t y 1,000 don't", "x|\t| y| 1|,|000| don|'t"},
        {"a\u00A0b\u3000\u3000c \u00B2\u00BD", "a|\u00A0|b|\u3000|\u3000|c| \u00B2\u00BD"},
        {"\xff\xfe"
         "ab \xc3(",
         "\xff\xfe|ab| \xc3("}, // invalid bytes are "other" characters
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char got[512];
        pretok_join(cases[i][0], got, sizeof got);
        if (!check_record(!strcmp(got, cases[i][1]), "pre-tokenizer case"))
            printf("     got  '%s'\n     want '%s'\n", got, cases[i][1]);
    }
}

/* A hand-worked merge sequence. Pre-tokens (newlines are their own words): hug x10, pug x5,
 * pun x12, bun x4, hugs x5. Byte ids are 4 + the byte's place in GPT-2's order ('!' = 4, so a
 * letter c is c - 29): b 69, g 74, h 75, n 81, p 83, s 86, u 88. Pair counts and merges:
 *   u g 20 (hug, pug, hugs)  -> "ug"   260
 *   u n 16 (pun, bun)        -> "un"   261
 *   h ug 15 (hug, hugs)      -> "hug"  262
 *   p un 12                  -> "pun"  263
 *   p ug 5 = hug s 5: tie, smaller pair (83, 260) first -> "pug" 264
 *   hug s 5                  -> "hugs" 265
 *   b un 4                   -> "bun"  266
 * Nothing is left to merge, so even a larger requested size gives 267 tokens with <mask> = 267. */
static void test_hand_merges(void) {
    char text[512] = "";
    const char *words[] = {"hug", "pug", "pun", "bun", "hugs"};
    int times[] = {10, 5, 12, 4, 5};
    for (int w = 0; w < 5; w++)
        for (int i = 0; i < times[w]; i++)
            strcat(text, words[w]), strcat(text, "\n");
    BpeCounts *c = bpe_counts_alloc();
    bpe_counts_add(c, text, strlen(text));
    CHECK(bpe_counts_words(c) == 6);
    Bpe b;
    char err[512];
    CHECK(bpe_train(&b, c, 1000, err, sizeof err) == 0);
    static const char *const want[] = {"u g", "u n", "h ug", "p un", "p ug", "hug s", "b un"};
    static const int32_t want_ids[][3] = {{88, 74, 260},  {88, 81, 261},  {75, 260, 262},
                                          {83, 261, 263}, {83, 260, 264}, {262, 86, 265},
                                          {69, 261, 266}};
    CHECK(b.n_merges == 7 && b.n_vocab == 268);
    for (int r = 0; r < 7 && r < b.n_merges; r++) {
        char m[64];
        snprintf(m, sizeof m, "%s %s", b.vocab[b.merges[3 * r]], b.vocab[b.merges[3 * r + 1]]);
        CHECK(!strcmp(m, want[r]));
        CHECK(!memcmp(b.merges + 3 * r, want_ids[r], sizeof want_ids[r]));
    }
    CHECK(!strcmp(b.vocab[265], "hugs") && !strcmp(b.vocab[266], "bun"));
    CHECK(b.special[BPE_BOS] == 0 && b.special[BPE_PAD] == 1 && b.special[BPE_EOS] == 2 &&
          b.special[BPE_UNK] == 3 && b.special[BPE_MASK] == 267);
    CHECK(!strcmp(b.vocab[0], "<s>") && !strcmp(b.vocab[3], "<unk>") &&
          !strcmp(b.vocab[267], "<mask>") && !strcmp(b.vocab[4], "!"));
    BpeIds ids = {0};
    bpe_encode(&b, "hugs pun\nbug", 12, &ids);
    // "hugs" | " pun" | "\n" | "bug": no merge starts with Ġ (4 + 188 printable bytes + 32 = 224),
    // "\n" is Ċ (4 + 188 + 10 = 202), and "bug" is b + ug.
    int32_t enc[] = {265, 224, 263, 202, 69, 260};
    CHECK(ids.n == 6 && !memcmp(ids.ids, enc, sizeof enc));
    bpe_ids_free(&ids);
    bpe_free(&b);

    // The vocabulary stops at the requested size: 266 = 4 + 256 + 5 merges + <mask>.
    CHECK(bpe_train(&b, c, 266, err, sizeof err) == 0);
    CHECK(b.n_merges == 5 && b.n_vocab == 266 && b.special[BPE_MASK] == 265);
    CHECK(!strcmp(b.vocab[264], "pug"));
    bpe_free(&b);
    CHECK(bpe_train(&b, c, 260, err, sizeof err) == -1 && strstr(err, "260"));
    bpe_counts_free(c);
}

/* ---- naive references: a full recount per merge, and GPT-2's bpe() loop ---- */

typedef struct {
    char **vocab;
    int n_vocab;
    int (*merges)[3];
    int n_merges;
} NaiveBpe;

static int naive_find(const NaiveBpe *nb, const char *s) {
    for (int i = 0; i < nb->n_vocab; i++)
        if (!strcmp(nb->vocab[i], s)) return i;
    return -1;
}

static void naive_train(NaiveBpe *nb, const char *text, size_t len, int vocab_size) {
    // distinct words and counts
    int cap = 4096, nw = 0;
    char **wstr = calloc(cap, sizeof(char *));
    int *wcount = calloc(cap, sizeof(int)), *wlen = calloc(cap, sizeof(int));
    int **wsym = calloc(cap, sizeof(int *));
    for (size_t p = 0; p < len;) {
        size_t e = bpe_pretok_next(text, len, p);
        int w = 0;
        while (w < nw && !((size_t)wlen[w] == e - p && !memcmp(wstr[w], text + p, e - p)))
            w++;
        if (w == nw) {
            if (nw == cap) abort();
            wstr[w] = strndup(text + p, e - p), wlen[w] = (int)(e - p), nw++;
        }
        wcount[w]++;
        p = e;
    }
    nb->vocab = calloc((size_t)vocab_size + 1, sizeof(char *));
    nb->merges = calloc((size_t)vocab_size, sizeof *nb->merges);
    const char *sp[] = {"<s>", "<pad>", "</s>", "<unk>"};
    for (int i = 0; i < 4; i++)
        nb->vocab[nb->n_vocab++] = strdup(sp[i]);
    // bytes sorted by their code point in the alphabet (printable first, then 256 + k)
    int order[256], k = 0;
    for (int b = 0; b < 256; b++)
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) order[k++] = b;
    for (int b = 0; b < 256; b++)
        if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) order[k++] = b;
    int byte_id[256];
    for (int i = 0; i < 256; i++)
        byte_id[order[i]] = nb->n_vocab,
        nb->vocab[nb->n_vocab++] = strdup(bpe_byte_token(order[i]));
    for (int w = 0; w < nw; w++) {
        wsym[w] = calloc((size_t)wlen[w], sizeof(int));
        for (int i = 0; i < wlen[w]; i++)
            wsym[w][i] = byte_id[(unsigned char)wstr[w][i]];
    }
    long *count = calloc((size_t)vocab_size * vocab_size, sizeof(long));
    while (nb->n_vocab + 1 < vocab_size) {
        memset(count, 0, sizeof(long) * (size_t)vocab_size * vocab_size);
        for (int w = 0; w < nw; w++)
            for (int i = 0; i + 1 < wlen[w]; i++)
                count[(size_t)wsym[w][i] * vocab_size + wsym[w][i + 1]] += wcount[w];
        long best = 0;
        int ba = -1, bb = -1;
        for (int a = 0; a < nb->n_vocab; a++)
            for (int b = 0; b < nb->n_vocab; b++)
                if (count[(size_t)a * vocab_size + b] > best)
                    best = count[(size_t)a * vocab_size + b], ba = a, bb = b;
        if (best == 0) break;
        char cat[1024];
        snprintf(cat, sizeof cat, "%s%s", nb->vocab[ba], nb->vocab[bb]);
        int z = naive_find(nb, cat);
        if (z < 0) z = nb->n_vocab, nb->vocab[nb->n_vocab++] = strdup(cat);
        nb->merges[nb->n_merges][0] = ba, nb->merges[nb->n_merges][1] = bb;
        nb->merges[nb->n_merges++][2] = z;
        for (int w = 0; w < nw; w++) {
            int m = 0;
            for (int i = 0; i < wlen[w];)
                if (i + 1 < wlen[w] && wsym[w][i] == ba && wsym[w][i + 1] == bb)
                    wsym[w][m++] = z, i += 2;
                else
                    wsym[w][m++] = wsym[w][i++];
            wlen[w] = m;
        }
    }
    nb->vocab[nb->n_vocab++] = strdup("<mask>");
    for (int w = 0; w < nw; w++)
        free(wstr[w]), free(wsym[w]);
    free(wstr), free(wcount), free(wlen), free(wsym), free(count);
}

static void naive_free(NaiveBpe *nb) {
    for (int i = 0; i < nb->n_vocab; i++)
        free(nb->vocab[i]);
    free(nb->vocab), free(nb->merges);
}

/* GPT-2's encoder.py bpe(): merge the lowest-ranked pair everywhere (left to right), repeat. */
static size_t naive_encode(const Bpe *b, const char *text, size_t len, int32_t *out) {
    size_t k = 0;
    int32_t w[4096];
    for (size_t p = 0; p < len;) {
        size_t e = bpe_pretok_next(text, len, p), n = e - p;
        for (size_t i = 0; i < n; i++)
            w[i] = b->byte_id[(unsigned char)text[p + i]];
        for (;;) {
            int32_t best = -1;
            for (size_t i = 0; i + 1 < n; i++)
                for (int32_t r = 0; r < b->n_merges; r++)
                    if (b->merges[3 * r] == w[i] && b->merges[3 * r + 1] == w[i + 1] &&
                        (best < 0 || r < best))
                        best = r;
            if (best < 0) break;
            size_t m = 0;
            for (size_t i = 0; i < n;)
                if (i + 1 < n && w[i] == b->merges[3 * best] && w[i + 1] == b->merges[3 * best + 1])
                    w[m++] = b->merges[3 * best + 2], i += 2;
                else
                    w[m++] = w[i++];
            n = m;
        }
        memcpy(out + k, w, n * sizeof(int32_t));
        k += n, p = e;
    }
    return k;
}

/* A deterministic corpus with Zipf-ish word frequencies, multibyte words and invalid bytes. */
static char *make_corpus(size_t *len) {
    static const char *const words[] = {
        "the",    "of",        "and",        "whale",        "sea",       "ship",       "Ahab",
        "white",  "caf\u00E9", "na\u00EFve", "\u6771\u4EAC", "\u00FCber", "\U0001F600", "don't",
        "it's",   "123",       "4,500",      "--",           "!?",        "\xff\xfe",   "\xc3",
        "\t",     "  ",        "\n\n",       "thee",         "thou",      "whaling",    "shipmate",
        "seamen", "whiteness", "hath",       "harpoon"};
    size_t nw = sizeof words / sizeof *words, cap = 1 << 16, k = 0;
    char *s = malloc(cap);
    uint32_t x = 12345;
    while (k < cap - 64) {
        x = x * 1103515245u + 12345u;
        size_t r = (x >> 16) % (nw * nw);
        size_t w = (size_t)(r % nw) * (r / nw) / nw; // skewed towards the first words
        k += (size_t)snprintf(s + k, cap - k, "%s%s", words[w], (x >> 8) % 5 ? " " : ".\n");
    }
    *len = k;
    return s;
}

/* vocab_size 330 stops at the size; 420 runs out of pairs first (392 tokens). */
static void test_trainer_vs_naive(int32_t vocab_size) {
    size_t len;
    char *text = make_corpus(&len);
    BpeCounts *c = bpe_counts_alloc();
    bpe_counts_add(c, text, len);
    Bpe b;
    char err[512];
    CHECK(bpe_train(&b, c, vocab_size, err, sizeof err) == 0);
    NaiveBpe nb = {0};
    naive_train(&nb, text, len, vocab_size);
    int same = b.n_vocab == nb.n_vocab && b.n_merges == nb.n_merges;
    for (int i = 0; same && i < b.n_vocab; i++)
        same = !strcmp(b.vocab[i], nb.vocab[i]);
    for (int r = 0; same && r < b.n_merges; r++)
        same = !memcmp(b.merges + 3 * r, nb.merges[r], 3 * sizeof(int32_t));
    char label[128];
    snprintf(label, sizeof label, "trainer = full-recount reference (%d merges, %d tokens)",
             nb.n_merges, nb.n_vocab);
    check_record(same, label);

    BpeIds ids = {0};
    bpe_encode(&b, text, len, &ids);
    int32_t *ref = malloc(len * sizeof(int32_t));
    size_t n_ref = naive_encode(&b, text, len, ref);
    snprintf(label, sizeof label, "encode = GPT-2 bpe() loop (%zu tokens)", n_ref);
    check_record(ids.n == n_ref && !memcmp(ids.ids, ref, n_ref * sizeof(int32_t)), label);
    size_t n_first = ids.n; // a second pass comes from the word cache
    bpe_encode(&b, text, len, &ids);
    CHECK(ids.n == 2 * n_first && !memcmp(ids.ids + n_first, ids.ids, n_first * sizeof(int32_t)));
    char *back = malloc(len + 1);
    size_t got;
    CHECK(bpe_decode(&b, ids.ids, n_first, back, len + 1, &got) == 0);
    CHECK(got == len && !memcmp(back, text, len));
    free(back), free(ref), free(text);
    bpe_ids_free(&ids);
    naive_free(&nb);
    bpe_free(&b);
    bpe_counts_free(c);
}

/* Exact byte round trips, including text the training never saw and malformed UTF-8. */
static void test_round_trip(void) {
    size_t len;
    char *text = make_corpus(&len);
    BpeCounts *c = bpe_counts_alloc();
    bpe_counts_add(c, text, len);
    Bpe b;
    char err[512];
    CHECK(bpe_train(&b, c, 600, err, sizeof err) == 0);
    static const char *const samples[] = {
        "Caf\u00E9 cr\u00E8me br\u00FBl\u00E9e, na\u00EFve \u00FCber-Stra\u00DFe",
        "\u6771\u4EAC\u30BF\u30EF\u30FC\u3067\u6642\u9593\u3092 \uD55C\uAD6D\uC5B4",
        "emoji \U0001F600\U0001F44D\U0001F3FD \u2764\uFE0F zwj \U0001F468\u200D\U0001F469",
        "invalid \xff\xfe lone \x80 truncated \xe6\x9d overlong \xc0\xaf surrogate \xed\xa0\x80",
        "<s> not special </s> <mask>\r\n\ttabs\x01\x7f",
        "",
    };
    for (size_t i = 0; i < sizeof samples / sizeof *samples; i++) {
        BpeIds ids = {0};
        size_t n = strlen(samples[i]), got = 0;
        bpe_encode(&b, samples[i], n, &ids);
        int no_special = 1;
        for (size_t t = 0; t < ids.n; t++)
            for (int s = 0; s < BPE_N_SPECIAL; s++)
                no_special &= ids.ids[t] != b.special[s];
        char back[512];
        int ok = bpe_decode(&b, ids.ids, ids.n, back, sizeof back, &got) == 0 && got == n &&
                 !memcmp(back, samples[i], n) && no_special;
        char label[96];
        snprintf(label, sizeof label, "round trip sample %zu (%zu bytes, %zu tokens)", i, n, ids.n);
        check_record(ok, label);
        bpe_ids_free(&ids);
    }
    int32_t special[] = {b.special[BPE_BOS], 100, b.special[BPE_MASK], -1};
    char back[64];
    size_t got;
    CHECK(bpe_decode(&b, special, 3, back, sizeof back, &got) == 0 && got == 3 + 1 + 6 &&
          !memcmp(back, "<s>", 3) && !memcmp(back + 4, "<mask>", 6));
    CHECK(bpe_decode(&b, special, 4, back, sizeof back, &got) == -1);
    CHECK(bpe_decode(&b, special, 3, back, 2, &got) == 0 && got == 10); // length past cap
    free(text);
    bpe_free(&b);
    bpe_counts_free(c);
}

static void check_same_tokenizer(const Bpe *a, const Bpe *b, const char *what) {
    int same = a->n_vocab == b->n_vocab && a->n_merges == b->n_merges &&
               !memcmp(a->special, b->special, sizeof a->special) &&
               !memcmp(a->merges, b->merges, sizeof(int32_t) * 3 * (size_t)a->n_merges);
    for (int i = 0; same && i < a->n_vocab; i++)
        same = !strcmp(a->vocab[i], b->vocab[i]);
    check_record(same, what);
}

/* The hand-made fixture: 26 tokens, 11 merges, no <mask> (appended as id 26), no 'z', 'b', 'r'. */
static void test_fixture(void) {
    Bpe b;
    char err[1024];
    int rc = bpe_load_gpt2(&b, FIXTURE_VOCAB, FIXTURE_MERGES, err, sizeof err);
    if (!check_record(rc == 0, "load tests/fixtures/bpe vocab.json + merges.txt")) {
        printf("     %s\n", err);
        return;
    }
    CHECK(b.n_vocab == 27 && b.n_merges == 11);
    CHECK(b.special[BPE_BOS] == 0 && b.special[BPE_PAD] == 1 && b.special[BPE_EOS] == 2 &&
          b.special[BPE_UNK] == 3 && b.special[BPE_MASK] == 26 && !strcmp(b.vocab[26], "<mask>"));
    CHECK(!strcmp(b.vocab[17], "\u0120the") && !strcmp(b.vocab[25], "caf\u00C3\u00A9"));
    // "hello": l l (rank 3) first, then h e, he ll, hell o -> 21. " the" -> 17. " café": Ġ stays
    // alone, c a f é -> Ã© (rank 7), ca, caf, cafÃ© -> 25. "lol" has no merge. In "zebra" only e
    // and a are in the vocabulary: the other bytes become <unk>.
    static const struct {
        const char *text;
        int32_t ids[8];
        size_t n;
    } cases[] = {
        {"hello the caf\u00E9", {21, 17, 12, 25}, 4},
        {"lol", {9, 10, 9}, 3},
        {"zebra", {3, 6, 3, 3, 4}, 5},
        {"thethe", {16, 16}, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        BpeIds ids = {0};
        bpe_encode(&b, cases[i].text, strlen(cases[i].text), &ids);
        char label[96];
        snprintf(label, sizeof label, "fixture encodes '%s'", cases[i].text);
        check_record(ids.n == cases[i].n && !memcmp(ids.ids, cases[i].ids, ids.n * 4), label);
        bpe_ids_free(&ids);
    }
    char back[64];
    size_t got;
    int32_t z[] = {3, 6, 3, 3, 4};
    CHECK(bpe_decode(&b, z, 5, back, sizeof back, &got) == 0 &&
          got == strlen("<unk>e<unk><unk>a") && !memcmp(back, "<unk>e<unk><unk>a", got));

    // vocab.json + merges.txt written back and reloaded
    char vj[256], mt[256];
    snprintf(vj, sizeof vj, "%s/vocab.json", tmpdir),
        snprintf(mt, sizeof mt, "%s/merges.txt", tmpdir);
    Bpe c;
    CHECK(bpe_save_gpt2(&b, vj, mt, err, sizeof err) == 0);
    CHECK(bpe_load_gpt2(&c, vj, mt, err, sizeof err) == 0);
    check_same_tokenizer(&b, &c, "vocab.json + merges.txt save and reload");
    bpe_free(&c);

    // HDF5: /tokenizer/{vocab,merges} and the id attributes
    char h5[256];
    snprintf(h5, sizeof h5, "%s/tok.h5", tmpdir);
    h5io_init();
    hid_t f = H5Fcreate(h5, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    bpe_write_h5(&b, f);
    H5Fclose(f);
    f = h5_open_ro(h5, err, sizeof err);
    rc = bpe_read_h5(&c, f, h5, err, sizeof err);
    H5Fclose(f);
    CHECK(rc == 0);
    if (rc == 0) check_same_tokenizer(&b, &c, "HDF5 /tokenizer write and read");
    if (rc == 0) bpe_free(&c);

    // broadcast form
    size_t len;
    char *buf = bpe_pack_alloc(&b, &len);
    CHECK(bpe_unpack(&c, buf, len, err, sizeof err) == 0);
    check_same_tokenizer(&b, &c, "pack and unpack");
    bpe_free(&c);
    CHECK(bpe_unpack(&c, buf, len - 1, err, sizeof err) == -1);
    free(buf);
    bpe_free(&b);
}

/* Bad tokenizer files give one message naming the file (and the line for merges.txt). */
static void test_bad_files(void) {
    Bpe b;
    char err[1024], vj[256], mt[256];
    snprintf(vj, sizeof vj, "%s/bad_vocab.json", tmpdir),
        snprintf(mt, sizeof mt, "%s/bad.txt", tmpdir);
    CHECK(bpe_load_gpt2(&b, "/nonexistent/vocab.json", FIXTURE_MERGES, err, sizeof err) == -1 &&
          strstr(err, "/nonexistent/vocab.json"));
    CHECK(bpe_load_gpt2(&b, FIXTURE_VOCAB, "/nonexistent/merges.txt", err, sizeof err) == -1 &&
          strstr(err, "/nonexistent/merges.txt"));
    write_text(mt, "#version: 0.2\nt h\nq u\n");
    CHECK(bpe_load_gpt2(&b, FIXTURE_VOCAB, mt, err, sizeof err) == -1 && strstr(err, mt) &&
          strstr(err, ":3:"));
    write_text(mt, "t h\nth e x\n");
    CHECK(bpe_load_gpt2(&b, FIXTURE_VOCAB, mt, err, sizeof err) == -1 && strstr(err, ":2:"));
    write_text(mt, "a c\n"); // "ac" is not a token
    CHECK(bpe_load_gpt2(&b, FIXTURE_VOCAB, mt, err, sizeof err) == -1 && strstr(err, "'ac'"));
    write_text(vj, "{\"a\": 0, \"b\": 0}");
    CHECK(bpe_load_gpt2(&b, vj, FIXTURE_MERGES, err, sizeof err) == -1 && strstr(err, vj) &&
          strstr(err, "share id"));
    write_text(vj, "{\"a\": 0, \"b\": 5}");
    CHECK(bpe_load_gpt2(&b, vj, FIXTURE_MERGES, err, sizeof err) == -1 && strstr(err, "0..1"));
    write_text(vj, "[1, 2");
    CHECK(bpe_load_gpt2(&b, vj, FIXTURE_MERGES, err, sizeof err) == -1 && strstr(err, vj) &&
          !strchr(err, '\n'));
    BpeCounts *c = bpe_counts_alloc();
    CHECK(bpe_train(&b, c, 1000, err, sizeof err) == -1 && strstr(err, "no text"));
    bpe_counts_free(c);
}

int main(void) {
    if (!mkdtemp(tmpdir)) {
        printf("FAIL cannot create %s\n", tmpdir);
        return 1;
    }
    test_alphabet();
    test_pretokenizer();
    test_hand_merges();
    test_trainer_vs_naive(330);
    test_trainer_vs_naive(420);
    test_round_trip();
    test_fixture();
    test_bad_files();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
    return check_summary();
}
