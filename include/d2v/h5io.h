/* h5io.h: checked HDF5 helpers shared by the dataset tools, the reader and checkpoints. Every
 * failure names the file and the object; new files are written under a temporary name and renamed
 * into place only when complete, so an existing output is never left half-written. */
#ifndef D2V_H5IO_H
#define D2V_H5IO_H

#include <hdf5.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#define D2V_FORMAT_VERSION 1

/// Silence HDF5's own error-stack printing (d2v reports one line per failure instead).
void h5io_init(void);
/* Every function here serialises itself on one lock (Debian's serial HDF5 is not thread-safe
 * and the loader reads on its own thread): callers need no locking, and no other file calls
 * HDF5 directly. */
/// Close a file, group or dataset handle.
void h5_close(hid_t id);
/// 1 if link `name` exists under loc.
int h5_exists(hid_t loc, const char *name);
/// 1 if attribute `name` exists on obj.
int h5_attr_exists(hid_t obj, const char *name);
/// Create group `name` under loc; dies naming it on failure.
hid_t h5_group_create(hid_t loc, const char *name);
/// Copy every attribute of src to dst except those named in the NULL-terminated skip list.
void h5_copy_attrs(hid_t dst, hid_t src, const char *const *skip);

/* ---- writing ----------------------------------------------------------------------------------
 */

typedef struct {
    hid_t file;
    char path[PATH_MAX]; // final name
    char tmp[PATH_MAX];  // name while being written: "<path>.tmp.<pid>"
    int cleanup;         // die() removes tmp while the file is open (die_cleanup_push)
    char dir[PATH_MAX];  // scratch: the directory, for messages and its fsync
} H5Out;

/// Create `path`'s temporary file; dies naming the path on failure.
void h5out_create(H5Out *o, const char *path);
/// Close, fsync and atomically rename the temporary file to its final name, then fsync the
/// directory, so the new name survives a node crash. A fatal error while the file is open
/// removes the temporary file.
void h5out_commit(H5Out *o);
/// Close and delete the temporary file (the final name is untouched).
void h5out_abort(H5Out *o);

void h5_attr_i64(hid_t obj, const char *name, int64_t v);
void h5_attr_i32(hid_t obj, const char *name, int32_t v);
void h5_attr_str(hid_t obj, const char *name, const char *v);
/// The standard root attributes of docs/datasets.md.
void h5_write_root_attrs(hid_t file, const char *modality, const char *kind, int64_t num_samples,
                         const char *created_by);

/// Write a whole dataset of `rank` dims at once (chunk: NULL = contiguous).
void h5_write(hid_t loc, const char *name, hid_t type, int rank, const hsize_t *dims,
              const hsize_t *chunk, const void *data);
/// Variable-length UTF-8 string dataset of n entries.
void h5_write_strings(hid_t loc, const char *name, const char *const *s, size_t n);

/// A dataset grown along axis 0 by appends; inner dims fixed (e.g. images (N, H, W, C)).
typedef struct {
    hid_t dset, type;
    int rank;
    hsize_t dims[4]; // current size; dims[0] grows
    char name[64];
} H5Append;
/// chunk_rows: rows per chunk along axis 0. deflate: 0 = off, 1..9 gzip level.
void h5_append_open(H5Append *a, hid_t loc, const char *name, hid_t type, int rank,
                    const hsize_t *inner_dims, hsize_t chunk_rows, int deflate);
void h5_append(H5Append *a, const void *rows, hsize_t nrows);
void h5_append_close(H5Append *a);

/* ---- reading ----------------------------------------------------------------------------------
 */

/// Open read-only; returns < 0 and fills err with "PATH: reason" on failure.
hid_t h5_open_ro(const char *path, char *err, size_t errlen);
/// Attribute readers: 0 on success, -1 (err filled, naming file and attribute) when missing or of
/// the wrong kind.
int h5_read_attr_i64(hid_t obj, const char *path, const char *name, int64_t *v, char *err,
                     size_t errlen);
int h5_read_attr_str(hid_t obj, const char *path, const char *name, char *buf, size_t buflen,
                     char *err, size_t errlen);
#define H5_MAX_ATTR_STR ((size_t)1 << 24) // longer fixed-size string attributes are refused
/// Shape of dataset `name` (rank <= 4); -1 with err when missing.
int h5_dataset_shape(hid_t loc, const char *path, const char *name, int *rank, hsize_t dims[4],
                     char *err, size_t errlen);
/// What a dataset holds: its shape, and its stored element type's class (H5T_INTEGER,
/// H5T_FLOAT, H5T_STRING, ...), size in bytes and sign.
typedef struct {
    int rank;
    hsize_t dims[4];
    int cls;
    size_t size;
    int is_signed;
} H5Info;
#define H5_MAX_ELEMENT 64              // bytes per element of anything d2v reads
#define H5_MAX_CHUNK ((size_t)1 << 28) // bytes per chunk
/// The shape and element type of dataset `name` (rank <= 4), after checking that the file stores
/// every element it declares (no unwritten, external or virtual storage standing in for data)
/// and that its elements and chunks are of sizes HDF5 can buffer (H5_MAX_ELEMENT, H5_MAX_CHUNK):
/// 0, or -1 with err naming the file and dataset. Call it before sizing anything by a dataset,
/// and before reading a dataset of a file that may be damaged.
int h5_dataset_info(hid_t loc, const char *path, const char *name, H5Info *info, char *err,
                    size_t errlen);
/// Read rows [start, start + count) of dataset `name` along axis 0 into buf (type = memory type);
/// -1 with err on failure (e.g. a truncated file). A row is the dataset's own inner dims: check
/// them (h5_dataset_info) before reading into a buffer sized from anything else.
int h5_read_rows(hid_t loc, const char *path, const char *name, hid_t type, hsize_t start,
                 hsize_t count, void *buf, char *err, size_t errlen);
/// Read a variable-length string dataset; returns a malloc'd array of n malloc'd strings (free
/// with h5_free_strings), or NULL with err.
char **h5_read_strings(hid_t loc, const char *path, const char *name, size_t *n, char *err,
                       size_t errlen);
void h5_free_strings(char **s, size_t n);
/// Names of the links directly under loc, in name order: up to max into names, returns how many
/// there are (may exceed max), or -1 with err.
int h5_list(hid_t loc, const char *path, char (*names)[64], int max, char *err, size_t errlen);
/// Type class of dataset `name` (H5T_INTEGER, H5T_FLOAT, H5T_STRING, ...), or -1 if it is none.
int h5_dataset_class(hid_t loc, const char *name);

#endif
