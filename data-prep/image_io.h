/* image_io.h: image inputs for d2v-prep-image: PNG (libpng) and JPEG (libjpeg-turbo) decoding that
 * never crashes on a corrupt file, channel conversion, resizing (area averaging when shrinking,
 * bilinear when enlarging) and IDX (MNIST-format, optionally gzipped) file reading. */
#ifndef D2V_IMAGE_IO_H
#define D2V_IMAGE_IO_H

#include <stddef.h>
#include <stdint.h>

/// Largest image accepted, in pixels (bigger files are reported as bad inputs).
#define IMAGE_MAX_PIXELS ((size_t)1 << 27)

/// A decoded 8-bit image; c is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA).
typedef struct {
    int h, w, c;
    uint8_t *px; // (h, w, c), malloc'd
} Image;

/// Decode a PNG or JPEG file (recognised by its signature, not its name) to 8 bits per channel:
/// palettes and tRNS expand to RGB(A), 16-bit samples scale to 8, gray below 8 bits expands, CMYK
/// JPEGs convert to RGB. A corrupt or truncated file (including JPEG "premature end" warnings)
/// returns -1 with err saying why (without the path); 0 on success.
int image_decode_file(const char *path, Image *img, char *err, size_t errlen);
void image_free(Image *img);

/// Convert img to c_out = 1 (gray: BT.601 luma, (299 R + 587 G + 114 B) / 1000 rounded) or 3 (RGB;
/// gray is replicated) channels. Alpha is composited over black (value * alpha / 255, rounded).
/// out: (h, w, c_out).
void image_convert_channels(const Image *img, int c_out, uint8_t *out);

/// Separable resize of a (h, w, c) image to (oh, ow, c). Each axis on its own: area averaging when
/// it shrinks (an output pixel is the mean of the source area it covers, fractional pixels weighted
/// by overlap), bilinear interpolation with half-pixel centres and edge clamping when it grows, a
/// copy when equal.
void image_resize_f32(const float *in, int h, int w, int c, float *out, int oh, int ow);
/// image_resize_f32 on uint8 pixels, rounding to nearest (an exact copy when the size is
/// unchanged).
void image_resize_u8(const uint8_t *in, int h, int w, int c, uint8_t *out, int oh, int ow);

/// An IDX file of unsigned bytes (magic 0x0000 08 NDIMS, big-endian uint32 dims): MNIST images are
/// (n, rows, cols), labels (n).
typedef struct {
    int ndims;
    uint32_t dims[4];     // as declared in the header; dims[0] = items
    size_t item_bytes;    // product of dims[1..]
    size_t n_items;       // complete items actually present (may differ from dims[0])
    size_t extra_bytes;   // bytes beyond the declared items (or a partial last item), counted
                          // up to about 1 MiB
    char read_error[128]; // zlib's message when decompression stopped early, else ""
    uint8_t *data;        // (n_items, dims[1..]), malloc'd
} IdxFile;
/// Read a whole IDX file (gzipped or plain, via zlib) expecting `ndims` dimensions. Returns -1 with
/// err naming the file when it cannot be opened or its header is not an IDX header of unsigned
/// bytes; a data section that disagrees with the header is only described (n_items, extra_bytes,
/// read_error) and left to the caller's bad-input policy.
int idx_read(const char *path, int ndims, IdxFile *f, char *err, size_t errlen);
void idx_free(IdxFile *f);

#endif
