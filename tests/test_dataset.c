/* test_dataset.c: the HDF5 dataset reader and batch loader on small files written here: layout
 * validation errors (each naming the file), disjoint and covering rank shards for 1-4 ranks,
 * resuming from a cursor on another rank count, text blocks, image augmentation, speech crops,
 * and prefetching giving the same batches as synchronous loading. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "d2v/dataset.h"
#include "d2v/h5io.h"
#include "d2v/util.h"

static char dir[256];

static const char *tmp(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* Images: n images of 4x6x1 whose pixel (y, x) = (i * 7 + y * 6 + x) % 251; label i % 3. */
static void write_images(const char *path, int n, int version) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "image", "shard", n, "test");
    if (version != 1)
        H5Adelete(o.file, "format_version"), h5_attr_i32(o.file, "format_version", version);
    h5_attr_i32(o.file, "height", 4), h5_attr_i32(o.file, "width", 6),
        h5_attr_i32(o.file, "channels", 1);
    uint8_t *px = malloc((size_t)n * 24);
    int32_t *lab = malloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) {
        lab[i] = i % 3;
        for (int j = 0; j < 24; j++)
            px[i * 24 + j] = (uint8_t)((i * 7 + j) % 251);
    }
    hsize_t dims[4] = {(hsize_t)n, 4, 6, 1}, chunk[4] = {1, 4, 6, 1}, ld[1] = {(hsize_t)n};
    h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, chunk, px);
    h5_write(o.file, "labels", H5T_NATIVE_INT32, 1, ld, NULL, lab);
    const char *names[3] = {"a", "b", "c"};
    h5_write_strings(o.file, "label_names", names, 3);
    h5out_commit(&o);
    free(px), free(lab);
}

/* Text: document d has d % 5 + 1 tokens valued 100 * d + k. Vocab 1000, bos 0 pad 1 eos 2. */
static void write_text(const char *path, int ndoc) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "text", "shard", ndoc, "test");
    const char *a[6] = {"vocab_size", "bos_id", "eos_id", "pad_id", "unk_id", "mask_id"};
    int32_t v[6] = {100000, 0, 2, 1, 3, 4};
    for (int i = 0; i < 6; i++)
        h5_attr_i32(o.file, a[i], v[i]);
    int64_t *off = malloc(sizeof(int64_t) * (ndoc + 1));
    int32_t *tok = malloc(sizeof(int32_t) * ndoc * 5);
    off[0] = 0;
    for (int d = 0; d < ndoc; d++) {
        int len = d % 5 + 1;
        for (int k = 0; k < len; k++)
            tok[off[d] + k] = 100 * d + k + 5;
        off[d + 1] = off[d] + len;
    }
    hsize_t nt[1] = {(hsize_t)off[ndoc]}, no[1] = {(hsize_t)ndoc + 1};
    h5_write(o.file, "tokens", H5T_NATIVE_INT32, 1, nt, NULL, tok);
    h5_write(o.file, "doc_offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
    h5out_commit(&o);
    free(off), free(tok);
}

/* Speech: utterance u has 50 + 10 u int16 samples valued 100 * u + t. */
static void write_speech(const char *path, int n) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "speech", "shard", n, "test");
    h5_attr_i32(o.file, "sample_rate", 16000);
    h5_attr_str(o.file, "sample_format", "int16");
    int64_t *off = malloc(sizeof(int64_t) * (n + 1));
    off[0] = 0;
    for (int u = 0; u < n; u++)
        off[u + 1] = off[u] + 50 + 10 * u;
    int16_t *a = malloc(sizeof(int16_t) * off[n]);
    for (int u = 0; u < n; u++)
        for (int64_t t = 0; t < off[u + 1] - off[u]; t++)
            a[off[u] + t] = (int16_t)(100 * u + t);
    hsize_t na[1] = {(hsize_t)off[n]}, no[1] = {(hsize_t)n + 1};
    h5_write(o.file, "audio", H5T_NATIVE_INT16, 1, na, NULL, a);
    h5_write(o.file, "offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
    h5out_commit(&o);
    free(off), free(a);
}

static int open_err(const char *path, int modality, const char *want) {
    Dataset d;
    char err[512] = "";
    int rc = dataset_open(&d, path, modality, err, sizeof err);
    if (rc == 0) dataset_close(&d);
    int ok = rc < 0 && strstr(err, path) && strstr(err, want) && !strchr(err, '\n');
    printf("     %s\n", err);
    return ok;
}

static void test_validation(void) {
    printf("-- validation at open\n");
    CHECK(open_err(tmp("missing.h5"), -1, "no such file"));
    FILE *f = fopen(tmp("garbage.h5"), "w");
    fputs("not hdf5 at all", f), fclose(f);
    CHECK(open_err(tmp("garbage.h5"), -1, "not an HDF5 file"));
    write_images(tmp("v2.h5"), 5, 2);
    CHECK(open_err(tmp("v2.h5"), -1, "format_version 2"));
    write_images(tmp("img.h5"), 5, 1);
    CHECK(open_err(tmp("img.h5"), D2V_TEXT, "expected text"));
    /* truncated: the first half of a valid file */
    FILE *in = fopen(tmp("img.h5"), "rb");
    fseek(in, 0, SEEK_END);
    long sz = ftell(in);
    rewind(in);
    char *buf = malloc(sz);
    CHECK(fread(buf, 1, sz, in) == (size_t)sz);
    fclose(in);
    FILE *out = fopen(tmp("trunc.h5"), "wb");
    fwrite(buf, 1, sz / 2, out), fclose(out), free(buf);
    CHECK(open_err(tmp("trunc.h5"), -1, "trunc"));
    /* mis-shaped images: attribute says 4x6, data is 4x6 but height attr wrong */
    H5Out o;
    h5out_create(&o, tmp("shape.h5"));
    h5_write_root_attrs(o.file, "image", "shard", 2, "test");
    h5_attr_i32(o.file, "height", 5), h5_attr_i32(o.file, "width", 6),
        h5_attr_i32(o.file, "channels", 1);
    uint8_t px[48] = {0};
    hsize_t dims[4] = {2, 4, 6, 1};
    h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, NULL, px);
    h5out_commit(&o);
    CHECK(open_err(tmp("shape.h5"), -1, "'images' should be"));
    /* speech whose offsets run past the audio */
    h5out_create(&o, tmp("off.h5"));
    h5_write_root_attrs(o.file, "speech", "shard", 2, "test");
    h5_attr_i32(o.file, "sample_rate", 16000), h5_attr_str(o.file, "sample_format", "int16");
    int16_t a[10] = {0};
    int64_t off[3] = {0, 5, 12};
    hsize_t na[1] = {10}, no[1] = {3};
    h5_write(o.file, "audio", H5T_NATIVE_INT16, 1, na, NULL, a);
    h5_write(o.file, "offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
    h5out_commit(&o);
    CHECK(open_err(tmp("off.h5"), -1, "ends at 12"));
    /* an aborted write leaves the existing file untouched and no temporary behind */
    h5out_create(&o, tmp("img.h5"));
    h5out_abort(&o);
    Dataset d;
    char err[256];
    CHECK(dataset_open(&d, tmp("img.h5"), D2V_IMAGE, err, sizeof err) == 0 && d.num_samples == 5);
    dataset_close(&d);
}

/* An index over shards of the same images, split 3 / 4 / 6. */
static void write_index(void) {
    const int counts[3] = {3, 4, 6};
    H5Out o;
    char name[64];
    const char *names[3];
    static char keep[3][64];
    int first = 0;
    for (int s = 0; s < 3; s++) {
        snprintf(name, sizeof name, "set.shard-%d.h5", s);
        snprintf(keep[s], sizeof keep[s], "%s", name);
        names[s] = keep[s];
        h5out_create(&o, tmp(name));
        h5_write_root_attrs(o.file, "image", "shard", counts[s], "test");
        h5_attr_i32(o.file, "height", 4), h5_attr_i32(o.file, "width", 6);
        h5_attr_i32(o.file, "channels", 1);
        uint8_t px[6 * 24];
        int32_t lab[6];
        for (int i = 0; i < counts[s]; i++) {
            lab[i] = (first + i) % 3;
            for (int j = 0; j < 24; j++)
                px[i * 24 + j] = (uint8_t)(((first + i) * 7 + j) % 251);
        }
        hsize_t dims[4] = {(hsize_t)counts[s], 4, 6, 1}, ld[1] = {(hsize_t)counts[s]};
        h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, NULL, px);
        h5_write(o.file, "labels", H5T_NATIVE_INT32, 1, ld, NULL, lab);
        h5out_commit(&o);
        first += counts[s];
    }
    h5out_create(&o, tmp("set.h5"));
    h5_write_root_attrs(o.file, "image", "index", 13, "test");
    h5_write_strings(o.file, "shards", names, 3);
    int64_t c64[3] = {3, 4, 6};
    hsize_t n3[1] = {3};
    h5_write(o.file, "shard_samples", H5T_NATIVE_INT64, 1, n3, NULL, c64);
    h5out_commit(&o);
}

static LoaderConfig image_cfg(int B, int augment, int prefetch) {
    LoaderConfig c = {.modality = D2V_IMAGE,
                      .batch_size = B,
                      .seed = 7,
                      .shuffle = 1,
                      .image_augment = augment,
                      .crop_scale_min = 0.3f,
                      .crop_scale_max = 1.0f,
                      .crop_ratio_min = 0.75f,
                      .crop_ratio_max = 1.333f,
                      .flip_prob = 0.5f,
                      .mean = {0.5f, 0.5f, 0.5f},
                      .std = {0.25f, 0.25f, 0.25f},
                      .prefetch = prefetch};
    return c;
}

static void test_index_and_sharding(void) {
    printf("-- index of shards, rank slices, cursor\n");
    write_index();
    Dataset d;
    char err[256];
    if (dataset_open(&d, tmp("set.h5"), D2V_IMAGE, err, sizeof err) != 0) {
        check_record(0, err);
        return;
    }
    CHECK(d.num_samples == 13 && d.n_shards == 3);
    /* sample 8 lives in shard 2 at local 1: its first pixel is (8 * 7) % 251 */
    uint8_t px[24];
    CHECK(dataset_read_image(&d, 8, px, err, sizeof err) == 0 && px[0] == 56 && px[23] == 79);
    CHECK(d.labels && d.labels[8] == 2);
    /* For each rank count, one epoch of every rank's batches: disjoint, and covering what fits. */
    for (int world = 1; world <= 4; world++) {
        int B = 2, seen[13] = {0}, dup = 0, total = 0;
        int steps = (int)(13 / (B * world));
        for (int r = 0; r < world; r++) {
            LoaderCursor c0 = {0, 0};
            LoaderConfig cfg = image_cfg(B, 0, 0);
            Loader *l = loader_create(&d, &cfg, r, world, c0);
            for (int s = 0; s < steps; s++) {
                const Batch *b = loader_next(l);
                for (int i = 0; i < b->B; i++)
                    dup += seen[b->ids[i]]++, total++;
            }
            loader_destroy(l);
        }
        char label[96];
        snprintf(label, sizeof label, "%d rank(s): %d samples in one epoch, none twice", world,
                 total);
        check_record(dup == 0 && total == steps * B * world, label);
    }
    /* The global order is the same for any rank count: rank r of W sees the slice r of each
     * global batch of the 1-rank order. Then resume on 2 ranks from a 1-rank cursor. */
    LoaderCursor c0 = {0, 0};
    LoaderConfig one = image_cfg(4, 0, 0), two = image_cfg(2, 0, 0);
    Loader *l1 = loader_create(&d, &one, 0, 1, c0);
    int64_t ref[3][4];
    for (int s = 0; s < 3; s++)
        memcpy(ref[s], loader_next(l1)->ids, sizeof ref[s]);
    Loader *a = loader_create(&d, &two, 0, 2, c0), *b = loader_create(&d, &two, 1, 2, c0);
    int same = 1;
    for (int s = 0; s < 3; s++) {
        const Batch *ba = loader_next(a), *bb = loader_next(b);
        same &= !memcmp(ba->ids, ref[s], 16) && !memcmp(bb->ids, ref[s] + 2, 16);
    }
    check_record(same, "2 ranks x 2 see the 1-rank x 4 order, split by rank");
    LoaderCursor cur = loader_cursor(l1);
    CHECK(cur.epoch == 1 && cur.position == 0); /* 13 samples: 3 batches of 4, then a new epoch */
    int64_t next1[4];
    memcpy(next1, loader_next(l1)->ids, sizeof next1);
    Loader *r0 = loader_create(&d, &two, 0, 2, cur), *r1 = loader_create(&d, &two, 1, 2, cur);
    const Batch *x0 = loader_next(r0), *x1 = loader_next(r1);
    check_record(!memcmp(x0->ids, next1, 16) && !memcmp(x1->ids, next1 + 2, 16),
                 "resuming from a 1-rank cursor on 2 ranks continues the same order");
    CHECK(memcmp(next1, ref[0], 16) != 0); /* epoch 1 is shuffled differently */
    loader_destroy(l1), loader_destroy(a), loader_destroy(b), loader_destroy(r0),
        loader_destroy(r1);
    dataset_close(&d);
}

static void test_images(void) {
    printf("-- image batches\n");
    Dataset d;
    char err[256];
    CHECK(dataset_open(&d, tmp("img.h5"), D2V_IMAGE, err, sizeof err) == 0);
    LoaderCursor c0 = {0, 0};
    LoaderConfig cfg = image_cfg(5, 0, 0);
    cfg.shuffle = 0;
    Loader *l = loader_create(&d, &cfg, 0, 1, c0);
    const Batch *b = loader_next(l);
    float plain[5 * 24];
    memcpy(plain, b->images, sizeof plain);
    int exact = 1;
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 24; j++) {
            float want = (((i * 7 + j) % 251) / 255.0f - 0.5f) / 0.25f;
            exact &= fabsf(b->images[i * 24 + j] - want) < 1e-5f;
        }
    check_record(exact && b->labels[4] == 1, "no augmentation: exact normalised pixels, labels");
    loader_destroy(l);
    /* augmentation: deterministic per (seed, epoch, sample), prefetch gives the same batches */
    LoaderConfig aug = image_cfg(5, 1, 0), augp = image_cfg(5, 1, 2);
    Loader *s = loader_create(&d, &aug, 0, 1, c0), *p = loader_create(&d, &augp, 0, 1, c0);
    int equal = 1, differs = 0;
    for (int k = 0; k < 4; k++) {
        const Batch *bs = loader_next(s), *bp = loader_next(p);
        equal &= !memcmp(bs->ids, bp->ids, 5 * 8) && !memcmp(bs->images, bp->images, 5 * 24 * 4);
        for (int i = 0; i < 5 * 24; i++)
            differs |= fabsf(bs->images[i] - plain[i]) > 1e-3f;
    }
    check_record(equal, "prefetch thread gives the same augmented batches as synchronous");
    check_record(differs, "augmentation changes pixels");
    loader_destroy(s), loader_destroy(p);
    dataset_close(&d);
}

/* RGB images of H x W: pixel (y, x, c) of image i = (i * 31 + y * 17 + x * 5 + c * 50) % 256. */
static void write_rgb_images(const char *path, int n, int H, int W) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "image", "shard", n, "test");
    h5_attr_i32(o.file, "height", H), h5_attr_i32(o.file, "width", W);
    h5_attr_i32(o.file, "channels", 3);
    size_t per = (size_t)H * W * 3;
    uint8_t *px = malloc(n * per);
    for (int i = 0; i < n; i++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int c = 0; c < 3; c++)
                    px[i * per + ((size_t)y * W + x) * 3 + c] =
                        (uint8_t)((i * 31 + y * 17 + x * 5 + c * 50) % 256);
    hsize_t dims[4] = {(hsize_t)n, (hsize_t)H, (hsize_t)W, 3};
    h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, NULL, px);
    h5out_commit(&o);
    free(px);
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const uint8_t *b = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Hash of the first `batches` batches of the loader over path (ids and image bytes). */
static uint64_t loader_hash(const char *path, LoaderConfig cfg, int batches) {
    Dataset d;
    char err[256];
    if (dataset_open(&d, path, D2V_IMAGE, err, sizeof err) != 0) return check_record(0, err), 0;
    LoaderCursor c0 = {0, 0};
    Loader *l = loader_create(&d, &cfg, 0, 1, c0);
    uint64_t h = 0xcbf29ce484222325ull;
    for (int k = 0; k < batches; k++) {
        const Batch *b = loader_next(l);
        h = fnv1a(h, b->ids, sizeof(int64_t) * b->B);
        h = fnv1a(h, b->images, sizeof(float) * b->B * b->H * b->W * b->C);
    }
    loader_destroy(l);
    dataset_close(&d);
    return h;
}

/* RandomResizedCrop + flip on RGB images resized 12x10 -> 8x8, bilinear, no colour jitter: the
 * hash of these batches as the loader produced them before colour jitter and bicubic existed
 * (bit-identical output with both off). Regenerate only for an intended change of this path. */
#define GOLDEN_AUGMENT_HASH 0x17a812ede790001full

static void test_augment_unchanged(void) {
    printf("-- image augmentation with jitter off: bit-identical to before\n");
    write_rgb_images(tmp("rgb.h5"), 9, 12, 10);
    LoaderConfig c = image_cfg(3, 1, 0);
    c.out_H = 8, c.out_W = 8;
    c.crop_scale_min = 0.08f;
    uint64_t h = loader_hash(tmp("rgb.h5"), c, 6);
    char label[128];
    snprintf(label, sizeof label, "6 augmented batches hash to 0x%016llx (recorded 0x%016llx)",
             (unsigned long long)h, (unsigned long long)GOLDEN_AUGMENT_HASH);
    check_record(h == GOLDEN_AUGMENT_HASH, label);
}

/* One-channel or RGB images whose every image is `value` everywhere (n images of H x W x C). */
static void write_const_images(const char *path, int n, int H, int W, int C, uint8_t value) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "image", "shard", n, "test");
    h5_attr_i32(o.file, "height", H), h5_attr_i32(o.file, "width", W);
    h5_attr_i32(o.file, "channels", C);
    size_t count = (size_t)n * H * W * C;
    uint8_t *px = malloc(count);
    memset(px, value, count);
    hsize_t dims[4] = {(hsize_t)n, (hsize_t)H, (hsize_t)W, (hsize_t)C};
    h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, NULL, px);
    h5out_commit(&o);
    free(px);
}

static void test_color_jitter(void) {
    printf("-- colour jitter (torchvision ColorJitter(0.4, 0.4, 0.4))\n");
    /* the draw: factors uniform in [0.6, 1.4], the order a permutation, all six orders seen */
    float lo[3] = {9, 9, 9}, hi[3] = {0, 0, 0};
    int in_range = 1, perm = 1, seen[27] = {0}, n_orders = 0;
    for (int64_t i = 0; i < 2000; i++) {
        ColorJitter j = color_jitter_draw(7, i % 3, i, 0.4f);
        for (int f = 0; f < 3; f++) {
            in_range &= j.factor[f] >= 0.6f && j.factor[f] <= 1.4f;
            lo[f] = fminf(lo[f], j.factor[f]), hi[f] = fmaxf(hi[f], j.factor[f]);
        }
        perm &= j.order[0] + j.order[1] + j.order[2] == 3 && j.order[0] != j.order[1] &&
                j.order[1] != j.order[2] && j.order[0] != j.order[2];
        n_orders += !seen[j.order[0] * 9 + j.order[1] * 3 + j.order[2]]++;
    }
    char label[200];
    snprintf(label, sizeof label,
             "2000 draws: factors in [0.6, 1.4] (brightness %.3f..%.3f, contrast %.3f..%.3f, "
             "saturation %.3f..%.3f)",
             lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]);
    check_record(in_range && lo[0] < 0.61f && hi[0] > 1.39f && lo[1] < 0.61f && hi[1] > 1.39f &&
                     lo[2] < 0.61f && hi[2] > 1.39f,
                 label);
    snprintf(label, sizeof label, "every draw's order is a permutation; %d of 6 orders seen",
             n_orders);
    check_record(perm && n_orders == 6, label);
    ColorJitter a = color_jitter_draw(7, 1, 5, 0.4f), b = color_jitter_draw(7, 1, 5, 0.4f);
    ColorJitter c = color_jitter_draw(7, 2, 5, 0.4f);
    CHECK(!memcmp(&a, &b, sizeof a) && memcmp(&a, &c, sizeof a)); /* keyed on the epoch */

    /* the ops, by hand (values in [0, 255]): two RGB pixels, saturation 1.4, then brightness
     * 1.3 (clamps one value at 255), then contrast 0.7 against the grayscale mean of both */
    ColorJitter j = {{1.3f, 0.7f, 1.4f}, {2, 0, 1}};
    float px[6] = {200, 100, 50, 10, 20, 30};
    color_jitter_apply(px, 1, 2, 3, &j);
    const double want[6] = {204.2634075, 107.9618875, 44.2618875,
                            31.8971715,  44.6371715,  57.3771715};
    int ok = 1;
    for (int i = 0; i < 6; i++)
        ok &= fabs(px[i] - want[i]) < 1e-3;
    check_record(ok, "RGB: saturation, brightness (clamped at 255), contrast by hand");
    /* one channel: contrast blends with the image mean (120), saturation leaves it alone */
    ColorJitter g = {{1.5f, 0.5f, 0.6f}, {1, 0, 2}};
    float gp[3] = {40, 200, 120};
    color_jitter_apply(gp, 1, 3, 1, &g);
    check_record(fabsf(gp[0] - 120) < 1e-4f && fabsf(gp[1] - 240) < 1e-4f &&
                     fabsf(gp[2] - 180) < 1e-4f,
                 "gray: contrast then brightness, saturation a no-op, by hand");

    /* through the loader: a constant gray RGB image is moved by the brightness factor alone
     * (contrast and saturation leave a constant gray image as it is, but for torchvision's gray
     * weights summing to 0.9999: at most 2 x 0.4 x 1e-4 x 140 / 255 = 4.4e-5), keyed on the
     * sample */
    write_const_images(tmp("gray100.h5"), 12, 8, 8, 3, 100);
    Dataset d;
    char err[256];
    CHECK(dataset_open(&d, tmp("gray100.h5"), D2V_IMAGE, err, sizeof err) == 0);
    LoaderCursor c0 = {0, 0};
    for (int interp = 0; interp < 2; interp++) {
        LoaderConfig cfg = image_cfg(4, 1, 0);
        cfg.mean[0] = cfg.mean[1] = cfg.mean[2] = 0, cfg.std[0] = cfg.std[1] = cfg.std[2] = 1;
        cfg.out_H = 5, cfg.out_W = 7;
        cfg.color_jitter = 0.4f, cfg.interpolation = interp;
        Loader *l = loader_create(&d, &cfg, 0, 1, c0);
        double worst = 0;
        for (int k = 0; k < 3; k++) {
            const Batch *bt = loader_next(l);
            for (int i = 0; i < bt->B; i++) {
                float f = color_jitter_draw(cfg.seed, bt->epoch, bt->ids[i], 0.4f).factor[0];
                for (int e = 0; e < 5 * 7 * 3; e++)
                    worst = fmax(worst, fabs(bt->images[i * 105 + e] - 100 * f / 255.0f));
            }
        }
        loader_destroy(l);
        snprintf(label, sizeof label,
                 "loader, %s: constant gray images come out as brightness x 100 (worst error "
                 "%.1e)",
                 interp ? "bicubic" : "bilinear", worst);
        check_record(worst < 4.5e-5, label);
    }
    /* jitter on changes the RGB batches; off (the golden hash) does not */
    LoaderConfig on = image_cfg(3, 1, 0);
    on.out_H = 8, on.out_W = 8, on.crop_scale_min = 0.08f, on.color_jitter = 0.4f;
    CHECK(loader_hash(tmp("rgb.h5"), on, 6) != GOLDEN_AUGMENT_HASH);
    dataset_close(&d);
}

/* Bicubic upscaling 4x6 -> 8x12 of v = 10 + 20 x + 30 y against PyTorch:
 *   F.interpolate(v[None, None], size=(8, 12), mode="bicubic", align_corners=False)
 * which, v being a sum of an x and a y ramp, is 10 + X[x] + Y[y] with the profiles below. By hand
 * for x = 3: source 1.25, taps 0..3 with weights (-0.105469, 0.878906, 0.261719, -0.035156)
 * (A = -0.75), so X[3] = 20 * (0.878906 + 2 * 0.261719 - 3 * 0.035156) = 25.9375: A = -0.75 does
 * not reproduce a linear ramp (A = -0.5 would give 25), which makes this a test of A. */
static void test_bicubic(void) {
    printf("-- bicubic resampling (PyTorch upsample_bicubic2d, A = -0.75)\n");
    static const double X[12] = {-2.109375, 3.828125, 13.359375, 25.9375,   34.0625,   45.9375,
                                 54.0625,   65.9375,  74.0625,   86.640625, 96.171875, 102.109375};
    static const double Y[8] = {-3.1640625, 5.7421875,  20.0390625, 38.90625,
                                51.09375,   69.9609375, 84.2578125, 93.1640625};
    H5Out o;
    h5out_create(&o, tmp("ramp.h5"));
    h5_write_root_attrs(o.file, "image", "shard", 1, "test");
    h5_attr_i32(o.file, "height", 4), h5_attr_i32(o.file, "width", 6);
    h5_attr_i32(o.file, "channels", 1);
    uint8_t px[24];
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 6; x++)
            px[y * 6 + x] = (uint8_t)(10 + 20 * x + 30 * y);
    hsize_t dims[4] = {1, 4, 6, 1};
    h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, NULL, px);
    h5out_commit(&o);
    Dataset d;
    char err[256];
    CHECK(dataset_open(&d, tmp("ramp.h5"), D2V_IMAGE, err, sizeof err) == 0);
    LoaderCursor c0 = {0, 0};
    LoaderConfig cfg = image_cfg(1, 0, 0);
    cfg.mean[0] = 0, cfg.std[0] = 1, cfg.out_H = 8, cfg.out_W = 12;
    cfg.interpolation = LOADER_INTERP_BICUBIC;
    Loader *l = loader_create(&d, &cfg, 0, 1, c0);
    const Batch *b = loader_next(l);
    double worst = 0;
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 12; x++)
            worst = fmax(worst, fabs(b->images[y * 12 + x] * 255.0 - (10 + X[x] + Y[y])));
    char label[160];
    snprintf(label, sizeof label, "4x6 ramp -> 8x12 matches PyTorch's bicubic (worst %.1e of 255)",
             worst);
    check_record(worst < 1e-3, label);
    loader_destroy(l);
    cfg.interpolation = LOADER_INTERP_BILINEAR; /* the negative: bilinear is not that */
    l = loader_create(&d, &cfg, 0, 1, c0);
    b = loader_next(l);
    CHECK(fabs(b->images[3] * 255.0 - (10 + X[3] + Y[0])) > 0.5);
    loader_destroy(l);
    dataset_close(&d);

    /* a constant image stays constant through random crops, flips and the bicubic filter */
    write_const_images(tmp("const.h5"), 6, 9, 11, 1, 77);
    CHECK(dataset_open(&d, tmp("const.h5"), D2V_IMAGE, err, sizeof err) == 0);
    LoaderConfig aug = image_cfg(3, 1, 0);
    aug.mean[0] = 0, aug.std[0] = 1, aug.out_H = 7, aug.out_W = 5, aug.crop_scale_min = 0.08f;
    aug.interpolation = LOADER_INTERP_BICUBIC;
    l = loader_create(&d, &aug, 0, 1, c0);
    worst = 0;
    for (int k = 0; k < 4; k++) {
        b = loader_next(l);
        for (int i = 0; i < 3 * 35; i++)
            worst = fmax(worst, fabs(b->images[i] * 255.0 - 77));
    }
    snprintf(label, sizeof label, "bicubic of a constant image is that constant (worst %.1e)",
             worst);
    check_record(worst < 1e-4, label);
    loader_destroy(l);
    dataset_close(&d);
}

static void test_text(void) {
    printf("-- text blocks\n");
    write_text(tmp("text.h5"), 10);
    Dataset d;
    char err[256];
    CHECK(dataset_open(&d, tmp("text.h5"), D2V_TEXT, err, sizeof err) == 0);
    LoaderCursor c0 = {0, 0};
    LoaderConfig c = {.modality = D2V_TEXT, .batch_size = 1, .seed = 1, .shuffle = 0, .text_T = 4};
    Loader *l = loader_create(&d, &c, 0, 1, c0);
    /* doc mode, T = 4 (3 tokens per block after bos): doc 0 = [5] + eos -> 1 block;
     * doc 1 = [105, 106] + eos -> 1 block; doc 2 = [205, 206, 207] fills its block exactly, so
     * its eos is dropped rather than left alone in a block of <s></s>; doc 3 = 4 tokens + eos
     * -> 2 blocks */
    int32_t want[4][4] = {{0, 5, 2, 1}, {0, 105, 106, 2}, {0, 205, 206, 207}, {0, 305, 306, 307}};
    int ok = 1;
    for (int k = 0; k < 4; k++)
        ok &= !memcmp(loader_next(l)->tokens, want[k], 16);
    check_record(ok, "document mode: bos, eos at document ends, pads, long docs split, no "
                     "block of <s></s> alone");
    loader_destroy(l);
    c.text_stream = 1;
    l = loader_create(&d, &c, 0, 1, c0);
    int32_t want_s[3][4] = {{0, 5, 2, 105}, {0, 106, 2, 205}, {0, 206, 207, 2}};
    ok = 1;
    for (int k = 0; k < 3; k++)
        ok &= !memcmp(loader_next(l)->tokens, want_s[k], 16);
    check_record(ok, "stream mode: blocks run across documents");
    loader_destroy(l);
    dataset_close(&d);
}

static void test_speech(void) {
    printf("-- speech crops\n");
    write_speech(tmp("speech.h5"), 6);
    Dataset d;
    char err[256];
    CHECK(dataset_open(&d, tmp("speech.h5"), D2V_SPEECH, err, sizeof err) == 0);
    LoaderCursor c0 = {0, 0};
    LoaderConfig c = {.modality = D2V_SPEECH,
                      .batch_size = 3,
                      .seed = 1,
                      .shuffle = 1,
                      .speech_max_samples = 1000,
                      .speech_min_samples = 60,
                      .speech_normalize = 0};
    Loader *l = loader_create(&d, &c, 0, 1, c0);
    CHECK(loader_epoch_samples(l) == 5); /* utterance 0 (50 samples) is below the minimum */
    const Batch *b = loader_next(l);
    int64_t shortest = 1 << 30;
    for (int i = 0; i < 3; i++)
        shortest = b->ids[i] && 50 + 10 * b->ids[i] < shortest ? 50 + 10 * b->ids[i] : shortest;
    int ok = b->S == shortest;
    for (int i = 0; i < 3; i++) { /* a contiguous crop of utterance ids[i] */
        float v0 = b->audio[i * b->S] * 32768.0f;
        int64_t start = (int64_t)lroundf(v0) - 100 * b->ids[i];
        ok &= start >= 0 && start + b->S <= 50 + 10 * b->ids[i];
        for (int t = 1; t < b->S; t++)
            ok &= lroundf(b->audio[i * b->S + t] * 32768.0f) == 100 * b->ids[i] + start + t;
    }
    check_record(ok, "every row is a crop to the batch's shortest utterance");
    loader_destroy(l);
    c.speech_normalize = 1, c.speech_max_samples = 64;
    l = loader_create(&d, &c, 0, 1, c0);
    b = loader_next(l);
    double m = 0, v = 0;
    for (int t = 0; t < b->S; t++)
        m += b->audio[t];
    m /= b->S;
    for (int t = 0; t < b->S; t++)
        v += (b->audio[t] - m) * (b->audio[t] - m);
    /* F.layer_norm with eps 1e-5: a crop of consecutive values t / 32768 has raw variance
     * (S^2 - 1) / 12 / 32768^2, so the normalised variance is raw / (raw + eps). */
    double raw = ((double)b->S * b->S - 1) / 12.0 / (32768.0 * 32768.0);
    check_record(b->S <= 64 && b->S >= 60 && fabs(m) < 1e-5 &&
                     fabs(v / b->S - raw / (raw + 1e-5)) < 1e-4,
                 "max length caps the crop; rows normalised to zero mean, unit variance");
    loader_destroy(l);
    dataset_close(&d);
}

/* ---- hostile files: every value read is checked before it is used (issue 12's findings) ---- */

/* A one-channel 4x6 image shard of n images; height written as an int64 `height`. */
static void write_images_h64(const char *path, int n, int64_t height) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "image", "shard", n, "test");
    h5_attr_i64(o.file, "height", height), h5_attr_i32(o.file, "width", 6);
    h5_attr_i32(o.file, "channels", 1);
    uint8_t px[10 * 24] = {0};
    hsize_t dims[4] = {(hsize_t)n, 4, 6, 1};
    h5_write(o.file, "images", H5T_NATIVE_UINT8, 4, dims, NULL, px);
    h5out_commit(&o);
}

/* Speech with a given sample_rate attribute (and float32 samples when `fl`, one of them NaN). */
static void write_speech_rate(const char *path, int64_t rate, int fl) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "speech", "shard", 2, "test");
    h5_attr_i64(o.file, "sample_rate", rate);
    h5_attr_str(o.file, "sample_format", fl ? "float32" : "int16");
    int16_t a[10] = {0};
    float af[10] = {0};
    af[7] = NAN;
    int64_t off[3] = {0, 5, 10};
    hsize_t na[1] = {10}, no[1] = {3};
    if (fl)
        h5_write(o.file, "audio", H5T_NATIVE_FLOAT, 1, na, NULL, af);
    else
        h5_write(o.file, "audio", H5T_NATIVE_INT16, 1, na, NULL, a);
    h5_write(o.file, "offsets", H5T_NATIVE_INT64, 1, no, NULL, off);
    h5out_commit(&o);
}

/* Text of 10 documents (write_text's) with token `bad` at position `at` of the stream. */
static void write_text_bad(const char *path, int64_t at, int32_t bad) {
    write_text(path, 10);
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, "tokens", H5P_DEFAULT), fs = H5Dget_space(d);
    hsize_t start[1] = {(hsize_t)at}, one[1] = {1};
    hid_t ms = H5Screate_simple(1, one, NULL);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, one, NULL);
    H5Dwrite(d, H5T_NATIVE_INT32, ms, fs, H5P_DEFAULT, &bad);
    H5Sclose(ms), H5Sclose(fs), H5Dclose(d), H5Fclose(f);
}

/* Run fn(arg) in a child whose stderr goes to a file; its exit status, and that output. */
static int in_child(void (*fn)(const char *), const char *arg, char *out, size_t n) {
    const char *log = tmp("child.log");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(log, "w", stderr)) _exit(99);
        fn(arg);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    out[0] = 0;
    FILE *f = fopen(log, "r");
    if (f) {
        size_t got = fread(out, 1, n - 1, f);
        out[got] = 0;
        fclose(f);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* The d2v-train path: a loader resumed from a checkpoint's negative position dies, one line. */
static void child_negative_cursor(const char *path) {
    Dataset d;
    char err[512];
    if (dataset_open(&d, path, D2V_IMAGE, err, sizeof err) != 0) _exit(98);
    LoaderConfig c = image_cfg(2, 0, 0);
    loader_create(&d, &c, 0, 1, (LoaderCursor){0, -6});
}

/* Reads failing on the prefetch thread: the batch that never comes ends the process. */
static void child_prefetch_read(const char *path) {
    Dataset d;
    char err[512];
    if (dataset_open(&d, path, D2V_IMAGE, err, sizeof err) != 0) {
        fprintf(stderr, "unexpected: %s\n", err);
        _exit(98);
    }
    LoaderConfig c = image_cfg(2, 0, 2);
    Loader *l = loader_create(&d, &c, 0, 1, (LoaderCursor){0, 0});
    for (int k = 0; k < 8; k++)
        loader_next(l);
}

/* Images deflated one per chunk, then the compressed bytes of every chunk overwritten: the file
 * opens (its metadata are intact), each read fails inside HDF5's filter. */
static void write_corrupt_chunks(const char *path, int n) {
    H5Out o;
    h5out_create(&o, path);
    h5_write_root_attrs(o.file, "image", "shard", n, "test");
    h5_attr_i32(o.file, "height", 4), h5_attr_i32(o.file, "width", 6);
    h5_attr_i32(o.file, "channels", 1);
    H5Append a;
    hsize_t inner[3] = {4, 6, 1};
    h5_append_open(&a, o.file, "images", H5T_NATIVE_UINT8, 4, inner, 1, 6);
    uint8_t px[24];
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 24; j++)
            px[j] = (uint8_t)(i * 3 + j);
        h5_append(&a, px, 1);
    }
    h5_append_close(&a);
    h5out_commit(&o);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), d = H5Dopen2(f, "images", H5P_DEFAULT);
    haddr_t addr[64];
    hsize_t size[64];
    for (int i = 0; i < n && i < 64; i++) {
        hsize_t at[4] = {(hsize_t)i, 0, 0, 0};
        unsigned mask;
        H5Dget_chunk_info_by_coord(d, at, &mask, &addr[i], &size[i]);
    }
    H5Dclose(d), H5Fclose(f);
    FILE *w = fopen(path, "r+b");
    for (int i = 0; i < n && i < 64; i++) {
        fseek(w, (long)addr[i], SEEK_SET);
        for (hsize_t k = 0; k < size[i]; k++)
            fputc(0xA5, w);
    }
    fclose(w);
}

/* Damage write_images' /label_names strings in place: how = 0 sets the size of the global heap's
 * free-space object to 0 (HDF5 1.10 then loops for ever), 1 points string 0 at heap object 99
 * (HDF5 reads outside its object table). */
static void damage_strings(const char *path, int how) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), d = H5Dopen2(f, "label_names", 0);
    haddr_t off = H5Dget_offset(d);
    H5Dclose(d), H5Fclose(f);
    FILE *io = fopen(path, "r+b");
    fseek(io, 0, SEEK_END);
    long n = ftell(io);
    uint8_t *b = malloc((size_t)n);
    rewind(io);
    if (fread(b, 1, (size_t)n, io) != (size_t)n) return;
    if (how == 1) {
        b[off + 12] = 99, b[off + 13] = 0; /* (length 4, address 8, index 4) */
    } else {
        for (long i = 0; i + 16 < n; i++)
            if (!memcmp(b + i, "GCOL", 4)) { /* objects: index 2, count 2, 4 reserved, size 8 */
                uint64_t size = 0, p = 16;
                for (int k = 7; k >= 0; k--)
                    size = size << 8 | b[i + 8 + k];
                while (p + 16 <= size) {
                    uint64_t idx = b[i + p] | b[i + p + 1] << 8, os = 0;
                    for (int k = 7; k >= 0; k--)
                        os = os << 8 | b[i + p + 8 + k];
                    if (idx == 0) {
                        memset(b + i + p + 8, 0, 8);
                        break;
                    }
                    p += 16 + (os + 7) / 8 * 8;
                }
                break;
            }
    }
    rewind(io);
    fwrite(b, 1, (size_t)n, io);
    fclose(io);
    free(b);
}

static void test_hostile(void) {
    printf("-- hostile files\n");
    H5Out o;
    /* an index whose shard_samples hold a negative count: once a heap write before d->labels */
    write_index();
    h5out_create(&o, tmp("neg.h5"));
    h5_write_root_attrs(o.file, "image", "index", 5, "test");
    const char *names[3] = {"set.shard-0.h5", "set.shard-1.h5", "set.shard-2.h5"};
    h5_write_strings(o.file, "shards", names, 3);
    int64_t neg[3] = {3, -4, 6};
    hsize_t n3[1] = {3};
    h5_write(o.file, "shard_samples", H5T_NATIVE_INT64, 1, n3, NULL, neg);
    h5out_commit(&o);
    CHECK(open_err(tmp("neg.h5"), -1, "shard_samples[1] = -4"));
    /* counts that overflow when summed */
    h5out_create(&o, tmp("ovf.h5"));
    h5_write_root_attrs(o.file, "image", "index", 13, "test");
    h5_write_strings(o.file, "shards", names, 3);
    int64_t big[3] = {INT64_MAX, INT64_MAX, 15};
    h5_write(o.file, "shard_samples", H5T_NATIVE_INT64, 1, n3, NULL, big);
    h5out_commit(&o);
    CHECK(open_err(tmp("ovf.h5"), -1, "shard_samples[0]"));

    /* num_samples of INT64_MAX (found by tests/fuzz: num_samples + 1 overflowed) */
    write_images(tmp("nmax.h5"), 5, 1);
    {
        hid_t f = H5Fopen(tmp("nmax.h5"), H5F_ACC_RDWR, H5P_DEFAULT);
        H5Adelete(f, "num_samples");
        h5_attr_i64(f, "num_samples", INT64_MAX);
        H5Fclose(f);
    }
    CHECK(open_err(tmp("nmax.h5"), -1, "num_samples 9223372036854775807 is out of range"));

    /* int64 height 2^32 + 4: once truncated to 4 (and the data matched it) */
    write_images_h64(tmp("h64.h5"), 3, ((int64_t)1 << 32) + 4);
    CHECK(open_err(tmp("h64.h5"), -1, "'height' = 4294967300 is out of range"));
    write_images_h64(tmp("h64ok.h5"), 3, 4); /* the control: an int64 attribute is fine */
    Dataset d;
    char err[1024];
    CHECK(dataset_open(&d, tmp("h64ok.h5"), D2V_IMAGE, err, sizeof err) == 0 && d.H == 4);
    dataset_close(&d);

    /* sample rates of 0 and below, or absurd */
    write_speech_rate(tmp("sr0.h5"), 0, 0);
    CHECK(open_err(tmp("sr0.h5"), -1, "'sample_rate' = 0 is out of range"));
    write_speech_rate(tmp("srneg.h5"), -16000, 0);
    CHECK(open_err(tmp("srneg.h5"), -1, "'sample_rate' = -16000"));
    write_speech_rate(tmp("srbig.h5"), (int64_t)1 << 40, 0);
    CHECK(open_err(tmp("srbig.h5"), -1, "'sample_rate'"));
    /* a string attribute with control characters: still a one-line message (found by
     * tests/fuzz: a sample_format holding a newline) */
    write_speech_rate(tmp("fmtnl.h5"), 16000, 0);
    {
        hid_t f = H5Fopen(tmp("fmtnl.h5"), H5F_ACC_RDWR, H5P_DEFAULT);
        H5Adelete(f, "sample_format");
        h5_attr_str(f, "sample_format", "in\nt\03316");
        H5Fclose(f);
    }
    CHECK(open_err(tmp("fmtnl.h5"), -1, "sample_format 'in?t?16'"));
    /* float32 audio: a NaN sample is refused when read, naming the utterance */
    write_speech_rate(tmp("nan.h5"), 16000, 1);
    CHECK(dataset_open(&d, tmp("nan.h5"), D2V_SPEECH, err, sizeof err) == 0);
    float au[5];
    CHECK(dataset_read_audio(&d, 0, 0, 5, au, err, sizeof err) == 0);
    int rc = dataset_read_audio(&d, 1, 0, 5, au, err, sizeof err);
    check_record(rc < 0 && strstr(err, "utterance 1") && strstr(err, "non-finite"), err);
    dataset_close(&d);

    /* token ids outside the vocabulary are refused at open, naming the document */
    write_text_bad(tmp("oov.h5"), 17, 100000); /* doc 6 holds stream positions 16..17 */
    CHECK(open_err(tmp("oov.h5"), D2V_TEXT, "document 6 holds token id 100000"));
    write_text_bad(tmp("oovneg.h5"), 0, -3);
    CHECK(open_err(tmp("oovneg.h5"), D2V_TEXT, "document 0 holds token id -3"));

    /* a dataset that declares more than the file stores (unwritten chunks read as zeros) */
    h5out_create(&o, tmp("sparse.h5"));
    h5_write_root_attrs(o.file, "image", "shard", 6, "test");
    h5_attr_i32(o.file, "height", 4), h5_attr_i32(o.file, "width", 6);
    h5_attr_i32(o.file, "channels", 1);
    {
        hsize_t dims[4] = {6, 4, 6, 1}, chunk[4] = {1, 4, 6, 1}, one[4] = {1, 4, 6, 1};
        hsize_t at[4] = {0, 0, 0, 0};
        hid_t sp = H5Screate_simple(4, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_chunk(dcpl, 4, chunk);
        hid_t ds =
            H5Dcreate2(o.file, "images", H5T_NATIVE_UINT8, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        hid_t ms = H5Screate_simple(4, one, NULL);
        H5Sselect_hyperslab(sp, H5S_SELECT_SET, at, NULL, one, NULL);
        uint8_t px[24] = {1};
        H5Dwrite(ds, H5T_NATIVE_UINT8, ms, sp, H5P_DEFAULT, px); /* image 0 only */
        H5Sclose(ms), H5Dclose(ds), H5Pclose(dcpl), H5Sclose(sp);
    }
    h5out_commit(&o);
    CHECK(open_err(tmp("sparse.h5"), -1, "declares 144 bytes but the file stores 24"));
    /* element types: images of int32, int16 audio stored as float */
    h5out_create(&o, tmp("i32.h5"));
    h5_write_root_attrs(o.file, "image", "shard", 1, "test");
    h5_attr_i32(o.file, "height", 4), h5_attr_i32(o.file, "width", 6);
    h5_attr_i32(o.file, "channels", 1);
    {
        int32_t px[24] = {0};
        hsize_t dims[4] = {1, 4, 6, 1};
        h5_write(o.file, "images", H5T_NATIVE_INT32, 4, dims, NULL, px);
    }
    h5out_commit(&o);
    CHECK(open_err(tmp("i32.h5"), -1, "'images' should hold integers of 1 byte"));

    /* damaged string heaps: refused before HDF5 reads them (found by tests/fuzz) */
    write_images(tmp("heap0.h5"), 5, 1);
    damage_strings(tmp("heap0.h5"), 0);
    CHECK(open_err(tmp("heap0.h5"), -1, "points into a damaged global heap"));
    write_images(tmp("heap99.h5"), 5, 1);
    damage_strings(tmp("heap99.h5"), 1);
    CHECK(open_err(tmp("heap99.h5"), -1, "refers to heap object 99"));

    /* labels beyond the label names */
    write_images(tmp("lab.h5"), 5, 1);
    {
        hid_t f = H5Fopen(tmp("lab.h5"), H5F_ACC_RDWR, H5P_DEFAULT);
        H5Ldelete(f, "labels", H5P_DEFAULT);
        int32_t lab[5] = {0, 1, 2, 3, 0};
        hsize_t n5[1] = {5};
        h5_write(f, "labels", H5T_NATIVE_INT32, 1, n5, NULL, lab);
        H5Fclose(f);
    }
    CHECK(open_err(tmp("lab.h5"), -1, "sample 3 has label 3 but there are 3 label names"));

    /* a loader cursor outside the epoch (a checkpoint's): refused, whatever the caller */
    CHECK(dataset_open(&d, tmp("img.h5"), D2V_IMAGE, err, sizeof err) == 0);
    LoaderConfig c = image_cfg(2, 0, 0);
    const LoaderCursor bad[3] = {{0, -6}, {-1, 0}, {0, 6}};
    for (int i = 0; i < 3; i++) {
        err[0] = 0;
        Loader *l = loader_create_err(&d, &c, 0, 1, bad[i], err, sizeof err);
        char label[1200];
        snprintf(label, sizeof label, "cursor (%lld, %lld) refused: %s", (long long)bad[i].epoch,
                 (long long)bad[i].position, err);
        check_record(!l && strstr(err, tmp("img.h5")) && strstr(err, "outside an epoch"), label);
        loader_destroy(l);
    }
    Loader *l = loader_create_err(&d, &c, 0, 1, (LoaderCursor){2, 5}, err, sizeof err);
    check_record(l && loader_next_err(l, err, sizeof err),
                 "cursor at the end of an epoch (position 5 of 5) is valid");
    loader_destroy(l);
    dataset_close(&d);
    char out[8192];
    int st = in_child(child_negative_cursor, tmp("img.h5"), out, sizeof out);
    printf("     %s", out);
    check_record(st != 0 && count_lines(out) == 1 && strstr(out, "position -6"),
                 "loader_create dies on a negative position with one line");

    /* a read failing on the prefetch thread: one line, not HDF5's error stack before it */
    write_corrupt_chunks(tmp("badchunks.h5"), 6);
    st = in_child(child_prefetch_read, tmp("badchunks.h5"), out, sizeof out);
    printf("     %s", out);
    check_record(st != 0 && count_lines(out) == 1 && !strncmp(out, "d2v: error: ", 12) &&
                     strstr(out, "badchunks.h5"),
                 "a prefetch-thread read error ends the process with one line");
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/d2v-test-dataset-%ld", (long)getpid());
    char cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 1;
    test_validation();
    test_index_and_sharding();
    test_images();
    test_augment_unchanged();
    test_color_jitter();
    test_bicubic();
    test_text();
    test_speech();
    test_hostile();
    snprintf(cmd, sizeof cmd, "ls %s | grep -c '\\.tmp\\.' > /dev/null && exit 1; rm -rf %s", dir,
             dir);
    CHECK(system(cmd) == 0); /* no temporary file left behind */
    return check_summary();
}
