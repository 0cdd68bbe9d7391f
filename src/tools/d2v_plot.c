/* d2v_plot.c: d2v-plot, one PNG of a run's training curves (loss, target_var, pred_var, lr, tau,
 * samples/s against the update) from RUN_DIR/metrics.jsonl, drawn by gnuplot through a pipe. */
#define _POSIX_C_SOURCE 200809L
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "d2v/util.h"

static void usage(void) {
    printf("usage: d2v-plot RUN_DIR [-o FILE.png]\n"
           "Plots RUN_DIR/metrics.jsonl (d2v-train's log, one JSON object per line) into one PNG\n"
           "(default RUN_DIR/metrics.png) with six panels against the update: loss, target_var,\n"
           "pred_var, lr, tau and samples/s. After a resume, the records a later one repeats are\n"
           "replaced by it. Needs gnuplot (scripts/deps.sh installs gnuplot-nox).\n");
}

enum { F_LOSS, F_TVAR, F_PVAR, F_LR, F_TAU, F_SPS, NF };
static const char *const field[NF] = {"loss", "target_var", "pred_var",
                                      "lr",   "tau",        "samples_per_s"};
static const char *const title[NF] = {"loss",          "target_var", "pred_var",
                                      "learning rate", "EMA tau",    "samples/s"};

typedef struct {
    long long update;
    double v[NF];
} Record;

static int on_path(const char *prog) {
    const char *path = getenv("PATH");
    if (!path) return 0;
    char dirs[8192], full[PATH_MAX];
    snprintf(dirs, sizeof dirs, "%s", path);
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save))
        if (snprintf(full, sizeof full, "%s/%s", *d ? d : ".", prog) < (int)sizeof full &&
            access(full, X_OK) == 0)
            return 1;
    return 0;
}

/* Every record of the file; a record whose update is not above the last one (a resumed run
 * repeating updates since its checkpoint) replaces those from its update on. */
static Record *read_metrics(const char *path, int *n_out) {
    FILE *f = fopen(path, "r");
    if (!f) die("%s: no such file or not readable (d2v-train writes it into its --run-dir)", path);
    int n = 0, cap = 1024, lineno = 0;
    Record *r = xalloc(sizeof(Record) * (size_t)cap, "records");
    char *line = NULL;
    size_t len = 0;
    while (getline(&line, &len, f) > 0) {
        lineno++;
        if (strspn(line, " \t\r\n") == strlen(line)) continue;
        json_object *o = json_tokener_parse(line), *u = NULL;
        if (!o || !json_object_is_type(o, json_type_object) ||
            !json_object_object_get_ex(o, "update", &u))
            die("%s:%d: not a JSON object with an \"update\"", path, lineno);
        Record rec = {json_object_get_int64(u), {0}};
        for (int k = 0; k < NF; k++) {
            json_object *v = NULL;
            rec.v[k] = json_object_object_get_ex(o, field[k], &v) ? json_object_get_double(v) : NAN;
        }
        json_object_put(o);
        while (n > 0 && r[n - 1].update >= rec.update)
            n--;
        if (n == cap) {
            Record *g = xalloc(sizeof(Record) * (size_t)cap * 2, "records");
            memcpy(g, r, sizeof(Record) * (size_t)n);
            free(r), r = g, cap *= 2;
        }
        r[n++] = rec;
    }
    free(line);
    fclose(f);
    if (n == 0) die("%s: holds no records (has the run logged an update yet?)", path);
    *n_out = n;
    return r;
}

int main(int argc, char **argv) {
    const char *run = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(), 0;
        else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc)
            out = argv[++i];
        else if (argv[i][0] != '-' && !run)
            run = argv[i];
        else {
            fprintf(stderr, "d2v: error: unexpected argument '%s' (see d2v-plot --help)\n",
                    argv[i]);
            return 1;
        }
    }
    if (!run) die("need RUN_DIR (see d2v-plot --help)");
    char metrics[PATH_MAX], png[PATH_MAX], tmp[PATH_MAX + 32];
    if (snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run) >= (int)sizeof metrics ||
        snprintf(png, sizeof png, "%s", out ? out : run) >= (int)sizeof png ||
        (!out && snprintf(png, sizeof png, "%s/metrics.png", run) >= (int)sizeof png))
        die("%s: path too long", run);
    int n = 0;
    Record *r = read_metrics(metrics, &n);
    if (strchr(png, '\'') || strchr(run, '\''))
        die("%s: a quote in the path (gnuplot strings cannot hold it)", png);
    if (!on_path("gnuplot"))
        die("gnuplot not found on PATH (scripts/deps.sh installs gnuplot-nox)");
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld.png", png, (long)getpid());
    FILE *g = popen("gnuplot", "w");
    if (!g) die("cannot start gnuplot");
    fprintf(g,
            "set terminal pngcairo size 1500,900 noenhanced font 'sans,10'\n"
            "set output '%s'\n"
            "set datafile missing 'nan'\n"
            "set grid\nset key off\nset xlabel 'update'\n"
            "set multiplot layout 2,3 title '%s: %d records, updates %lld to %lld'\n",
            tmp, run, n, r[0].update, r[n - 1].update);
    fprintf(g, "$m << EOD\n");
    for (int i = 0; i < n; i++) {
        fprintf(g, "%lld", r[i].update);
        for (int k = 0; k < NF; k++)
            fprintf(g, isfinite(r[i].v[k]) ? " %.9g" : " nan", r[i].v[k]);
        fprintf(g, "\n");
    }
    fprintf(g, "EOD\n");
    for (int k = 0; k < NF; k++)
        fprintf(g, "set title '%s'\nplot $m using 1:%d with linespoints pt 7 ps 0.4 lw 1.5\n",
                title[k], k + 2);
    fprintf(g, "unset multiplot\nset output\n");
    int rc = pclose(g);
    if (rc != 0) {
        unlink(tmp);
        die("gnuplot failed (status %d) drawing %s", rc, png);
    }
    if (rename(tmp, png) != 0) {
        unlink(tmp);
        die("%s: cannot write (rename from %s failed)", png, tmp);
    }
    printf("d2v-plot: %s (%d records of %s)\n", png, n, metrics);
    free(r);
    return 0;
}
