/* safetensors.c: the safetensors file format (an 8-byte little-endian header length, a JSON header
 * naming each tensor's dtype, shape and byte range, then the raw little-endian data), written
 * with json-c and read back with every field checked, so a truncated file or a header that lies
 * about its offsets is one line naming the file (docs/export.md). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "d2v/export.h"
#include "d2v/util.h"

#define FAIL(...) (snprintf(err, errlen, __VA_ARGS__), -1)

static void put_u64le(unsigned char *b, uint64_t v) {
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

/* Floats as little-endian bytes whatever the host order (x86 already is). */
static int write_f32le(FILE *f, const float *x, size_t n) {
    enum { CH = 4096 };
    unsigned char buf[CH * 4];
    for (size_t i = 0; i < n; i += CH) {
        size_t m = n - i < CH ? n - i : CH;
        for (size_t k = 0; k < m; k++) {
            uint32_t u;
            memcpy(&u, x ? &x[i + k] : &(float){0}, 4);
            for (int b = 0; b < 4; b++)
                buf[4 * k + b] = (unsigned char)(u >> (8 * b));
        }
        if (fwrite(buf, 4, m, f) != m) return -1;
    }
    return 0;
}

int st_write(const char *path, const StTensor *t, int n, char *err, size_t errlen) {
    json_object *h = json_object_new_object();
    json_object *meta = json_object_new_object();
    json_object_object_add(meta, "format", json_object_new_string("pt"));
    json_object_object_add(h, "__metadata__", meta);
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        json_object *e = json_object_new_object(), *shape = json_object_new_array(),
                    *offs = json_object_new_array();
        json_object_object_add(e, "dtype", json_object_new_string("F32"));
        for (int d = 0; d < t[i].rank; d++)
            json_object_array_add(shape, json_object_new_int64(t[i].shape[d]));
        json_object_object_add(e, "shape", shape);
        json_object_array_add(offs, json_object_new_int64((int64_t)off));
        off += 4 * (uint64_t)t[i].count;
        json_object_array_add(offs, json_object_new_int64((int64_t)off));
        json_object_object_add(e, "data_offsets", offs);
        json_object_object_add(h, t[i].name, e);
    }
    const char *js =
        json_object_to_json_string_ext(h, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    size_t len = strlen(js), padded = (len + 7) / 8 * 8; /* the data starts 8-byte aligned */
    char tmp[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    int rc = 0;
    if (!f) {
        rc = FAIL("%s: cannot create (%s)", tmp, strerror(errno));
    } else {
        unsigned char lenb[8];
        put_u64le(lenb, padded);
        int ok = fwrite(lenb, 1, 8, f) == 8 && fwrite(js, 1, len, f) == len;
        for (size_t k = len; ok && k < padded; k++)
            ok = fputc(' ', f) != EOF;
        for (int i = 0; ok && i < n; i++)
            ok = write_f32le(f, t[i].data, t[i].count) == 0;
        ok &= fflush(f) == 0 && fsync(fileno(f)) == 0;
        ok &= fclose(f) == 0;
        if (!ok || rename(tmp, path) != 0) {
            rc = FAIL("%s: cannot write (%s)", path, strerror(errno));
            unlink(tmp);
        }
    }
    json_object_put(h);
    return rc;
}

void st_free(StTensor *t, int n) {
    for (int i = 0; t && i < n; i++)
        free(t[i].data);
    free(t);
}

static float half_to_float(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 0) { /* zero or subnormal: m * 2^-24 */
        float v = (float)m / 16777216.0f;
        return s ? -v : v;
    }
    if (e == 31)
        u = s | 0x7f800000u | (m << 13);
    else
        u = s | ((e + 112) << 23) | (m << 13);
    float v;
    memcpy(&v, &u, 4);
    return v;
}

typedef struct {
    uint64_t begin, end;
    int idx;
} Range;

/* The format's dtypes: floats are read (widened or narrowed to float32); integer and boolean
 * tensors are HF's buffers (position_ids, relative_position_index in older checkpoints), checked
 * for their byte ranges and left unread. */
static const struct {
    const char *name;
    int size;
    char kind; // 'f' float, 'b' bfloat16, 'i' integer or boolean
} st_dtypes[] = {{"F64", 8, 'f'},  {"F32", 4, 'f'}, {"F16", 2, 'f'}, {"BF16", 2, 'b'},
                 {"I64", 8, 'i'},  {"I32", 4, 'i'}, {"I16", 2, 'i'}, {"I8", 1, 'i'},
                 {"U64", 8, 'i'},  {"U32", 4, 'i'}, {"U16", 2, 'i'}, {"U8", 1, 'i'},
                 {"BOOL", 1, 'i'}, {NULL, 0, 0}};

static int cmp_range(const void *a, const void *b) {
    const Range *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

int st_read(const char *path, StTensor **out, int *nout, char *err, size_t errlen) {
    *out = NULL, *nout = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return FAIL("%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return FAIL("%s: not a regular file", path);
    }
    uint64_t size = (uint64_t)sb.st_size, hlen = 0;
    unsigned char lenb[8];
    if (size < 8 || fread(lenb, 1, 8, f) != 8) {
        fclose(f);
        return FAIL("%s: %llu bytes, shorter than the 8-byte header length (truncated)", path,
                    (unsigned long long)size);
    }
    for (int i = 0; i < 8; i++)
        hlen |= (uint64_t)lenb[i] << (8 * i);
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > size - 8) {
        fclose(f);
        return FAIL("%s: header length %llu does not fit the file's %llu bytes (truncated or not "
                    "a safetensors file)",
                    path, (unsigned long long)hlen, (unsigned long long)size);
    }
    char *hs = xalloc(hlen + 1, "safetensors header");
    if (fread(hs, 1, hlen, f) != hlen) {
        free(hs), fclose(f);
        return FAIL("%s: cannot read the header", path);
    }
    hs[hlen] = 0;
    enum json_tokener_error jerr;
    json_object *h = json_tokener_parse_verbose(hs, &jerr);
    free(hs);
    if (!h || !json_object_is_type(h, json_type_object)) {
        if (h) json_object_put(h);
        fclose(f);
        return FAIL("%s: the header is not a JSON object (%s)", path,
                    h ? "another JSON value" : json_tokener_error_desc(jerr));
    }
    uint64_t data_size = size - 8 - hlen, data_start = 8 + hlen;
    int cap = json_object_object_length(h), n = 0, rc = 0;
    StTensor *t = calloc((size_t)cap + 1, sizeof *t);
    Range *r = calloc((size_t)cap + 1, sizeof *r);
    int *esz = calloc((size_t)cap + 1, sizeof *esz);
    char *kind = calloc((size_t)cap + 1, 1);
    char pr[140];
    json_object_object_foreach(h, key, val) {
        if (rc) break;
        if (!strcmp(key, "__metadata__")) continue;
        const char *nm = str_printable(key, pr, sizeof pr);
        json_object *dt, *sh, *of;
        if (strlen(key) >= sizeof t[n].name) {
            rc = FAIL("%s: tensor name '%s' is too long", path, nm);
            break;
        }
        if (!json_object_is_type(val, json_type_object) ||
            !json_object_object_get_ex(val, "dtype", &dt) ||
            !json_object_object_get_ex(val, "shape", &sh) ||
            !json_object_object_get_ex(val, "data_offsets", &of) ||
            !json_object_is_type(dt, json_type_string) ||
            !json_object_is_type(sh, json_type_array) ||
            !json_object_is_type(of, json_type_array) || json_object_array_length(of) != 2) {
            rc = FAIL("%s: tensor %s: the header entry needs dtype, shape and data_offsets [begin, "
                      "end]",
                      path, nm);
            break;
        }
        const char *ds = json_object_get_string(dt);
        int di = 0;
        while (st_dtypes[di].name && strcmp(st_dtypes[di].name, ds))
            di++;
        if (!st_dtypes[di].name) {
            rc = FAIL("%s: tensor %s has dtype %s, not one of the format's", path, nm,
                      str_printable(ds, pr, 32));
            break;
        }
        int es = st_dtypes[di].kind == 'b' ? -2 : st_dtypes[di].size;
        StTensor *x = &t[n];
        snprintf(x->name, sizeof x->name, "%s", key);
        snprintf(x->dtype, sizeof x->dtype, "%s", ds);
        kind[n] = st_dtypes[di].kind;
        x->rank = (int)json_object_array_length(sh);
        if (x->rank > 4) {
            rc = FAIL("%s: tensor %s has %d dimensions (4 at most here)", path, nm, x->rank);
            break;
        }
        uint64_t count = 1;
        for (int d = 0; d < x->rank && !rc; d++) {
            json_object *v = json_object_array_get_idx(sh, (size_t)d);
            int64_t s = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : -1;
            if (s < 0 || s > ((int64_t)1 << 40) || (s && count > (UINT64_C(1) << 40) / (uint64_t)s))
                rc = FAIL("%s: tensor %s: shape entry %d is not a size", path, nm, d);
            x->shape[d] = s, count *= (uint64_t)(s > 0 ? s : 0);
        }
        if (rc) break;
        x->count = (size_t)count;
        json_object *b = json_object_array_get_idx(of, 0), *e = json_object_array_get_idx(of, 1);
        int64_t bi = json_object_is_type(b, json_type_int) ? json_object_get_int64(b) : -1;
        int64_t ei = json_object_is_type(e, json_type_int) ? json_object_get_int64(e) : -1;
        int bytes = es < 0 ? -es : es;
        if (bi < 0 || ei < bi || (uint64_t)ei > data_size) {
            rc = FAIL("%s: tensor %s: data_offsets [%lld, %lld] are outside the %llu bytes of data "
                      "(truncated file, or a header that lies)",
                      path, nm, (long long)bi, (long long)ei, (unsigned long long)data_size);
            break;
        }
        if ((uint64_t)(ei - bi) != count * (uint64_t)bytes) {
            rc = FAIL("%s: tensor %s: data_offsets [%lld, %lld] hold %lld bytes, its shape and "
                      "dtype need %llu",
                      path, nm, (long long)bi, (long long)ei, (long long)(ei - bi),
                      (unsigned long long)(count * (uint64_t)bytes));
            break;
        }
        r[n] = (Range){(uint64_t)bi, (uint64_t)ei, n};
        esz[n] = es;
        n++;
    }
    json_object_put(h);
    if (!rc) { /* the format: the ranges tile the buffer, no overlap, no hole */
        qsort(r, (size_t)n, sizeof *r, cmp_range);
        uint64_t at = 0;
        for (int i = 0; i < n && !rc; i++) {
            if (r[i].begin != at)
                rc = FAIL("%s: tensor %s starts at byte %llu, the previous one ends at %llu "
                          "(overlapping or missing data: a header that lies)",
                          path, str_printable(t[r[i].idx].name, pr, sizeof pr),
                          (unsigned long long)r[i].begin, (unsigned long long)at);
            at = r[i].end;
        }
        if (!rc && at != data_size)
            rc = FAIL("%s: the tensors cover %llu of the %llu data bytes", path,
                      (unsigned long long)at, (unsigned long long)data_size);
    }
    for (int i = 0; i < n && !rc; i++) {
        StTensor *x = &t[i];
        if (kind[i] == 'i') continue; /* an integer buffer: checked above, its values unread */
        int bytes = esz[i] < 0 ? 2 : esz[i];
        size_t nb = x->count * (size_t)bytes;
        unsigned char *raw = xalloc(nb ? nb : 1, "safetensors tensor");
        x->data = xalloc(sizeof(float) * (x->count ? x->count : 1), "safetensors tensor");
        uint64_t begin = 0;
        for (int k = 0; k < n; k++)
            if (r[k].idx == i) begin = r[k].begin;
        if (fseeko(f, (off_t)(data_start + begin), SEEK_SET) != 0 || fread(raw, 1, nb, f) != nb)
            rc = FAIL("%s: tensor %s: cannot read its %zu bytes (truncated?)", path,
                      str_printable(x->name, pr, sizeof pr), nb);
        for (size_t k = 0; !rc && k < x->count; k++) {
            if (bytes == 8) {
                uint64_t u = 0;
                for (int b = 0; b < 8; b++)
                    u |= (uint64_t)raw[8 * k + b] << (8 * b);
                double dv;
                memcpy(&dv, &u, 8);
                x->data[k] = (float)dv;
            } else if (bytes == 4) {
                uint32_t u = (uint32_t)raw[4 * k] | (uint32_t)raw[4 * k + 1] << 8 |
                             (uint32_t)raw[4 * k + 2] << 16 | (uint32_t)raw[4 * k + 3] << 24;
                memcpy(&x->data[k], &u, 4);
            } else {
                uint16_t u = (uint16_t)(raw[2 * k] | raw[2 * k + 1] << 8);
                if (esz[i] < 0) { /* bfloat16: the top half of a float32 */
                    uint32_t w = (uint32_t)u << 16;
                    memcpy(&x->data[k], &w, 4);
                } else {
                    x->data[k] = half_to_float(u);
                }
            }
        }
        free(raw);
    }
    fclose(f);
    free(r), free(esz), free(kind);
    if (rc) {
        st_free(t, n);
        return -1;
    }
    *out = t, *nout = n;
    return 0;
}
