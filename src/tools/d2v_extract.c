/* d2v_extract.c: d2v-extract, frozen features of every sample of a dataset for the probes
 * (d2v-probe): argument parsing around extract_features (src/eval/extract.c). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/dist.h"
#include "d2v/extract.h"
#include "d2v/h5io.h"
#include "d2v/kernels.h"
#include "d2v/util.h"

static void usage(void) {
    printf("usage: d2v-extract CHECKPOINT --data DATA.h5 -o FEATURES.h5 [--teacher] "
           "[--random-init]\n"
           "                  [--batch 50] [--last-k 4] [--quiet]\n"
           "       d2v-extract --raw --data DATA.h5 -o FEATURES.h5\n"
           "  CHECKPOINT     RUN_DIR/ckpt/step_N/model.h5 (or a run directory: its newest one)\n"
           "  --teacher      embed with the EMA teacher instead of the student\n"
           "  --random-init  embed with the untrained initialisation of the same config\n"
           "  --raw          no network: the raw-input baseline (pixels, token counts, speech\n"
           "                 frame statistics)\n"
           "  --batch N      samples per forward (speech: one utterance at a time)\n"
           "  --last-k K     blocks averaged by mean_lastk (default min(4, blocks))\n"
           "Writes every sample's features as (N, C) float32 datasets: mean_final (mean-pooled\n"
           "final block output), mean_norm (after the final norm, where the model has one), cls\n"
           "(token 0: image cls, text <s>), mean_lastk (the last K blocks' outputs averaged), or\n"
           "raw; plus /labels, /label_names and any other per-sample ids of the dataset, and the\n"
           "checkpoint, update, network and configuration as attributes. Runs under mpirun (ranks\n"
           "split the samples). An existing FEATURES.h5 is never overwritten. Threads: BLIS_NUM_\n"
           "THREADS, else OMP_NUM_THREADS. See docs/evaluation.md.\n");
}

int main(int argc, char **argv) {
    ExtractConfig c = {
        .network = EXTRACT_STUDENT, .batch = 50, .progress = 1, .created_by = "d2v-extract 1"};
    int teacher = 0, random_init = 0, raw = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(), 0;
        else if (!strcmp(argv[i], "--data") && i + 1 < argc)
            c.data = argv[++i];
        else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc)
            c.out = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            c.batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--last-k") && i + 1 < argc) {
            c.last_k = atoi(argv[++i]);
            if (c.last_k < 1) c.last_k = -1; /* refused below */
        } else if (!strcmp(argv[i], "--teacher"))
            teacher = 1;
        else if (!strcmp(argv[i], "--random-init"))
            random_init = 1;
        else if (!strcmp(argv[i], "--raw"))
            raw = 1;
        else if (!strcmp(argv[i], "--quiet"))
            c.progress = 0;
        else if (argv[i][0] != '-' && !c.checkpoint)
            c.checkpoint = argv[i];
        else {
            fprintf(stderr, "d2v: error: unexpected argument '%s' (see d2v-extract --help)\n",
                    argv[i]);
            return 1;
        }
    }
    dist_init(&argc, &argv);
    h5io_init();
    if (teacher + random_init + raw > 1)
        die("--teacher, --random-init and --raw exclude each other");
    if (raw && c.checkpoint) die("--raw takes no CHECKPOINT (see d2v-extract --help)");
    if (!raw && !c.checkpoint)
        die("need CHECKPOINT (or --raw), --data and -o (see d2v-extract --help)");
    if (!c.data || !c.out) die("need --data and -o (see d2v-extract --help)");
    if (c.batch < 1 || c.last_k < 0) die("--batch and --last-k must be positive");
    c.network = raw           ? EXTRACT_RAW
                : teacher     ? EXTRACT_TEACHER
                : random_init ? EXTRACT_RANDOM_INIT
                              : EXTRACT_STUDENT;
    if (!raw) gemm_init(0);
    extract_features(&c);
    dist_finalize();
    return 0;
}
