/* bench_loader.c: samples/s the dataset reader and batch loader sustain alone (no model), per
 * modality, synchronous and with the prefetch thread, on files written here. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "d2v/dataset.h"
#include "d2v/h5io.h"
#include "d2v/kernels.h"
#include "d2v/util.h"

static void write_images(const char *path, int n, int H, int W, int C) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "image", "shard", n, "bench");
    h5_attr_i32(o.file, "height", H), h5_attr_i32(o.file, "width", W);
    h5_attr_i32(o.file, "channels", C);
    H5Append a;
    hsize_t inner[3] = {(hsize_t)H, (hsize_t)W, (hsize_t)C};
    h5_append_open(&a, o.file, "images", H5T_NATIVE_UINT8, 4, inner, 1, 0);
    uint8_t *img = xalloc((size_t)H * W * C, "image");
    uint64_t k = rng_key(1, 2, 3, 4);
    for (int i = 0; i < n; i++) {
        for (size_t j = 0; j < (size_t)H * W * C; j++)
            img[j] = (uint8_t)(rng_uniform(k, i * 977u + j) * 255);
        h5_append(&a, img, 1);
    }
    h5_append_close(&a);
    h5out_commit(&o);
    free(img);
}

static void write_speech(const char *path, int n, int len) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "speech", "shard", n, "bench");
    h5_attr_i32(o.file, "sample_rate", 16000), h5_attr_str(o.file, "sample_format", "int16");
    int16_t *a = xalloc(sizeof(int16_t) * (size_t)n * len, "audio");
    int64_t *off = xalloc(sizeof(int64_t) * (n + 1), "offsets");
    for (size_t i = 0; i < (size_t)n * len; i++)
        a[i] = (int16_t)((i * 2654435761u) >> 17);
    for (int i = 0; i <= n; i++)
        off[i] = (int64_t)i * len;
    hsize_t na[1] = {(hsize_t)n * len}, no[1] = {(hsize_t)n + 1}, ch[1] = {65536};
    h5_write(o.file, "audio", H5T_NATIVE_INT16, 1, na, ch, a);
    h5_write(o.file, "offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
    h5out_commit(&o);
    free(a), free(off);
}

/* Stand-in for a training step on the main thread (the prefetch thread has the other core). */
static void busy(double seconds) {
    double t0 = now_seconds();
    volatile double x = 0;
    while (now_seconds() - t0 < seconds)
        x += 1;
}

static void run(const char *label, const char *path, LoaderConfig c, int batches, const char *unit,
                double per_sample, double compute) {
    Dataset d;
    char err[512];
    if (dataset_open(&d, path, -1, err, sizeof err) < 0) die("%s", err);
    for (int prefetch = 0; prefetch <= 2; prefetch += 2) {
        c.prefetch = prefetch;
        LoaderCursor c0 = {0, 0};
        Loader *l = loader_create(&d, &c, 0, 1, c0);
        loader_next(l); /* warm-up */
        double t0 = now_seconds();
        for (int i = 0; i < batches; i++) {
            loader_next(l);
            if (compute > 0) busy(compute);
        }
        double dt = now_seconds() - t0;
        double sps = (double)batches * c.batch_size / dt;
        if (compute > 0)
            printf("%-34s prefetch %d, %.0f ms compute/batch: %.3f s/batch", label, prefetch,
                   compute * 1e3, dt / batches);
        else
            printf("%-34s prefetch %d: %8.1f samples/s", label, prefetch, sps);
        if (unit) printf("  (%.1f %s)", sps * per_sample, unit);
        printf("\n");
        loader_destroy(l);
    }
    dataset_close(&d);
}

int main(void) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/d2v-bench-loader-%ld", (long)getpid());
    char cmd[128], a[128], b[128];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 1;
    snprintf(a, sizeof a, "%s/img.h5", dir), snprintf(b, sizeof b, "%s/speech.h5", dir);
    write_images(a, 512, 224, 224, 3);
    write_speech(b, 256, 5 * 16000);
    LoaderConfig img = {.modality = D2V_IMAGE,
                        .batch_size = 32,
                        .seed = 1,
                        .shuffle = 1,
                        .image_augment = 1,
                        .crop_scale_min = 0.08f,
                        .crop_scale_max = 1,
                        .crop_ratio_min = 0.75f,
                        .crop_ratio_max = 4.0f / 3,
                        .flip_prob = 0.5f,
                        .mean = {0.485f, 0.456f, 0.406f},
                        .std = {0.229f, 0.224f, 0.225f}};
    run("images 224x224x3, crop+flip+resize", a, img, 12, NULL, 0, 0);
    /* overlap: with a step as long as loading a batch, prefetch should nearly halve the time */
    run("images, loading overlapped", a, img, 8, NULL, 0, 32.0 / 900);
    LoaderConfig sp = {.modality = D2V_SPEECH,
                       .batch_size = 16,
                       .seed = 1,
                       .shuffle = 1,
                       .speech_max_samples = 320000,
                       .speech_min_samples = 1,
                       .speech_normalize = 1};
    run("speech 5 s utterances, crop+norm", b, sp, 12, "s audio/s", 5.0, 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) != 0;
}
