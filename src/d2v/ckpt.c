/* ckpt.c: checkpoint write (atomic, then a DONE marker, with retention), discovery of the newest
 * complete one, and a read that rejects a checkpoint of another model with a clear message. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "d2v/h5io.h"
#include "d2v/util.h"

#define MAX_TENSORS 512

static void ckpt_dir(char *buf, size_t n, const char *run_dir, int64_t update) {
    if (snprintf(buf, n, "%s/ckpt/step_%08lld", run_dir, (long long)update) >= (int)n)
        die("%s: run directory path too long", run_dir);
}

static int is_complete(const char *dir) {
    char done[PATH_MAX + 16];
    if (snprintf(done, sizeof done, "%s/DONE", dir) >= (int)sizeof done) return 0;
    return access(done, F_OK) == 0;
}

/* Complete checkpoint updates under run_dir/ckpt, newest first; returns how many (<= max). */
static int list_complete(const char *run_dir, int64_t *updates, int max) {
    char root[PATH_MAX + 8];
    snprintf(root, sizeof root, "%s/ckpt", run_dir);
    DIR *d = opendir(root);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        long long u;
        char tail;
        if (sscanf(e->d_name, "step_%lld%c", &u, &tail) != 1) continue;
        char dir[PATH_MAX + 300];
        snprintf(dir, sizeof dir, "%s/%s", root, e->d_name);
        if (is_complete(dir)) updates[n++] = u;
    }
    closedir(d);
    for (int i = 0; i < n; i++) /* newest first */
        for (int j = i + 1; j < n; j++)
            if (updates[j] > updates[i]) {
                int64_t t = updates[i];
                updates[i] = updates[j], updates[j] = t;
            }
    return n;
}

static void remove_checkpoint(const char *run_dir, int64_t update) {
    char dir[PATH_MAX], f[PATH_MAX + 16];
    ckpt_dir(dir, sizeof dir, run_dir, update);
    snprintf(f, sizeof f, "%s/DONE", dir); /* first, so a half-removed one is never "complete" */
    unlink(f);
    snprintf(f, sizeof f, "%s/model.h5", dir);
    unlink(f);
    rmdir(dir);
}

void ckpt_write_table(hid_t file, const ModelConfig *mc) {
    ParamTable t;
    model_declare(&t, mc);
    int n = t.n;
    const char **names = xalloc(sizeof *names * (size_t)n, "parameter names");
    int64_t *offsets = xalloc(sizeof *offsets * (size_t)n, "parameter offsets");
    int64_t(*shapes)[4] = xalloc(sizeof *shapes * (size_t)n, "parameter shapes");
    for (int i = 0; i < n; i++) {
        names[i] = t.t[i].name, offsets[i] = (int64_t)t.t[i].offset;
        for (int j = 0; j < 4; j++)
            shapes[i][j] = j < t.t[i].rank ? t.t[i].shape[j] : -1;
    }
    h5_write_strings(file, "param_names", names, (size_t)n);
    hsize_t d1[1] = {(hsize_t)n}, d2[2] = {(hsize_t)n, 4};
    h5_write(file, "param_offsets", H5T_NATIVE_INT64, 1, d1, NULL, offsets);
    h5_write(file, "param_shapes", H5T_NATIVE_INT64, 2, d2, NULL, shapes);
    free(names), free(offsets), free(shapes);
    ptab_free(&t);
}

void ckpt_write(const char *run_dir, const ModelConfig *mc, const char *config_text,
                const float *params, const float *teacher, const float *adam_m, const float *adam_v,
                size_t np, const TrainState *st, int keep_last) {
    char root[PATH_MAX + 8], dir[PATH_MAX], path[PATH_MAX + 16];
    snprintf(root, sizeof root, "%s/ckpt", run_dir);
    if (mkdir(root, 0775) != 0 && errno != EEXIST) die("%s: cannot create", root);
    ckpt_dir(dir, sizeof dir, run_dir, st->update);
    if (mkdir(dir, 0775) != 0 && errno != EEXIST) die("%s: cannot create", dir);
    snprintf(path, sizeof path, "%s/model.h5", dir);
    H5Out o;
    h5out_create(&o, path);
    h5_attr_i32(o.file, "format_version", D2V_FORMAT_VERSION);
    h5_attr_str(o.file, "kind", "checkpoint");
    h5_attr_str(o.file, "modality", d2v_modality_names[mc->modality]);
    h5_attr_str(o.file, "config", config_text ? config_text : "");
    h5_attr_i64(o.file, "update", st->update);
    h5_attr_i64(o.file, "skipped", st->skipped);
    h5_attr_i64(o.file, "epoch", st->cursor.epoch);
    h5_attr_i64(o.file, "position", st->cursor.position);
    ckpt_write_table(o.file, mc);
    hsize_t n[1] = {np};
    h5_write(o.file, "params", H5T_NATIVE_FLOAT, 1, n, NULL, params);
    h5_write(o.file, "teacher", H5T_NATIVE_FLOAT, 1, n, NULL, teacher);
    h5_write(o.file, "adam_m", H5T_NATIVE_FLOAT, 1, n, NULL, adam_m);
    h5_write(o.file, "adam_v", H5T_NATIVE_FLOAT, 1, n, NULL, adam_v);
    h5out_commit(&o);
    snprintf(path, sizeof path, "%s/DONE", dir);
    FILE *f = fopen(path, "w");
    if (!f || fclose(f) != 0) die("%s: cannot write", path);
    if (keep_last > 0) {
        int64_t ups[4096];
        int k = list_complete(run_dir, ups, 4096);
        for (int i = keep_last; i < k; i++)
            remove_checkpoint(run_dir, ups[i]);
    }
    log0("checkpoint %s (update %lld)\n", dir, (long long)st->update);
}

int ckpt_find_latest(const char *run_dir, char *path, size_t pathlen) {
    int64_t ups[4096];
    if (list_complete(run_dir, ups, 4096) == 0) return -1;
    char dir[PATH_MAX];
    ckpt_dir(dir, sizeof dir, run_dir, ups[0]);
    if (snprintf(path, pathlen, "%s/model.h5", dir) >= (int)pathlen) return -1;
    return 0;
}

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__), -1)

static int read_floats(hid_t f, const char *path, const char *name, float *dst, size_t np,
                       char *err, size_t errlen) {
    int rank;
    hsize_t dims[4];
    if (h5_dataset_shape(f, path, name, &rank, dims, err, errlen) < 0) return -1;
    if (rank != 1 || dims[0] != np)
        return ERR("%s: '%s' holds %llu values, this model has %zu parameters", path, name,
                   (unsigned long long)dims[0], np);
    return h5_read_rows(f, path, name, H5T_NATIVE_FLOAT, 0, np, dst, err, errlen);
}

int ckpt_read(const char *path, const ModelConfig *mc, float *params, float *teacher, float *adam_m,
              float *adam_v, size_t np, TrainState *st, char *err, size_t errlen) {
    hid_t f = h5_open_ro(path, err, errlen);
    if (f < 0) return -1;
    int rc = 0;
    char kind[32], mod[32];
    int64_t version = 0;
    if (h5_read_attr_i64(f, path, "format_version", &version, err, errlen) < 0 ||
        h5_read_attr_str(f, path, "kind", kind, sizeof kind, err, errlen) < 0 ||
        h5_read_attr_str(f, path, "modality", mod, sizeof mod, err, errlen) < 0)
        rc = -1;
    else if (version != D2V_FORMAT_VERSION || strcmp(kind, "checkpoint"))
        rc = ERR("%s: not a d2v checkpoint of format %d", path, D2V_FORMAT_VERSION);
    else if (strcmp(mod, d2v_modality_names[mc->modality]))
        rc = ERR("%s: a %s checkpoint, this run trains %s", path, mod,
                 d2v_modality_names[mc->modality]);
    /* the same tensors, in the same places, with the same shapes */
    ParamInfo t[MAX_TENSORS];
    int nt = model_param_table(t, MAX_TENSORS, mc);
    size_t nn = 0;
    char **names = rc ? NULL : h5_read_strings(f, path, "param_names", &nn, err, errlen);
    if (!rc && !names) rc = -1;
    int64_t(*shapes)[4] = calloc(nn + 1, sizeof *shapes);
    if (!rc && nn != (size_t)nt)
        rc = ERR("%s: %zu parameter tensors, this model has %d (different config?)", path, nn, nt);
    if (!rc)
        rc = h5_read_rows(f, path, "param_shapes", H5T_NATIVE_INT64, 0, nn, shapes, err, errlen);
    for (int i = 0; !rc && i < nt; i++) {
        int same = !strcmp(names[i], t[i].name);
        for (int j = 0; j < 4; j++)
            same &= shapes[i][j] == (j < t[i].rank ? t[i].shape[j] : -1);
        if (!same) {
            char got[96] = "", want[96] = "";
            for (int j = 0; j < 4 && shapes[i][j] >= 0; j++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", j ? "x" : "",
                         (long long)shapes[i][j]);
            for (int j = 0; j < t[i].rank; j++)
                snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", j ? "x" : "",
                         (long long)t[i].shape[j]);
            rc = ERR("%s: tensor %d is %s %s, this model has %s %s (a checkpoint of another "
                     "config)",
                     path, i, names[i], got, t[i].name, want);
        }
    }
    h5_free_strings(names, nn);
    free(shapes);
    if (!rc)
        rc = read_floats(f, path, "params", params, np, err, errlen) ||
             read_floats(f, path, "teacher", teacher, np, err, errlen) ||
             read_floats(f, path, "adam_m", adam_m, np, err, errlen) ||
             read_floats(f, path, "adam_v", adam_v, np, err, errlen);
    if (!rc && (h5_read_attr_i64(f, path, "update", &st->update, err, errlen) < 0 ||
                h5_read_attr_i64(f, path, "skipped", &st->skipped, err, errlen) < 0 ||
                h5_read_attr_i64(f, path, "epoch", &st->cursor.epoch, err, errlen) < 0 ||
                h5_read_attr_i64(f, path, "position", &st->cursor.position, err, errlen) < 0))
        rc = -1;
    h5_close(f);
    return rc ? -1 : 0;
}

int ckpt_read_config(const char *path, TrainConfig *cfg, char *err, size_t errlen) {
    hid_t f = h5_open_ro(path, err, errlen);
    if (f < 0) return -1;
    size_t cap = 1 << 20;
    char *text = xalloc(cap, "config text"), kind[32];
    int rc = h5_read_attr_str(f, path, "kind", kind, sizeof kind, err, errlen);
    if (!rc && strcmp(kind, "checkpoint")) rc = ERR("%s: not a d2v checkpoint", path);
    if (!rc) rc = h5_read_attr_str(f, path, "config", text, cap, err, errlen);
    h5_close(f);
    if (!rc) {
        char inner[1024];
        train_config_defaults(cfg);
        if (train_config_load_string(cfg, text, path, inner, sizeof inner))
            rc = ERR("%s: its configuration: %s", path, inner);
    }
    free(text);
    return rc ? -1 : 0;
}
