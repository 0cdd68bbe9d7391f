/* prep_common.c: rank blocks, shard names and index files, folder-tree listing and bad-input
 * accounting for the dataset tools (see docs/datasets.md for the file layout). */
#define _POSIX_C_SOURCE 200809L
#include "prep_common.h"

#include <dirent.h>
#include <glob.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "d2v/dist.h"
#include "d2v/util.h"

void prep_start(int *argc, char ***argv, void (*usage)(void)) {
    for (int i = 1; i < *argc; i++)
        if (!strcmp((*argv)[i], "--help") || !strcmp((*argv)[i], "-h")) {
            usage();
            exit(0);
        }
    dist_init(argc, argv);
}

void prep_rank_block(size_t n, int rank, int world, size_t *lo, size_t *hi) {
    *lo = n * (size_t)rank / (size_t)world;
    *hi = n * (size_t)(rank + 1) / (size_t)world;
}

static void strip_h5(char *stem, size_t len, const char *path) {
    snprintf(stem, len, "%s", path);
    size_t n = strlen(stem);
    if (n > 3 && strcmp(stem + n - 3, ".h5") == 0) stem[n - 3] = '\0';
}

void prep_shard_path(char *buf, size_t buflen, const char *out, int rank, int world) {
    if (world == 1) {
        snprintf(buf, buflen, "%s", out);
        return;
    }
    char stem[PATH_MAX];
    strip_h5(stem, sizeof stem, out);
    if (snprintf(buf, buflen, "%s.shard-%05d-of-%05d.h5", stem, rank, world) >= (int)buflen)
        die("%s: output path too long", out);
}

/* ---- outputs that vanish on failure ---- */

static char out_tmp[PATH_MAX];              // temporary name of the open output
static volatile sig_atomic_t out_armed = 0; // 1 while out_tmp exists and is not committed

/* mpirun ends the surviving ranks with SIGTERM when one calls MPI_Abort: remove the partial file,
 * then die of the signal as before (unlink, signal and raise are async-signal-safe). */
static void out_on_signal(int sig) {
    if (out_armed) unlink(out_tmp);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* A rank that dies removes its peers' temporary shards too, before MPI_Abort: their own SIGTERM
 * handlers may not run before mpirun's SIGKILL follows on a loaded node. Safe: no shard is
 * committed until every rank reaches prep_out_commit's barrier. */
static char peer_glob[PATH_MAX + 32];
static int peer_cleanup = -1;

static void remove_peer_tmps(void *arg) {
    (void)arg;
    glob_t g;
    if (glob(peer_glob, 0, NULL, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; i++)
            unlink(g.gl_pathv[i]);
    globfree(&g);
}

void prep_out_create(H5Out *o, const char *path) {
    const char *sh = strstr(path, ".shard-");
    if (g_dist.world > 1 && sh) {
        snprintf(peer_glob, sizeof peer_glob, "%.*s.shard-*-of-%05d.h5.tmp.*", (int)(sh - path),
                 path, g_dist.world);
        peer_cleanup = die_cleanup_push(remove_peer_tmps, NULL);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = out_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    h5out_create(o, path);
    snprintf(out_tmp, sizeof out_tmp, "%s", o->tmp);
    out_armed = 1;
}

void prep_out_commit(H5Out *o) {
    dist_barrier();
    h5out_commit(o);
    out_armed = 0;
    if (peer_cleanup >= 0) die_cleanup_pop(peer_cleanup), peer_cleanup = -1;
}

void prep_out_discard(void) {
    if (out_armed) unlink(out_tmp);
    out_armed = 0;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

void prep_write_index(const char *out, const char *modality, const char *created_by,
                      int64_t count) {
    int world = g_dist.world;
    int64_t *counts = xalloc(sizeof(int64_t) * world, "shard counts");
    dist_allgather_i64(count, counts);
    if (world > 1 && g_dist.rank == 0) {
        char **names = xalloc(sizeof(char *) * world, "shard names");
        int64_t total = 0;
        for (int r = 0; r < world; r++) {
            char path[PATH_MAX];
            prep_shard_path(path, sizeof path, out, r, world);
            names[r] = strdup(base_name(path));
            total += counts[r];
        }
        char first[PATH_MAX], err[512];
        prep_shard_path(first, sizeof first, out, 0, world);
        hid_t src = h5_open_ro(first, err, sizeof err);
        if (src < 0) die("%s", err);
        H5Out o;
        h5out_create(&o, out);
        h5_write_root_attrs(o.file, modality, "index", total, created_by);
        /* every root attribute of shard 0 except the ones an index sets itself */
        static const char *const own[] = {"kind",           "num_samples", "created_by",
                                          "format_version", "modality",    NULL};
        h5_copy_attrs(o.file, src, own);
        h5_close(src);
        h5_write_strings(o.file, "shards", (const char *const *)names, (size_t)world);
        hsize_t dims[1] = {(hsize_t)world};
        h5_write(o.file, "shard_samples", H5T_NATIVE_INT64, 1, dims, NULL, counts);
        h5out_commit(&o);
        for (int r = 0; r < world; r++)
            free(names[r]);
        free(names);
        printf("wrote %s: %lld samples in %d shards\n", out, (long long)total, world);
    }
    free(counts);
    dist_barrier();
}

/* ---- folder trees ---- */

static int has_ext(const char *name, const char *const *exts) {
    size_t n = strlen(name);
    for (int i = 0; exts[i]; i++) {
        size_t e = strlen(exts[i]);
        if (n > e && strcasecmp(name + n - e, exts[i]) == 0) return 1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted entries of a directory; dirs = 1 for sub-directories, 0 for regular files. */
static char **list_dir(const char *dir, int dirs, const char *const *exts, size_t *n) {
    DIR *d = opendir(dir);
    *n = 0;
    if (!d) return NULL;
    size_t cap = 64;
    char **v = malloc(cap * sizeof(char *));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0) continue;
        if (dirs ? !S_ISDIR(st.st_mode) : (!S_ISREG(st.st_mode) || !has_ext(e->d_name, exts)))
            continue;
        if (*n == cap) v = realloc(v, (cap *= 2) * sizeof(char *));
        v[(*n)++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(v, *n, sizeof(char *), cmp_str);
    return v;
}

static void tree_add(PrepTree *t, size_t *cap, const char *path, int32_t label) {
    if (t->n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        t->paths = realloc(t->paths, *cap * sizeof(char *));
        t->label = realloc(t->label, *cap * sizeof(int32_t));
        if (!t->paths || !t->label) die("out of memory listing input files");
    }
    t->paths[t->n] = strdup(path);
    t->label[t->n++] = label;
}

int prep_list_tree(PrepTree *t, const char *root, const char *const *exts, char *err,
                   size_t errlen) {
    memset(t, 0, sizeof *t);
    struct stat st;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a readable directory", root);
        return -1;
    }
    size_t cap = 0, nf = 0;
    char **top = list_dir(root, 0, exts, &nf);
    for (size_t i = 0; i < nf; i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", root, top[i]);
        tree_add(t, &cap, p, -1);
        free(top[i]);
    }
    free(top);
    t->classes = list_dir(root, 1, exts, &t->n_classes);
    for (size_t c = 0; c < t->n_classes; c++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/%s", root, t->classes[c]);
        char **files = list_dir(dir, 0, exts, &nf);
        for (size_t i = 0; i < nf; i++) {
            char p[PATH_MAX];
            if (snprintf(p, sizeof p, "%s/%s", dir, files[i]) >= (int)sizeof p)
                die("%s/%s: path too long", dir, files[i]);
            tree_add(t, &cap, p, (int32_t)c);
            free(files[i]);
        }
        free(files);
    }
    return 0;
}

void prep_tree_free(PrepTree *t) {
    for (size_t i = 0; i < t->n; i++)
        free(t->paths[i]);
    for (size_t i = 0; i < t->n_classes; i++)
        free(t->classes[i]);
    free(t->paths), free(t->label), free(t->classes);
    memset(t, 0, sizeof *t);
}

/* ---- bad inputs ---- */

void prep_bad_input(PrepErrors *e, const char *path, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (e->strict) {
        prep_out_discard();
        die("%s: %s (--strict)", path, msg);
    }
    fprintf(stderr, "d2v: skipping %s: %s\n", path, msg);
    e->skipped++;
}

long prep_report_skipped(PrepErrors *e) {
    double n = (double)e->skipped;
    dist_allreduce_sum_f64(&n, 1);
    if (n > 0)
        log0("skipped %ld bad input(s) (see the messages above; --strict stops instead)\n",
             (long)n);
    return (long)n;
}
