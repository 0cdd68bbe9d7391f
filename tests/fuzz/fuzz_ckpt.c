/* fuzz_ckpt.c: libFuzzer target for checkpoint files: the input is written to a file and read
 * with ckpt_read for a fixed tiny image model (format, modality, parameter table, arena shapes,
 * per-tensor CRC32s, counters) and with ckpt_read_config (the embedded configuration text, every
 * key and cross-key check). In seed mode it writes checkpoints of that model (with and without
 * checksums) through ckpt_write. */
#include "fuzz_files.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    h5io_init();
    tiny_model();
    if (fuzz_seed_dir()) write_ckpt_seeds(fuzz_seed_dir()), exit(0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("model.h5");
    fuzz_write(path, data, size);
    exercise_ckpt(path);
    return 0;
}
