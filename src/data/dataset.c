/* dataset.c: opens and validates d2v HDF5 datasets (a shard or an index of shards, see
 * docs/datasets.md) and reads single samples from them. All validation happens here, at open,
 * so a training step never meets a malformed file. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/dataset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/h5io.h"
#include "d2v/util.h"

const char *const d2v_modality_names[3] = {"text", "image", "speech"};

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__), -1)

static int modality_id(const char *s) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, d2v_modality_names[i])) return i;
    return -1;
}

/* Root attributes every file carries; fills modality, kind and num_samples. */
static int read_root(hid_t f, const char *path, int *modality, char *kind, size_t kindlen,
                     int64_t *n, char *err, size_t errlen) {
    int64_t version;
    char mod[32];
    if (h5_read_attr_i64(f, path, "format_version", &version, err, errlen) < 0) return -1;
    if (version != D2V_FORMAT_VERSION)
        return ERR("%s: format_version %lld, this d2v reads %d (re-create it with data-prep/)",
                   path, (long long)version, D2V_FORMAT_VERSION);
    if (h5_read_attr_str(f, path, "modality", mod, sizeof mod, err, errlen) < 0 ||
        h5_read_attr_str(f, path, "kind", kind, kindlen, err, errlen) < 0 ||
        h5_read_attr_i64(f, path, "num_samples", n, err, errlen) < 0)
        return -1;
    char pr[48];
    if ((*modality = modality_id(mod)) < 0)
        return ERR("%s: unknown modality '%s' (text, image or speech)", path,
                   str_printable(mod, pr, sizeof pr));
    if (*n < 0 || *n > D2V_MAX_SAMPLES) /* (num_samples + 1 is computed: INT64_MAX overflowed) */
        return ERR("%s: num_samples %lld is out of range [0, 2^48]", path, (long long)*n);
    return 0;
}

/* An integer attribute, read as int64 whatever its stored width (so nothing is truncated) and
 * range-checked before it is narrowed. */
static int read_int_attr(hid_t f, const char *path, const char *name, int64_t lo, int64_t hi,
                         int32_t *v, char *err, size_t errlen) {
    int64_t x;
    if (h5_read_attr_i64(f, path, name, &x, err, errlen) < 0) return -1;
    if (x < lo || x > hi)
        return ERR("%s: attribute '%s' = %lld is out of range [%lld, %lld]", path, name,
                   (long long)x, (long long)lo, (long long)hi);
    *v = (int32_t)x;
    return 0;
}

static const char *class_name(int cls) {
    return cls == H5T_INTEGER ? "integers" : cls == H5T_FLOAT ? "floats" : "strings";
}

/* Dataset `name`: stored in full (h5_dataset_info), of `rank` dims, of class `cls` and, when
 * size > 0, elements of that many bytes. */
static int check_dataset(hid_t f, const char *path, const char *name, int rank, int cls,
                         size_t size, H5Info *in, char *err, size_t errlen) {
    if (h5_dataset_info(f, path, name, in, err, errlen) < 0) return -1;
    if (in->rank != rank)
        return ERR("%s: '%s' should have %d dimension(s), it has %d", path, name, rank, in->rank);
    if (in->cls != cls || (size && in->size != size))
        return ERR("%s: '%s' should hold %s%s", path, name, class_name(cls),
                   !size              ? ""
                   : cls == H5T_FLOAT ? " of 4 bytes (float32)"
                   : size == 1        ? " of 1 byte (uint8)"
                                      : " of 2 bytes (int16)");
    return 0;
}

/* Offsets (n+1) must start at 0, never decrease and end at the data length. */
static int load_offsets(DatasetShard *s, const char *name, const char *data, int data_cls,
                        size_t data_size, char *err, size_t errlen) {
    H5Info in, din;
    if (check_dataset(s->file, s->path, name, 1, H5T_INTEGER, 0, &in, err, errlen) < 0) return -1;
    if (in.dims[0] != (hsize_t)s->num_samples + 1)
        return ERR("%s: '%s' should have num_samples + 1 = %lld entries", s->path, name,
                   (long long)s->num_samples + 1);
    if (check_dataset(s->file, s->path, data, 1, data_cls, data_size, &din, err, errlen) < 0)
        return -1;
    s->offsets = malloc(sizeof(int64_t) * in.dims[0]);
    if (!s->offsets) return ERR("%s: out of memory for '%s'", s->path, name);
    if (h5_read_rows(s->file, s->path, name, H5T_NATIVE_INT64, 0, in.dims[0], s->offsets, err,
                     errlen) < 0)
        return -1;
    if (s->offsets[0] != 0) return ERR("%s: '%s' does not start at 0", s->path, name);
    for (int64_t i = 0; i < s->num_samples; i++)
        if (s->offsets[i + 1] < s->offsets[i])
            return ERR("%s: '%s' decreases at entry %lld", s->path, name, (long long)i + 1);
    if ((hsize_t)s->offsets[s->num_samples] != din.dims[0])
        return ERR("%s: '%s' ends at %lld but '%s' has %llu entries (truncated?)", s->path, name,
                   (long long)s->offsets[s->num_samples], data, (unsigned long long)din.dims[0]);
    return 0;
}

/* Every token id of the shard inside the vocabulary, read in chunks: a bad id is reported at
 * open, naming the document, not when the loader happens to reach it. */
static int check_tokens(const Dataset *d, const DatasetShard *s, char *err, size_t errlen) {
    enum { CHUNK = 1 << 18 };
    int64_t n = s->offsets[s->num_samples], doc = 0;
    int32_t *buf = malloc(sizeof(int32_t) * (n < CHUNK ? (n ? n : 1) : CHUNK));
    if (!buf) return ERR("%s: out of memory checking 'tokens'", s->path);
    int rc = 0;
    for (int64_t at = 0; rc == 0 && at < n; at += CHUNK) {
        int64_t m = n - at < CHUNK ? n - at : CHUNK;
        rc = h5_read_rows(s->file, s->path, "tokens", H5T_NATIVE_INT32, (hsize_t)at, (hsize_t)m,
                          buf, err, errlen);
        for (int64_t k = 0; rc == 0 && k < m; k++)
            if (buf[k] < 0 || buf[k] >= d->vocab_size) {
                while (s->offsets[doc + 1] <= at + k) /* the document holding it */
                    doc++;
                rc = ERR("%s: document %lld holds token id %d, outside the vocabulary of %d",
                         s->path, (long long)doc, buf[k], d->vocab_size);
            }
    }
    free(buf);
    return rc;
}

/* Check one shard against the modality and the attributes fixed by the first shard; *labelled
 * says whether the shards have labels. */
static int validate_shard(Dataset *d, DatasetShard *s, int first, int *labelled, char *err,
                          size_t errlen) {
    H5Info in;
    if (d->modality == D2V_IMAGE) {
        int32_t h, w, c;
        if (read_int_attr(s->file, s->path, "height", 1, D2V_MAX_IMAGE_SIDE, &h, err, errlen) < 0 ||
            read_int_attr(s->file, s->path, "width", 1, D2V_MAX_IMAGE_SIDE, &w, err, errlen) < 0 ||
            read_int_attr(s->file, s->path, "channels", 1, 3, &c, err, errlen) < 0)
            return -1;
        if (c == 2 || (int64_t)h * w * c > D2V_MAX_IMAGE_BYTES)
            return ERR("%s: bad image shape %dx%dx%d (channels 1 or 3, at most %d bytes)", s->path,
                       h, w, c, D2V_MAX_IMAGE_BYTES);
        if (check_dataset(s->file, s->path, "images", 4, H5T_INTEGER, 1, &in, err, errlen) < 0)
            return -1;
        if (in.dims[0] != (hsize_t)s->num_samples || in.dims[1] != (hsize_t)h ||
            in.dims[2] != (hsize_t)w || in.dims[3] != (hsize_t)c)
            return ERR("%s: 'images' should be (%lld, %d, %d, %d)", s->path,
                       (long long)s->num_samples, h, w, c);
        if (first)
            d->H = h, d->W = w, d->C = c;
        else if (h != d->H || w != d->W || c != d->C)
            return ERR("%s: images are %dx%dx%d, other shards %dx%dx%d", s->path, h, w, c, d->H,
                       d->W, d->C);
    } else if (d->modality == D2V_TEXT) {
        int32_t v[6];
        const char *names[6] = {"vocab_size", "bos_id", "eos_id", "pad_id", "unk_id", "mask_id"};
        if (read_int_attr(s->file, s->path, names[0], 1, D2V_MAX_VOCAB, &v[0], err, errlen) < 0)
            return -1;
        for (int i = 1; i < 6; i++)
            if (read_int_attr(s->file, s->path, names[i], INT32_MIN, INT32_MAX, &v[i], err,
                              errlen) < 0)
                return -1;
        for (int i = 1; i < 6; i++) {
            if (v[i] < 0 || v[i] >= v[0])
                return ERR("%s: %s = %d is outside the vocabulary of %d", s->path, names[i], v[i],
                           v[0]);
            for (int j = 1; j < i; j++)
                if (v[i] == v[j] && i != 4 && j != 4) /* unk may double as another special */
                    return ERR("%s: %s and %s are both %d", s->path, names[j], names[i], v[i]);
        }
        if (first) {
            d->vocab_size = v[0], d->bos_id = v[1], d->eos_id = v[2], d->pad_id = v[3];
            d->unk_id = v[4], d->mask_id = v[5];
        } else if (v[0] != d->vocab_size || v[1] != d->bos_id || v[2] != d->eos_id ||
                   v[3] != d->pad_id || v[4] != d->unk_id || v[5] != d->mask_id) {
            return ERR("%s: tokenizer differs from the other shards'", s->path);
        }
        if (load_offsets(s, "doc_offsets", "tokens", H5T_INTEGER, 0, err, errlen) < 0 ||
            check_tokens(d, s, err, errlen) < 0)
            return -1;
    } else {
        int32_t sr;
        char fmt[16];
        if (read_int_attr(s->file, s->path, "sample_rate", D2V_MIN_SAMPLE_RATE, D2V_MAX_SAMPLE_RATE,
                          &sr, err, errlen) < 0 ||
            h5_read_attr_str(s->file, s->path, "sample_format", fmt, sizeof fmt, err, errlen) < 0)
            return -1;
        int is_float = !strcmp(fmt, "float32");
        char pr[32];
        if (!is_float && strcmp(fmt, "int16"))
            return ERR("%s: sample_format '%s' (int16 or float32)", s->path,
                       str_printable(fmt, pr, sizeof pr));
        if (first)
            d->sample_rate = sr, d->audio_float = is_float;
        else if (sr != d->sample_rate || is_float != d->audio_float)
            return ERR("%s: sample rate or format differs from the other shards'", s->path);
        if (load_offsets(s, "offsets", "audio", is_float ? H5T_FLOAT : H5T_INTEGER,
                         is_float ? 4 : 2, err, errlen) < 0)
            return -1;
    }
    int has_labels = h5_exists(s->file, "labels");
    if (!first && has_labels != *labelled)
        return ERR("%s: has %slabels but the first shard has %s", s->path, has_labels ? "" : "no ",
                   *labelled ? "some" : "none");
    *labelled = has_labels;
    if (has_labels) {
        if (check_dataset(s->file, s->path, "labels", 1, H5T_INTEGER, 0, &in, err, errlen) < 0)
            return -1;
        if (in.dims[0] != (hsize_t)s->num_samples)
            return ERR("%s: 'labels' should have %lld entries", s->path, (long long)s->num_samples);
    }
    if (first && h5_exists(s->file, "label_names")) {
        if (check_dataset(s->file, s->path, "label_names", 1, H5T_STRING, 0, &in, err, errlen) < 0)
            return -1;
        d->label_names =
            h5_read_strings(s->file, s->path, "label_names", &d->n_label_names, err, errlen);
        if (!d->label_names) return -1;
    }
    return 0;
}

/* Labels of every shard, once every shard's sample count is known to match its data. */
static int read_labels(Dataset *d, char *err, size_t errlen) {
    d->labels = malloc(sizeof(int32_t) * (size_t)(d->num_samples + 1));
    if (!d->labels)
        return ERR("%s: out of memory for %lld labels", d->path, (long long)d->num_samples);
    for (int k = 0; k < d->n_shards; k++) {
        const DatasetShard *s = &d->shards[k];
        if (h5_read_rows(s->file, s->path, "labels", H5T_NATIVE_INT32, 0, (hsize_t)s->num_samples,
                         d->labels + s->first, err, errlen) < 0)
            return -1;
        for (int64_t i = 0; i < s->num_samples; i++) {
            int32_t y = d->labels[s->first + i];
            if (y < 0)
                return ERR("%s: label %d of sample %lld is negative", s->path, y, (long long)i);
            if (d->label_names && (size_t)y >= d->n_label_names)
                return ERR("%s: sample %lld has label %d but there are %zu label names", s->path,
                           (long long)i, y, d->n_label_names);
        }
    }
    return 0;
}

static int open_shard(Dataset *d, DatasetShard *s, const char *path, int64_t want_n, char *err,
                      size_t errlen) {
    snprintf(s->path, sizeof s->path, "%s", path);
    s->file = h5_open_ro(path, err, errlen);
    if (s->file < 0) return -1;
    int mod;
    char kind[16];
    if (read_root(s->file, path, &mod, kind, sizeof kind, &s->num_samples, err, errlen) < 0)
        return -1;
    char pr[32];
    if (strcmp(kind, "shard"))
        return ERR("%s: kind '%s', expected a shard", path, str_printable(kind, pr, sizeof pr));
    if (mod != d->modality)
        return ERR("%s: modality '%s', expected '%s'", path, d2v_modality_names[mod],
                   d2v_modality_names[d->modality]);
    if (want_n >= 0 && s->num_samples != want_n)
        return ERR("%s: holds %lld samples, its index says %lld", path, (long long)s->num_samples,
                   (long long)want_n);
    return 0;
}

/* An index: its shard names and counts, then every shard opened (d->shards, d->n_shards). */
static int open_index(Dataset *d, hid_t f, const char *path, char *err, size_t errlen) {
    H5Info in;
    size_t n = 0;
    char **names = NULL;
    int64_t *counts = NULL;
    int rc = check_dataset(f, path, "shards", 1, H5T_STRING, 0, &in, err, errlen);
    if (rc == 0 && (in.dims[0] == 0 || in.dims[0] > D2V_MAX_SHARDS))
        rc = ERR("%s: 'shards' lists %llu shards (1 to %d)", path, (unsigned long long)in.dims[0],
                 D2V_MAX_SHARDS);
    if (rc == 0) rc = (names = h5_read_strings(f, path, "shards", &n, err, errlen)) ? 0 : -1;
    if (rc == 0) rc = check_dataset(f, path, "shard_samples", 1, H5T_INTEGER, 0, &in, err, errlen);
    if (rc == 0 && in.dims[0] != n) rc = ERR("%s: 'shard_samples' should list %zu counts", path, n);
    if (rc == 0 && !(counts = calloc(n + 1, sizeof(int64_t))))
        rc = ERR("%s: out of memory for %zu shards", path, n);
    if (rc == 0)
        rc = h5_read_rows(f, path, "shard_samples", H5T_NATIVE_INT64, 0, n, counts, err, errlen);
    /* every count a possible one, before any is used as an offset (a negative count once made
     * the labels of the next shard land before their buffer) */
    int64_t total = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (counts[i] < 0 || counts[i] > d->num_samples - total)
            rc = ERR("%s: shard_samples[%zu] = %lld is negative or past num_samples %lld", path, i,
                     (long long)counts[i], (long long)d->num_samples);
        else
            total += counts[i];
    }
    if (rc == 0 && total != d->num_samples)
        rc = ERR("%s: shards hold %lld samples, num_samples says %lld", path, (long long)total,
                 (long long)d->num_samples);
    if (rc == 0) {
        d->shards = calloc(n, sizeof(DatasetShard));
        if (!d->shards) rc = ERR("%s: out of memory for %zu shards", path, n);
    }
    const char *slash = strrchr(path, '/');
    int dir = slash ? (int)(slash - path + 1) : 0;
    total = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char sp[PATH_MAX];
        d->shards[i].first = total, d->shards[i].file = -1;
        d->n_shards = (int)i + 1;
        char pr[64];
        int ctl = 0; /* a path printed in every later message: one line */
        for (const char *q = names[i]; *q; q++)
            ctl |= (unsigned char)*q < 0x20 || *q == 0x7f;
        if (!names[i][0] || ctl)
            rc = ERR("%s: shard %zu's name '%s' is empty or holds control characters", path, i,
                     str_printable(names[i], pr, sizeof pr));
        else if (snprintf(sp, sizeof sp, "%.*s%s", names[i][0] == '/' ? 0 : dir, path, names[i]) >=
                 (int)sizeof sp)
            rc = ERR("%s: shard path too long", path);
        if (rc == 0) rc = open_shard(d, &d->shards[i], sp, counts[i], err, errlen);
        total += counts[i];
    }
    h5_free_strings(names, n);
    free(counts);
    return rc;
}

int dataset_open(Dataset *d, const char *path, int modality, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    snprintf(d->path, sizeof d->path, "%s", path);
    hid_t f = h5_open_ro(path, err, errlen);
    if (f < 0) return -1;
    char kind[16];
    int rc = read_root(f, path, &d->modality, kind, sizeof kind, &d->num_samples, err, errlen);
    if (rc == 0 && modality >= 0 && d->modality != modality)
        rc = ERR("%s: a %s dataset, expected %s", path, d2v_modality_names[d->modality],
                 d2v_modality_names[modality]);
    if (rc == 0 && !strcmp(kind, "index")) {
        rc = open_index(d, f, path, err, errlen);
    } else if (rc == 0 && !strcmp(kind, "shard")) {
        h5_close(f), f = -1; /* reopened as the shard */
        d->shards = calloc(1, sizeof(DatasetShard));
        if (!d->shards) rc = ERR("%s: out of memory", path);
        d->n_shards = 1;
        if (rc == 0) rc = open_shard(d, &d->shards[0], path, d->num_samples, err, errlen);
    } else if (rc == 0) {
        char pr[32];
        rc = ERR("%s: kind '%s' (shard or index)", path, str_printable(kind, pr, sizeof pr));
    }
    if (f >= 0) h5_close(f);
    int labelled = 0;
    for (int i = 0; rc == 0 && i < d->n_shards; i++)
        rc = validate_shard(d, &d->shards[i], i == 0, &labelled, err, errlen);
    if (rc == 0 && d->num_samples == 0) rc = ERR("%s: the dataset holds no samples", path);
    if (rc == 0 && labelled) rc = read_labels(d, err, errlen);
    if (rc < 0) dataset_close(d);
    return rc;
}

void dataset_close(Dataset *d) {
    for (int i = 0; d->shards && i < d->n_shards; i++) {
        if (d->shards[i].file > 0) h5_close(d->shards[i].file);
        free(d->shards[i].offsets);
    }
    free(d->shards), free(d->labels);
    h5_free_strings(d->label_names, d->n_label_names);
    d->shards = NULL, d->labels = NULL, d->label_names = NULL, d->n_shards = 0;
}

/* The shard holding global sample i, and i's index inside it (binary search). */
static const DatasetShard *locate(const Dataset *d, int64_t i, int64_t *local) {
    int lo = 0, hi = d->n_shards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (d->shards[mid].first <= i)
            lo = mid;
        else
            hi = mid - 1;
    }
    *local = i - d->shards[lo].first;
    return &d->shards[lo];
}

int64_t dataset_sample_len(const Dataset *d, int64_t i) {
    int64_t k;
    const DatasetShard *s = locate(d, i, &k);
    return s->offsets ? s->offsets[k + 1] - s->offsets[k] : 1;
}

int dataset_read_image(const Dataset *d, int64_t i, uint8_t *pixels, char *err, size_t errlen) {
    int64_t k;
    const DatasetShard *s = locate(d, i, &k);
    return h5_read_rows(s->file, s->path, "images", H5T_NATIVE_UINT8, (hsize_t)k, 1, pixels, err,
                        errlen);
}

static int read_span(const Dataset *d, int64_t i, int64_t start, int64_t count, const char *name,
                     hid_t type, void *out, char *err, size_t errlen) {
    int64_t k;
    const DatasetShard *s = locate(d, i, &k);
    int64_t len = s->offsets[k + 1] - s->offsets[k];
    if (start < 0 || count < 0 || start + count > len)
        return ERR("%s: sample %lld has %lld entries, asked for %lld..%lld", s->path, (long long)i,
                   (long long)len, (long long)start, (long long)(start + count));
    return h5_read_rows(s->file, s->path, name, type, (hsize_t)(s->offsets[k] + start),
                        (hsize_t)count, out, err, errlen);
}

int dataset_read_tokens(const Dataset *d, int64_t i, int64_t start, int64_t count, int32_t *out,
                        char *err, size_t errlen) {
    return read_span(d, i, start, count, "tokens", H5T_NATIVE_INT32, out, err, errlen);
}

int dataset_read_audio(const Dataset *d, int64_t i, int64_t start, int64_t count, float *out,
                       char *err, size_t errlen) {
    /* HDF5 converts int16 to float on read; int16 data is then scaled to [-1, 1). */
    int rc = read_span(d, i, start, count, "audio", H5T_NATIVE_FLOAT, out, err, errlen);
    if (rc == 0 && !d->audio_float)
        for (int64_t j = 0; j < count; j++)
            out[j] *= 1.0f / 32768.0f;
    /* float32 audio is checked as it is read (reading a whole corpus at open would cost more
     * than the training run's first epoch); int16 needs no check */
    for (int64_t j = 0; rc == 0 && d->audio_float && j < count; j++)
        if (!isfinite(out[j]))
            rc = ERR("%s: utterance %lld holds a non-finite sample at frame %lld", d->path,
                     (long long)i, (long long)(start + j));
    return rc;
}
