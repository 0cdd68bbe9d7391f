/* dataset.c: opens and validates d2v HDF5 datasets (a shard or an index of shards, see
 * docs/datasets.md) and reads single samples from them. All validation happens here, at open,
 * so a training step never meets a malformed file. */
#define _POSIX_C_SOURCE 200809L
#include "d2v/dataset.h"

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
    if ((*modality = modality_id(mod)) < 0)
        return ERR("%s: unknown modality '%s' (text, image or speech)", path, mod);
    if (*n < 0) return ERR("%s: negative num_samples", path);
    return 0;
}

static int read_i32_attr(hid_t f, const char *path, const char *name, int32_t *v, char *err,
                         size_t errlen) {
    int64_t x;
    if (h5_read_attr_i64(f, path, name, &x, err, errlen) < 0) return -1;
    *v = (int32_t)x;
    return 0;
}

/* Offsets (n+1) must start at 0, never decrease and end at the data length. */
static int load_offsets(DatasetShard *s, const char *name, const char *data, char *err,
                        size_t errlen) {
    int rank;
    hsize_t dims[4], ddims[4];
    if (h5_dataset_shape(s->file, s->path, name, &rank, dims, err, errlen) < 0) return -1;
    if (rank != 1 || dims[0] != (hsize_t)s->num_samples + 1)
        return ERR("%s: '%s' should have num_samples + 1 = %lld entries", s->path, name,
                   (long long)s->num_samples + 1);
    if (h5_dataset_shape(s->file, s->path, data, &rank, ddims, err, errlen) < 0) return -1;
    if (rank != 1) return ERR("%s: '%s' should be 1-D", s->path, data);
    s->offsets = malloc(sizeof(int64_t) * dims[0]);
    if (!s->offsets) return ERR("%s: out of memory for '%s'", s->path, name);
    if (h5_read_rows(s->file, s->path, name, H5T_NATIVE_INT64, 0, dims[0], s->offsets, err,
                     errlen) < 0)
        return -1;
    if (s->offsets[0] != 0) return ERR("%s: '%s' does not start at 0", s->path, name);
    for (int64_t i = 0; i < s->num_samples; i++)
        if (s->offsets[i + 1] < s->offsets[i])
            return ERR("%s: '%s' decreases at entry %lld", s->path, name, (long long)i + 1);
    if ((hsize_t)s->offsets[s->num_samples] != ddims[0])
        return ERR("%s: '%s' ends at %lld but '%s' has %llu entries (truncated?)", s->path, name,
                   (long long)s->offsets[s->num_samples], data, (unsigned long long)ddims[0]);
    return 0;
}

/* Check one shard against the modality and the attributes fixed by the first shard. */
static int validate_shard(Dataset *d, DatasetShard *s, int first, char *err, size_t errlen) {
    int rank;
    hsize_t dims[4];
    if (d->modality == D2V_IMAGE) {
        int32_t h, w, c;
        if (read_i32_attr(s->file, s->path, "height", &h, err, errlen) < 0 ||
            read_i32_attr(s->file, s->path, "width", &w, err, errlen) < 0 ||
            read_i32_attr(s->file, s->path, "channels", &c, err, errlen) < 0)
            return -1;
        if (h <= 0 || w <= 0 || (c != 1 && c != 3))
            return ERR("%s: bad image shape %dx%dx%d (channels 1 or 3)", s->path, h, w, c);
        if (h5_dataset_shape(s->file, s->path, "images", &rank, dims, err, errlen) < 0) return -1;
        if (rank != 4 || dims[0] != (hsize_t)s->num_samples || dims[1] != (hsize_t)h ||
            dims[2] != (hsize_t)w || dims[3] != (hsize_t)c)
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
        for (int i = 0; i < 6; i++)
            if (read_i32_attr(s->file, s->path, names[i], &v[i], err, errlen) < 0) return -1;
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
        if (load_offsets(s, "doc_offsets", "tokens", err, errlen) < 0) return -1;
    } else {
        int32_t sr;
        char fmt[16];
        if (read_i32_attr(s->file, s->path, "sample_rate", &sr, err, errlen) < 0 ||
            h5_read_attr_str(s->file, s->path, "sample_format", fmt, sizeof fmt, err, errlen) < 0)
            return -1;
        int is_float = !strcmp(fmt, "float32");
        if (!is_float && strcmp(fmt, "int16"))
            return ERR("%s: sample_format '%s' (int16 or float32)", s->path, fmt);
        if (first)
            d->sample_rate = sr, d->audio_float = is_float;
        else if (sr != d->sample_rate || is_float != d->audio_float)
            return ERR("%s: sample rate or format differs from the other shards'", s->path);
        if (load_offsets(s, "offsets", "audio", err, errlen) < 0) return -1;
    }
    int has_labels = h5_exists(s->file, "labels");
    if (first && has_labels) d->labels = calloc((size_t)d->num_samples + 1, sizeof(int32_t));
    if (!!has_labels != !!d->labels)
        return ERR("%s: has %slabels but the first shard has %s", s->path, has_labels ? "" : "no ",
                   d->labels ? "some" : "none");
    if (has_labels) {
        if (h5_dataset_shape(s->file, s->path, "labels", &rank, dims, err, errlen) < 0) return -1;
        if (rank != 1 || dims[0] != (hsize_t)s->num_samples)
            return ERR("%s: 'labels' should have %lld entries", s->path, (long long)s->num_samples);
        if (h5_read_rows(s->file, s->path, "labels", H5T_NATIVE_INT32, 0, dims[0],
                         d->labels + s->first, err, errlen) < 0)
            return -1;
        for (int64_t i = 0; i < s->num_samples; i++)
            if (d->labels[s->first + i] < 0)
                return ERR("%s: label %d of sample %lld is negative", s->path,
                           d->labels[s->first + i], (long long)i);
    }
    if (first && h5_exists(s->file, "label_names")) {
        d->label_names =
            h5_read_strings(s->file, s->path, "label_names", &d->n_label_names, err, errlen);
        if (!d->label_names) return -1;
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
    if (strcmp(kind, "shard")) return ERR("%s: kind '%s', expected a shard", path, kind);
    if (mod != d->modality)
        return ERR("%s: modality '%s', expected '%s'", path, d2v_modality_names[mod],
                   d2v_modality_names[d->modality]);
    if (want_n >= 0 && s->num_samples != want_n)
        return ERR("%s: holds %lld samples, its index says %lld", path, (long long)s->num_samples,
                   (long long)want_n);
    return 0;
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
        size_t n = 0;
        char **names = h5_read_strings(f, path, "shards", &n, err, errlen);
        int rank;
        hsize_t dims[4];
        rc = names ? 0 : -1;
        if (rc == 0 && (h5_dataset_shape(f, path, "shard_samples", &rank, dims, err, errlen) < 0 ||
                        rank != 1 || dims[0] != n))
            rc = ERR("%s: 'shard_samples' should list %zu counts", path, n);
        int64_t *counts = calloc(n + 1, sizeof(int64_t));
        if (rc == 0)
            rc =
                h5_read_rows(f, path, "shard_samples", H5T_NATIVE_INT64, 0, n, counts, err, errlen);
        h5_close(f);
        d->shards = calloc(n + 1, sizeof(DatasetShard));
        d->n_shards = (int)n;
        int64_t total = 0;
        for (size_t i = 0; rc == 0 && i < n; i++) {
            char sp[PATH_MAX];
            const char *slash = strrchr(path, '/');
            int dir = slash ? (int)(slash - path + 1) : 0;
            if (names[i][0] == '/')
                snprintf(sp, sizeof sp, "%s", names[i]);
            else if (snprintf(sp, sizeof sp, "%.*s%s", dir, path, names[i]) >= (int)sizeof sp)
                rc = ERR("%s: shard path too long", path);
            d->shards[i].first = total, d->shards[i].file = -1;
            if (rc == 0) rc = open_shard(d, &d->shards[i], sp, counts[i], err, errlen);
            total += counts[i];
        }
        if (rc == 0 && total != d->num_samples)
            rc = ERR("%s: shards hold %lld samples, num_samples says %lld", path, (long long)total,
                     (long long)d->num_samples);
        h5_free_strings(names, n);
        free(counts);
    } else if (rc == 0 && !strcmp(kind, "shard")) {
        h5_close(f);
        d->shards = calloc(1, sizeof(DatasetShard));
        d->n_shards = 1;
        rc = open_shard(d, &d->shards[0], path, d->num_samples, err, errlen);
    } else {
        if (rc == 0) rc = ERR("%s: kind '%s' (shard or index)", path, kind);
        h5_close(f);
    }
    for (int i = 0; rc == 0 && i < d->n_shards; i++)
        rc = validate_shard(d, &d->shards[i], i == 0, err, errlen);
    if (rc == 0 && d->num_samples == 0) rc = ERR("%s: the dataset holds no samples", path);
    for (int64_t i = 0; rc == 0 && d->labels && d->label_names && i < d->num_samples; i++)
        if ((size_t)d->labels[i] >= d->n_label_names)
            rc = ERR("%s: sample %lld has label %d but there are %zu label names", path,
                     (long long)i, d->labels[i], d->n_label_names);
    if (rc < 0) dataset_close(d);
    return rc;
}

void dataset_close(Dataset *d) {
    for (int i = 0; i < d->n_shards; i++) {
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
    return rc;
}
