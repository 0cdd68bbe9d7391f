/* h5io.c: checked HDF5 reading and writing with one-line errors that name the file and object,
 * and atomic creation (temporary name, rename on commit). */
#define _POSIX_C_SOURCE 200809L
#include "d2v/h5io.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "d2v/dist.h"
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
/* HDF5's automatic error printing is per thread in thread-safe builds (Debian's is): a thread's
 * first call here silences it, so a read failing on the loader's prefetch thread reports one
 * line, not HDF5's error stack before it. */
static _Thread_local int t_silenced;

/* HDF5 1.10.8 can crash inside the call that parses a hostile file (docs/fuzzing.md §3, "HDF5's
 * own bugs"). A fault while this thread is inside an h5io call then ends the process with one
 * line naming the files d2v has open, instead of a signal and a backtrace; any other fault goes
 * to the handler that was there before (Open MPI's, or the default). Not in sanitizer builds,
 * whose own reports are the point. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define D2V_SANITIZED 1
#endif
#endif
static _Thread_local volatile sig_atomic_t t_depth; /* nesting of h5io calls on this thread */
#define H5_NOPEN 16
static struct {
    volatile hid_t id;
    char path[240];
} g_open[H5_NOPEN];
static const int g_sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL};
static struct sigaction g_old[4];

static size_t cat(char *b, size_t n, size_t cap, const char *s) {
    while (*s && n + 1 < cap)
        b[n++] = *s++;
    return n;
}
__attribute__((unused)) static void crash_handler(int sig) {
    int k = 0;
    while (k < 3 && g_sigs[k] != sig)
        k++;
    if (!t_depth) { /* not HDF5's: re-run the instruction under the previous handler */
        sigaction(sig, &g_old[k], NULL);
        return;
    }
    char b[4096];
    size_t n = cat(b, 0, sizeof b, "d2v: error: ");
    if (g_dist.initialized && g_dist.world > 1) {
        char r[16];
        int i = (int)sizeof r - 1, v = g_dist.rank;
        r[i] = 0;
        do
            r[--i] = (char)('0' + v % 10), v /= 10;
        while (v && i > 0);
        n = cat(b, cat(b, cat(b, n, sizeof b, "[rank "), sizeof b, r + i), sizeof b, "] ");
    }
    const char *name = sig == SIGSEGV  ? "SIGSEGV"
                       : sig == SIGBUS ? "SIGBUS"
                       : sig == SIGFPE ? "SIGFPE"
                                       : "SIGILL";
    n = cat(b, cat(b, cat(b, n, sizeof b, "the HDF5 library crashed ("), sizeof b, name), sizeof b,
            ") parsing ");
    int any = 0;
    for (int i = 0; i < H5_NOPEN; i++)
        if (g_open[i].id > 0) {
            if (any++) n = cat(b, n, sizeof b, " or ");
            n = cat(b, n, sizeof b, g_open[i].path);
        }
    if (!any) n = cat(b, n, sizeof b, "a file");
    n = cat(b, n, sizeof b,
            ": its metadata is damaged or hostile, and HDF5 1.10.8 does not survive it "
            "(docs/fuzzing.md)\n");
    ssize_t w = write(2, b, n);
    (void)w;
    _exit(1);
}
static void crash_install(void) {
#if !defined(__SANITIZE_ADDRESS__) && !defined(D2V_SANITIZED)
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = crash_handler;
    sigemptyset(&sa.sa_mask);
    for (int k = 0; k < 4; k++)
        sigaction(g_sigs[k], &sa, &g_old[k]);
#endif
}
static pthread_once_t g_crash_once = PTHREAD_ONCE_INIT;
static void open_note(hid_t id, const char *path) {
    for (int i = 0; i < H5_NOPEN; i++)
        if (g_open[i].id <= 0) {
            g_open[i].id = 0;
            snprintf(g_open[i].path, sizeof g_open[i].path, "%s", path);
            g_open[i].id = id;
            return;
        }
}
static void open_forget(hid_t id) {
    for (int i = 0; i < H5_NOPEN; i++)
        if (g_open[i].id == id) g_open[i].id = 0;
}

static int guard_take(void) {
    pthread_once(&g_mu_once, mu_init);
    pthread_once(&g_crash_once, crash_install);
    pthread_mutex_lock(&g_mu);
    t_depth++;
    if (!t_silenced) H5Eset_auto2(H5E_DEFAULT, NULL, NULL), t_silenced = 1;
    return 0;
}
static void guard_release(int *unused) {
    (void)unused;
    t_depth--;
    pthread_mutex_unlock(&g_mu);
}
#define LOCKED int guard_ __attribute__((cleanup(guard_release), unused)) = guard_take()

void h5io_init(void) { LOCKED; /* silences this thread */ }

static int fail(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && n) vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- writing ---- */

/* die() while an output is open: its temporary file must not stay behind to fill the disk */
static void remove_tmp(void *arg) {
    H5Out *o = arg;
    unlink(o->tmp);
    if (o->file >= 0) H5Fclose(o->file); /* its writes fail: HDF5 must not retry them at exit */
    o->file = -1;
}

/* The directory part of path ("." when there is none), into buf. */
static const char *dir_of(const char *path, char *buf, size_t n) {
    const char *slash = strrchr(path, '/');
    if (!slash) return snprintf(buf, n, "."), buf;
    snprintf(buf, n, "%.*s", (int)(slash - path) + (slash == path), path);
    return buf;
}

/* The file an HDF5 object lives in, for error messages. */
static const char *file_of(hid_t loc, char *buf, size_t n) {
    if (H5Fget_name(loc, buf, n) <= 0) snprintf(buf, n, "(HDF5 file)");
    return buf;
}

void h5out_create(H5Out *o, const char *path) {
    LOCKED;
    h5io_init();
    memset(o, 0, sizeof *o);
    if (snprintf(o->path, sizeof o->path, "%s", path) >= (int)sizeof o->path ||
        snprintf(o->tmp, sizeof o->tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof o->tmp)
        die("%s: path too long", path);
    /* the 1.8 file format at least: its superblock, object headers and B-trees carry checksums,
     * so HDF5 refuses damaged metadata instead of returning wrong values (docs/reliability.md) */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
    o->file = H5Fcreate(o->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (o->file < 0)
        die("%s: cannot create (%s)", o->tmp,
            access(dir_of(o->tmp, o->dir, sizeof o->dir), W_OK) ? "the directory is not writable"
                                                                : "disk full?");
    o->cleanup = die_cleanup_push(remove_tmp, o);
}

void h5out_commit(H5Out *o) {
    LOCKED;
    if (H5Fclose(o->file) < 0) die("%s: cannot close (disk full?)", o->tmp);
    o->file = -1;
    if (fsync_path(o->tmp) != 0) die("%s: cannot sync to disk (%s)", o->tmp, strerror(errno));
    if (rename(o->tmp, o->path) != 0) die("%s: cannot rename to %s", o->tmp, o->path);
    die_cleanup_pop(o->cleanup);
    if (fsync_path(dir_of(o->path, o->dir, sizeof o->dir)) != 0)
        die("%s: cannot sync the directory of %s (%s)", o->dir, o->path, strerror(errno));
}

void h5out_abort(H5Out *o) {
    LOCKED;
    if (o->file >= 0) H5Fclose(o->file);
    o->file = -1;
    unlink(o->tmp);
    die_cleanup_pop(o->cleanup);
}

static void attr_write(hid_t obj, const char *name, hid_t type, const void *v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    char f[PATH_MAX];
    if (a < 0 || H5Awrite(a, type, v) < 0)
        die("%s: cannot write attribute %s (disk full?)", file_of(obj, f, sizeof f), name);
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
    char f[PATH_MAX];
    if (d < 0) die("%s: cannot create dataset %s (disk full?)", file_of(loc, f, sizeof f), name);
    if (!empty && H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
        die("%s: cannot write dataset %s (disk full?)", file_of(loc, f, sizeof f), name);
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
    char f[PATH_MAX];
    if (a->dset < 0) die("%s: cannot create dataset %s", file_of(loc, f, sizeof f), name);
    H5Pclose(dcpl), H5Sclose(space);
}

void h5_append(H5Append *a, const void *rows, hsize_t nrows) {
    LOCKED;
    if (nrows == 0) return;
    hsize_t start[4] = {a->dims[0], 0, 0, 0}, count[4];
    for (int i = 0; i < a->rank; i++)
        count[i] = i ? a->dims[i] : nrows;
    a->dims[0] += nrows;
    char f[PATH_MAX];
    if (H5Dset_extent(a->dset, a->dims) < 0)
        die("%s: cannot extend dataset %s (disk full?)", file_of(a->dset, f, sizeof f), a->name);
    hid_t fs = H5Dget_space(a->dset), ms = H5Screate_simple(a->rank, count, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
    if (H5Dwrite(a->dset, a->type, ms, fs, H5P_DEFAULT, rows) < 0)
        die("%s: cannot append to dataset %s (disk full?)", file_of(a->dset, f, sizeof f), a->name);
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
    open_note(1, path); /* a placeholder id until H5Fopen returns: it parses, and can crash */
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    open_forget(1);
    if (f < 0) return fail(err, errlen, "%s: cannot open as HDF5 (truncated or corrupt?)", path);
    open_note(f, path);
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
        } else if (H5Tget_size(t) <= H5_MAX_ATTR_STR) { /* a damaged size never allocates */
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

int h5_dataset_info(hid_t loc, const char *path, const char *name, H5Info *info, char *err,
                    size_t errlen) {
    LOCKED;
    memset(info, 0, sizeof *info);
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0)
        return fail(err, errlen, "%s: missing dataset '%s'", path, name);
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return fail(err, errlen, "%s: '%s' is not a dataset", path, name);
    hid_t s = H5Dget_space(d), t = H5Dget_type(d), dcpl = H5Dget_create_plist(d);
    int rc = 0, r = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
    if (r < 0 || r > 4 || t < 0 || dcpl < 0) {
        rc = fail(err, errlen, "%s: dataset '%s' has unsupported rank %d or is unreadable", path,
                  name, r);
    } else {
        info->rank = r;
        H5Sget_simple_extent_dims(s, info->dims, NULL);
        info->cls = (int)H5Tget_class(t);
        info->size = H5Tget_size(t);
        info->is_signed = info->cls == H5T_INTEGER && H5Tget_sign(t) == H5T_SGN_2;
        /* The declared elements must be in the file: HDF5 reads unwritten chunks, external or
         * virtual storage as fill values, so a damaged extent would pass for data (and size
         * allocations). Compressed data may be smaller, but deflate shrinks at most 1032:1. */
        double raw = (double)info->size;
        for (int i = 0; i < r; i++)
            raw *= (double)info->dims[i];
        double stored = (double)H5Dget_storage_size(d);
        int filtered = H5Pget_nfilters(dcpl) > 0;
        /* HDF5 sizes its conversion and chunk buffers by these: a damaged type or layout
         * message would make it allocate gigabytes (found by tests/fuzz/fuzz_ckpt) */
        double chunk = (double)info->size;
        hsize_t cd[4] = {0};
        int cr = H5Pget_layout(dcpl) == H5D_CHUNKED ? H5Pget_chunk(dcpl, 4, cd) : 0;
        for (int i = 0; i < cr && i < 4; i++)
            chunk *= (double)cd[i];
        if (H5Pget_external_count(dcpl) > 0 || H5Pget_layout(dcpl) == H5D_VIRTUAL)
            rc = fail(err, errlen, "%s: dataset '%s' keeps its data outside the file", path, name);
        else if (info->size == 0 || info->size > H5_MAX_ELEMENT)
            rc = fail(err, errlen, "%s: dataset '%s' has elements of %zu bytes (damaged?)", path,
                      name, info->size);
        else if (cr < 0 || cr > 4 || chunk > (double)H5_MAX_CHUNK)
            rc = fail(err, errlen, "%s: dataset '%s' has chunks of %.0f bytes (damaged?)", path,
                      name, chunk);
        else if (raw > 0 && (filtered ? raw > 1032.0 * stored : raw > stored))
            rc = fail(err, errlen,
                      "%s: dataset '%s' declares %.0f bytes but the file stores %.0f of them "
                      "(truncated or damaged)",
                      path, name, raw, stored);
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    if (t >= 0) H5Tclose(t);
    if (s >= 0) H5Sclose(s);
    H5Dclose(d);
    return rc;
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
            rc = fail(err, errlen,
                      "%s: cannot read rows %llu..%llu of '%s' (damaged or truncated file?)", path,
                      (unsigned long long)start, (unsigned long long)(start + count), name);
        H5Sclose(ms);
    }
    H5Sclose(fs), H5Dclose(d);
    return rc;
}

/* ---- variable-length strings: their global heaps checked first ----
 * A variable-length string is stored as (length, address of a global heap collection, object
 * index); the collection holds the bytes. HDF5 1.10 trusts collections and references: it loops
 * for ever on a collection whose walk does not advance (a free-space object of size 0), reads
 * past the collection for an object size that overruns it, and reads outside its object table,
 * or copies an object into a buffer of the reference's length, for a reference to an index it
 * does not have or to an object of another size (all found by tests/fuzz). So before HDF5 reads
 * any, the dataset's references are read raw and checked against the collections they name,
 * each walked here as HDF5's H5HG__cache_heap_deserialize walks it. d2v and h5py write string
 * datasets contiguous; other layouts are refused. */

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

typedef struct {
    uint64_t addr;
    int64_t *size; // (65536) object size by index, -1: no such object
} HeapTable;

/* Walk the collection at addr of a file of fsize bytes (ss: the file's length size) into
 * h->size: 0 when HDF5 can walk it. */
static int heap_walk(int fd, uint64_t addr, uint64_t fsize, int ss, HeapTable *h) {
    uint8_t hd[16];
    size_t hdr = (size_t)(4 + 1 + 3 + ss + 7) / 8 * 8, objhdr = (size_t)(2 + 2 + 4 + ss);
    if (addr >= fsize || fsize - addr < hdr ||
        pread(fd, hd, (size_t)(8 + ss), (off_t)addr) != 8 + ss)
        return -1;
    uint64_t size = le(hd + 8, ss);
    if (memcmp(hd, "GCOL", 4) || hd[4] != 1 || size < hdr || size > fsize - addr) return -1;
    uint8_t *c = malloc((size_t)size);
    int rc = c && pread(fd, c, (size_t)size, (off_t)addr) == (ssize_t)size ? 0 : -1;
    for (int i = 0; i < 65536; i++)
        h->size[i] = -1;
    h->addr = addr;
    for (uint64_t p = hdr; rc == 0 && p + objhdr <= size;) {
        unsigned idx = (unsigned)le(c + p, 2);
        uint64_t osize = le(c + p + 8, ss);
        uint64_t need = idx ? objhdr + (osize + 7) / 8 * 8 : osize;
        if (osize > size || need == 0 || need > size - p) rc = -1;
        if (idx) h->size[idx] = (int64_t)osize;
        p += need;
    }
    free(c);
    return rc;
}

/* Every reference of the n strings of contiguous dataset d: to an object of its collection of
 * exactly the string's length, in a collection HDF5 can walk. */
static int vlen_heaps_ok(hid_t d, const char *path, const char *name, hsize_t n, char *err,
                         size_t errlen) {
    hid_t dcpl = H5Dget_create_plist(d);
    H5D_layout_t layout = dcpl >= 0 ? H5Pget_layout(dcpl) : H5D_LAYOUT_ERROR;
    if (dcpl >= 0) H5Pclose(dcpl);
    if (layout != H5D_CONTIGUOUS)
        return fail(err, errlen, "%s: string dataset '%s' is not stored contiguously", path, name);
    haddr_t off = H5Dget_offset(d);
    if (n == 0 || off == HADDR_UNDEF) return 0; /* nothing written: no heap is read */
    hid_t f = H5Iget_file_id(d), fcpl = f >= 0 ? H5Fget_create_plist(f) : -1;
    size_t sa = 0, ss = 0;
    char fname[PATH_MAX] = "";
    if (fcpl >= 0) H5Pget_sizes(fcpl, &sa, &ss);
    if (f >= 0) H5Fget_name(f, fname, sizeof fname);
    if (fcpl >= 0) H5Pclose(fcpl);
    if (f >= 0) H5Fclose(f);
    if ((sa != 4 && sa != 8) || (ss != 4 && ss != 8))
        return fail(err, errlen, "%s: unsupported HDF5 address or length size", path);
    int fd = open(fname, O_RDONLY);
    if (fd < 0) return 0; /* not a file on disk: nothing to check it against */
    struct stat st;
    uint64_t fsize = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    size_t es = 4 + sa + 4;
    enum { BLOCK = 4096, CACHED = 4 };
    uint8_t *raw = malloc(BLOCK * es);
    HeapTable h[CACHED] = {{0}};
    int nh = 0, rc = raw ? 0 : fail(err, errlen, "%s: out of memory", path);
    for (hsize_t at = 0; rc == 0 && at < n; at += BLOCK) {
        size_t m = n - at < BLOCK ? (size_t)(n - at) : BLOCK;
        if (pread(fd, raw, m * es, (off_t)(off + at * es)) != (ssize_t)(m * es))
            rc = fail(err, errlen, "%s: cannot read string dataset '%s' (truncated?)", path, name);
        for (size_t i = 0; rc == 0 && i < m; i++) {
            const uint8_t *e = raw + i * es;
            uint64_t len = le(e, 4), addr = le(e + 4, (int)sa), idx = le(e + 4 + sa, 4);
            if (addr == 0) continue; /* no heap object (HDF5 reads none) */
            HeapTable *t = NULL;
            for (int k = 0; k < nh && !t; k++)
                if (h[k].addr == addr) t = &h[k];
            if (!t) { /* walk it, into a free slot or over the oldest */
                t = &h[nh < CACHED ? nh++ : (int)(at / BLOCK + i) % CACHED];
                if (!t->size && !(t->size = malloc(sizeof(int64_t) * 65536))) {
                    rc = fail(err, errlen, "%s: out of memory", path);
                    break;
                }
                if (heap_walk(fd, addr, fsize, (int)ss, t) != 0) {
                    t->addr = 0;
                    rc = fail(err, errlen,
                              "%s: string dataset '%s' points into a damaged global heap at byte "
                              "%llu (the file is damaged)",
                              path, name, (unsigned long long)addr);
                    break;
                }
            }
            if (idx == 0 || idx > 65535 || t->size[idx] != (int64_t)len)
                rc = fail(err, errlen,
                          "%s: string %llu of '%s' refers to heap object %llu, which is not one "
                          "of %llu bytes (the file is damaged)",
                          path, (unsigned long long)(at + i), name, (unsigned long long)idx,
                          (unsigned long long)len);
        }
    }
    for (int k = 0; k < CACHED; k++)
        free(h[k].size);
    free(raw);
    close(fd);
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
    int is_vlen = H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0;
    H5Tclose(ft);
    if (!is_vlen || vlen_heaps_ok(d, path, name, dims[0], err, errlen) < 0) {
        if (!is_vlen) fail(err, errlen, "%s: '%s' should hold variable-length strings", path, name);
        H5Tclose(t), H5Dclose(d);
        return NULL;
    }
    char **tmp = calloc(dims[0] ? dims[0] : 1, sizeof(char *));
    char **out = calloc(dims[0] ? dims[0] : 1, sizeof(char *));
    if (!tmp || !out || (dims[0] && H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, tmp) < 0)) {
        fail(err, errlen, "%s: cannot read strings '%s'", path, name);
        for (hsize_t i = 0; tmp && i < dims[0]; i++) /* a read failing midway converted some */
            if (tmp[i]) H5free_memory(tmp[i]);
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
        H5Fclose(id), open_forget(id);
    else if (H5Iget_type(id) == H5I_GROUP)
        H5Gclose(id);
    else
        H5Oclose(id);
}

int h5_attr_exists(hid_t obj, const char *name) {
    LOCKED;
    return H5Aexists(obj, name) > 0;
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
