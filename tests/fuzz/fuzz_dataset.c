/* fuzz_dataset.c: libFuzzer target for dataset files: the input is written to a file and opened
 * as an HDF5 dataset (dataset_open: every attribute, shape, offset, shard count, label and token
 * id validated); an open dataset then has samples read directly and three batches assembled by
 * the loader (text blocks in both modes, augmented and resampled images, speech crops), through
 * the loader's error-returning calls. Index inputs name shards next to the input: the target
 * writes small valid shards of each modality there at start-up (img.shard-N.h5, txt.shard-N.h5,
 * sp.shard-N.h5), and in seed mode the index files over them. */
#include "fuzz_files.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    h5io_init();
    if (fuzz_seed_dir()) write_index_seeds(fuzz_seed_dir()), exit(0);
    write_shards(fuzz_dir());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("input.h5");
    fuzz_write(path, data, size);
    exercise_dataset(path, 3);
    return 0;
}
