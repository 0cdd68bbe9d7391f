/* fuzz_image.c: libFuzzer target for image files: image_decode_file (PNG through libpng, JPEG
 * through libjpeg-turbo, told apart by their signatures), then what d2v-prep-image does with a
 * decoded image: channel conversion to gray and RGB and resizing. */
#include "fuzz.h"
#include "image_io.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_seed_dir()) exit(0); /* seeds: Fashion-MNIST images as PNG and JPEG */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("input.img");
    fuzz_write(path, data, size);
    Image img;
    char err[1024];
    if (image_decode_file(path, &img, err, sizeof err) == 0) {
        if (img.h <= 0 || img.w <= 0 || img.c < 1 || img.c > 4 ||
            (size_t)img.h * img.w > IMAGE_MAX_PIXELS)
            abort();
        size_t n = (size_t)img.h * img.w;
        uint8_t *gray = malloc(n), *rgb = malloc(3 * n), out[7 * 5 * 3];
        image_convert_channels(&img, 1, gray);
        image_convert_channels(&img, 3, rgb);
        image_resize_u8(gray, img.h, img.w, 1, out, 7, 5);
        if (n <= 4096) image_resize_u8(rgb, img.h, img.w, 3, out, 5, 7);
        free(gray), free(rgb);
        image_free(&img);
    } else if (!err[0] || img.px) {
        abort();
    }
    return 0;
}
