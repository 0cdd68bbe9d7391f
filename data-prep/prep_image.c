/* prep_image.c: d2v-prep-image: a folder tree of PNG/JPEG files or an IDX (MNIST-format) pair to
 * image shards (docs/datasets.md), resized and channel-converted, one shard per MPI rank. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/util.h"
#include "image_io.h"
#include "prep_common.h"

#define CREATED_BY "d2v-prep-image 1"
#define BATCH 64 // images buffered per append

static void usage(void) {
    fputs(
        "usage: d2v-prep-image [options] -o OUT.h5 (--tree DIR | --idx-images FILE [--idx-labels "
        "FILE])\n"
        "Writes an image dataset (docs/datasets.md): /images uint8 (N, H, W, C), one image per "
        "chunk,\n"
        "with /labels and /label_names when the input has classes.\n"
        "\n"
        "inputs (one kind):\n"
        "  --tree DIR             DIR/<class>/*.png|*.jpg|*.jpeg; label names are the sorted "
        "class\n"
        "                         folder names. With no class folders, images are unlabelled.\n"
        "  --idx-images FILE      IDX images, MNIST / Fashion-MNIST format, gzipped or plain\n"
        "  --idx-labels FILE      IDX labels for --idx-images (optional)\n"
        "  --class-names a,b,...  names of IDX label ids 0, 1, ... (optional; /label_names)\n"
        "output:\n"
        "  -o, --out FILE         output file; under mpirun -n N > 1, FILE is an index listing N\n"
        "                         shards FILE-without-.h5.shard-RRRRR-of-NNNNN.h5\n"
        "  --size HxW             output size, or one number for a square (default: the IDX size;\n"
        "                         required with --tree)\n"
        "  --channels 1|3         gray or RGB (default 1 with IDX input, 3 with --tree)\n"
        "  --deflate L            gzip level 0-9 for /images (default 0: fastest random reads)\n"
        "  --strict               stop at the first bad input instead of skipping it\n"
        "\n"
        "decoding: PNG via libpng (gray, gray+alpha, RGB, RGBA, palette, tRNS, 1-16 bit, "
        "interlaced),\n"
        "JPEG via libjpeg-turbo (gray, RGB, CMYK). Alpha is composited over black; RGB to gray is\n"
        "BT.601 luma (299 R + 587 G + 114 B) / 1000; gray to RGB replicates.\n"
        "resizing: separable, each axis on its own: area averaging when it shrinks (each output "
        "pixel\n"
        "is the mean of the source area it covers, partial pixels weighted by overlap), bilinear\n"
        "interpolation with half-pixel centres and clamped edges when it grows, a copy when "
        "equal;\n"
        "rounded to nearest. The aspect ratio is not kept: images are stretched to HxW.\n"
        "bad inputs (unreadable, corrupt or truncated files, including JPEGs libjpeg only warns\n"
        "about; files outside class folders; empty class folders; IDX data that disagrees with "
        "its\n"
        "header or with the labels file) are reported with the file name and skipped with a "
        "count,\n"
        "or stop the job under --strict. Outputs are written under a temporary name and renamed\n"
        "only when every rank succeeded. Samples are in sorted input order (IDX: file order) for\n"
        "any number of ranks.\n",
        stdout);
}

typedef struct {
    const char *tree, *idx_images, *idx_labels, *class_names, *out;
    int h, w, c, deflate, strict;
} ImageArgs;

static int parse_int(const char *s, const char *opt, int lo, int hi) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        die("%s %s: expected an integer in %d..%d", opt, s, lo, hi);
    return (int)v;
}

static void parse_args(int argc, char **argv, ImageArgs *a) {
    memset(a, 0, sizeof *a);
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--strict")) {
            a->strict = 1;
            continue;
        }
        if (i + 1 >= argc) die("%s: missing value (see --help)", o);
        const char *v = argv[++i];
        if (!strcmp(o, "--tree"))
            a->tree = v;
        else if (!strcmp(o, "--idx-images"))
            a->idx_images = v;
        else if (!strcmp(o, "--idx-labels"))
            a->idx_labels = v;
        else if (!strcmp(o, "--class-names"))
            a->class_names = v;
        else if (!strcmp(o, "-o") || !strcmp(o, "--out"))
            a->out = v;
        else if (!strcmp(o, "--channels")) {
            a->c = parse_int(v, o, 1, 3);
            if (a->c == 2) die("--channels 2: expected 1 (gray) or 3 (RGB)");
        } else if (!strcmp(o, "--deflate"))
            a->deflate = parse_int(v, o, 0, 9);
        else if (!strcmp(o, "--size")) {
            int used = 0, n = sscanf(v, "%dx%d%n", &a->h, &a->w, &used);
            if (n == 1 && strspn(v, "0123456789") == strlen(v)) a->w = a->h, used = (int)strlen(v);
            if (n < 1 || v[used] || a->h < 1 || a->w < 1 || a->h > 8192 || a->w > 8192)
                die("--size %s: expected HxW (or one number) with sides 1..8192", v);
        } else
            die("%s: unknown option (see --help)", o);
    }
    if (!a->out) die("no output file: give -o OUT.h5 (see --help)");
    if (!!a->tree + !!a->idx_images != 1)
        die("give exactly one input: --tree DIR or --idx-images FILE (see --help)");
    if (a->tree && (a->idx_labels || a->class_names))
        die("--idx-labels and --class-names go with --idx-images; --tree names classes by folder");
    if (a->tree && !a->h) die("--tree needs --size HxW (images may differ in size)");
    if (!a->c) a->c = a->tree ? 3 : 1;
}

/* Split "a,b,c" into a malloc'd array of n names. */
static char **split_names(const char *s, size_t *n) {
    size_t k = 1;
    for (const char *p = s; *p; p++)
        k += *p == ',';
    char **v = xalloc(sizeof(char *) * k, "class names");
    const char *p = s;
    for (size_t i = 0; i < k; i++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        v[i] = strndup(p, len);
        if (!len) die("--class-names %s: empty name at position %zu", s, i + 1);
        p = e ? e + 1 : p + len;
    }
    *n = k;
    return v;
}

/* Where the images come from: a decoded file list, or one in-memory IDX pair. */
typedef struct {
    PrepTree tree;
    IdxFile img, lab;
    int has_labels, from_idx;
    size_t n;     // inputs (files, or IDX items)
    char **names; // label names (n_names), or NULL
    size_t n_names;
    char item_name[4096]; // scratch: "FILE[#i]" for messages
} ImageSource;

/* Global checks every rank makes identically; bad inputs found here are reported by rank 0 only,
 * so each counts once. */
static void source_open(ImageSource *s, const ImageArgs *a, PrepErrors *pe) {
    memset(s, 0, sizeof *s);
    char err[1024];
    int r0 = g_dist.rank == 0;
    if (a->tree) {
        static const char *const exts[] = {".png", ".jpg", ".jpeg", NULL};
        if (prep_list_tree(&s->tree, a->tree, exts, err, sizeof err) < 0) die("%s", err);
        if (s->tree.n == 0) die("%s: no .png, .jpg or .jpeg files (empty folder?)", a->tree);
        s->n = s->tree.n;
        s->has_labels = s->tree.n_classes > 0;
        s->names = s->tree.classes, s->n_names = s->tree.n_classes;
        size_t *per = xalloc(sizeof(size_t) * (s->n_names + 1), "class counts");
        for (size_t i = 0; i < s->n; i++)
            if (s->tree.label[i] >= 0) per[s->tree.label[i]]++;
        for (size_t c = 0; c < s->n_names && r0; c++)
            if (!per[c]) {
                char dir[4096];
                snprintf(dir, sizeof dir, "%s/%s", a->tree, s->names[c]);
                prep_bad_input(pe, dir, "empty class folder (no .png, .jpg or .jpeg files)");
            }
        free(per);
        return;
    }
    s->from_idx = 1;
    if (idx_read(a->idx_images, 3, &s->img, err, sizeof err) < 0) die("%s", err);
    size_t n = s->img.n_items;
    if (r0 && (n != s->img.dims[0] || s->img.extra_bytes || s->img.read_error[0]))
        prep_bad_input(pe, a->idx_images,
                       "header says %u images of %ux%u but the data holds %zu complete ones%s%s%s",
                       s->img.dims[0], s->img.dims[1], s->img.dims[2], n,
                       s->img.extra_bytes ? " plus stray bytes" : "",
                       s->img.read_error[0] ? "; zlib: " : "", s->img.read_error);
    if (a->idx_labels) {
        if (idx_read(a->idx_labels, 1, &s->lab, err, sizeof err) < 0) die("%s", err);
        size_t m = s->lab.n_items;
        if (r0 && (m != s->lab.dims[0] || s->lab.extra_bytes || s->lab.read_error[0]))
            prep_bad_input(pe, a->idx_labels, "header says %u labels but the data holds %zu%s%s%s",
                           s->lab.dims[0], m, s->lab.extra_bytes ? " plus stray bytes" : "",
                           s->lab.read_error[0] ? "; zlib: " : "", s->lab.read_error);
        if (r0 && m != n)
            prep_bad_input(pe, a->idx_labels,
                           "%zu labels for %zu images in %s: keeping the first %zu pairs", m, n,
                           a->idx_images, m < n ? m : n);
        if (m < n) n = m;
        s->has_labels = 1;
    }
    s->n = n;
    if (n == 0) die("%s: no complete images to convert", a->idx_images);
    if (a->class_names) {
        s->names = split_names(a->class_names, &s->n_names);
        for (size_t i = 0; i < n && s->has_labels; i++)
            if (s->lab.data[i] >= s->n_names)
                die("%s: label %d of item %zu has no name in --class-names (%zu names)",
                    a->idx_labels, s->lab.data[i], i, s->n_names);
    }
}

static void source_close(ImageSource *s) {
    if (s->from_idx) {
        idx_free(&s->img), idx_free(&s->lab);
        for (size_t i = 0; i < s->n_names; i++)
            free(s->names[i]);
        free(s->names);
    } else {
        prep_tree_free(&s->tree);
    }
}

/* Input i as (h, w, c_out) pixels resized into out; -1 with err (and the name to report). */
static int source_get(ImageSource *s, size_t i, const ImageArgs *a, uint8_t *out, int32_t *label,
                      const char **name, char *err, size_t errlen) {
    if (s->from_idx) {
        snprintf(s->item_name, sizeof s->item_name, "%s[%zu]", a->idx_images, i);
        *name = s->item_name;
        *label = s->has_labels ? s->lab.data[i] : -1;
        Image g = {(int)s->img.dims[1], (int)s->img.dims[2], 1,
                   s->img.data + i * s->img.item_bytes};
        uint8_t *conv = xalloc((size_t)g.h * g.w * a->c, "image");
        image_convert_channels(&g, a->c, conv);
        image_resize_u8(conv, g.h, g.w, a->c, out, a->h, a->w);
        free(conv);
        return 0;
    }
    *name = s->tree.paths[i];
    *label = s->tree.label[i];
    if (s->has_labels && *label < 0) {
        snprintf(err, errlen, "not inside a class folder (the tree has class folders)");
        return -1;
    }
    Image img;
    if (image_decode_file(s->tree.paths[i], &img, err, errlen) < 0) return -1;
    uint8_t *conv = xalloc((size_t)img.h * img.w * a->c, "image");
    image_convert_channels(&img, a->c, conv);
    image_resize_u8(conv, img.h, img.w, a->c, out, a->h, a->w);
    free(conv);
    image_free(&img);
    return 0;
}

int main(int argc, char **argv) {
    prep_start(&argc, &argv, usage);
    ImageArgs a;
    parse_args(argc, argv, &a);
    PrepErrors pe = {a.strict, 0};
    ImageSource src;
    source_open(&src, &a, &pe);
    if (src.from_idx && !a.h) a.h = (int)src.img.dims[1], a.w = (int)src.img.dims[2];
    size_t lo, hi;
    prep_rank_block(src.n, g_dist.rank, g_dist.world, &lo, &hi);
    dist_barrier(); // a --strict stop in the checks above happens before any output exists

    char path[PATH_MAX];
    prep_shard_path(path, sizeof path, a.out, g_dist.rank, g_dist.world);
    H5Out o;
    prep_out_create(&o, path);
    size_t img_bytes = (size_t)a.h * a.w * a.c;
    hsize_t inner[3] = {(hsize_t)a.h, (hsize_t)a.w, (hsize_t)a.c};
    H5Append images;
    h5_append_open(&images, o.file, "images", H5T_NATIVE_UINT8, 4, inner, 1, a.deflate);
    uint8_t *batch = xalloc(img_bytes * BATCH, "image batch");
    int32_t *labels = xalloc(sizeof(int32_t) * (hi - lo + 1), "labels");
    size_t count = 0, in_batch = 0;
    char err[1024];
    for (size_t i = lo; i < hi; i++) {
        const char *name = "";
        if (source_get(&src, i, &a, batch + in_batch * img_bytes, &labels[count], &name, err,
                       sizeof err) < 0) {
            prep_bad_input(&pe, name, "%s", err);
            continue;
        }
        count++;
        if (++in_batch == BATCH) h5_append(&images, batch, in_batch), in_batch = 0;
    }
    h5_append(&images, batch, in_batch);
    h5_append_close(&images);
    if (src.has_labels) {
        hsize_t dims[1] = {count};
        h5_write(o.file, "labels", H5T_NATIVE_INT32, 1, dims, NULL, labels);
    }
    if (src.names)
        h5_write_strings(o.file, "label_names", (const char *const *)src.names, src.n_names);
    h5_write_root_attrs(o.file, "image", "shard", (int64_t)count, CREATED_BY);
    h5_attr_i32(o.file, "height", a.h);
    h5_attr_i32(o.file, "width", a.w);
    h5_attr_i32(o.file, "channels", a.c);
    free(batch), free(labels);

    prep_report_skipped(&pe);
    double total = (double)count;
    dist_allreduce_sum_f64(&total, 1);
    if (total == 0) {
        prep_out_discard();
        dist_barrier();
        if (g_dist.rank == 0) die("%s: no usable images (all inputs were bad)", a.out);
        dist_barrier(); // the other ranks wait here until rank 0's abort ends the job
    }
    prep_out_commit(&o);
    prep_write_index(a.out, "image", CREATED_BY, (int64_t)count);
    if (g_dist.world == 1)
        printf("wrote %s: %zu images of %dx%dx%d\n", a.out, count, a.h, a.w, a.c);
    source_close(&src);
    dist_finalize();
    return 0;
}
