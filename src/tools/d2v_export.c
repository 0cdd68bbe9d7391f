/* d2v_export.c: d2v-export, a checkpoint's student (or EMA teacher) as an HF transformers
 * Data2Vec*Model directory or under fairseq's names (docs/export.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/dist.h"
#include "d2v/export.h"
#include "d2v/h5io.h"
#include "d2v/util.h"

static void usage(void) {
    printf(
        "usage: d2v-export CHECKPOINT_OR_RUN_DIR --out DIR [--format hf|fairseq-names] "
        "[--teacher] [--data DATASET]\n"
        "  --format hf              (default) model.safetensors + config.json for\n"
        "                           Data2Vec{Text,Vision,Audio}Model, with vocab.json, merges.txt\n"
        "                           and tokenizer_config.json (text) or preprocessor_config.json\n"
        "  --format fairseq-names   model.safetensors under fairseq's (text, speech) or the\n"
        "                           BEiT-based vision code's names, regression head included\n"
        "  --teacher                the EMA teacher instead of the student\n"
        "  --data DATASET           text: the dataset with the tokenizer (default: the\n"
        "                           checkpoint's data.train)\n"
        "DIR must not exist (or be empty); tensors with no counterpart are listed on stdout.\n");
}

int main(int argc, char **argv) {
    dist_init(&argc, &argv);
    h5io_init();
    ExportJob j = {.format = EXPORT_HF};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage();
            dist_finalize();
            return 0;
        } else if (!strcmp(argv[i], "--out") && i + 1 < argc) {
            j.out = argv[++i];
        } else if (!strcmp(argv[i], "--data") && i + 1 < argc) {
            j.data = argv[++i];
        } else if (!strcmp(argv[i], "--teacher")) {
            j.teacher = 1;
        } else if (!strcmp(argv[i], "--format") && i + 1 < argc) {
            const char *f = argv[++i];
            if (!strcmp(f, "hf"))
                j.format = EXPORT_HF;
            else if (!strcmp(f, "fairseq-names"))
                j.format = EXPORT_FAIRSEQ;
            else
                die("--format %s: hf or fairseq-names", f);
        } else if (argv[i][0] == '-' || j.checkpoint) {
            die("unexpected argument '%s' (see d2v-export --help)", argv[i]);
        } else {
            j.checkpoint = argv[i];
        }
    }
    if (!j.checkpoint) die("no checkpoint given (see d2v-export --help)");
    if (!j.out) die("no --out DIR given (see d2v-export --help)");
    if (g_dist.world != 1) die("d2v-export runs on one rank");
    export_run(&j);
    dist_finalize();
    return 0;
}
