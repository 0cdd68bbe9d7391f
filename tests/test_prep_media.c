/* test_prep_media.c: image and speech preparation pieces: resize and resample numerics, channel
 * conversion, PNG/JPEG decoding of files written here (and corrupt ones), sound-file loading, IDX
 * reading. `--write-tree DIR IMAGES LABELS` instead writes the PNG/JPEG class tree that
 * script_prep_media.sh feeds to d2v-prep-image. */
#include <malloc.h>
#include <math.h>
#include <png.h>
#include <samplerate.h>
#include <sndfile.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <jpeglib.h> // after stdio.h: it uses FILE without including it

#include "audio_io.h"
#include "check.h"
#include "d2v/util.h"
#include "image_io.h"

#define PI_D 3.14159265358979323846

static char tmpdir[] = "/tmp/d2v-test-media-XXXXXX";

static const char *tmp_path(const char *name) {
    static char buf[8][512];
    static int k = 0;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

/* ---- writers ---- */

/* rows: (h, rowbytes) packed as PNG stores them (16-bit samples big-endian). */
static void write_png(const char *path, int w, int h, int type, int depth, int interlace,
                      const uint8_t *rows, size_t rowbytes, const png_color *pal, int npal,
                      const uint8_t *trns, int ntrns) {
    FILE *f = fopen(path, "wb");
    if (!f) die("%s: cannot create", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    if (setjmp(png_jmpbuf(png))) die("%s: libpng write failed", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, type,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, npal);
    if (trns) png_set_tRNS(png, info, trns, ntrns, NULL);
    png_bytep *rp = malloc(sizeof(png_bytep) * h);
    for (int y = 0; y < h; y++)
        rp[y] = (png_bytep)rows + (size_t)y * rowbytes;
    png_set_rows(png, info, rp);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    free(rp);
    fclose(f);
}

/* Baseline JPEG without chroma subsampling (so colour stays accurate at high quality). */
static void write_jpeg(const char *path, int w, int h, int c, const uint8_t *px, int quality) {
    FILE *f = fopen(path, "wb");
    if (!f) die("%s: cannot create", path);
    struct jpeg_compress_struct cinfo;
    struct jpeg_error_mgr jerr;
    cinfo.err = jpeg_std_error(&jerr);
    jpeg_create_compress(&cinfo);
    jpeg_stdio_dest(&cinfo, f);
    cinfo.image_width = (JDIMENSION)w, cinfo.image_height = (JDIMENSION)h;
    cinfo.input_components = c;
    cinfo.in_color_space = c == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, quality, TRUE);
    for (int i = 0; i < cinfo.num_components; i++)
        cinfo.comp_info[i].h_samp_factor = cinfo.comp_info[i].v_samp_factor = 1;
    jpeg_start_compress(&cinfo, TRUE);
    while (cinfo.next_scanline < cinfo.image_height) {
        JSAMPROW row = (JSAMPROW)px + (size_t)cinfo.next_scanline * w * c;
        jpeg_write_scanlines(&cinfo, &row, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    fclose(f);
}

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) die("%s: cannot write", path);
    fclose(f);
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) die("%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    rewind(f);
    uint8_t *p = malloc(*n + 1);
    if (fread(p, 1, *n, f) != *n) die("%s: cannot read", path);
    fclose(f);
    return p;
}

/* Keep the first `keep` bytes of src in dst. */
static void truncate_copy(const char *src, const char *dst, size_t keep) {
    size_t n;
    uint8_t *p = read_all(src, &n);
    write_bytes(dst, p, keep < n ? keep : n);
    free(p);
}

/* ---- resizing ---- */

static float frand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / (float)(1 << 24);
}

static void test_resize(void) {
    /* A constant image stays constant, shrinking, growing, mixed and at odd ratios. */
    static const int shapes[][4] = {{28, 28, 14, 14}, {28, 28, 13, 11}, {7, 9, 20, 31},
                                    {13, 40, 40, 13}, {5, 5, 5, 5},     {1, 9, 3, 2}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int h = shapes[k][0], w = shapes[k][1], oh = shapes[k][2], ow = shapes[k][3], c = 3;
        size_t n = (size_t)h * w * c, m = (size_t)oh * ow * c;
        float *in = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * m);
        uint8_t *in8 = malloc(n), *out8 = malloc(m);
        for (size_t i = 0; i < n; i++)
            in[i] = 173.0f, in8[i] = 173;
        image_resize_f32(in, h, w, c, out, oh, ow);
        image_resize_u8(in8, h, w, c, out8, oh, ow);
        double worst = 0;
        int exact8 = 1;
        for (size_t i = 0; i < m; i++) {
            worst = fmax(worst, fabs(out[i] - 173.0));
            exact8 &= out8[i] == 173;
        }
        char label[128];
        snprintf(label, sizeof label, "constant image %dx%d -> %dx%d stays constant", h, w, oh, ow);
        check_record(worst < 1e-4 && exact8, label);
        free(in), free(out), free(in8), free(out8);
    }

    /* A linear ramp v = a + bx x + by y stays that ramp at the sampled coordinates: bilinear
     * samples src = (j + 0.5) in/out - 0.5 (clamped); area averaging over whole source pixels
     * (integer factors, 3 and 4 here) is the mean over the covered block, the value at its
     * centre. (At fractional factors the cut pixels are flat, so the result is only near-linear.)
     */
    for (int grow = 0; grow < 2; grow++) {
        int h = grow ? 6 : 30, w = grow ? 8 : 36, oh = grow ? 17 : 10, ow = grow ? 23 : 9;
        double a = 3, bx = 1.5, by = -0.75;
        float *in = malloc(sizeof(float) * h * w), *out = malloc(sizeof(float) * oh * ow);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                in[y * w + x] = (float)(a + bx * x + by * y);
        image_resize_f32(in, h, w, 1, out, oh, ow);
        double worst = 0;
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                double sx = (x + 0.5) * w / ow - 0.5, sy = (y + 0.5) * h / oh - 0.5;
                sx = fmin(fmax(sx, 0), w - 1), sy = fmin(fmax(sy, 0), h - 1);
                worst = fmax(worst, fabs(out[y * ow + x] - (a + bx * sx + by * sy)));
            }
        printf("linear ramp %dx%d -> %dx%d (%s): max error %.2e\n", h, w, oh, ow,
               grow ? "bilinear" : "area", worst);
        check_record(worst < 1e-4, grow ? "linear ramp stays linear under bilinear upscaling"
                                        : "linear ramp stays linear under area downscaling");
        free(in), free(out);
    }

    /* Halving with area averaging gives the exact 2x2 means (and rounds them in uint8). */
    {
        int h = 10, w = 14, c = 3, oh = 5, ow = 7;
        uint32_t seed = 7;
        float *in = malloc(sizeof(float) * h * w * c), *out = malloc(sizeof(float) * oh * ow * c);
        uint8_t *in8 = malloc(h * w * c), *out8 = malloc(oh * ow * c);
        for (int i = 0; i < h * w * c; i++)
            in8[i] = (uint8_t)(frand(&seed) * 256), in[i] = in8[i];
        image_resize_f32(in, h, w, c, out, oh, ow);
        image_resize_u8(in8, h, w, c, out8, oh, ow);
        double worst = 0;
        int round_ok = 1;
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++)
                for (int ch = 0; ch < c; ch++) {
                    int s = 0;
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++)
                            s += in8[((2 * y + dy) * w + 2 * x + dx) * c + ch];
                    size_t o = ((size_t)y * ow + x) * c + ch;
                    worst = fmax(worst, fabs(out[o] - s / 4.0));
                    round_ok &= out8[o] == (s + 2) / 4; // round half up
                }
        printf("area 2x downscale: max |out - 2x2 mean| %.2e\n", worst);
        check_record(worst < 1e-5, "area downscaling by 2 gives exact 2x2 means");
        check_record(round_ok, "uint8 area downscaling rounds the 2x2 means to nearest");
        free(in), free(out), free(in8), free(out8);
    }

    /* Same size is an exact copy. */
    uint8_t a[12] = {0, 1, 2, 3, 250, 251, 252, 253, 254, 255, 7, 9}, b[12];
    image_resize_u8(a, 2, 2, 3, b, 2, 2);
    CHECK(memcmp(a, b, sizeof a) == 0);
}

static void test_channels(void) {
    uint8_t gray[2] = {10, 200}, rgb[6] = {255, 0, 0, 10, 20, 30},
            rgba[8] = {100, 200, 50, 255, 100, 200, 50, 128};
    uint8_t ga[4] = {90, 255, 90, 0}, out[8];
    Image g = {1, 2, 1, gray}, c3 = {1, 2, 3, rgb}, c4 = {1, 2, 4, rgba}, c2 = {1, 2, 2, ga};
    image_convert_channels(&g, 3, out);
    CHECK(out[0] == 10 && out[1] == 10 && out[2] == 10 && out[3] == 200 && out[5] == 200);
    image_convert_channels(&c3, 1, out);
    CHECK(out[0] == (299 * 255 + 500) / 1000); // 76
    CHECK(out[1] == (299 * 10 + 587 * 20 + 114 * 30 + 500) / 1000);
    image_convert_channels(&c4, 3, out);
    CHECK(out[0] == 100 && out[1] == 200 && out[2] == 50); // opaque: unchanged
    CHECK(out[3] == (100 * 128 + 127) / 255 && out[4] == (200 * 128 + 127) / 255); // over black
    image_convert_channels(&c2, 1, out);
    CHECK(out[0] == 90 && out[1] == 0);
}

/* ---- decoding ---- */

/* A smooth test pattern (JPEG-friendly) with every channel different. */
static uint8_t pattern(int x, int y, int ch) { return (uint8_t)(40 + 5 * x + 3 * y + 37 * ch); }

static int decode_expect(const char *name, int w, int h, int c, const uint8_t *want, int tol) {
    Image img;
    char err[256] = "";
    int rc = image_decode_file(tmp_path(name), &img, err, sizeof err);
    int ok = rc == 0 && img.w == w && img.h == h && img.c == c;
    int worst = 0;
    if (ok)
        for (size_t i = 0; i < (size_t)w * h * c; i++)
            worst = abs((int)img.px[i] - want[i]) > worst ? abs((int)img.px[i] - want[i]) : worst;
    char label[400];
    snprintf(label, sizeof label, "decode %-12s %dx%dx%d max diff %d%s%s", name, h, w, c, worst,
             rc ? " error: " : "", err);
    check_record(ok && worst <= tol, label);
    if (rc == 0) image_free(&img);
    return ok;
}

static void test_decode(void) {
    enum { W = 21, H = 13 };
    uint8_t g8[W * H], g16[W * H * 2], rgb[W * H * 3], rgba[W * H * 4], ga[W * H * 2];
    uint8_t idx[W * H], pal_rgb[W * H * 3], pal_rgba[W * H * 4], bits[H * 3], bits_want[W * H];
    png_color pal[16];
    uint8_t trns[16];
    for (int i = 0; i < 16; i++)
        pal[i] = (png_color){(uint8_t)(i * 16), (uint8_t)(255 - i * 9), (uint8_t)(i * i)},
        trns[i] = (uint8_t)(255 - i * 10);
    memset(bits, 0, sizeof bits);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int i = y * W + x;
            g8[i] = pattern(x, y, 0);
            uint16_t v = (uint16_t)(g8[i] * 257 + (x & 1) * 100); // odd columns off the 257 grid
            g16[2 * i] = (uint8_t)(v >> 8), g16[2 * i + 1] = (uint8_t)v;
            for (int ch = 0; ch < 3; ch++)
                rgb[3 * i + ch] = rgba[4 * i + ch] = pattern(x, y, ch);
            rgba[4 * i + 3] = (uint8_t)(255 - x * 7);
            ga[2 * i] = g8[i], ga[2 * i + 1] = (uint8_t)(y * 19);
            idx[i] = (uint8_t)((x + 2 * y) % 16);
            for (int ch = 0; ch < 3; ch++)
                pal_rgb[3 * i + ch] = pal_rgba[4 * i + ch] = ch == 0   ? pal[idx[i]].red
                                                             : ch == 1 ? pal[idx[i]].green
                                                                       : pal[idx[i]].blue;
            pal_rgba[4 * i + 3] = trns[idx[i]];
            int bit = (x * 3 + y) % 5 == 0;
            bits[y * 3 + x / 8] |= (uint8_t)(bit << (7 - x % 8));
            bits_want[i] = bit ? 255 : 0;
        }
    uint8_t g16_want[W * H];
    for (int i = 0; i < W * H; i++) {
        unsigned v = (unsigned)g16[2 * i] << 8 | g16[2 * i + 1];
        g16_want[i] = (uint8_t)((v * 255u + 32767u) / 65535u); // round(v * 255 / 65535)
    }
    write_png(tmp_path("gray.png"), W, H, PNG_COLOR_TYPE_GRAY, 8, 0, g8, W, NULL, 0, NULL, 0);
    write_png(tmp_path("gray16.png"), W, H, PNG_COLOR_TYPE_GRAY, 16, 0, g16, 2 * W, NULL, 0, NULL,
              0);
    write_png(tmp_path("gray1.png"), W, H, PNG_COLOR_TYPE_GRAY, 1, 0, bits, 3, NULL, 0, NULL, 0);
    write_png(tmp_path("graya.png"), W, H, PNG_COLOR_TYPE_GRAY_ALPHA, 8, 0, ga, 2 * W, NULL, 0,
              NULL, 0);
    write_png(tmp_path("rgb.png"), W, H, PNG_COLOR_TYPE_RGB, 8, 0, rgb, 3 * W, NULL, 0, NULL, 0);
    write_png(tmp_path("rgb-adam7.png"), W, H, PNG_COLOR_TYPE_RGB, 8, 1, rgb, 3 * W, NULL, 0, NULL,
              0);
    write_png(tmp_path("rgba.png"), W, H, PNG_COLOR_TYPE_RGBA, 8, 0, rgba, 4 * W, NULL, 0, NULL, 0);
    write_png(tmp_path("palette.png"), W, H, PNG_COLOR_TYPE_PALETTE, 8, 0, idx, W, pal, 16, NULL,
              0);
    write_png(tmp_path("palette-t.png"), W, H, PNG_COLOR_TYPE_PALETTE, 8, 0, idx, W, pal, 16, trns,
              16);
    write_jpeg(tmp_path("gray.jpg"), W, H, 1, g8, 95);
    write_jpeg(tmp_path("rgb.jpg"), W, H, 3, rgb, 95);

    decode_expect("gray.png", W, H, 1, g8, 0);
    decode_expect("gray16.png", W, H, 1, g16_want, 0);
    decode_expect("gray1.png", W, H, 1, bits_want, 0);
    decode_expect("graya.png", W, H, 2, ga, 0);
    decode_expect("rgb.png", W, H, 3, rgb, 0);
    decode_expect("rgb-adam7.png", W, H, 3, rgb, 0);
    decode_expect("rgba.png", W, H, 4, rgba, 0);
    decode_expect("palette.png", W, H, 3, pal_rgb, 0);
    decode_expect("palette-t.png", W, H, 4, pal_rgba, 0);
    decode_expect("gray.jpg", W, H, 1, g8, 3);
    decode_expect("rgb.jpg", W, H, 3, rgb, 4);

    /* Bad files: never a crash, always a reason. */
    size_t n;
    uint8_t *p = read_all(tmp_path("rgb.png"), &n);
    truncate_copy(tmp_path("rgb.png"), tmp_path("cut.png"), n / 2);
    truncate_copy(tmp_path("rgb.png"), tmp_path("no-iend.png"), n - 12);
    /* Flip a byte inside IDAT's data: its CRC no longer matches. */
    size_t at = 8;
    while (at + 8 < n && memcmp(p + at + 4, "IDAT", 4)) // walk the chunks to IDAT
        at += 12 + ((size_t)p[at] << 24 | (size_t)p[at + 1] << 16 | p[at + 2] << 8 | p[at + 3]);
    p[at + 8 + 2] ^= 0x5A;
    write_bytes(tmp_path("crc.png"), p, n);
    free(p);
    p = read_all(tmp_path("rgb.jpg"), &n);
    truncate_copy(tmp_path("rgb.jpg"), tmp_path("cut.jpg"), n / 2);
    /* An EOI marker a few bytes into the entropy-coded scan (after SOS and its header). */
    size_t sos = 2;
    while (sos + 4 < n && !(p[sos] == 0xFF && p[sos + 1] == 0xDA))
        sos++;
    size_t scan = sos + 2 + ((size_t)p[sos + 2] << 8 | p[sos + 3]);
    p[scan + 6] = 0xFF, p[scan + 7] = 0xD9;
    write_bytes(tmp_path("eoi.jpg"), p, n);
    free(p);
    write_bytes(tmp_path("junk.png"), "GIF89a not really an image", 26);
    write_bytes(tmp_path("empty.jpg"), "", 0);
    static const struct {
        const char *name, *why;
    } bad[] = {{"cut.png", "corrupt PNG"},  {"no-iend.png", "corrupt PNG"},
               {"crc.png", "corrupt PNG"},  {"cut.jpg", "corrupt JPEG"},
               {"eoi.jpg", "corrupt JPEG"}, {"junk.png", "not a PNG or JPEG"},
               {"empty.jpg", "empty file"}, {"missing.png", "cannot open"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        Image img;
        char err[256] = "", label[400];
        int rc = image_decode_file(tmp_path(bad[i].name), &img, err, sizeof err);
        snprintf(label, sizeof label, "bad file %-12s -> %s", bad[i].name, err);
        check_record(rc == -1 && strstr(err, bad[i].why) && !img.px, label);
    }
}

/* ---- IDX ---- */

static void test_idx(void) {
    uint8_t file[16 + 3 * 6];
    const uint8_t head[16] = {0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 3};
    memcpy(file, head, 16);
    for (int i = 0; i < 18; i++)
        file[16 + i] = (uint8_t)(i * 11);
    write_bytes(tmp_path("x.idx3"), file, sizeof file);
    gzFile gz = gzopen(tmp_path("x.idx3.gz"), "wb9");
    gzwrite(gz, file, sizeof file);
    gzclose(gz);
    const char *names[2] = {"x.idx3", "x.idx3.gz"};
    for (int k = 0; k < 2; k++) {
        IdxFile f;
        char err[256];
        int rc = idx_read(tmp_path(names[k]), 3, &f, err, sizeof err);
        int ok = rc == 0 && f.dims[0] == 3 && f.dims[1] == 2 && f.dims[2] == 3 && f.n_items == 3 &&
                 f.item_bytes == 6 && !f.extra_bytes && !f.read_error[0] &&
                 !memcmp(f.data, file + 16, 18);
        check_record(ok, k ? "IDX gzipped: header and data" : "IDX plain: header and data");
        if (!rc) idx_free(&f);
    }
    IdxFile f;
    char err[256];
    write_bytes(tmp_path("short.idx3"), file, sizeof file - 4); // 2 complete items + 2 bytes
    CHECK(idx_read(tmp_path("short.idx3"), 3, &f, err, sizeof err) == 0);
    CHECK(f.dims[0] == 3 && f.n_items == 2 && f.extra_bytes == 2);
    idx_free(&f);
    uint8_t longer[sizeof file + 5] = {0};
    memcpy(longer, file, sizeof file);
    write_bytes(tmp_path("long.idx3"), longer, sizeof longer);
    CHECK(idx_read(tmp_path("long.idx3"), 3, &f, err, sizeof err) == 0);
    CHECK(f.n_items == 3 && f.extra_bytes == 5);
    idx_free(&f);
    CHECK(idx_read(tmp_path("x.idx3"), 1, &f, err, sizeof err) == -1 && strstr(err, "x.idx3"));
    printf("wrong IDX kind: %s\n", err);
    size_t n;
    uint8_t *gzb = read_all(tmp_path("x.idx3.gz"), &n);
    write_bytes(tmp_path("cut.idx3.gz"), gzb, n - 12);
    free(gzb);
    CHECK(idx_read(tmp_path("cut.idx3.gz"), 3, &f, err, sizeof err) == 0);
    printf("cut gzip: %zu of %u items, zlib: %s\n", f.n_items, f.dims[0], f.read_error);
    CHECK(f.read_error[0] || f.n_items < 3);
    idx_free(&f);
    CHECK(idx_read(tmp_path("none.idx3"), 3, &f, err, sizeof err) == -1 &&
          strstr(err, "none.idx3: cannot open"));
    /* a small gzip that inflates far past its one declared item: the item is kept, what follows
     * is counted, not stored (it once all went into memory) */
    gz = gzopen(tmp_path("bomb.idx3.gz"), "wb9");
    const uint8_t one[16] = {0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3};
    gzwrite(gz, one, 16), gzwrite(gz, file + 16, 6);
    uint8_t *zeros = calloc(1 << 20, 1);
    for (int i = 0; i < 64; i++)
        gzwrite(gz, zeros, 1 << 20);
    gzclose(gz);
    free(zeros);
    CHECK(idx_read(tmp_path("bomb.idx3.gz"), 3, &f, err, sizeof err) == 0);
    char label[200];
    snprintf(label, sizeof label,
             "64 MiB past the declared item: 1 item, %zu stray bytes counted, %zu bytes kept",
             f.extra_bytes, malloc_usable_size(f.data));
    check_record(f.n_items == 1 && !memcmp(f.data, file + 16, 6) && f.extra_bytes >= (1u << 20) &&
                     malloc_usable_size(f.data) < 4096,
                 label);
    idx_free(&f);
}

/* A baseline JPEG whose SOF0 header is patched to claim w x h: refused before libjpeg sizes
 * anything by it. */
static void test_jpeg_dims(void) {
    uint8_t px[64] = {0};
    write_jpeg(tmp_path("small.jpg"), 8, 8, 1, px, 90);
    size_t n;
    uint8_t *b = read_all(tmp_path("small.jpg"), &n);
    for (size_t i = 0; i + 8 < n; i++)
        if (b[i] == 0xFF && b[i + 1] == 0xC0) { /* length(2) precision(1) height(2) width(2) */
            b[i + 5] = 0xFF, b[i + 6] = 0x00, b[i + 7] = 0xFF, b[i + 8] = 0x00;
            break;
        }
    write_bytes(tmp_path("huge.jpg"), b, n);
    free(b);
    Image img;
    char err[256] = "";
    int rc = image_decode_file(tmp_path("huge.jpg"), &img, err, sizeof err);
    char label[300];
    snprintf(label, sizeof label, "a JPEG claiming 65280 x 65280 pixels: %s", err);
    check_record(rc == -1 && strstr(err, "too large") && !img.px, label);
}

/* ---- audio ---- */

/* x as float, or s16 as int16 (libsndfile scales float to PCM by 32767 but reads back by
 * 1/32768, so exact round trips write integers). */
static void write_sound(const char *path, int rate, int channels, int format, const float *x,
                        const int16_t *s16, sf_count_t frames) {
    SF_INFO info = {.samplerate = rate, .channels = channels, .format = format};
    SNDFILE *sf = sf_open(path, SFM_WRITE, &info);
    if (!sf) die("%s: cannot write: %s", path, sf_strerror(NULL));
    sf_count_t put = !frames ? 0
                     : s16   ? sf_writef_short(sf, s16, frames)
                             : sf_writef_float(sf, x, frames);
    if (put != frames) die("%s: short write", path);
    sf_close(sf);
}

/* Frequency from interpolated upward zero crossings, and amplitude from projecting onto the
 * 1 kHz sine and cosine over whole periods, of y[lo, hi). */
static void tone_measure(const float *y, size_t lo, size_t hi, double rate, double f0, double *freq,
                         double *amp) {
    double first = -1, last = -1;
    int crossings = 0;
    for (size_t i = lo; i + 1 < hi; i++)
        if (y[i] < 0 && y[i + 1] >= 0) {
            double t = i + y[i] / (y[i] - y[i + 1]);
            if (first < 0) first = t;
            last = t, crossings++;
        }
    *freq = (crossings - 1) / ((last - first) / rate);
    size_t period = (size_t)lround(rate / f0), n = (hi - lo) / period * period;
    double cs = 0, sn = 0;
    for (size_t i = 0; i < n; i++) {
        double ph = 2 * PI_D * f0 * (double)(lo + i) / rate;
        cs += y[lo + i] * cos(ph), sn += y[lo + i] * sin(ph);
    }
    *amp = 2 * sqrt(cs * cs + sn * sn) / n;
}

static void test_resample(void) {
    size_t n = 22050;
    float *x = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(0.5 * sin(2 * PI_D * 1000.0 * i / 22050.0));
    for (int q = 0; q < 2; q++) {
        int quality = q ? SRC_SINC_MEDIUM_QUALITY : SRC_SINC_BEST_QUALITY;
        size_t m = 0;
        char err[256];
        float *y = audio_resample_alloc(x, n, 16000.0 / 22050.0, quality, &m, err, sizeof err);
        if (!y) {
            check_record(0, err);
            continue;
        }
        double freq, amp;
        tone_measure(y, 800, m - 800, 16000, 1000, &freq, &amp);
        printf("%s: 1 s at 22050 Hz -> %zu samples; tone %.3f Hz, amplitude %.5f\n",
               q ? "medium" : "best", m, freq, amp);
        check_record(m >= 15999 && m <= 16001, "resampled length is n * 16000 / 22050");
        check_record(fabs(freq - 1000) < 0.5, "1 kHz tone keeps its frequency at 16 kHz");
        check_record(fabs(amp - 0.5) < 0.005, "1 kHz tone keeps its amplitude within 1%");
        free(y);
    }

    /* Through a stereo float WAV: channels averaged (L = s, R = s/2 -> 0.75 s), then resampled. */
    float *st = malloc(sizeof(float) * 2 * n);
    for (size_t i = 0; i < n; i++)
        st[2 * i] = x[i], st[2 * i + 1] = 0.5f * x[i];
    write_sound(tmp_path("stereo.wav"), 22050, 2, SF_FORMAT_WAV | SF_FORMAT_FLOAT, st, NULL,
                (sf_count_t)n);
    AudioClip clip;
    char err[256] = "";
    int rc = audio_load_mono(tmp_path("stereo.wav"), 16000, 1, SRC_SINC_BEST_QUALITY, &clip, err,
                             sizeof err);
    if (rc == 0) {
        double freq, amp;
        tone_measure(clip.x, 800, clip.n - 800, 16000, 1000, &freq, &amp);
        printf("stereo 22050 Hz WAV -> mono %zu samples at %d Hz: %.3f Hz, amplitude %.5f\n",
               clip.n, clip.rate, freq, amp);
        check_record(clip.rate_in == 22050 && clip.channels_in == 2 && clip.frames_in == 22050 &&
                         fabs(amp - 0.375) < 0.00375 && fabs(freq - 1000) < 0.5,
                     "stereo WAV mixed to mono and resampled");
        audio_free(&clip);
    } else {
        check_record(0, err);
    }
    CHECK(audio_load_mono(tmp_path("stereo.wav"), 16000, 0, 0, &clip, err, sizeof err) == -1);
    printf("no resample: %s\n", err);
    CHECK(strstr(err, "sample rate 22050 Hz") != NULL);
    free(st);

    /* 16-bit PCM at 16 kHz round-trips exactly through WAV and FLAC; Ogg Vorbis decodes. */
    size_t k = 4000;
    float *pcm = malloc(sizeof(float) * k);
    int16_t *s16 = malloc(sizeof(int16_t) * k);
    int16_t *back = malloc(sizeof(int16_t) * k);
    for (size_t i = 0; i < k; i++)
        s16[i] = (int16_t)((int)(i * 7919 % 60001) - 30000), pcm[i] = s16[i] / 32768.0f;
    static const struct {
        const char *name;
        int format, exact;
    } fmts[] = {{"pcm.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16, 1},
                {"pcm.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 1},
                {"pcm.ogg", SF_FORMAT_OGG | SF_FORMAT_VORBIS, 0}};
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
        write_sound(tmp_path(fmts[f].name), 16000, 1, fmts[f].format, pcm,
                    fmts[f].exact ? s16 : NULL, (sf_count_t)k);
        rc = audio_load_mono(tmp_path(fmts[f].name), 16000, 0, 0, &clip, err, sizeof err);
        char label[300];
        snprintf(label, sizeof label, "%s loads at 16 kHz%s%s", fmts[f].name,
                 fmts[f].exact ? ", int16 round trip exact" : "", rc ? err : "");
        int ok = rc == 0 && clip.n == k;
        if (ok && fmts[f].exact) {
            audio_to_int16(clip.x, clip.n, back);
            for (size_t i = 0; i < k; i++)
                ok &= back[i] == s16[i];
        }
        check_record(ok, label);
        if (rc == 0) audio_free(&clip);
    }
    free(pcm), free(back), free(s16);

    /* Bad files. */
    write_sound(tmp_path("empty.wav"), 16000, 1, SF_FORMAT_WAV | SF_FORMAT_PCM_16, NULL, NULL, 0);
    write_bytes(tmp_path("junk.wav"), "RIFF\x10\0\0\0WAVEjunkjunkjunk", 24);
    /* sample rates no recording has (once resampled to 16 kHz into 16000x the frames) */
    float quiet[64] = {0};
    write_sound(tmp_path("1hz.wav"), 1, 1, SF_FORMAT_WAV | SF_FORMAT_FLOAT, quiet, NULL, 64);
    write_sound(tmp_path("500hz.wav"), 500, 1, SF_FORMAT_WAV | SF_FORMAT_FLOAT, quiet, NULL, 64);
    static const struct {
        const char *name, *why;
    } bad[] = {{"empty.wav", "empty"},
               {"junk.wav", "cannot read"},
               {"gone.wav", "cannot read"},
               {"1hz.wav", "at 1 Hz (1000 to 1000000 Hz expected)"},
               {"500hz.wav", "500 Hz"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char label[400];
        rc = audio_load_mono(tmp_path(bad[i].name), 16000, 1, 0, &clip, err, sizeof err);
        snprintf(label, sizeof label, "bad audio %-9s -> %s", bad[i].name, err);
        check_record(rc == -1 && strstr(err, bad[i].why) && !clip.x, label);
    }

    float edge[5] = {1.5f, -2.0f, 32767.0f / 32768, -1.0f, 0.49f / 32768};
    int16_t e16[5];
    CHECK(audio_to_int16(edge, 5, e16) == 2);
    CHECK(e16[0] == 32767 && e16[1] == -32768 && e16[2] == 32767 && e16[3] == -32768 &&
          e16[4] == 0);
    free(x);
}

/* ---- the class tree for script_prep_media.sh ---- */

/* Writes images 0..n-1 of an IDX pair as DIR/<class>/<index>_<kind>.{png,jpg}, cycling through
 * PNG colour types that all decode (as gray) to exactly the IDX pixels, plus two lossy JPEGs. */
static int write_tree(const char *dir, const char *images, const char *labels, size_t n) {
    static const char *classes[10] = {"T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                                      "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    static const char *kinds[] = {"gray.png",  "rgb.png",   "rgba.png", "palette.png", "gray16.png",
                                  "graya.png", "adam7.png", "gray.jpg", "rgb.jpg"};
    IdxFile fi, fl;
    char err[512];
    if (idx_read(images, 3, &fi, err, sizeof err) < 0 || idx_read(labels, 1, &fl, err, sizeof err))
        die("%s", err);
    int h = (int)fi.dims[1], w = (int)fi.dims[2];
    png_color pal[256];
    for (int i = 0; i < 256; i++)
        pal[i] = (png_color){(uint8_t)i, (uint8_t)i, (uint8_t)i};
    uint8_t *buf = malloc((size_t)h * w * 4);
    mkdir(dir, 0755);
    for (size_t i = 0; i < n && i < fi.n_items; i++) {
        const uint8_t *g = fi.data + i * fi.item_bytes;
        const char *kind = kinds[i % (sizeof kinds / sizeof kinds[0])];
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, classes[fl.data[i] % 10]);
        mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/%s/%05zu_%s", dir, classes[fl.data[i] % 10], i, kind);
        size_t px = (size_t)h * w;
        if (!strcmp(kind, "gray.png"))
            write_png(path, w, h, PNG_COLOR_TYPE_GRAY, 8, 0, g, w, NULL, 0, NULL, 0);
        else if (!strcmp(kind, "palette.png"))
            write_png(path, w, h, PNG_COLOR_TYPE_PALETTE, 8, 0, g, w, pal, 256, NULL, 0);
        else if (!strcmp(kind, "gray.jpg"))
            write_jpeg(path, w, h, 1, g, 90);
        else if (!strcmp(kind, "gray16.png") || !strcmp(kind, "graya.png")) {
            int sixteen = kind[4] == '1';
            for (size_t p = 0; p < px; p++) // big-endian v * 257 scales back to v exactly
                buf[2 * p] = g[p], buf[2 * p + 1] = sixteen ? g[p] : 255;
            write_png(path, w, h, sixteen ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_GRAY_ALPHA,
                      sixteen ? 16 : 8, 0, buf, 2 * (size_t)w, NULL, 0, NULL, 0);
        } else {
            int c = !strcmp(kind, "rgba.png") ? 4 : 3;
            for (size_t p = 0; p < px; p++)
                for (int ch = 0; ch < c; ch++)
                    buf[p * c + ch] = ch == 3 ? 255 : g[p];
            if (!strcmp(kind, "rgb.jpg"))
                write_jpeg(path, w, h, 3, buf, 90);
            else
                write_png(path, w, h, c == 4 ? PNG_COLOR_TYPE_RGBA : PNG_COLOR_TYPE_RGB, 8,
                          !strcmp(kind, "adam7.png"), buf, (size_t)w * c, NULL, 0, NULL, 0);
        }
    }
    free(buf);
    idx_free(&fi), idx_free(&fl);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "--write-tree"))
        return write_tree(argv[2], argv[3], argv[4], argc > 5 ? (size_t)atol(argv[5]) : 27);
    if (!mkdtemp(tmpdir)) die("%s: cannot create a temporary directory", tmpdir);
    test_resize();
    test_channels();
    test_decode();
    test_idx();
    test_jpeg_dims();
    test_resample();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
    return check_summary();
}
