/* d2v_report.c: d2v-report, the demo's summary: the best linear and kNN probe of each network
 * (d2v-probe JSON reports: pretrained, random init, raw input) beside the run's updates,
 * samples/s and wall times, as a printed table and one JSON report (docs/demo.md). */
#define _POSIX_C_SOURCE 200809L
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/util.h"

static void usage(void) {
    printf("usage: d2v-report RUN_DIR --probe NAME=REPORT.json [--probe ...] [--time NAME=SECONDS "
           "...]\n"
           "                  [--gain NAME,BASE] [--updates N] [--title TEXT] [--json OUT.json]\n"
           "Prints one row per --probe (a d2v-probe --json report): the variant with the best\n"
           "linear top-1 and the one with the best kNN top-1, each named. Adds the run's updates\n"
           "and mean samples/s (RUN_DIR/metrics.jsonl) and the --time entries (wall seconds of\n"
           "the demo's phases). --gain NAME,BASE reports NAME's best minus BASE's best, in points\n"
           "(default: the first two probes). --updates N: the run's update count when its last\n"
           "update was not logged. --json writes all of it as one object.\n");
}

enum { MAX_ROWS = 8 };

typedef struct {
    char name[64], path[PATH_MAX], lin_var[32], knn_var[32], network[32];
    double lin, knn;
    int classes;
    long long train_n, test_n;
} Row;

static json_object *get(json_object *o, const char *key, json_type t, const char *path) {
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, t))
        die("%s: no '%s' of the expected type (not a d2v-probe report?)", path, key);
    return v;
}

/* Best linear and best kNN variant of one d2v-probe report; ties keep the earlier variant. */
static void read_probe(Row *r) {
    json_object *rep = json_object_from_file(r->path);
    if (!rep || !json_object_is_type(rep, json_type_object))
        die("%s: cannot read it as a JSON object", r->path);
    json_object *vars = get(rep, "variants", json_type_array, r->path);
    size_t n = json_object_array_length(vars);
    if (n == 0) die("%s: no variants", r->path);
    r->classes = json_object_get_int(get(rep, "classes", json_type_int, r->path));
    json_object *tr = get(rep, "train", json_type_object, r->path);
    json_object *te = get(rep, "test", json_type_object, r->path);
    r->train_n = (long long)json_object_get_int64(get(tr, "samples", json_type_int, r->path));
    r->test_n = (long long)json_object_get_int64(get(te, "samples", json_type_int, r->path));
    snprintf(r->network, sizeof r->network, "%s",
             json_object_get_string(get(tr, "network", json_type_string, r->path)));
    r->lin = r->knn = -1;
    for (size_t i = 0; i < n; i++) {
        json_object *v = json_object_array_get_idx(vars, i);
        const char *name = json_object_get_string(get(v, "variant", json_type_string, r->path));
        double lin = json_object_get_double(get(v, "linear_top1", json_type_double, r->path));
        double knn = json_object_get_double(get(v, "knn_top1", json_type_double, r->path));
        if (lin > r->lin) r->lin = lin, snprintf(r->lin_var, sizeof r->lin_var, "%s", name);
        if (knn > r->knn) r->knn = knn, snprintf(r->knn_var, sizeof r->knn_var, "%s", name);
    }
    json_object_put(rep);
}

/* Last update and the mean rate Σ Δu / Σ (Δu / rate_i) over the logged intervals (every
 * interval's batch is the same, so this is total samples over total time). A resumed run's
 * repeated records are skipped. */
static void read_metrics(const char *run, long long *updates, double *sps) {
    char path[PATH_MAX + 16], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    if (!f) die("%s: cannot open it (not a d2v-train run directory?)", path);
    long long prev = 0;
    double du = 0, dt = 0;
    while (fgets(line, sizeof line, f)) {
        json_object *o = json_tokener_parse(line), *u = NULL, *s = NULL;
        if (!o || !json_object_is_type(o, json_type_object) ||
            !json_object_object_get_ex(o, "update", &u))
            die("%s: a line that is not a d2v-train metrics record", path);
        long long up = (long long)json_object_get_int64(u);
        if (up > prev && json_object_object_get_ex(o, "samples_per_s", &s)) {
            double rate = json_object_get_double(s);
            if (rate > 0) du += (double)(up - prev), dt += (double)(up - prev) / rate;
        }
        if (up > prev) prev = up;
        json_object_put(o);
    }
    fclose(f);
    if (prev == 0) die("%s: no updates logged", path);
    *updates = prev;
    *sps = dt > 0 ? du / dt : 0;
}

static int find_row(const Row *rows, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(rows[i].name, name)) return i;
    return -1;
}

int main(int argc, char **argv) {
    const char *run = NULL, *json = NULL, *title = NULL, *gain = NULL;
    long long done_updates = 0;
    Row rows[MAX_ROWS];
    int n_rows = 0, n_times = 0;
    char time_name[MAX_ROWS][64];
    double time_s[MAX_ROWS];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(), 0;
        if ((!strcmp(a, "--probe") || !strcmp(a, "--time")) && i + 1 < argc) {
            const char *v = argv[++i], *eq = strchr(v, '=');
            if (!eq || eq == v || !eq[1] || eq - v >= 64) die("%s %s: expected NAME=VALUE", a, v);
            if (a[2] == 'p') {
                if (n_rows == MAX_ROWS) die("at most %d --probe", MAX_ROWS);
                Row *r = &rows[n_rows++];
                memset(r, 0, sizeof *r);
                snprintf(r->name, sizeof r->name, "%.*s", (int)(eq - v), v);
                snprintf(r->path, sizeof r->path, "%s", eq + 1);
            } else {
                if (n_times == MAX_ROWS) die("at most %d --time", MAX_ROWS);
                char *end;
                time_s[n_times] = strtod(eq + 1, &end);
                if (*end || time_s[n_times] < 0) die("--time %s: seconds expected", v);
                snprintf(time_name[n_times++], 64, "%.*s", (int)(eq - v), v);
            }
        } else if (!strcmp(a, "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(a, "--title") && i + 1 < argc)
            title = argv[++i];
        else if (!strcmp(a, "--gain") && i + 1 < argc)
            gain = argv[++i];
        else if (!strcmp(a, "--updates") && i + 1 < argc) {
            char *end;
            done_updates = strtoll(argv[++i], &end, 10);
            if (*end || done_updates < 1) die("--updates %s: a positive count expected", argv[i]);
        } else if (a[0] != '-' && !run)
            run = a;
        else {
            fprintf(stderr, "d2v: error: unexpected argument '%s' (see d2v-report --help)\n", a);
            return 1;
        }
    }
    if (!run || n_rows == 0) die("need RUN_DIR and at least one --probe (see d2v-report --help)");
    for (int i = 0; i < n_rows; i++)
        read_probe(&rows[i]);
    int gi = 0, gb = n_rows > 1 ? 1 : -1;
    if (gain) {
        char a[64], b[64];
        const char *comma = strchr(gain, ',');
        if (!comma || comma - gain >= 64) die("--gain %s: expected NAME,BASE", gain);
        snprintf(a, sizeof a, "%.*s", (int)(comma - gain), gain);
        snprintf(b, sizeof b, "%s", comma + 1);
        gi = find_row(rows, n_rows, a), gb = find_row(rows, n_rows, b);
        if (gi < 0 || gb < 0) die("--gain %s: both names must be --probe names", gain);
    }
    long long updates;
    double sps;
    read_metrics(run, &updates, &sps);
    if (done_updates > 0) updates = done_updates; /* the run's last update need not be logged */

    if (title) printf("%s\n", title);
    printf("%-14s %-22s %-22s %s\n", "network", "linear top-1 (variant)", "kNN top-1 (variant)",
           "report");
    for (int i = 0; i < n_rows; i++) {
        char l[48], k[48];
        snprintf(l, sizeof l, "%5.1f%% %s", 100 * rows[i].lin, rows[i].lin_var);
        snprintf(k, sizeof k, "%5.1f%% %s", 100 * rows[i].knn, rows[i].knn_var);
        printf("%-14s %-22s %-22s %s\n", rows[i].name, l, k, rows[i].path);
    }
    printf("%d classes, %lld train / %lld test samples; %lld updates at %.1f samples/s",
           rows[0].classes, rows[0].train_n, rows[0].test_n, updates, sps);
    for (int i = 0; i < n_times; i++)
        printf("; %s %.0f s", time_name[i], time_s[i]);
    printf("\n");
    double g_lin = 0, g_knn = 0;
    if (gb >= 0) {
        g_lin = 100 * (rows[gi].lin - rows[gb].lin), g_knn = 100 * (rows[gi].knn - rows[gb].knn);
        printf("%s over %s: linear %+.1f points, kNN %+.1f points (best variant against best)\n",
               rows[gi].name, rows[gb].name, g_lin, g_knn);
    }

    if (json) {
        json_object *o = json_object_new_object(), *arr = json_object_new_array(),
                    *times = json_object_new_object();
        json_object_object_add(o, "run_dir", json_object_new_string(run));
        if (title) json_object_object_add(o, "title", json_object_new_string(title));
        json_object_object_add(o, "updates", json_object_new_int64(updates));
        json_object_object_add(o, "samples_per_s", json_object_new_double(sps));
        for (int i = 0; i < n_times; i++)
            json_object_object_add(times, time_name[i], json_object_new_double(time_s[i]));
        json_object_object_add(o, "wall_s", times);
        json_object_object_add(o, "classes", json_object_new_int(rows[0].classes));
        for (int i = 0; i < n_rows; i++) {
            json_object *r = json_object_new_object();
            json_object_object_add(r, "name", json_object_new_string(rows[i].name));
            json_object_object_add(r, "network", json_object_new_string(rows[i].network));
            json_object_object_add(r, "linear_top1", json_object_new_double(rows[i].lin));
            json_object_object_add(r, "linear_variant", json_object_new_string(rows[i].lin_var));
            json_object_object_add(r, "knn_top1", json_object_new_double(rows[i].knn));
            json_object_object_add(r, "knn_variant", json_object_new_string(rows[i].knn_var));
            json_object_object_add(r, "probe_report", json_object_new_string(rows[i].path));
            json_object_array_add(arr, r);
        }
        json_object_object_add(o, "rows", arr);
        if (gb >= 0) {
            json_object *g = json_object_new_object();
            json_object_object_add(g, "of", json_object_new_string(rows[gi].name));
            json_object_object_add(g, "over", json_object_new_string(rows[gb].name));
            json_object_object_add(g, "linear_points", json_object_new_double(g_lin));
            json_object_object_add(g, "knn_points", json_object_new_double(g_knn));
            json_object_object_add(o, "gain", g);
        }
        char tmp[PATH_MAX + 32];
        snprintf(tmp, sizeof tmp, "%s.tmp", json);
        if (json_object_to_file_ext(tmp, o, JSON_C_TO_STRING_PRETTY) != 0 || rename(tmp, json) != 0)
            die("%s: cannot write the report", json);
        json_object_put(o);
    }
    return 0;
}
