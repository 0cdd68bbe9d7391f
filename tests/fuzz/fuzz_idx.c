/* fuzz_idx.c: libFuzzer target for IDX files (MNIST format, plain or gzipped): idx_read with
 * the dimension count the header's fourth byte names (1 to 4), and the item accounting
 * d2v-prep-image relies on. */
#include "fuzz.h"
#include "image_io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_seed_dir()) exit(0); /* seeds: cut-down Fashion-MNIST IDX files */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("input.idx");
    fuzz_write(path, data, size);
    int nd = size > 3 ? (data[3] & 3) + 1 : 1;
    IdxFile f;
    char err[1024];
    if (idx_read(path, nd, &f, err, sizeof err) == 0) {
        if (f.item_bytes == 0 || f.item_bytes > IMAGE_MAX_PIXELS || f.n_items > f.dims[0]) abort();
        /* every kept item is readable */
        volatile uint8_t s = 0;
        for (size_t i = 0; i < f.n_items * f.item_bytes; i += 4093)
            s ^= f.data[i];
        if (f.n_items) s ^= f.data[f.n_items * f.item_bytes - 1];
        (void)s;
        idx_free(&f);
    } else if (!err[0]) {
        abort();
    }
    return 0;
}
