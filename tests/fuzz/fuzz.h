/* fuzz.h: shared by the libFuzzer targets in tests/fuzz (docs/fuzzing.md): a private scratch
 * directory (under /dev/shm when there is one, as every input is written to a file), writing an
 * input there, and the seed mode: with D2V_FUZZ_SEEDS=DIR a target writes the seeds only it can
 * make into DIR and exits (tests/fuzz/make_corpus.sh). Targets call only the error-returning
 * readers: die() ends the process, which libFuzzer reports as a finding. */
#ifndef D2V_FUZZ_H
#define D2V_FUZZ_H

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char fuzz_dir_[256];

static void fuzz_cleanup_(void) {
    DIR *d = opendir(fuzz_dir_);
    if (!d) return;
    struct dirent *e;
    char p[600];
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') snprintf(p, sizeof p, "%s/%s", fuzz_dir_, e->d_name), unlink(p);
    closedir(d);
    rmdir(fuzz_dir_);
}

/// The scratch directory, created on first use and removed at exit.
static inline const char *fuzz_dir(void) {
    if (!fuzz_dir_[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/d2v-fuzz.XXXXXX", base);
        if (!mkdtemp(fuzz_dir_)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fuzz_cleanup_);
    }
    return fuzz_dir_;
}

/// DIR/name in a static buffer (4 in rotation).
static inline const char *fuzz_path(const char *name) {
    static char buf[4][600];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fuzz_dir(), name);
    return buf[k];
}

/// Write size bytes to path (abort on failure: that is the harness's fault, not the input's).
static inline void fuzz_write(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

/// The seed directory when the target runs in seed mode, else NULL.
static inline const char *fuzz_seed_dir(void) {
    const char *d = getenv("D2V_FUZZ_SEEDS");
    return d && *d ? d : NULL;
}

#endif
