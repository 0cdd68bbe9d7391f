/* d2v_import.c: d2v-import, an HF transformers Data2Vec*Model directory (model.safetensors +
 * config.json) as an update-0 d2v checkpoint for d2v-train --init-from (docs/export.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/dist.h"
#include "d2v/export.h"
#include "d2v/h5io.h"
#include "d2v/util.h"

static void usage(void) {
    printf("usage: d2v-import HF_DIR --config CFG --out RUN_DIR [--set key=value ...] "
           "[--data DATASET]\n"
           "  HF_DIR        model.safetensors and config.json of a Data2Vec{Text,Vision,Audio}\n"
           "                model (task-model prefixes such as data2vec_text. are stripped)\n"
           "  --config CFG  the d2v configuration to continue with: its architecture must match\n"
           "                config.json (a differing field is named)\n"
           "  --out RUN_DIR must not exist (or be empty); gets ckpt/step_00000000/model.h5\n"
           "  --data DATASET  text: the dataset (vocabulary, tokenizer; default: data.train)\n"
           "Then: d2v-train CFG --init-from RUN_DIR --run-dir NEW_RUN.\n");
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    h5io_init();
    static const char *sets[64];
    ImportJob j = {.sets = sets};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            dist_finalize();
            return 0;
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            j.out = argv[++i];
        } else if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            j.config = argv[++i];
        } else if (!strcmp(argv[i], "--data") && i + 1 < argc) {
            j.data = argv[++i];
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            if (j.n_sets == 64) die("too many --set options (64 at most)");
            sets[j.n_sets++] = argv[++i];
        } else if (argv[i][0] == '-' || j.hf_dir) {
            die("unexpected argument '%s' (see d2v-import --help)", argv[i]);
        } else {
            j.hf_dir = argv[i];
        }
    }
    if (!j.hf_dir) die("no HF model directory given (see d2v-import --help)");
    if (!j.config) die("no --config CFG given (see d2v-import --help)");
    if (!j.out) die("no --out RUN_DIR given (see d2v-import --help)");
    if (g_dist.world != 1) die("d2v-import runs on one rank");
    import_run(&j);
    dist_finalize();
    return 0;
}
