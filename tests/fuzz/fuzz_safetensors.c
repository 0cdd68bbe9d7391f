/* fuzz_safetensors.c: libFuzzer target for safetensors files (d2v-import's input): st_read's
 * checks of the header length, the JSON header, dtypes, shapes and data_offsets, and the data
 * it hands back (every float tensor readable to its element count). */
#include "d2v/export.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_seed_dir()) exit(0); /* seeds: tests/fuzz/make_corpus.sh writes small files */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("model.safetensors");
    fuzz_write(path, data, size);
    StTensor *t = NULL;
    int n = 0;
    char err[1024] = "";
    if (st_read(path, &t, &n, err, sizeof err) == 0) {
        volatile float s = 0;
        for (int i = 0; i < n; i++) {
            size_t count = 1;
            if (t[i].rank < 0 || t[i].rank > 4) abort();
            for (int d = 0; d < t[i].rank; d++) {
                if (t[i].shape[d] < 0) abort();
                count *= (size_t)t[i].shape[d];
            }
            if (count != t[i].count) abort();
            if (t[i].data && count) s += t[i].data[0] + t[i].data[count - 1];
        }
        (void)s;
        st_free(t, n);
    } else if (!err[0] || strchr(err, '\n') || !strstr(err, path)) {
        abort(); /* a refusal is one line naming the file */
    }
    return 0;
}
