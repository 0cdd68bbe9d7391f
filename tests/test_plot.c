/* test_plot.c: d2v-plot on a generated metrics.jsonl (with a resumed run's repeated updates):
 * a valid PNG appears (decoded whole with libpng, 1500 x 900), no temporary file is left, and
 * a missing, empty or malformed metrics file is refused with one line naming it. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <png.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static char g_bin[1024], g_dir[512];

static int run(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int run(char *out, size_t n, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t got = fread(out, 1, n - 1, p);
    out[got] = '\0';
    int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

static void png_fail(png_structp p, png_const_charp msg) {
    (void)msg; /* quiet: the caller reports */
    png_longjmp(p, 1);
}
static void png_warn(png_structp p, png_const_charp msg) { (void)p, (void)msg; }

/* Decode the whole PNG: 1 with its size when valid. */
static int png_ok(const char *path, unsigned *w, unsigned *h) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    unsigned char sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) return fclose(f), 0;
    png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, png_fail, png_warn);
    png_infop info = png_create_info_struct(p);
    png_bytep *volatile rows = NULL; /* set after setjmp, freed after a longjmp: volatile */
    volatile unsigned hh = 0;
    if (setjmp(png_jmpbuf(p))) {
        for (unsigned i = 0; rows && i < hh; i++)
            free(rows[i]);
        free(rows);
        png_destroy_read_struct(&p, &info, NULL);
        fclose(f);
        return 0;
    }
    png_init_io(p, f);
    png_set_sig_bytes(p, 8);
    png_read_info(p, info);
    *w = png_get_image_width(p, info), *h = hh = png_get_image_height(p, info);
    size_t rb = png_get_rowbytes(p, info);
    rows = calloc(hh, sizeof *rows);
    for (unsigned i = 0; i < hh; i++)
        rows[i] = malloc(rb);
    png_read_image(p, rows);
    png_read_end(p, NULL);
    for (unsigned i = 0; i < hh; i++)
        free(rows[i]);
    free(rows);
    png_destroy_read_struct(&p, &info, NULL);
    fclose(f);
    return 1;
}

static void write_metrics(const char *dir, int from, int to, int append) {
    char path[700];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, append ? "a" : "w");
    for (int u = from; u <= to; u++) /* trainer.c's record (a few fields more or less) */
        fprintf(f,
                "{\"update\": %d, \"loss\": %g, \"target_var\": %g, \"pred_var\": %g, "
                "\"tau\": %g, \"lr\": %g, \"grad_norm\": 0.5, \"samples_per_s\": %g, "
                "\"eta_s\": 10, \"masked\": 288, \"skipped\": 0}\n",
                u, 0.25 * exp(-u / 30.0) + 0.05, 0.9 - 0.001 * u, 0.6 * (1 - exp(-u / 10.0)),
                0.99 + 0.009 * u / (to + 1.0), u < 10 ? 1e-4 * u : 1e-3, 5000.0 + (u % 7) * 10);
    fclose(f);
}

int main(int argc, char **argv) {
    (void)argc;
    snprintf(g_bin, sizeof g_bin, "%s", argv[0]);
    char *slash = strrchr(g_bin, '/');
    if (slash) *slash = '\0';
    strncat(g_bin, "/../bin", sizeof g_bin - strlen(g_bin) - 1);
    snprintf(g_dir, sizeof g_dir, "/tmp/d2v-plot.XXXXXX");
    if (!mkdtemp(g_dir)) return printf("cannot make a temporary directory\n"), 1;
    char out[4096], run_dir[600], png[700], label[800];
    snprintf(run_dir, sizeof run_dir, "%s/run", g_dir);
    mkdir(run_dir, 0755);

    /* 1..50, then a resume from update 30 logging 30..60: 60 distinct updates */
    write_metrics(run_dir, 1, 50, 0);
    write_metrics(run_dir, 30, 60, 1);
    snprintf(png, sizeof png, "%s/curves.png", g_dir);
    int rc = run(out, sizeof out, "%s/d2v-plot %s -o %s", g_bin, run_dir, png);
    unsigned w = 0, h = 0;
    int ok = rc == 0 && png_ok(png, &w, &h) && w == 1500 && h == 900;
    snprintf(label, sizeof label, "d2v-plot writes a PNG that decodes whole, %ux%u", w, h);
    check_record(ok, label);
    if (!ok) printf("%s", out);
    check_record(strstr(out, "60 records") != NULL,
                 "a resumed run's repeated updates are replaced: 60 records of 81 lines");
    check_record(run(out, sizeof out, "ls %s | grep -c tmp", g_dir) != 0,
                 "no temporary file left behind");
    rc = run(out, sizeof out, "%s/d2v-plot %s", g_bin, run_dir);
    snprintf(png, sizeof png, "%s/metrics.png", run_dir);
    check_record(rc == 0 && png_ok(png, &w, &h), "default output RUN_DIR/metrics.png");

    /* negative control: the PNG check rejects a truncated file */
    char cut[800];
    snprintf(cut, sizeof cut, "%s/cut.png", g_dir);
    run(out, sizeof out, "head -c 3000 %s > %s", png, cut);
    check_record(!png_ok(cut, &w, &h), "negative control: a truncated PNG does not decode");

    /* refusals: one line naming the file, a non-zero exit */
    struct {
        const char *what, *content, *want;
    } bad[3] = {{"missing", NULL, "no such file"},
                {"empty", "", "holds no records"},
                {"malformed", "{\"update\": 1, \"loss\": 0.3}\nnot json\n", ":2: not a JSON"}};
    for (int k = 0; k < 3; k++) {
        char dir[700], path[800];
        snprintf(dir, sizeof dir, "%s/%s", g_dir, bad[k].what);
        mkdir(dir, 0755);
        snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
        if (bad[k].content) {
            FILE *f = fopen(path, "w");
            fputs(bad[k].content, f);
            fclose(f);
        }
        rc = run(out, sizeof out, "%s/d2v-plot %s", g_bin, dir);
        int lines = 0;
        for (const char *c = out; *c; c++)
            lines += *c == '\n';
        snprintf(label, sizeof label, "%s metrics refused: %.*s", bad[k].what,
                 (int)strcspn(out, "\n"), out);
        check_record(rc != 0 && lines == 1 && strstr(out, path) && strstr(out, bad[k].want), label);
    }
    run(out, sizeof out, "rm -rf %s", g_dir);
    return check_summary();
}
