/* image_io.c: PNG/JPEG decoding with setjmp error recovery, channel conversion, separable
 * area-average/bilinear resizing, and IDX file reading (see image_io.h). */
#define _POSIX_C_SOURCE 200809L
#include "image_io.h"

#include <errno.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <jpeglib.h> // after stdio.h: it uses FILE without including it

#include "d2v/util.h"

static int fail(char *err, size_t errlen, const char *msg) {
    snprintf(err, errlen, "%s", msg);
    return -1;
}

/* ---- PNG ---- */

typedef struct {
    char *err;
    size_t errlen;
} PngErr;

static void png_on_error(png_structp png, png_const_charp msg) {
    PngErr *pe = png_get_error_ptr(png);
    snprintf(pe->err, pe->errlen, "corrupt PNG: %s", msg);
    png_longjmp(png, 1);
}

/* Warnings (bad ancillary-chunk CRCs, odd ICC profiles) leave the pixels intact: ignore them. */
static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

/* libpng's stdio reader reports a short read as "Read Error"; say what it means. */
static void png_read_file(png_structp png, png_bytep data, size_t len) {
    if (fread(data, 1, len, png_get_io_ptr(png)) != len)
        png_error(png, "unexpected end of file (truncated)");
}

static int decode_png(FILE *f, Image *img, char *err, size_t errlen) {
    PngErr pe = {err, errlen};
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, &pe, png_on_error, png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return fail(err, errlen, "out of memory starting libpng");
    }
    /* Set after setjmp and freed on the error path, hence volatile. */
    uint8_t *volatile px = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free(px), free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_set_read_fn(png, f, png_read_file);
    png_set_user_limits(png, 1 << 16, 1 << 16);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int type = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if ((size_t)w * h > IMAGE_MAX_PIXELS) png_error(png, "image too large");
    if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (depth == 16) png_set_scale_16(png); // rounds v * 255 / 65535, unlike strip_16
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int c = png_get_channels(png, info);
    if (c < 1 || c > 4 || png_get_rowbytes(png, info) != (size_t)w * c)
        png_error(png, "unsupported pixel layout");
    px = malloc((size_t)w * h * c);
    rows = malloc(sizeof(png_bytep) * h);
    if (!px || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++)
        rows[y] = px + (size_t)y * w * c;
    png_read_image(png, rows);
    png_read_end(png, NULL); // reaches IEND: a file cut after the pixel data is still truncated
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    img->h = (int)h, img->w = (int)w, img->c = c, img->px = px;
    return 0;
}

/* ---- JPEG ---- */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char *err;
    size_t errlen;
} JpegErr;

static void jpeg_on_error(j_common_ptr cinfo) {
    JpegErr *je = (JpegErr *)cinfo->err;
    char msg[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, msg);
    snprintf(je->err, je->errlen, "corrupt JPEG: %s", msg);
    longjmp(je->jb, 1);
}

/* libjpeg only warns on truncated or corrupt entropy data and fills in gray: stop instead, as
 * turbojpeg's TJFLAG_STOPONWARNING does, so damaged pixels never reach a dataset. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level < 0) jpeg_on_error(cinfo);
}

static int decode_jpeg(FILE *f, Image *img, char *err, size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    JpegErr je;
    uint8_t *volatile px = NULL;
    uint8_t *volatile row = NULL;
    cinfo.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = jpeg_on_error;
    je.pub.emit_message = jpeg_on_message;
    je.err = err, je.errlen = errlen;
    if (setjmp(je.jb)) {
        free(px), free(row);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_stdio_src(&cinfo, f);
    jpeg_read_header(&cinfo, TRUE);
    /* before libjpeg sizes its buffers by the header's dimensions (a progressive image keeps
     * every coefficient): bounded like the pixels, and libjpeg's own pool capped too */
    if ((size_t)cinfo.image_width * cinfo.image_height > IMAGE_MAX_PIXELS) {
        snprintf(err, errlen, "image too large (%ux%u)", (unsigned)cinfo.image_width,
                 (unsigned)cinfo.image_height);
        longjmp(je.jb, 1);
    }
    cinfo.mem->max_memory_to_use = (long)(IMAGE_MAX_PIXELS * 8);
    int cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
    cinfo.out_color_space = cinfo.jpeg_color_space == JCS_GRAYSCALE ? JCS_GRAYSCALE
                            : cmyk                                  ? JCS_CMYK
                                                                    : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    size_t w = cinfo.output_width, h = cinfo.output_height, n = cinfo.output_components;
    if (w * h > IMAGE_MAX_PIXELS) {
        snprintf(err, errlen, "image too large (%zux%zu)", w, h);
        longjmp(je.jb, 1);
    }
    int c = cmyk ? 3 : (int)n;
    px = malloc(w * h * c);
    row = malloc(w * n);
    if (!px || !row) {
        snprintf(err, errlen, "out of memory");
        longjmp(je.jb, 1);
    }
    /* Adobe writes CMYK inverted (0 = full ink); others store it plainly. */
    int inverted = cinfo.saw_Adobe_marker;
    while (cinfo.output_scanline < h) {
        size_t y = cinfo.output_scanline;
        JSAMPROW rp = row;
        jpeg_read_scanlines(&cinfo, &rp, 1);
        uint8_t *o = px + y * w * c;
        if (!cmyk) {
            memcpy(o, row, w * n);
            continue;
        }
        for (size_t x = 0; x < w; x++) {
            const uint8_t *s = row + 4 * x;
            int k = inverted ? s[3] : 255 - s[3];
            for (int ch = 0; ch < 3; ch++) {
                int v = inverted ? s[ch] : 255 - s[ch];
                o[3 * x + ch] = (uint8_t)((v * k + 127) / 255);
            }
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(row);
    img->h = (int)h, img->w = (int)w, img->c = c, img->px = px;
    return 0;
}

int image_decode_file(const char *path, Image *img, char *err, size_t errlen) {
    memset(img, 0, sizeof *img);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open: %s", strerror(errno));
        return -1;
    }
    uint8_t sig[8] = {0};
    size_t got = fread(sig, 1, sizeof sig, f);
    rewind(f);
    int rc;
    if (got == 0)
        rc = fail(err, errlen, "empty file");
    else if (got == 8 && png_sig_cmp(sig, 0, 8) == 0)
        rc = decode_png(f, img, err, errlen);
    else if (got >= 3 && sig[0] == 0xFF && sig[1] == 0xD8 && sig[2] == 0xFF)
        rc = decode_jpeg(f, img, err, errlen);
    else
        rc = fail(err, errlen, "not a PNG or JPEG file");
    fclose(f);
    return rc;
}

void image_free(Image *img) {
    free(img->px);
    memset(img, 0, sizeof *img);
}

/* ---- channels ---- */

void image_convert_channels(const Image *img, int c_out, uint8_t *out) {
    size_t n = (size_t)img->h * img->w;
    int c = img->c, alpha = c == 2 || c == 4, color = c >= 3;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = img->px + i * c;
        int r = s[0], g = color ? s[1] : s[0], b = color ? s[2] : s[0];
        if (alpha) {
            int a = s[c - 1];
            r = (r * a + 127) / 255, g = (g * a + 127) / 255, b = (b * a + 127) / 255;
        }
        if (c_out == 1)
            out[i] = (uint8_t)(color ? (299 * r + 587 * g + 114 * b + 500) / 1000 : r);
        else
            out[3 * i] = (uint8_t)r, out[3 * i + 1] = (uint8_t)g, out[3 * i + 2] = (uint8_t)b;
    }
}

/* ---- resizing ---- */

/* Per output index j along one axis: taps source indices first[j] .. first[j] + count[j] - 1 with
 * weights wt[j * max_taps + t] (summing to 1). */
typedef struct {
    int max_taps;
    int *first, *count;
    double *wt;
} AxisWeights;

static void axis_weights(AxisWeights *a, int in, int out) {
    double scale = (double)in / out;
    a->max_taps = in > out ? (int)ceil(scale) + 1 : 2;
    a->first = xalloc(sizeof(int) * out, "resize taps");
    a->count = xalloc(sizeof(int) * out, "resize taps");
    a->wt = xalloc(sizeof(double) * out * a->max_taps, "resize weights");
    for (int j = 0; j < out; j++) {
        double *w = a->wt + (size_t)j * a->max_taps;
        if (in > out) {
            /* Area: output j covers source [lo, hi); weight = overlap / scale. */
            double lo = (double)j * in / out, hi = (double)(j + 1) * in / out;
            int i0 = (int)floor(lo), n = 0;
            for (int i = i0; i < in && i < hi; i++) {
                double ov = fmin(i + 1.0, hi) - fmax((double)i, lo);
                if (ov > 0) w[n++] = ov / scale;
            }
            a->first[j] = i0, a->count[j] = n;
        } else if (in < out) {
            /* Bilinear with half-pixel centres (align_corners = False), clamped at the edges. */
            double src = (j + 0.5) * scale - 0.5;
            if (src < 0) src = 0;
            if (src > in - 1) src = in - 1;
            int i0 = (int)floor(src);
            double f = src - i0;
            if (i0 >= in - 1) i0 = in - 1, f = 0;
            a->first[j] = i0, a->count[j] = f > 0 ? 2 : 1;
            w[0] = 1 - f, w[1] = f;
        } else {
            a->first[j] = j, a->count[j] = 1, w[0] = 1;
        }
    }
}

static void axis_free(AxisWeights *a) { free(a->first), free(a->count), free(a->wt); }

void image_resize_f32(const float *in, int h, int w, int c, float *out, int oh, int ow) {
    AxisWeights ax, ay;
    axis_weights(&ax, w, ow);
    axis_weights(&ay, h, oh);
    float *tmp = xalloc(sizeof(float) * h * ow * c, "resize buffer"); // (h, ow, c)
    for (int y = 0; y < h; y++)
        for (int x = 0; x < ow; x++) {
            const double *wt = ax.wt + (size_t)x * ax.max_taps;
            for (int ch = 0; ch < c; ch++) {
                double s = 0;
                for (int t = 0; t < ax.count[x]; t++)
                    s += wt[t] * in[((size_t)y * w + ax.first[x] + t) * c + ch];
                tmp[((size_t)y * ow + x) * c + ch] = (float)s;
            }
        }
    for (int y = 0; y < oh; y++) {
        const double *wt = ay.wt + (size_t)y * ay.max_taps;
        for (int i = 0; i < ow * c; i++) {
            double s = 0;
            for (int t = 0; t < ay.count[y]; t++)
                s += wt[t] * tmp[(size_t)(ay.first[y] + t) * ow * c + i];
            out[(size_t)y * ow * c + i] = (float)s;
        }
    }
    free(tmp);
    axis_free(&ax), axis_free(&ay);
}

void image_resize_u8(const uint8_t *in, int h, int w, int c, uint8_t *out, int oh, int ow) {
    size_t n_in = (size_t)h * w * c, n_out = (size_t)oh * ow * c;
    if (h == oh && w == ow) {
        memcpy(out, in, n_in);
        return;
    }
    float *fi = xalloc(sizeof(float) * n_in, "resize input"),
          *fo = xalloc(sizeof(float) * n_out, "resize output");
    for (size_t i = 0; i < n_in; i++)
        fi[i] = in[i];
    image_resize_f32(fi, h, w, c, fo, oh, ow);
    for (size_t i = 0; i < n_out; i++) {
        float v = floorf(fo[i] + 0.5f);
        out[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    free(fi), free(fo);
}

/* ---- IDX ---- */

int idx_read(const char *path, int ndims, IdxFile *f, char *err, size_t errlen) {
    memset(f, 0, sizeof *f);
    errno = 0;
    gzFile gz = gzopen(path, "rb");
    if (!gz) {
        snprintf(err, errlen, "%s: cannot open: %s", path, errno ? strerror(errno) : "zlib error");
        return -1;
    }
    gzbuffer(gz, 1 << 17);
    uint8_t head[4 + 4 * 4];
    size_t hlen = 4 + 4 * (size_t)ndims;
    int got = gzread(gz, head, (unsigned)hlen);
    if (got < 4 || head[0] != 0 || head[1] != 0 || head[2] != 0x08 || head[3] != ndims) {
        gzclose(gz);
        snprintf(err, errlen,
                 "%s: not an IDX file of unsigned bytes with %d dimension(s) (magic 0x%08x)", path,
                 ndims, 0x800 + ndims);
        return -1;
    }
    if (got < (int)hlen) {
        gzclose(gz);
        snprintf(err, errlen, "%s: IDX header cut short (%d of %zu bytes)", path, got, hlen);
        return -1;
    }
    f->ndims = ndims;
    f->item_bytes = 1;
    for (int i = 0; i < ndims; i++) {
        const uint8_t *p = head + 4 + 4 * i;
        f->dims[i] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        if (i) f->item_bytes *= f->dims[i];
    }
    if (f->item_bytes == 0 || f->item_bytes > IMAGE_MAX_PIXELS) {
        gzclose(gz);
        snprintf(err, errlen, "%s: IDX item size %zu bytes is not plausible", path, f->item_bytes);
        return -1;
    }
    /* Grow as data arrives rather than trusting the header's item count, and keep no more than
     * the declared items: what follows them is only counted (up to 1 MiB), so a small file
     * that inflates to gigabytes costs no memory. */
    size_t want = (size_t)f->dims[0] * f->item_bytes, len = 0, extra = 0;
    size_t cap = want < (1u << 20) ? (want ? want : 1) : 1u << 20;
    uint8_t *buf = malloc(cap), scratch[1 << 14];
    if (!buf) die("%s: out of memory reading IDX data", path);
    for (;;) {
        if (len == cap && len < want) {
            cap = cap * 2 < want ? cap * 2 : want;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) die("%s: out of memory reading IDX data", path);
            buf = nb;
        }
        if (len == cap && extra >= (1u << 20)) break;
        size_t ask = len < cap ? cap - len : sizeof scratch;
        if (ask > (1u << 30)) ask = 1u << 30;
        int n = gzread(gz, len < cap ? buf + len : scratch, (unsigned)ask);
        if (n <= 0) {
            int zerr = Z_OK;
            const char *m = gzerror(gz, &zerr);
            if (n < 0 || (zerr != Z_OK && zerr != Z_STREAM_END)) {
                size_t pl = strlen(path); // zlib prefixes the path: the caller names the file
                if (m && !strncmp(m, path, pl) && !strncmp(m + pl, ": ", 2)) m += pl + 2;
                snprintf(f->read_error, sizeof f->read_error, "%s", m ? m : "read error");
            }
            break;
        }
        if (len < cap)
            len += (size_t)n;
        else
            extra += (size_t)n;
    }
    gzclose(gz);
    f->n_items = (len < want ? len : want) / f->item_bytes;
    f->extra_bytes = len - f->n_items * f->item_bytes + extra;
    f->data = buf;
    return 0;
}

void idx_free(IdxFile *f) {
    free(f->data);
    memset(f, 0, sizeof *f);
}
