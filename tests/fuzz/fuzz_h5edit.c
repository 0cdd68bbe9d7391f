/* fuzz_h5edit.c: libFuzzer target for the values inside well-formed files. The raw-bytes targets
 * (fuzz_dataset, fuzz_ckpt) spend most inputs on HDF5's own parsing of damaged metadata; here the
 * input is a program of edits made through the HDF5 API to one of a few valid files (an image,
 * text or speech shard, an index over shards, a checkpoint), so the file always parses and every
 * value d2v reads from it is hostile: attributes set to any integer type and value or string,
 * objects deleted, datasets rewritten with another type, shape, layout, extent or content, single
 * elements poked. The result is opened as a dataset and exercised as fuzz_dataset does, or, from
 * the checkpoint, read as fuzz_ckpt does.
 *
 * Input: byte 0 picks the file; then edits, each an opcode byte and its operands (names from the
 * tables below, values from a table of boundary values or raw input bytes). */
#include "fuzz_files.h"

static const char *const bases[] = {"img.shard-0.h5",  "txt.shard-0.h5", "sp.shard-0.h5",
                                    "spf.h5",          "index-image.h5", "index-text.h5",
                                    "index-speech.h5", "tiny.h5"};
enum { NBASES = sizeof bases / sizeof bases[0] };
static uint8_t *base_bytes[NBASES];
static size_t base_size[NBASES];

static const char *const attrs[] = {
    "format_version", "modality",    "kind",          "num_samples", "height", "width",
    "channels",       "vocab_size",  "bos_id",        "eos_id",      "pad_id", "unk_id",
    "mask_id",        "sample_rate", "sample_format", "tokenizer",   "update", "skipped",
    "epoch",          "position",    "config",        "created_by"};
static const char *const dsets[] = {
    "images",      "tokens",      "doc_offsets",   "offsets",       "audio",    "labels",
    "label_names", "shards",      "shard_samples", "params",        "teacher",  "adam_m",
    "adam_v",      "param_names", "param_shapes",  "param_offsets", "checksums"};
static const char *const words[] = {
    "text",          "image",       "speech",   "shard",    "index",          "checkpoint",
    "int16",         "float32",     "",         "byte-bpe", "img.shard-1.h5", "txt.shard-1.h5",
    "sp.shard-1.h5", "/etc/passwd", "input.h5", "../x.h5"};
static const int64_t values[] = {0,
                                 1,
                                 -1,
                                 2,
                                 3,
                                 4,
                                 7,
                                 16000,
                                 49,
                                 50,
                                 65536,
                                 65537,
                                 1 << 24,
                                 (1 << 24) + 1,
                                 INT32_MAX,
                                 INT32_MIN,
                                 (int64_t)1 << 31,
                                 ((int64_t)1 << 32) + 28,
                                 ((int64_t)1 << 36) + 1,
                                 INT64_MAX,
                                 INT64_MIN,
                                 -4,
                                 999,
                                 1000000001};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

typedef struct {
    const uint8_t *p;
    size_t n;
} In;

static unsigned u8(In *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static int64_t value(In *in) {
    unsigned k = u8(in);
    if (k < 4 * COUNT(values)) return values[k % COUNT(values)];
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u8(in);
    return (int64_t)v;
}

static const char *name_of(In *in, const char *const *names, size_t n) { return names[u8(in) % n]; }

static hid_t int_type(unsigned k) {
    const hid_t t[] = {H5T_NATIVE_INT8,  H5T_NATIVE_UINT8,  H5T_NATIVE_INT16, H5T_NATIVE_INT32,
                       H5T_NATIVE_INT64, H5T_NATIVE_UINT64, H5T_NATIVE_FLOAT, H5T_NATIVE_DOUBLE};
    return t[k % 8];
}

/* A string of the input's choosing: a table word or up to 40 raw bytes. */
static void string_of(In *in, char *buf, size_t cap) {
    unsigned k = u8(in);
    if (k < 128) {
        snprintf(buf, cap, "%s", words[k % COUNT(words)]);
        return;
    }
    size_t len = k % 41, i = 0;
    for (; i < len && i + 1 < cap && in->n; i++)
        buf[i] = (char)(u8(in) | 1); /* no NUL inside */
    buf[i] = '\0';
}

static void set_attr(hid_t f, const char *name, hid_t type, const void *v) {
    if (H5Aexists(f, name) > 0) H5Adelete(f, name);
    hid_t sp = H5Screate(H5S_SCALAR), a = H5Acreate2(f, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) H5Awrite(a, type, v), H5Aclose(a);
    H5Sclose(sp);
}

static void edit_int_attr(hid_t f, In *in) {
    const char *name = name_of(in, attrs, COUNT(attrs));
    hid_t t = int_type(u8(in));
    int64_t v = value(in);
    double dv = (double)v;
    /* the value converted to the attribute's type by HDF5, as a writer in that type would */
    if (H5Tget_class(t) == H5T_FLOAT)
        set_attr(f, name, H5T_NATIVE_DOUBLE, &dv);
    else if (H5Tget_size(t) == 8 && H5Tget_sign(t) == H5T_SGN_NONE)
        set_attr(f, name, H5T_NATIVE_UINT64, &v);
    else {
        hid_t sp = H5Screate(H5S_SCALAR);
        if (H5Aexists(f, name) > 0) H5Adelete(f, name);
        hid_t a = H5Acreate2(f, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        if (a >= 0) H5Awrite(a, H5T_NATIVE_INT64, &v), H5Aclose(a);
        H5Sclose(sp);
    }
}

static void edit_str_attr(hid_t f, In *in) {
    const char *name = name_of(in, attrs, COUNT(attrs));
    char s[64];
    string_of(in, s, sizeof s);
    hid_t t = H5Tcopy(H5T_C_S1);
    if (u8(in) & 1) { /* variable length, as h5py writes them */
        H5Tset_size(t, H5T_VARIABLE);
        const char *p = s;
        set_attr(f, name, t, &p);
    } else {
        H5Tset_size(t, strlen(s) + 1);
        set_attr(f, name, t, s);
    }
    H5Tclose(t);
}

static void edit_delete(hid_t f, In *in) {
    unsigned k = u8(in);
    if (k & 1) {
        const char *name = attrs[(k >> 1) % COUNT(attrs)];
        if (H5Aexists(f, name) > 0) H5Adelete(f, name);
    } else {
        const char *name = dsets[(k >> 1) % COUNT(dsets)];
        if (H5Lexists(f, name, H5P_DEFAULT) > 0) H5Ldelete(f, name, H5P_DEFAULT);
    }
}

/* Rewrite a dataset: type, rank 1-4, dims, layout and values all the input's. */
static void edit_dataset(hid_t f, In *in) {
    const char *name = name_of(in, dsets, COUNT(dsets));
    unsigned kind = u8(in), rank = 1 + u8(in) % 4, layout = u8(in) % 4;
    hsize_t dims[4], n = 1;
    for (unsigned i = 0; i < rank; i++)
        dims[i] = i ? u8(in) % 9 : u8(in) % 48, n *= dims[i];
    if (H5Lexists(f, name, H5P_DEFAULT) > 0) H5Ldelete(f, name, H5P_DEFAULT);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE), sp, d;
    hsize_t chunk[4], maxd[4];
    for (unsigned i = 0; i < rank; i++)
        chunk[i] = dims[i] ? (dims[i] + 1) / 2 : 1, maxd[i] = H5S_UNLIMITED;
    if (layout >= 2) H5Pset_chunk(dcpl, (int)rank, chunk);
    if (layout == 3) H5Pset_deflate(dcpl, 1);
    if (layout == 1 && n) H5Pset_layout(dcpl, H5D_COMPACT);
    if (kind % 9 == 8) { /* variable-length strings */
        hid_t t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, H5T_VARIABLE);
        sp = H5Screate_simple(1, dims, layout >= 2 ? maxd : NULL);
        d = H5Dcreate2(f, name, t, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        char(*buf)[64] = calloc(dims[0] ? dims[0] : 1, 64);
        const char **ptr = calloc(dims[0] ? dims[0] : 1, sizeof *ptr);
        for (hsize_t i = 0; i < dims[0]; i++)
            string_of(in, buf[i], 64), ptr[i] = buf[i];
        if (d >= 0 && dims[0]) H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptr);
        free(buf), free(ptr), H5Tclose(t);
    } else {
        hid_t t = int_type(kind % 9);
        sp = H5Screate_simple((int)rank, dims, layout >= 2 ? maxd : NULL);
        d = H5Dcreate2(f, name, t, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        int64_t *v = calloc(n ? n : 1, sizeof *v);
        unsigned fill = u8(in) % 3;
        int64_t acc = 0;
        for (hsize_t i = 0; i < n; i++) /* raw, ascending (offsets), or one value */
            v[i] = fill == 0 ? value(in) : fill == 1 ? (acc += u8(in) % 6) : i ? v[0] : value(in);
        if (d >= 0 && n) H5Dwrite(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
        free(v);
    }
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp), H5Pclose(dcpl);
}

/* A chunked dataset of a huge extent with nothing written: HDF5 would read it as fill values. */
static void edit_sparse(hid_t f, In *in) {
    const char *name = name_of(in, dsets, COUNT(dsets));
    if (H5Lexists(f, name, H5P_DEFAULT) > 0) H5Ldelete(f, name, H5P_DEFAULT);
    hsize_t dims[1] = {(hsize_t)(value(in) & (((int64_t)1 << 40) - 1))}, chunk[1] = {1024};
    hsize_t maxd[1] = {H5S_UNLIMITED};
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE), sp = H5Screate_simple(1, dims, maxd);
    H5Pset_chunk(dcpl, 1, chunk);
    hid_t d = H5Dcreate2(f, name, int_type(u8(in)), sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp), H5Pclose(dcpl);
}

/* One element of an existing numeric dataset set to a value of the input's. */
static void edit_poke(hid_t f, In *in) {
    const char *name = name_of(in, dsets, COUNT(dsets));
    if (H5Lexists(f, name, H5P_DEFAULT) <= 0) return;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), fs = H5Dget_space(d), t = H5Dget_type(d);
    hssize_t np = H5Sget_simple_extent_npoints(fs);
    int rank = H5Sget_simple_extent_ndims(fs);
    if (np > 0 && rank >= 1 && rank <= 4 && H5Tget_class(t) != H5T_STRING) {
        hsize_t dims[4], at[4], one[4] = {1, 1, 1, 1};
        H5Sget_simple_extent_dims(fs, dims, NULL);
        uint64_t k = ((uint64_t)u8(in) << 8 | u8(in)) % (uint64_t)np;
        for (int i = rank - 1; i >= 0; i--)
            at[i] = k % dims[i], k /= dims[i];
        int64_t v = value(in);
        double dv = (double)v;
        hid_t ms = H5Screate_simple(rank, one, NULL);
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, at, NULL, one, NULL);
        if (H5Tget_class(t) == H5T_FLOAT && u8(in) % 4 == 0) dv = NAN;
        H5Dwrite(d, H5Tget_class(t) == H5T_FLOAT ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64, ms, fs,
                 H5P_DEFAULT, H5Tget_class(t) == H5T_FLOAT ? (const void *)&dv : &v);
        H5Sclose(ms);
    }
    H5Tclose(t), H5Sclose(fs), H5Dclose(d);
}

static uint8_t *read_whole(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    uint8_t *b = malloc(*n);
    if (fread(b, 1, *n, f) != *n) abort();
    fclose(f);
    return b;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    h5io_init();
    tiny_model();
    if (fuzz_seed_dir()) exit(0); /* its inputs are edit programs: it starts from nothing */
    write_shards(fuzz_dir());
    write_index_seeds(fuzz_dir());
    write_ckpt_seeds(fuzz_dir());
    for (int b = 0; b < NBASES; b++)
        base_bytes[b] = read_whole(fuzz_path(bases[b]), &base_size[b]);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    In in = {data, size};
    int b = (int)(u8(&in) % NBASES);
    const char *path = fuzz_path("input.h5");
    fuzz_write(path, base_bytes[b], base_size[b]);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) abort(); /* the bases are valid */
    for (int k = 0; k < 24 && in.n; k++) {
        switch (u8(&in) % 6) {
        case 0:
            edit_int_attr(f, &in);
            break;
        case 1:
            edit_str_attr(f, &in);
            break;
        case 2:
            edit_delete(f, &in);
            break;
        case 3:
            edit_dataset(f, &in);
            break;
        case 4:
            edit_sparse(f, &in);
            break;
        default:
            edit_poke(f, &in);
            break;
        }
    }
    H5Fclose(f);
    if (b == NBASES - 1) /* the checkpoint (a file of one kind read as the other: fuzz_dataset) */
        exercise_ckpt(path);
    else
        exercise_dataset(path, 1 + (int)(size & 1)); /* one loader variant per input */
    return 0;
}
