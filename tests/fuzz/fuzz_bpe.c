/* fuzz_bpe.c: libFuzzer target for GPT-2 tokenizer files: the input is vocab.json, a NUL byte,
 * then merges.txt (no NUL: all of it is vocab.json and merges.txt is empty), loaded with
 * bpe_load_gpt2; a tokenizer that loads then encodes and decodes a text (multibyte and invalid
 * UTF-8 included) and goes through the broadcast form and back. */
#include "bpe.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_seed_dir()) exit(0); /* seeds: tests/fixtures/bpe and a trained tokenizer */
    return 0;
}

static const char sample[] = "Call me Ishmael. Some years ago\xe2\x80\x94never mind how long "
                             "\xff\xfe it's 42 <s> caf\xc3\xa9\n\n  end";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t nv = nul ? (size_t)(nul - data) : size;
    const char *vj = fuzz_path("vocab.json"), *mt = fuzz_path("merges.txt");
    fuzz_write(vj, data, nv);
    fuzz_write(mt, nul ? nul + 1 : data, nul ? size - nv - 1 : 0);
    Bpe b;
    char err[1024];
    if (bpe_load_gpt2(&b, vj, mt, err, sizeof err) != 0) {
        if (!err[0]) abort();
        return 0;
    }
    for (int s = 0; s < BPE_N_SPECIAL; s++)
        if (b.special[s] < 0 || b.special[s] >= b.n_vocab) abort();
    BpeIds ids = {0};
    bpe_encode(&b, sample, sizeof sample - 1, &ids);
    bpe_encode(&b, sample, sizeof sample - 1, &ids); /* the second time from the cache */
    for (size_t i = 0; i < ids.n; i++)
        if (ids.ids[i] < 0 || ids.ids[i] >= b.n_vocab) abort();
    char out[4096];
    size_t len = 0;
    if (bpe_decode(&b, ids.ids, ids.n, out, sizeof out, &len) != 0) abort();
    size_t plen = 0;
    char *packed = bpe_pack_alloc(&b, &plen);
    Bpe c;
    if (bpe_unpack(&c, packed, plen, err, sizeof err) != 0) {
        fprintf(stderr, "a loaded tokenizer does not unpack: %s\n", err);
        abort();
    }
    if (c.n_vocab != b.n_vocab || c.n_merges != b.n_merges) abort();
    bpe_free(&c);
    free(packed);
    bpe_ids_free(&ids);
    bpe_free(&b);
    return 0;
}
