/* h5io.c: checked HDF5 reading and writing with one-line errors that name the file and object,
 * and atomic creation (temporary name, rename on commit). */
#define _POSIX_C_SOURCE 200809L
#include "d2v/h5io.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "d2v/util.h"

/* The loader's prefetch thread reads while the main thread writes checkpoints, and an HDF5 built
 * without thread safety must never see two calls at once: every function here holds this lock
 * for its whole body (recursive, since some call others), so no caller ever takes it. (The
 * H5T_NATIVE_* macros callers pass still call H5open outside it: harmless once the library is
 * open, which h5io_init does first.) */
static pthread_mutex_t g_mu;
static pthread_once_t g_mu_once = PTHREAD_ONCE_INIT;
static void mu_init(void) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&g_mu, &a);
    pthread_mutexattr_destroy(&a);
}
static int guard_take(void) {
    pthread_once(&g_mu_once, mu_init);
    pthread_mutex_lock(&g_mu);
    return 0;
}
static void guard_release(int *unused) {
    (void)unused;
    pthread_mutex_unlock(&g_mu);
}
#define LOCKED int guard_ __attribute__((cleanup(guard_release), unused)) = guard_take()

void h5io_init(void) {
    LOCKED;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static int fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && n) vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- writing ---- */

void h5out_create(H5Out *o, const char *path) {
    LOCKED;
    h5io_init();
    memset(o, 0, sizeof *o);
    if (snprintf(o->path, sizeof o->path, "%s", path) >= (int)sizeof o->path ||
        snprintf(o->tmp, sizeof o->tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof o->tmp)
        die("%s: path too long", path);
    o->file = H5Fcreate(o->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (o->file < 0) die("%s: cannot create (is the directory writable?)", o->tmp);
}

void h5out_commit(H5Out *o) {
    LOCKED;
    if (H5Fclose(o->file) < 0) die("%s: cannot close (disk full?)", o->tmp);
    o->file = -1;
    if (rename(o->tmp, o->path) != 0) die("%s: cannot rename to %s", o->tmp, o->path);
}

void h5out_abort(H5Out *o) {
    LOCKED;
    if (o->file >= 0) H5Fclose(o->file);
    o->file = -1;
    unlink(o->tmp);
}

static void attr_write(hid_t obj, const char *name, hid_t type, const void *v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, type, v) < 0) die("HDF5: cannot write attribute %s", name);
    H5Aclose(a), H5Sclose(space);
}

void h5_attr_i64(hid_t obj, const char *name, int64_t v) {
    LOCKED;
    attr_write(obj, name, H5T_NATIVE_INT64, &v);
}
void h5_attr_i32(hid_t obj, const char *name, int32_t v) {
    LOCKED;
    attr_write(obj, name, H5T_NATIVE_INT32, &v);
}

void h5_attr_str(hid_t obj, const char *name, const char *v) {
    LOCKED;
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    H5Tset_cset(t, H5T_CSET_UTF8);
    attr_write(obj, name, t, v);
    H5Tclose(t);
}

void h5_write_root_attrs(hid_t file, const char *modality, const char *kind, int64_t num_samples,
                         const char *created_by) {
    LOCKED;
    h5_attr_i32(file, "format_version", D2V_FORMAT_VERSION);
    h5_attr_str(file, "modality", modality);
    h5_attr_str(file, "kind", kind);
    h5_attr_i64(file, "num_samples", num_samples);
    h5_attr_str(file, "created_by", created_by);
}

void h5_write(hid_t loc, const char *name, hid_t type, int rank, const hsize_t *dims,
              const hsize_t *chunk, const void *data) {
    LOCKED;
    hid_t space = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    int empty = 0;
    for (int i = 0; i < rank; i++)
        empty |= dims[i] == 0;
    if (chunk && !empty) H5Pset_chunk(dcpl, rank, chunk);
    hid_t d = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d < 0) die("HDF5: cannot create dataset %s", name);
    if (!empty && H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        die("HDF5: cannot write dataset %s (disk full?)", name);
    H5Dclose(d), H5Pclose(dcpl), H5Sclose(space);
}

static hid_t vlen_string_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

void h5_write_strings(hid_t loc, const char *name, const char *const *s, size_t n) {
    LOCKED;
    hid_t t = vlen_string_type();
    hsize_t dims[1] = {n};
    h5_write(loc, name, t, 1, dims, NULL, s);
    H5Tclose(t);
}

void h5_append_open(H5Append *a, hid_t loc, const char *name, hid_t type, int rank,
                    const hsize_t *inner_dims, hsize_t chunk_rows, int deflate) {
    LOCKED;
    memset(a, 0, sizeof *a);
    if (rank < 1 || rank > 4) die("HDF5: dataset %s: rank %d unsupported", name, rank);
    snprintf(a->name, sizeof a->name, "%s", name);
    a->type = type, a->rank = rank;
    hsize_t max[4], chunk[4];
    for (int i = 0; i < rank; i++) {
        a->dims[i] = i ? inner_dims[i - 1] : 0;
        max[i] = i ? inner_dims[i - 1] : H5S_UNLIMITED;
        chunk[i] = i ? inner_dims[i - 1] : (chunk_rows ? chunk_rows : 1);
    }
    hid_t space = H5Screate_simple(rank, a->dims, max);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, rank, chunk);
    if (deflate > 0) H5Pset_shuffle(dcpl), H5Pset_deflate(dcpl, (unsigned)deflate);
    a->dset = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (a->dset < 0) die("HDF5: cannot create dataset %s", name);
    H5Pclose(dcpl), H5Sclose(space);
}

void h5_append(H5Append *a, const void *rows, hsize_t nrows) {
    LOCKED;
    if (nrows == 0) return;
    hsize_t start[4] = {a->dims[0], 0, 0, 0}, count[4];
    for (int i = 0; i < a->rank; i++)
        count[i] = i ? a->dims[i] : nrows;
    a->dims[0] += nrows;
    if (H5Dset_extent(a->dset, a->dims) < 0) die("HDF5: cannot extend dataset %s", a->name);
    hid_t fs = H5Dget_space(a->dset), ms = H5Screate_simple(a->rank, count, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (H5Dwrite(a->dset, a->type, ms, fs, H5P_DEFAULT, rows) < 0)
        die("HDF5: cannot append to dataset %s (disk full?)", a->name);
    H5Sclose(ms), H5Sclose(fs);
}

void h5_append_close(H5Append *a) {
    LOCKED;
    if (a->dset >= 0) H5Dclose(a->dset);
    a->dset = -1;
}

/* ---- reading ---- */

hid_t h5_open_ro(const char *path, char *err, size_t errlen) {
    LOCKED;
    h5io_init();
    if (access(path, R_OK) != 0) return fail(err, errlen, "%s: no such file or not readable", path);
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0) return fail(err, errlen, "%s: not an HDF5 file (or truncated)", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return fail(err, errlen, "%s: cannot open as HDF5 (truncated or corrupt?)", path);
    return f;
}

/* Attributes d2v reads are single values: an array would overflow the destination. */
static int attr_is_scalar(hid_t a) {
    hid_t sp = H5Aget_space(a);
    hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    if (sp >= 0) H5Sclose(sp);
    return n == 1;
}

int h5_read_attr_i64(hid_t obj, const char *path, const char *name, int64_t *v, char *err,
                     size_t errlen) {
    LOCKED;
    if (H5Aexists(obj, name) <= 0)
        return fail(err, errlen, "%s: missing attribute '%s'", path, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = H5Aget_type(a);
    int ok = a >= 0 && attr_is_scalar(a) && H5Tget_class(t) == H5T_INTEGER &&
             H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    H5Tclose(t), H5Aclose(a);
    return ok ? 0 : fail(err, errlen, "%s: attribute '%s' is not a single integer", path, name);
}

int h5_read_attr_str(hid_t obj, const char *path, const char *name, char *buf, size_t buflen,
                     char *err, size_t errlen) {
    LOCKED;
    if (H5Aexists(obj, name) <= 0)
        return fail(err, errlen, "%s: missing attribute '%s'", path, name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t t = H5Aget_type(a);
    int ok = 0;
    if (H5Tget_class(t) == H5T_STRING && attr_is_scalar(a)) {
        if (H5Tis_variable_str(t) > 0) {
            char *s = NULL;
            hid_t mt = vlen_string_type(); /* HDF5 converts between no two character sets */
            H5Tset_cset(mt, H5Tget_cset(t));
            if (H5Aread(a, mt, &s) >= 0 && s) {
                snprintf(buf, buflen, "%s", s);
                H5free_memory(s);
                ok = 1;
            }
            H5Tclose(mt);
        } else {
            size_t n = H5Tget_size(t);
            char *s = calloc(n + 1, 1);
            hid_t mt = H5Tcopy(H5T_C_S1);
            H5Tset_size(mt, n + 1);
            H5Tset_cset(mt, H5Tget_cset(t));
            if (s && H5Aread(a, mt, s) >= 0) snprintf(buf, buflen, "%s", s), ok = 1;
            H5Tclose(mt), free(s);
        }
    }
    H5Tclose(t), H5Aclose(a);
    return ok ? 0 : fail(err, errlen, "%s: attribute '%s' is not a single string", path, name);
}

int h5_dataset_shape(hid_t loc, const char *path, const char *name, int *rank, hsize_t dims[4],
                     char *err, size_t errlen) {
    LOCKED;
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0)
        return fail(err, errlen, "%s: missing dataset '%s'", path, name);
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return fail(err, errlen, "%s: '%s' is not a dataset", path, name);
    hid_t s = H5Dget_space(d);
    int r = H5Sget_simple_extent_ndims(s);
    if (r < 0 || r > 4) {
        H5Sclose(s), H5Dclose(d);
        return fail(err, errlen, "%s: dataset '%s' has unsupported rank %d", path, name, r);
    }
    H5Sget_simple_extent_dims(s, dims, NULL);
    *rank = r;
    H5Sclose(s), H5Dclose(d);
    return 0;
}

int h5_read_rows(hid_t loc, const char *path, const char *name, hid_t type, hsize_t start,
                 hsize_t count, void *buf, char *err, size_t errlen) {
    LOCKED;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return fail(err, errlen, "%s: missing dataset '%s'", path, name);
    hid_t fs = H5Dget_space(d);
    int r = H5Sget_simple_extent_ndims(fs);
    hsize_t dims[4] = {0}, off[4] = {0}, cnt[4];
    if (r < 1 || r > 4) {
        H5Sclose(fs), H5Dclose(d);
        return fail(err, errlen, "%s: dataset '%s' has unsupported rank %d", path, name, r);
    }
    H5Sget_simple_extent_dims(fs, dims, NULL);
    int rc = 0;
    if (start + count > dims[0]) {
        rc = fail(err, errlen, "%s: dataset '%s' has %llu rows, asked for rows %llu..%llu", path,
                  name, (unsigned long long)dims[0], (unsigned long long)start,
                  (unsigned long long)(start + count));
    } else if (count > 0) {
        off[0] = start;
        for (int i = 0; i < r; i++)
            cnt[i] = i ? dims[i] : count;
        hid_t ms = H5Screate_simple(r, cnt, NULL);
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, off, NULL, cnt, NULL);
        if (H5Dread(d, type, ms, fs, H5P_DEFAULT, buf) < 0)
            rc = fail(err, errlen, "%s: cannot read rows %llu..%llu of '%s' (truncated file?)",
                      path, (unsigned long long)start, (unsigned long long)(start + count), name);
        H5Sclose(ms);
    }
    H5Sclose(fs), H5Dclose(d);
    return rc;
}

char **h5_read_strings(hid_t loc, const char *path, const char *name, size_t *n, char *err,
                       size_t errlen) {
    LOCKED;
    int rank;
    hsize_t dims[4];
    if (h5_dataset_shape(loc, path, name, &rank, dims, err, errlen) < 0) return NULL;
    if (rank != 1) {
        fail(err, errlen, "%s: '%s' should be a 1-D string dataset", path, name);
        return NULL;
    }
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    hid_t t = vlen_string_type(), ft = H5Dget_type(d);
    H5Tset_cset(t, H5Tget_cset(ft));
    H5Tclose(ft);
    char **tmp = calloc(dims[0] ? dims[0] : 1, sizeof(char *));
    char **out = calloc(dims[0] ? dims[0] : 1, sizeof(char *));
    if (!tmp || !out || (dims[0] && H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, tmp) < 0)) {
        fail(err, errlen, "%s: cannot read strings '%s'", path, name);
        free(tmp), free(out), H5Tclose(t), H5Dclose(d);
        return NULL;
    }
    for (hsize_t i = 0; i < dims[0]; i++) {
        out[i] = strdup(tmp[i] ? tmp[i] : "");
        if (tmp[i]) H5free_memory(tmp[i]);
    }
    free(tmp), H5Tclose(t), H5Dclose(d);
    *n = dims[0];
    return out;
}

void h5_free_strings(char **s, size_t n) {
    if (!s) return;
    for (size_t i = 0; i < n; i++)
        free(s[i]);
    free(s);
}

void h5_close(hid_t id) {
    LOCKED;
    if (id < 0) return;
    if (H5Iget_type(id) == H5I_FILE)
        H5Fclose(id);
    else if (H5Iget_type(id) == H5I_GROUP)
        H5Gclose(id);
    else
        H5Oclose(id);
}

int h5_exists(hid_t loc, const char *name) {
    LOCKED;
    return H5Lexists(loc, name, H5P_DEFAULT) > 0;
}

hid_t h5_group_create(hid_t loc, const char *name) {
    LOCKED;
    hid_t g = H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) die("HDF5: cannot create group /%s", name);
    return g;
}

typedef struct {
    hid_t dst;
    const char *const *skip;
} CopyAttrs;

static herr_t copy_attr(hid_t src, const char *name, const H5A_info_t *info, void *ctx) {
    (void)info;
    const CopyAttrs *c = ctx;
    for (int i = 0; c->skip && c->skip[i]; i++)
        if (!strcmp(name, c->skip[i])) return 0;
    hid_t a = H5Aopen(src, name, H5P_DEFAULT), t = H5Aget_type(a), s = H5Aget_space(a);
    hssize_t np = H5Sget_simple_extent_npoints(s);
    size_t n = H5Tget_size(t) * (size_t)(np > 0 ? np : 1);
    void *buf = xalloc(n, "attribute copy");
    hid_t b = H5Acreate2(c->dst, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    if (H5Aread(a, t, buf) < 0 || b < 0 || H5Awrite(b, t, buf) < 0)
        die("HDF5: cannot copy attribute %s", name);
    free(buf);
    H5Aclose(b), H5Sclose(s), H5Tclose(t), H5Aclose(a);
    return 0;
}

void h5_copy_attrs(hid_t dst, hid_t src, const char *const *skip) {
    LOCKED;
    CopyAttrs c = {dst, skip};
    hsize_t idx = 0;
    H5Aiterate2(src, H5_INDEX_NAME, H5_ITER_INC, &idx, copy_attr, &c);
}

typedef struct {
    char (*names)[64];
    int max, n;
} ListLinks;

static herr_t list_link(hid_t loc, const char *name, const H5L_info_t *info, void *ctx) {
    (void)loc, (void)info;
    ListLinks *l = ctx;
    if (l->n < l->max) snprintf(l->names[l->n], sizeof l->names[0], "%s", name);
    l->n++;
    return 0;
}

int h5_list(hid_t loc, const char *path, char (*names)[64], int max, char *err, size_t errlen) {
    LOCKED;
    ListLinks l = {names, max, 0};
    hsize_t idx = 0;
    if (H5Literate(loc, H5_INDEX_NAME, H5_ITER_INC, &idx, list_link, &l) < 0)
        return fail(err, errlen, "%s: cannot list its objects", path);
    return l.n;
}

int h5_dataset_class(hid_t loc, const char *name) {
    LOCKED;
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) return -1;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT); /* fails quietly on a group */
    hid_t t = d >= 0 ? H5Dget_type(d) : -1;
    int c = t >= 0 ? (int)H5Tget_class(t) : -1;
    if (t >= 0) H5Tclose(t);
    if (d >= 0) H5Dclose(d);
    return c;
}
