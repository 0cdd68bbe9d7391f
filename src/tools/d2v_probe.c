/* d2v_probe.c: d2v-probe, the linear (softmax regression, L-BFGS, held-out L2) and kNN probes of
 * two d2v-extract feature files, train and test (src/eval/probe.c, docs/evaluation.md), printed
 * per variant and optionally written as a JSON report. */
#define _POSIX_C_SOURCE 200809L
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/h5io.h"
#include "d2v/kernels.h"
#include "d2v/probe.h"
#include "d2v/util.h"

static void usage(void) {
    printf(
        "usage: d2v-probe FEATURES_TRAIN.h5 FEATURES_TEST.h5 [--variant NAME|all] [--seed 0]\n"
        "                 [--json REPORT.json] [--k 20] [--max-iter 300] [--holdout 0.1]\n"
        "                 [--l2 1e-1,1e-2,...,1e-7]\n"
        "  FEATURES_*.h5  d2v-extract outputs of one model (or --raw) on two labelled splits\n"
        "  --variant      mean_final, mean_norm, cls, mean_lastk, raw, or all (default: every\n"
        "                 variant of the train file)\n"
        "  --seed         the held-out split of the train features that picks the L2 strength\n"
        "  --l2           the strengths tried, in this order (strongest first: each fit starts\n"
        "                 from the previous one's solution)\n"
        "Per variant: a multinomial logistic-regression probe on features standardised with\n"
        "the train split's mean and std, fitted full-batch with L-BFGS, its L2 strength picked\n"
        "from 1e-1 .. 1e-7 by accuracy on a held-out share of train, then refitted on all of\n"
        "train; and the kNN probe of d2v-eval (k = 20, cosine, weights exp(sim / 0.07)). Prints\n"
        "test top-1 accuracy. Threads: BLIS_NUM_THREADS, else OMP_NUM_THREADS. See\n"
        "docs/evaluation.md.\n");
}

typedef struct {
    const char *path;
    hid_t f;
    int64_t n;
    char model_id[64], network[32], modality[16], variants[256], checkpoint[PATH_MAX];
    char source[PATH_MAX];
    int64_t step;
    int32_t *labels;
    char **label_names;
    size_t n_label_names;
} Features;

static void features_open(Features *ff, const char *path) {
    char err[PATH_MAX + 256], kind[32];
    memset(ff, 0, sizeof *ff);
    ff->path = path;
    ff->f = h5_open_ro(path, err, sizeof err);
    if (ff->f < 0) die("%s", err);
    if (h5_read_attr_str(ff->f, path, "kind", kind, sizeof kind, err, sizeof err) < 0 ||
        strcmp(kind, "features"))
        die("%s: not a d2v features file (write one with d2v-extract)", path);
    if (h5_read_attr_i64(ff->f, path, "num_samples", &ff->n, err, sizeof err) < 0 ||
        h5_read_attr_str(ff->f, path, "model_id", ff->model_id, sizeof ff->model_id, err,
                         sizeof err) < 0 ||
        h5_read_attr_str(ff->f, path, "network", ff->network, sizeof ff->network, err, sizeof err) <
            0 ||
        h5_read_attr_str(ff->f, path, "modality", ff->modality, sizeof ff->modality, err,
                         sizeof err) < 0 ||
        h5_read_attr_str(ff->f, path, "variants", ff->variants, sizeof ff->variants, err,
                         sizeof err) < 0)
        die("%s", err);
    if (h5_read_attr_str(ff->f, path, "checkpoint", ff->checkpoint, sizeof ff->checkpoint, err,
                         sizeof err) < 0)
        ff->checkpoint[0] = '\0'; /* raw features */
    if (h5_read_attr_i64(ff->f, path, "step", &ff->step, err, sizeof err) < 0) ff->step = -1;
    if (h5_read_attr_str(ff->f, path, "source", ff->source, sizeof ff->source, err, sizeof err) < 0)
        ff->source[0] = '\0';
    if (!h5_exists(ff->f, "labels"))
        die("%s: has no /labels (a probe needs labelled samples)", path);
    int rank;
    hsize_t dims[4];
    if (h5_dataset_shape(ff->f, path, "labels", &rank, dims, err, sizeof err) < 0) die("%s", err);
    if (rank != 1 || (int64_t)dims[0] != ff->n)
        die("%s: /labels holds %llu values for %lld samples", path, (unsigned long long)dims[0],
            (long long)ff->n);
    ff->labels = xalloc(sizeof(int32_t) * (size_t)(ff->n + 1), "labels");
    if (h5_read_rows(ff->f, path, "labels", H5T_NATIVE_INT32, 0, (hsize_t)ff->n, ff->labels, err,
                     sizeof err) < 0)
        die("%s", err);
    for (int64_t i = 0; i < ff->n; i++)
        if (ff->labels[i] < 0)
            die("%s: sample %lld has label %d", path, (long long)i, ff->labels[i]);
    if (h5_exists(ff->f, "label_names")) {
        ff->label_names =
            h5_read_strings(ff->f, path, "label_names", &ff->n_label_names, err, sizeof err);
        if (!ff->label_names) die("%s", err);
    }
}

static void features_close(Features *ff) {
    h5_close(ff->f);
    free(ff->labels);
    h5_free_strings(ff->label_names, ff->n_label_names);
}

static int has_variant(const Features *ff, const char *v) {
    char list[256];
    snprintf(list, sizeof list, "%s", ff->variants);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
        if (!strcmp(t, v)) return 1;
    return 0;
}

/* Width of variant v, dying with the file's name if it lacks it or it is not (N, C). */
static int features_width(const Features *ff, const char *v) {
    char err[PATH_MAX + 256];
    if (!has_variant(ff, v) || !h5_exists(ff->f, v))
        die("%s: no feature variant '%s' (it has %s)", ff->path, v, ff->variants);
    int rank;
    hsize_t dims[4];
    if (h5_dataset_shape(ff->f, ff->path, v, &rank, dims, err, sizeof err) < 0) die("%s", err);
    if (rank != 2 || (int64_t)dims[0] != ff->n || dims[1] < 1 || dims[1] > (1u << 24))
        die("%s: variant '%s' is not (%lld, C)", ff->path, v, (long long)ff->n);
    return (int)dims[1];
}

static float *features_read(const Features *ff, const char *v, int *D) {
    char err[PATH_MAX + 256];
    *D = features_width(ff, v);
    float *x = xalloc(sizeof(float) * (size_t)ff->n * (size_t)*D, v);
    if (h5_read_rows(ff->f, ff->path, v, H5T_NATIVE_FLOAT, 0, (hsize_t)ff->n, x, err, sizeof err) <
        0)
        die("%s", err);
    return x;
}

static const char *status_name(int s) {
    return s == LBFGS_CONVERGED ? "converged" : s == LBFGS_MAX_ITER ? "max-iter" : "round-off";
}

static json_object *file_json(const Features *ff) {
    json_object *o = json_object_new_object();
    json_object_object_add(o, "path", json_object_new_string(ff->path));
    json_object_object_add(o, "data", json_object_new_string(ff->source));
    json_object_object_add(o, "samples", json_object_new_int64(ff->n));
    json_object_object_add(o, "network", json_object_new_string(ff->network));
    if (ff->checkpoint[0]) {
        json_object_object_add(o, "checkpoint", json_object_new_string(ff->checkpoint));
        json_object_object_add(o, "step", json_object_new_int64(ff->step));
    }
    return o;
}

int main(int argc, char **argv) {
    const char *train = NULL, *test = NULL, *variant = "all", *json = NULL;
    ProbeConfig pc = probe_defaults();
    int k = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(), 0;
        else if (!strcmp(argv[i], "--variant") && i + 1 < argc)
            variant = argv[++i];
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            pc.seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (!strcmp(argv[i], "--k") && i + 1 < argc)
            k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-iter") && i + 1 < argc)
            pc.opt.max_iter = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--holdout") && i + 1 < argc)
            pc.holdout = atof(argv[++i]);
        else if (!strcmp(argv[i], "--l2") && i + 1 < argc) { /* the grid, strongest first */
            char *s = argv[++i], *end;
            pc.n_grid = 0;
            for (;;) {
                double v = strtod(s, &end);
                if (end == s || !(v > 0) || pc.n_grid == PROBE_MAX_GRID)
                    die("--l2 %s: expected up to %d positive strengths a,b,...", argv[i],
                        PROBE_MAX_GRID);
                pc.grid[pc.n_grid++] = v;
                if (!*end) break;
                if (*end != ',')
                    die("--l2 %s: expected up to %d positive strengths a,b,...", argv[i],
                        PROBE_MAX_GRID);
                s = end + 1;
            }
        } else if (argv[i][0] != '-' && !train)
            train = argv[i];
        else if (argv[i][0] != '-' && !test)
            test = argv[i];
        else {
            fprintf(stderr, "d2v: error: unexpected argument '%s' (see d2v-probe --help)\n",
                    argv[i]);
            return 1;
        }
    }
    h5io_init();
    if (!train || !test) die("need FEATURES_TRAIN.h5 and FEATURES_TEST.h5 (see d2v-probe --help)");
    if (k < 1 || pc.opt.max_iter < 1 || !(pc.holdout > 0 && pc.holdout < 1))
        die("--k and --max-iter must be positive, --holdout in (0, 1)");
    gemm_init(0);
    Features tr, te;
    features_open(&tr, train);
    features_open(&te, test);
    if (strcmp(tr.model_id, te.model_id))
        die("%s and %s: features of different models (%s %s, %s %s)", train, test, tr.network,
            tr.model_id, te.network, te.model_id);
    int K = (int)tr.n_label_names;
    for (int64_t i = 0; i < tr.n; i++)
        K = tr.labels[i] >= K ? tr.labels[i] + 1 : K;
    for (int64_t i = 0; i < te.n; i++)
        K = te.labels[i] >= K ? te.labels[i] + 1 : K;
    if (K < 2) die("%s: a single class (%d): nothing to probe", train, K);
    char list[256], check[256];
    snprintf(list, sizeof list, "%s", strcmp(variant, "all") ? variant : tr.variants);
    snprintf(check, sizeof check, "%s", list);
    for (char *save = NULL, *v = strtok_r(check, ",", &save); v; v = strtok_r(NULL, ",", &save)) {
        int D = features_width(&tr, v), Dt = features_width(&te, v); /* refused before any work */
        if (D != Dt) die("%s: variant '%s' is %d wide, %s's is %d", test, v, Dt, train, D);
    }
    printf("d2v-probe: %s features, %s (%lld samples) -> %s (%lld), %d classes, seed %llu\n",
           tr.network, train, (long long)tr.n, test, (long long)te.n, K,
           (unsigned long long)pc.seed);
    printf("%-11s %6s %13s %8s %10s\n", "variant", "dim", "linear top-1", "L2", "kNN top-1");
    json_object *rep = json_object_new_object(), *vars = json_object_new_array();
    json_object_object_add(rep, "train", file_json(&tr));
    json_object_object_add(rep, "test", file_json(&te));
    json_object_object_add(rep, "modality", json_object_new_string(tr.modality));
    json_object_object_add(rep, "model_id", json_object_new_string(tr.model_id));
    json_object_object_add(rep, "classes", json_object_new_int(K));
    json_object_object_add(rep, "seed", json_object_new_int64((int64_t)pc.seed));
    json_object_object_add(rep, "holdout", json_object_new_double(pc.holdout));
    json_object_object_add(rep, "knn_k", json_object_new_int(k));
    for (char *save = NULL, *v = strtok_r(list, ",", &save); v; v = strtok_r(NULL, ",", &save)) {
        int D = 0, Dt = 0;
        float *xtr = features_read(&tr, v, &D), *xte = features_read(&te, v, &Dt);
        if (D != Dt) die("%s: variant '%s' is %d wide, %s's is %d", test, v, Dt, train, D);
        double t0 = now_seconds();
        ProbeResult r = probe_linear(xtr, tr.labels, tr.n, xte, te.labels, te.n, D, K, &pc);
        double knn = probe_knn(xtr, tr.labels, tr.n, xte, te.labels, te.n, D, K, k, 0.07);
        printf("%-11s %6d %12.2f%% %8.0e %9.2f%%   (%s, %.1f s)\n", v, D, 100 * r.test_acc, r.l2,
               100 * knn, status_name(r.status), now_seconds() - t0);
        fflush(stdout);
        json_object *o = json_object_new_object(), *grid = json_object_new_array();
        json_object_object_add(o, "variant", json_object_new_string(v));
        json_object_object_add(o, "dim", json_object_new_int(D));
        json_object_object_add(o, "linear_top1", json_object_new_double(r.test_acc));
        json_object_object_add(o, "linear_train_top1", json_object_new_double(r.train_acc));
        json_object_object_add(o, "l2", json_object_new_double(r.l2));
        json_object_object_add(o, "lbfgs_iters", json_object_new_int(r.iters));
        json_object_object_add(o, "lbfgs_status", json_object_new_string(status_name(r.status)));
        json_object_object_add(o, "knn_top1", json_object_new_double(knn));
        for (int g = 0; g < r.n_grid; g++) {
            json_object *p = json_object_new_object();
            json_object_object_add(p, "l2", json_object_new_double(r.grid[g].l2));
            json_object_object_add(p, "heldout_top1",
                                   json_object_new_double(r.grid[g].heldout_acc));
            json_object_object_add(p, "lbfgs_iters", json_object_new_int(r.grid[g].iters));
            json_object_array_add(grid, p);
        }
        json_object_object_add(o, "l2_grid", grid);
        json_object_object_add(o, "fit_samples", json_object_new_int64(r.n_fit));
        json_object_object_add(o, "heldout_samples", json_object_new_int64(r.n_heldout));
        json_object_array_add(vars, o);
        free(xtr), free(xte);
    }
    json_object_object_add(rep, "variants", vars);
    if (json) { /* complete or absent: a temporary name, then rename */
        char tmp[PATH_MAX + 32];
        snprintf(tmp, sizeof tmp, "%s.tmp", json);
        if (json_object_to_file_ext(tmp, rep, JSON_C_TO_STRING_PRETTY) != 0 ||
            rename(tmp, json) != 0)
            die("%s: cannot write the report", json);
        printf("d2v-probe: report in %s\n", json);
    }
    json_object_put(rep);
    features_close(&tr), features_close(&te);
    return 0;
}
