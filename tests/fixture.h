/* fixture.h: HDF5 fixture loading (shape-checked datasets, scalar attributes) and the
 * max-scaled tensor comparison shared by the PyTorch parity tests. */
#ifndef D2V_TEST_FIXTURE_H
#define D2V_TEST_FIXTURE_H

#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "d2v/util.h"

/* One open group of a fixture file; path doubles as its make target in error messages. */
typedef struct {
    hid_t file, group;
    const char *path, *name;
} Fixture;

static inline void fx_fail(const Fixture *fx, const char *what, const char *item) {
    H5Eprint2(H5E_DEFAULT, stderr);
    die("fixture %s: group \"%s\": %s \"%s\" (regenerate with `make %s`)", fx->path,
        fx->name ? fx->name : "/", what, item, fx->path);
}

/// Open the fixture file read-only (HDF5's own error printing off: failures name the item).
static inline hid_t fx_open(const char *path) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        H5Eprint2(H5E_DEFAULT, stderr);
        die("cannot open fixture %s (build it with `make %s`)", path, path);
    }
    return file;
}

/// Open group `name` of an open fixture file; close with fx_close.
static inline Fixture fx_group(hid_t file, const char *path, const char *name) {
    Fixture fx = {file, -1, path, name};
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0) fx_fail(&fx, "missing group", name);
    fx.group = H5Gopen2(file, name, H5P_DEFAULT);
    if (fx.group < 0) fx_fail(&fx, "cannot open group", name);
    return fx;
}

static inline void fx_close(Fixture *fx) {
    if (fx->group >= 0) H5Gclose(fx->group);
    fx->group = -1;
}

/// Read dataset `name` of the open group, requiring exactly the shape dims[0..ndims). Returns a
/// malloc'd buffer of elem bytes per element, read as the in-memory type `mtype`.
static inline void *fx_load(const Fixture *fx, const char *name, hid_t mtype, size_t elem,
                            int ndims, const hsize_t *dims) {
    if (H5Lexists(fx->group, name, H5P_DEFAULT) <= 0) fx_fail(fx, "missing dataset", name);
    hid_t d = H5Dopen2(fx->group, name, H5P_DEFAULT);
    if (d < 0) fx_fail(fx, "cannot open dataset", name);
    hid_t s = H5Dget_space(d);
    hsize_t got[H5S_MAX_RANK];
    int nd = s < 0 ? -1 : H5Sget_simple_extent_ndims(s);
    if (nd < 0 || nd > H5S_MAX_RANK || H5Sget_simple_extent_dims(s, got, NULL) < 0)
        fx_fail(fx, "cannot read the shape of dataset", name);
    int same = nd == ndims;
    for (int i = 0; same && i < nd; i++)
        same = got[i] == dims[i];
    if (!same) {
        char want_s[128] = "", got_s[128] = "";
        for (int i = 0; i < ndims; i++)
            snprintf(want_s + strlen(want_s), sizeof want_s - strlen(want_s), "%s%llu",
                     i ? "," : "", (unsigned long long)dims[i]);
        for (int i = 0; i < nd; i++)
            snprintf(got_s + strlen(got_s), sizeof got_s - strlen(got_s), "%s%llu", i ? "," : "",
                     (unsigned long long)got[i]);
        die("fixture %s: group \"%s\": dataset \"%s\" has shape (%s), expected (%s)", fx->path,
            fx->name, name, got_s, want_s);
    }
    size_t n = 1;
    for (int i = 0; i < ndims; i++)
        n *= (size_t)dims[i];
    void *buf = xalloc(n * elem + 1, name);
    if (H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        fx_fail(fx, "cannot read dataset", name);
    H5Sclose(s), H5Dclose(d);
    return buf;
}

static inline float *fx_load_f32(const Fixture *fx, const char *name, int ndims,
                                 const hsize_t *dims) {
    return fx_load(fx, name, H5T_NATIVE_FLOAT, sizeof(float), ndims, dims);
}

static inline int32_t *fx_load_i32(const Fixture *fx, const char *name, int ndims,
                                   const hsize_t *dims) {
    return fx_load(fx, name, H5T_NATIVE_INT32, sizeof(int32_t), ndims, dims);
}

static inline uint8_t *fx_load_u8(const Fixture *fx, const char *name, int ndims,
                                  const hsize_t *dims) {
    return fx_load(fx, name, H5T_NATIVE_UINT8, 1, ndims, dims);
}

/// Length of the 1-D dataset `name` (for lists whose size the fixture chooses).
static inline hsize_t fx_len(const Fixture *fx, const char *name) {
    if (H5Lexists(fx->group, name, H5P_DEFAULT) <= 0) fx_fail(fx, "missing dataset", name);
    hid_t d = H5Dopen2(fx->group, name, H5P_DEFAULT);
    if (d < 0) fx_fail(fx, "cannot open dataset", name);
    hid_t s = H5Dget_space(d);
    hsize_t n = 0;
    if (s < 0 || H5Sget_simple_extent_ndims(s) != 1 || H5Sget_simple_extent_dims(s, &n, NULL) < 0)
        fx_fail(fx, "expected a 1-D dataset", name);
    H5Sclose(s), H5Dclose(d);
    return n;
}

/// Scalar attribute of the group, read as a double.
static inline double fx_attr(const Fixture *fx, const char *name) {
    if (H5Aexists(fx->group, name) <= 0) fx_fail(fx, "missing attribute", name);
    hid_t a = H5Aopen(fx->group, name, H5P_DEFAULT);
    double v = 0;
    if (a < 0 || H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0) fx_fail(fx, "cannot read attribute", name);
    H5Aclose(a);
    return v;
}

static inline double fx_max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m) m = fabs((double)x[i]);
    return m;
}

/// Compare "group label" with atol = tol * max|want| and rtol = tol. Unless quiet, records the
/// result and raises *worst (if given) to max|got - want| / max|want|; quiet only computes.
static inline int fx_compare(const char *group, const char *label, const float *got,
                             const float *want, size_t n, double tol, double *worst, int quiet) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s %s", group, label);
    double scale = fx_max_abs(want, n);
    if (!quiet && worst) {
        double d = 0;
        for (size_t i = 0; i < n; i++)
            if (fabs((double)got[i] - want[i]) > d) d = fabs((double)got[i] - want[i]);
        double rel = d / (scale > 0 ? scale : 1);
        if (rel > *worst) *worst = rel;
    }
    return check_tensor_q(buf, got, want, n, tol * (scale > 0 ? scale : 1), tol, quiet);
}

#endif
