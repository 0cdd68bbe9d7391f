/* ckpt.c: checkpoint write (atomic and fsynced, per-tensor CRC32s, then a DONE marker that
 * records the file's size and CRC32, with retention), discovery of the newest complete one, and a
 * read that verifies every tensor and tells a damaged file (fall back to an older one) from one of
 * another model (stop). See docs/reliability.md. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

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

static const char *const arena_names[4] = {"params", "teacher", "adam_m", "adam_v"};

/* CRC32 of each tensor of each arena: (4, n) in arena_names order. */
static void tensor_crcs(uint32_t *out, const ParamTable *t, const float *const arena[4]) {
    for (int a = 0; a < 4; a++)
        ptab_crc32(t, arena[a], out + (size_t)a * t->n);
}

/* Retention: the newest keep_last complete checkpoints, and every one whose update is a
 * multiple of keep_every. */
static void retain(const char *run_dir, int keep_last, int64_t keep_every) {
    if (keep_last <= 0) return;
    int64_t ups[4096];
    int k = list_complete(run_dir, ups, 4096);
    for (int i = keep_last; i < k; i++)
        if (keep_every <= 0 || ups[i] % keep_every != 0) remove_checkpoint(run_dir, ups[i]);
}

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__), CKPT_OTHER)
#define DAMAGED(...) (snprintf(err, errlen, __VA_ARGS__), CKPT_DAMAGED)

/* The size and CRC32 of a whole file; -1 (errno set) when it cannot be read. */
static int file_crc(const char *path, long long *size, uint32_t *crc) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    enum { BUF = 1 << 20 };
    unsigned char *buf = xalloc(BUF, "checksum buffer");
    uLong c = crc32(0L, Z_NULL, 0);
    long long n = 0;
    size_t k;
    while ((k = fread(buf, 1, BUF, f)) > 0)
        c = crc32(c, buf, (uInt)k), n += (long long)k;
    int bad = ferror(f);
    fclose(f);
    free(buf);
    if (bad) return errno = EIO, -1;
    *size = n, *crc = (uint32_t)c;
    return 0;
}

/* DONE holds model.h5's size and CRC32, so a checkpoint damaged anywhere (HDF5's own metadata
 * included, which the per-tensor checksums do not cover and HDF5 1.10 may crash on) is refused
 * before HDF5 parses it (docs/reliability.md §1). Empty DONE files (older d2v) and a model.h5
 * with no DONE beside it (copied elsewhere) are not checked here. */
#define DONE_FORMAT "d2v checkpoint model.h5 bytes %lld crc32 %08x\n"

static int check_done(const char *path, char *err, size_t errlen) {
    char done[PATH_MAX + 16];
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 0;
    if (strcmp(slash ? slash + 1 : path, "model.h5")) return 0;
    if (snprintf(done, sizeof done, "%.*s%sDONE", dl, path, slash ? "/" : "") >= (int)sizeof done)
        return 0;
    FILE *f = fopen(done, "r");
    if (!f) return 0;
    char line[128] = "";
    size_t k = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[k] = 0;
    if (k == 0) return 0;
    long long want_size = -1, size;
    unsigned want_crc = 0;
    uint32_t crc;
    if (sscanf(line, "d2v checkpoint model.h5 bytes %lld crc32 %8x", &want_size, &want_crc) != 2)
        return DAMAGED("%s: not a d2v checkpoint record (damaged?)", done);
    if (file_crc(path, &size, &crc) != 0)
        return DAMAGED("%s: cannot read (%s)", path, strerror(errno));
    if (size != want_size)
        return DAMAGED("%s: %lld bytes, %s records %lld (truncated or damaged)", path, size, done,
                       want_size);
    if (crc != want_crc)
        return DAMAGED("%s: fails the CRC32 recorded in %s (the file is damaged)", path, done);
    return 0;
}

static void sync_or_die(const char *path) {
    if (fsync_path(path) != 0) die("%s: cannot sync to disk (%s)", path, strerror(errno));
}

void ckpt_write(const char *run_dir, const ModelConfig *mc, const char *config_text,
                const float *params, const float *teacher, const float *adam_m, const float *adam_v,
                size_t np, const TrainState *st, int keep_last, int64_t keep_every) {
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
    h5_attr_str(o.file, "mode", mc->v2 ? "v2" : "v1");
    h5_attr_str(o.file, "config", config_text ? config_text : "");
    h5_attr_i64(o.file, "update", st->update);
    h5_attr_i64(o.file, "skipped", st->skipped);
    h5_attr_i64(o.file, "epoch", st->cursor.epoch);
    h5_attr_i64(o.file, "position", st->cursor.position);
    h5_attr_i64(o.file, "planned_updates", st->planned);
    ckpt_write_table(o.file, mc);
    hsize_t n[1] = {np};
    h5_write(o.file, "params", H5T_NATIVE_FLOAT, 1, n, NULL, params);
    h5_write(o.file, "teacher", H5T_NATIVE_FLOAT, 1, n, NULL, teacher);
    h5_write(o.file, "adam_m", H5T_NATIVE_FLOAT, 1, n, NULL, adam_m);
    h5_write(o.file, "adam_v", H5T_NATIVE_FLOAT, 1, n, NULL, adam_v);
    ParamTable t;
    model_declare(&t, mc);
    if (t.total != np) die("checkpoint: %zu parameters, the table has %zu", np, t.total);
    uint32_t *crc = xalloc(sizeof(uint32_t) * 4 * (size_t)t.n, "checksums");
    tensor_crcs(crc, &t, (const float *const[4]){params, teacher, adam_m, adam_v});
    hsize_t cd[2] = {4, (hsize_t)t.n};
    h5_write(o.file, "checksums", H5T_NATIVE_UINT32, 2, cd, NULL, crc);
    h5_attr_str(o.file, "checksums_of", "crc32 of each tensor of params, teacher, adam_m, adam_v");
    free(crc);
    ptab_free(&t);
    h5out_commit(&o); /* fsyncs model.h5 and the step directory */
    /* DONE only once model.h5 is on disk, and DONE itself on disk before older ones go */
    long long size;
    uint32_t fcrc;
    if (file_crc(path, &size, &fcrc) != 0)
        die("%s: cannot read back (%s); the previous checkpoint is intact", path, strerror(errno));
    snprintf(path, sizeof path, "%s/DONE", dir);
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, DONE_FORMAT, size, (unsigned)fcrc) < 0 || fclose(f) != 0) {
        unlink(path);
        die("%s: cannot write (disk full?); the previous checkpoint is intact", path);
    }
    sync_or_die(path), sync_or_die(dir), sync_or_die(root);
    retain(run_dir, keep_last, keep_every);
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

static int read_floats(hid_t f, const char *path, const char *name, float *dst, size_t np,
                       char *err, size_t errlen) {
    H5Info in;
    if (h5_dataset_info(f, path, name, &in, err, errlen) < 0) return CKPT_DAMAGED;
    if (in.rank != 1 || in.dims[0] != np)
        return DAMAGED("%s: '%s' holds %llu values, this model has %zu parameters", path, name,
                       (unsigned long long)in.dims[0], np);
    if (in.cls != H5T_FLOAT || in.size != 4)
        return DAMAGED("%s: '%s' is not float32 (damaged?)", path, name);
    return h5_read_rows(f, path, name, H5T_NATIVE_FLOAT, 0, np, dst, err, errlen) ? CKPT_DAMAGED
                                                                                  : 0;
}

/* Every tensor of every arena against the CRC32 written with it. */
static int verify(hid_t f, const char *path, const ParamTable *t, float *const arena[4], char *err,
                  size_t errlen) {
    if (!h5_exists(f, "checksums")) {
        fprintf(stderr,
                "d2v: warning: %s has no checksums (written by an older d2v): not "
                "verified\n",
                path);
        return 0;
    }
    H5Info in;
    if (h5_dataset_info(f, path, "checksums", &in, err, errlen) < 0) return CKPT_DAMAGED;
    if (in.rank != 2 || in.dims[0] != 4 || in.dims[1] != (hsize_t)t->n || in.cls != H5T_INTEGER)
        return DAMAGED("%s: 'checksums' is not (4, %d) integers", path, t->n);
    uint32_t *want = xalloc(sizeof(uint32_t) * 8 * (size_t)t->n, "checksums"),
             *got = want + 4 * (size_t)t->n;
    int rc = h5_read_rows(f, path, "checksums", H5T_NATIVE_UINT32, 0, 4, want, err, errlen)
                 ? CKPT_DAMAGED
                 : 0;
    if (!rc) tensor_crcs(got, t, (const float *const *)arena);
    for (int a = 0; !rc && a < 4; a++)
        for (int i = 0; !rc && i < t->n; i++)
            if (got[(size_t)a * t->n + i] != want[(size_t)a * t->n + i])
                rc = DAMAGED("%s: tensor %s of /%s fails its CRC32 check (the file is damaged)",
                             path, t->t[i].name, arena_names[a]);
    free(want);
    return rc;
}

int ckpt_read(const char *path, const ModelConfig *mc, float *params, float *teacher, float *adam_m,
              float *adam_v, size_t np, TrainState *st, char *err, size_t errlen) {
    if (access(path, F_OK) != 0)
        return snprintf(err, errlen, "%s: %s", path, strerror(errno)), CKPT_MISSING;
    if (check_done(path, err, errlen)) return CKPT_DAMAGED;
    hid_t f = h5_open_ro(path, err, errlen);
    if (f < 0) return CKPT_DAMAGED; /* it exists: truncated or overwritten */
    int rc = 0;
    char kind[32], mod[32];
    int64_t version = 0;
    if (h5_read_attr_i64(f, path, "format_version", &version, err, errlen) < 0 ||
        h5_read_attr_str(f, path, "kind", kind, sizeof kind, err, errlen) < 0 ||
        h5_read_attr_str(f, path, "modality", mod, sizeof mod, err, errlen) < 0)
        rc = CKPT_DAMAGED;
    else if (version != D2V_FORMAT_VERSION || strcmp(kind, "checkpoint"))
        rc = ERR("%s: not a d2v checkpoint of format %d", path, D2V_FORMAT_VERSION);
    else if (strcmp(mod, d2v_modality_names[mc->modality])) {
        char pr[32];
        rc = ERR("%s: a %s checkpoint, this run trains %s", path, str_printable(mod, pr, sizeof pr),
                 d2v_modality_names[mc->modality]);
    }
    if (!rc) { /* data2vec 1.0 or 2.0 (no attribute: written before v2, so v1) */
        char mode[8] = "v1", pr[8];
        if (h5_attr_exists(f, "mode") &&
            h5_read_attr_str(f, path, "mode", mode, sizeof mode, err, errlen) < 0)
            rc = CKPT_DAMAGED;
        else if (strcmp(mode, mc->v2 ? "v2" : "v1"))
            rc = ERR("%s: a data2vec %s checkpoint (model.mode = \"%s\"), this run trains "
                     "model.mode = \"%s\"",
                     path, str_printable(mode, pr, sizeof pr), pr, mc->v2 ? "v2" : "v1");
    }
    /* the same tensors, in the same places, with the same shapes */
    ParamTable tab;
    model_declare(&tab, mc);
    ParamSpec *t = tab.t;
    int nt = tab.n;
    size_t nn = 0;
    char **names = rc ? NULL : h5_read_strings(f, path, "param_names", &nn, err, errlen);
    if (!rc && !names) rc = CKPT_DAMAGED;
    int64_t(*shapes)[4] = calloc(nn + 1, sizeof *shapes);
    if (!rc && nn != (size_t)nt)
        rc = ERR("%s: %zu parameter tensors, this model has %d (different config?)", path, nn, nt);
    H5Info in; /* (n, 4): read into a buffer of that size */
    if (!rc && h5_dataset_info(f, path, "param_shapes", &in, err, errlen)) rc = CKPT_DAMAGED;
    if (!rc && (in.rank != 2 || in.dims[0] != nn || in.dims[1] != 4 || in.cls != H5T_INTEGER))
        rc = DAMAGED("%s: 'param_shapes' is not (%zu, 4) integers", path, nn);
    if (!rc && h5_read_rows(f, path, "param_shapes", H5T_NATIVE_INT64, 0, nn, shapes, err, errlen))
        rc = CKPT_DAMAGED;
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
            char pr[64];
            rc = ERR("%s: tensor %d is %s %s, this model has %s %s (a checkpoint of another "
                     "config)",
                     path, i, str_printable(names[i], pr, sizeof pr), got, t[i].name, want);
        }
    }
    h5_free_strings(names, nn);
    free(shapes);
    float *arena[4] = {params, teacher, adam_m, adam_v};
    for (int a = 0; !rc && a < 4; a++)
        rc = read_floats(f, path, arena_names[a], arena[a], np, err, errlen);
    if (!rc) rc = verify(f, path, &tab, arena, err, errlen);
    if (!rc && (h5_read_attr_i64(f, path, "update", &st->update, err, errlen) < 0 ||
                h5_read_attr_i64(f, path, "skipped", &st->skipped, err, errlen) < 0 ||
                h5_read_attr_i64(f, path, "epoch", &st->cursor.epoch, err, errlen) < 0 ||
                h5_read_attr_i64(f, path, "position", &st->cursor.position, err, errlen) < 0))
        rc = CKPT_DAMAGED;
    st->planned = 0; /* absent from checkpoints written before run.max_time */
    if (!rc && h5_attr_exists(f, "planned_updates") &&
        h5_read_attr_i64(f, path, "planned_updates", &st->planned, err, errlen) < 0)
        rc = CKPT_DAMAGED;
    if (!rc && (st->planned < 0 || st->planned > CKPT_MAX_UPDATE))
        rc = DAMAGED("%s: planned_updates %lld is out of range", path, (long long)st->planned);
    /* values no run can reach: the file is damaged (docs/reliability.md) */
    if (!rc && (st->update < 0 || st->update > CKPT_MAX_UPDATE))
        rc = DAMAGED("%s: update %lld is out of range", path, (long long)st->update);
    if (!rc && (st->skipped < 0 || st->skipped > st->update))
        rc = DAMAGED("%s: skipped %lld is out of range [0, update %lld]", path,
                     (long long)st->skipped, (long long)st->update);
    if (!rc && (st->cursor.epoch < 0 || st->cursor.epoch > st->update + 1))
        rc = DAMAGED("%s: epoch %lld is out of range [0, update + 1]", path,
                     (long long)st->cursor.epoch);
    if (!rc && st->cursor.position < 0)
        rc = DAMAGED("%s: position %lld is negative", path, (long long)st->cursor.position);
    ptab_free(&tab);
    h5_close(f);
    return rc;
}

/* Move a damaged checkpoint directory aside (step_N.damaged, or .damaged.K if taken). */
static void quarantine(const char *run_dir, int64_t update, char *moved, size_t n) {
    char dir[PATH_MAX], done[PATH_MAX + 16];
    ckpt_dir(dir, sizeof dir, run_dir, update);
    for (int k = 0; k < 1000; k++) {
        if (k == 0)
            snprintf(moved, n, "%s.damaged", dir);
        else
            snprintf(moved, n, "%s.damaged.%d", dir, k);
        if (access(moved, F_OK) != 0) break;
    }
    if (rename(dir, moved) != 0) { /* at least never offer it again */
        snprintf(done, sizeof done, "%s/DONE", dir);
        unlink(done);
        snprintf(moved, n, "%s (DONE removed: cannot rename: %s)", dir, strerror(errno));
    }
}

int ckpt_load_latest(const char *run_dir, const ModelConfig *mc, float *params, float *teacher,
                     float *adam_m, float *adam_v, size_t np, TrainState *st, char *path,
                     size_t pathlen, char *err, size_t errlen) {
    int64_t ups[4096];
    int n = list_complete(run_dir, ups, 4096);
    for (int i = 0; i < n; i++) {
        char dir[PATH_MAX], moved[PATH_MAX + 64];
        ckpt_dir(dir, sizeof dir, run_dir, ups[i]);
        if (snprintf(path, pathlen, "%s/model.h5", dir) >= (int)pathlen)
            return ERR("%s: path too long", dir);
        int rc = ckpt_read(path, mc, params, teacher, adam_m, adam_v, np, st, err, errlen);
        if (rc == 0) return 0;
        if (rc == CKPT_OTHER) return rc;
        quarantine(run_dir, ups[i], moved, sizeof moved);
        fprintf(stderr, "d2v: warning: %s; moved aside to %s%s\n", err, moved,
                i + 1 < n ? ", trying the previous checkpoint" : "");
    }
    return 1;
}

void ckpt_remove_stale(const char *run_dir) {
    char root[PATH_MAX + 8];
    snprintf(root, sizeof root, "%s/ckpt", run_dir);
    DIR *d = opendir(root);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long u;
        char tail;
        if (sscanf(e->d_name, "step_%lld%c", &u, &tail) != 1) continue;
        char sub[PATH_MAX + 300];
        snprintf(sub, sizeof sub, "%s/%s", root, e->d_name);
        DIR *s = opendir(sub);
        if (!s) continue;
        struct dirent *f;
        while ((f = readdir(s)))
            if (strstr(f->d_name, ".tmp.")) {
                char p[PATH_MAX + 600];
                snprintf(p, sizeof p, "%s/%s", sub, f->d_name);
                if (unlink(p) == 0) log0("removed %s, left by an interrupted writer\n", p);
            }
        closedir(s);
        if (!is_complete(sub)) rmdir(sub); /* only if now empty */
    }
    closedir(d);
}

int ckpt_read_config(const char *path, TrainConfig *cfg, char *err, size_t errlen) {
    if (check_done(path, err, errlen)) return -1;
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
        /* every cross-key check too: the tools build a model from it */
        if (train_config_load_string(cfg, text, path, inner, sizeof inner) ||
            train_config_validate(cfg, 0, inner, sizeof inner))
            rc = ERR("%s: its configuration: %s", path, inner);
    }
    free(text);
    return rc ? -1 : 0;
}
