/* fuzz_config.c: libFuzzer target for configuration text: train_config_load_string, every
 * cross-key check (train_config_validate, the per-rank split, the loader's and the optimiser's
 * structs), and the resolved dump, which must read back to the same configuration. */
#include "d2v/config.h"
#include "fuzz.h"

static TrainConfig defaults; /* train_config_defaults parses every key's default: once */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_seed_dir()) exit(0); /* its seeds are the files in configs/ */
    train_config_defaults(&defaults);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1), err[1024];
    memcpy(text, data, size);
    text[size] = '\0';
    TrainConfig c = defaults;
    if (train_config_load_string(&c, text, "fuzz.cfg", err, sizeof err) == 0) {
        for (int ranks = 0; ranks <= 3; ranks++)
            if (train_config_validate(&c, ranks, err, sizeof err) == 0 && ranks == 0) {
                TrainSplit sp;
                if (train_config_split(&c, 1, &sp, err, sizeof err) == 0) {
                    LoaderConfig l = train_config_to_loader(&c, sp.micro);
                    if (l.speech_min_samples < 0 || l.batch_size <= 0) abort();
                }
                (void)train_config_to_optim(&c), (void)train_config_to_schedule(&c);
            }
        /* the resolved configuration must read back, to the same text */
        char *dump = train_config_text(&c);
        TrainConfig back = defaults;
        if (train_config_load_string(&back, dump, "resolved", err, sizeof err) != 0) {
            fprintf(stderr, "resolved config does not read back: %s\n%s\n", err, dump);
            abort();
        }
        char *again = train_config_text(&back);
        if (strcmp(dump, again)) {
            fprintf(stderr, "resolved config changes on a round trip:\n%s\n---\n%s\n", dump, again);
            abort();
        }
        free(dump), free(again);
    }
    free(text);
    return 0;
}
