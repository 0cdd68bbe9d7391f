/* test_ckpt.c: checkpoints through ckpt.h: a bit-exact round trip, DONE and retention, reads that
 * fail with one line naming the file (another config or modality, truncated, missing, flipped
 * bytes, impossible values), the fall-back past a damaged newest checkpoint, stale temporary
 * files, and a full disk during a write. Run from the repository root (reads configs/). */
#define _POSIX_C_SOURCE 200809L
#include "d2v/ckpt.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "d2v/config.h"
#include "d2v/h5io.h"
#include "d2v/kernels.h"
#include "d2v/util.h"

static char dir[] = "/tmp/d2v-test-ckpt.XXXXXX";

static const char *const tiny_cfg[3] = {"configs/text-tiny.cfg", "configs/image-tiny.cfg",
                                        "configs/speech-tiny.cfg"};

/* configs/<modality>-tiny.cfg plus `extra` overrides (NULL-terminated) as a ModelConfig. */
static int tiny_model(ModelConfig *mc, int modality, const char *const *extra) {
    TrainConfig cfg;
    char err[1024];
    train_config_defaults(&cfg);
    if (train_config_load(&cfg, tiny_cfg[modality], err, sizeof err) != 0 ||
        train_config_set(&cfg, "data.train=unused.h5", err, sizeof err) != 0)
        return check_record(0, err), -1;
    for (int i = 0; extra && extra[i]; i++)
        if (train_config_set(&cfg, extra[i], err, sizeof err) != 0) return check_record(0, err), -1;
    if (train_config_validate(&cfg, 1, err, sizeof err) != 0) return check_record(0, err), -1;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.vocab_size = 64, ds.bos_id = 0, ds.pad_id = 1, ds.eos_id = 2, ds.unk_id = 3;
    ds.mask_id = 63;
    train_config_to_model(mc, &cfg, &ds);
    return 0;
}

/* The four arenas of one model, each filled with its own arbitrary bit patterns (any float bits,
 * NaN payloads, infinities and subnormals included: a round trip must copy bits, not values). */
typedef struct {
    size_t np;
    float *a[4]; // params, teacher, adam_m, adam_v
} Arenas;

static Arenas arenas_new(const ModelConfig *mc, uint64_t seed) {
    Arenas r;
    r.np = model_params_layout(NULL, NULL, mc);
    for (int k = 0; k < 4; k++) {
        r.a[k] = xalloc(r.np * sizeof(float), "arena");
        uint64_t key = rng_key(seed, (uint64_t)k, 0, 0);
        for (size_t i = 0; i < r.np; i++) {
            uint32_t bits = (uint32_t)(rng_uniform(key, 2 * i) * 65536.0f) << 16 |
                            (uint32_t)(rng_uniform(key, 2 * i + 1) * 65536.0f);
            memcpy(&r.a[k][i], &bits, sizeof bits);
        }
    }
    const uint32_t special[6] = {0x80000000u, 0x00000001u, 0x7f800000u,
                                 0xff800000u, 0x7fc01234u, 0x7f800001u};
    for (int j = 0; j < 6 && (size_t)j < r.np; j++)
        memcpy(&r.a[j % 4][j], &special[j], sizeof special[j]);
    return r;
}

static void arenas_fill(Arenas *r, unsigned char byte) {
    for (int k = 0; k < 4; k++)
        memset(r->a[k], byte, r->np * sizeof(float));
}

static void arenas_free(Arenas *r) {
    for (int k = 0; k < 4; k++)
        free(r->a[k]);
}

static void write_ckpt(const char *run, const ModelConfig *mc, const Arenas *r, int64_t update,
                       int keep_last) {
    TrainState st = {update, update / 3, {update / 7, 11 * update + 5}, update + 100};
    ckpt_write(run, mc, "# resolved config\nseed = 1;\n", r->a[0], r->a[1], r->a[2], r->a[3], r->np,
               &st, keep_last, 0);
}

static int read_ckpt(const char *path, const ModelConfig *mc, Arenas *r, TrainState *st, char *err,
                     size_t errlen) {
    return ckpt_read(path, mc, r->a[0], r->a[1], r->a[2], r->a[3], r->np, st, err, errlen);
}

static void run_dir(char *buf, size_t n, const char *name) {
    if (snprintf(buf, n, "%s/%s", dir, name) >= (int)n || mkdir(buf, 0775) != 0)
        die("%s: cannot create", buf);
}

static void step_path(char *buf, size_t n, const char *run, int64_t update, const char *file) {
    snprintf(buf, n, "%s/ckpt/step_%08lld%s%s", run, (long long)update, file ? "/" : "",
             file ? file : "");
}

static int exists(const char *path) {
    struct stat s;
    return stat(path, &s) == 0;
}

static void touch(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f || fclose(f) != 0) die("%s: cannot create", path);
}

static void copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    if (!in || !out) die("cannot copy %s to %s", from, to);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    if (fclose(out) != 0) die("%s: cannot write", to);
}

/* Wait for a forked child; its first stderr line (redirected to log) into msg. */
static int wait_child(pid_t pid, const char *log, char *msg, size_t n) {
    int status = 0;
    waitpid(pid, &status, 0);
    msg[0] = 0;
    FILE *f = fopen(log, "r");
    if (f) {
        if (!fgets(msg, (int)n, f)) msg[0] = 0;
        fclose(f);
    }
    msg[strcspn(msg, "\n")] = 0;
    return status;
}

/* A failed read: rc == code (CKPT_OTHER: another model's, never fallen back from; CKPT_DAMAGED;
 * CKPT_MISSING), and err is one non-empty line naming the file and holding `want` if set. */
static void expect_fail_code(const char *what, int rc, int code, const char *err, const char *path,
                             const char *want) {
    int one_line = err[0] && !strchr(err, '\n');
    int ok = rc == code && one_line && strstr(err, path) && (!want || strstr(err, want));
    char label[1400];
    snprintf(label, sizeof label, "%s: fails with \"%s\"", what, err);
    check_record(ok, label);
    if (!ok)
        printf("     want rc %d (got %d), one line naming %s%s%s\n", code, rc, path,
               want ? " and containing " : "", want ? want : "");
}
#define expect_fail(what, rc, err, path, want)                                                     \
    expect_fail_code(what, rc, CKPT_OTHER, err, path, want)
#define expect_damaged(what, rc, err, path, want)                                                  \
    expect_fail_code(what, rc, CKPT_DAMAGED, err, path, want)

/* ---- round trip ------------------------------------------------------------------------------ */

static void test_round_trip(int modality) {
    const char *name = d2v_modality_names[modality];
    printf("-- round trip (%s)\n", name);
    ModelConfig mc;
    if (tiny_model(&mc, modality, NULL)) return;
    char run[PATH_MAX], path[PATH_MAX + 64], err[1024] = "";
    snprintf(path, sizeof path, "round-%s", name);
    run_dir(run, sizeof run, path);
    Arenas w = arenas_new(&mc, 100 + (uint64_t)modality), r = arenas_new(&mc, 999);
    arenas_fill(&r, 0xCD);
    /* values past 2^32 and 2^53 - 1: int64 all the way through */
    TrainState st = {(int64_t)1 << 34 | 3, 12345, {(int64_t)1 << 33, ((int64_t)1 << 53) - 1}, 77};
    ckpt_write(run, &mc, "modality = \"x\";\n", w.a[0], w.a[1], w.a[2], w.a[3], w.np, &st, 0, 0);
    TrainState back;
    memset(&back, 0x5A, sizeof back);
    int found = ckpt_find_latest(run, path, sizeof path);
    char want[PATH_MAX + 64];
    step_path(want, sizeof want, run, st.update, "model.h5");
    char label[160];
    snprintf(label, sizeof label, "%s: ckpt_find_latest names the one checkpoint", name);
    check_record(found == 0 && !strcmp(path, want), label);
    int rc = read_ckpt(want, &mc, &r, &back, err, sizeof err);
    if (rc) printf("     %s\n", err);
    snprintf(label, sizeof label, "%s: ckpt_read of what ckpt_write wrote returns 0", name);
    check_record(rc == 0, label);
    const char *an[4] = {"params", "teacher", "adam_m", "adam_v"};
    for (int k = 0; k < 4; k++) {
        size_t first = w.np;
        for (size_t i = 0; i < w.np && first == w.np; i++)
            if (memcmp(&w.a[k][i], &r.a[k][i], sizeof(float))) first = i;
        snprintf(label, sizeof label, "%s: %s, %zu floats, bit-exact", name, an[k], w.np);
        check_record(first == w.np, label);
        if (first < w.np) printf("     first difference at %zu\n", first);
    }
    snprintf(label, sizeof label, "%s: TrainState update, skipped, cursor epoch and position",
             name);
    check_record(back.update == st.update && back.skipped == st.skipped &&
                     back.cursor.epoch == st.cursor.epoch &&
                     back.cursor.position == st.cursor.position && back.planned == st.planned,
                 label);
    /* the resolved configuration and the modality travel with the checkpoint */
    hid_t f = h5_open_ro(want, err, sizeof err);
    char text[256] = "", mod[32] = "";
    if (f >= 0) {
        h5_read_attr_str(f, want, "config", text, sizeof text, err, sizeof err);
        h5_read_attr_str(f, want, "modality", mod, sizeof mod, err, sizeof err);
        H5Fclose(f);
    }
    snprintf(label, sizeof label, "%s: the config text and modality attributes", name);
    check_record(!strcmp(text, "modality = \"x\";\n") && !strcmp(mod, name), label);
    /* an error buffer too small for the message: cut, still terminated */
    char tiny[12];
    memset(tiny, 'x', sizeof tiny);
    rc = read_ckpt("/nonexistent/ckpt/model.h5", &mc, &r, &back, tiny, sizeof tiny);
    snprintf(label, sizeof label, "%s: a short err buffer is cut, still terminated", name);
    check_record(rc == CKPT_MISSING && memchr(tiny, '\0', sizeof tiny), label);
    arenas_free(&w), arenas_free(&r);
}

/* ---- discovery and retention ----------------------------------------------------------------- */

static void test_done_and_retention(void) {
    printf("-- DONE marker and keep_last\n");
    ModelConfig mc;
    if (tiny_model(&mc, D2V_TEXT, NULL)) return;
    Arenas w = arenas_new(&mc, 7);
    char run[PATH_MAX], path[PATH_MAX + 64], want[PATH_MAX + 64], p[PATH_MAX + 64];
    run_dir(run, sizeof run, "done");
    check_record(ckpt_find_latest(run, path, sizeof path) == -1, "no ckpt/ directory: none found");
    snprintf(p, sizeof p, "%s/ckpt", run);
    mkdir(p, 0775);
    check_record(ckpt_find_latest(run, path, sizeof path) == -1, "empty ckpt/: none found");

    write_ckpt(run, &mc, &w, 5, 0);
    write_ckpt(run, &mc, &w, 12, 0);
    step_path(want, sizeof want, run, 12, "model.h5");
    check_record(ckpt_find_latest(run, path, sizeof path) == 0 && !strcmp(path, want),
                 "the newest complete checkpoint (12 of 5, 12)");
    /* a newer step whose DONE never came (a crash mid-write): a full model.h5, no DONE */
    step_path(p, sizeof p, run, 40, NULL);
    mkdir(p, 0775);
    step_path(p, sizeof p, run, 40, "model.h5");
    copy_file(want, p);
    /* names that are not step_<number> */
    snprintf(p, sizeof p, "%s/ckpt/step_00000090.old", run);
    mkdir(p, 0775);
    snprintf(p, sizeof p, "%s/ckpt/step_00000090.old/DONE", run);
    touch(p);
    check_record(ckpt_find_latest(run, path, sizeof path) == 0 && !strcmp(path, want),
                 "step_00000040 without DONE and step_00000090.old are ignored");
    /* DONE removed from 12: 5 is the latest again */
    step_path(p, sizeof p, run, 12, "DONE");
    unlink(p);
    step_path(want, sizeof want, run, 5, "model.h5");
    check_record(ckpt_find_latest(run, path, sizeof path) == 0 && !strcmp(path, want),
                 "without its DONE, 12 gives way to 5");
    char small[16];
    check_record(ckpt_find_latest(run, small, sizeof small) == -1, "a path buffer too small: -1");

    /* keep_last 2 over updates 1..6: only 5 and 6 remain, whole directories gone; the
     * incomplete 40 is neither counted nor removed */
    run_dir(run, sizeof run, "keep");
    snprintf(p, sizeof p, "%s/ckpt", run);
    mkdir(p, 0775);
    step_path(p, sizeof p, run, 40, NULL);
    mkdir(p, 0775);
    for (int64_t u = 1; u <= 6; u++)
        write_ckpt(run, &mc, &w, u, 2);
    int kept_ok = 1;
    for (int64_t u = 1; u <= 6; u++) {
        step_path(p, sizeof p, run, u, NULL);
        if (exists(p) != (u >= 5))
            kept_ok = 0,
            printf("     step %lld: %s\n", (long long)u, exists(p) ? "kept" : "removed");
    }
    step_path(p, sizeof p, run, 40, NULL);
    check_record(kept_ok, "keep_last 2 after updates 1..6: exactly steps 5 and 6 remain");
    check_record(exists(p), "the incomplete step 40 is left alone");
    step_path(want, sizeof want, run, 6, "model.h5");
    check_record(ckpt_find_latest(run, path, sizeof path) == 0 && !strcmp(path, want),
                 "after retention the latest is 6");
    /* keep_last 0 keeps everything */
    run_dir(run, sizeof run, "all");
    for (int64_t u = 1; u <= 4; u++)
        write_ckpt(run, &mc, &w, u, 0);
    int all = 1;
    for (int64_t u = 1; u <= 4; u++) {
        step_path(p, sizeof p, run, u, "DONE");
        all &= exists(p);
    }
    check_record(all, "keep_last 0 keeps all four");
    arenas_free(&w);
}

/* ---- reads that must fail ---------------------------------------------------------------------
 */

static void test_bad_reads(void) {
    printf("-- reads that must fail\n");
    ModelConfig mc, wide, deep, head, image;
    const char *const s_wide[] = {"model.width=48", NULL}, *const s_deep[] = {"model.layers=3",
                                                                              NULL};
    const char *const s_head[] = {"model.head_layers=1", NULL};
    if (tiny_model(&mc, D2V_TEXT, NULL) || tiny_model(&wide, D2V_TEXT, s_wide) ||
        tiny_model(&deep, D2V_TEXT, s_deep) || tiny_model(&head, D2V_TEXT, s_head) ||
        tiny_model(&image, D2V_IMAGE, NULL))
        return;
    char run[PATH_MAX], path[PATH_MAX + 64], p[PATH_MAX + 64], err[1024];
    run_dir(run, sizeof run, "bad");
    Arenas w = arenas_new(&mc, 3);
    write_ckpt(run, &mc, &w, 8, 0);
    step_path(path, sizeof path, run, 8, "model.h5");
    TrainState st;
    struct {
        const char *what;
        const ModelConfig *mc;
        const char *want;
    } other[4] = {{"width 48 instead of 32", &wide, "another config"},
                  {"3 layers instead of 2", &deep, "another config"},
                  {"a 1-layer head instead of 2", &head, "different config"},
                  {"an image model reading a text checkpoint", &image, "a text checkpoint"}};
    for (int i = 0; i < 4; i++) {
        Arenas r = arenas_new(other[i].mc, 1);
        err[0] = 0;
        int rc = read_ckpt(path, other[i].mc, &r, &st, err, sizeof err);
        expect_fail(other[i].what, rc, err, path, other[i].want);
        arenas_free(&r);
    }
    Arenas r = arenas_new(&mc, 1);

    /* truncated copies: empty, inside the superblock, halfway, one byte short */
    struct stat sb;
    stat(path, &sb);
    const off_t cut[4] = {0, 100, sb.st_size / 2, sb.st_size - 1};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/truncated-%d.h5", run, i);
        copy_file(path, p);
        if (truncate(p, cut[i]) != 0) die("%s: cannot truncate", p);
        err[0] = 0;
        int rc = read_ckpt(p, &mc, &r, &st, err, sizeof err);
        char what[96];
        snprintf(what, sizeof what, "model.h5 truncated to %lld of %lld bytes", (long long)cut[i],
                 (long long)sb.st_size);
        expect_damaged(what, rc, err, p, NULL);
    }
    /* well-formed HDF5 with one arena missing, or one value short */
    for (int i = 0; i < 2; i++) {
        snprintf(p, sizeof p, "%s/adam_v-%s.h5", run, i ? "short" : "missing");
        copy_file(path, p);
        hid_t h = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        H5Ldelete(h, "adam_v", H5P_DEFAULT);
        hsize_t n[1] = {r.np - 1};
        if (i) h5_write(h, "adam_v", H5T_NATIVE_FLOAT, 1, n, NULL, w.a[3]);
        H5Fclose(h);
        err[0] = 0;
        expect_damaged(i ? "adam_v one value short" : "adam_v missing",
                       read_ckpt(p, &mc, &r, &st, err, sizeof err), err, p, "adam_v");
    }
    /* param_shapes of another shape: (n, 100) once overran the (n, 4) buffer it is read into */
    {
        snprintf(p, sizeof p, "%s/param-shapes-wide.h5", run);
        copy_file(path, p);
        hid_t h = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        hid_t d = H5Dopen2(h, "param_shapes", H5P_DEFAULT), sp = H5Dget_space(d);
        hsize_t dims[2];
        H5Sget_simple_extent_dims(sp, dims, NULL);
        H5Sclose(sp), H5Dclose(d);
        H5Ldelete(h, "param_shapes", H5P_DEFAULT);
        hsize_t cols[2] = {dims[0], 100};
        int64_t *junk = calloc(dims[0] * 100, sizeof(int64_t));
        h5_write(h, "param_shapes", H5T_NATIVE_INT64, 2, cols, NULL, junk);
        free(junk);
        H5Fclose(h);
        err[0] = 0;
        expect_damaged("param_shapes (n, 100) instead of (n, 4)",
                       read_ckpt(p, &mc, &r, &st, err, sizeof err), err, p, "param_shapes");
    }
    /* the file itself truncated in place, as a full disk would leave it */
    truncate(path, sb.st_size / 3);
    err[0] = 0;
    expect_damaged("the checkpoint's own model.h5 truncated",
                   read_ckpt(path, &mc, &r, &st, err, sizeof err), err, path, NULL);

    snprintf(p, sizeof p, "%s/no-such-step/model.h5", run);
    err[0] = 0;
    expect_fail_code("a missing file", read_ckpt(p, &mc, &r, &st, err, sizeof err), CKPT_MISSING,
                     err, p, "No such file");
    snprintf(p, sizeof p, "%s/notes.txt", run);
    FILE *f = fopen(p, "w");
    fputs("not a checkpoint at all, and much longer than an HDF5 signature\n", f);
    fclose(f);
    err[0] = 0;
    expect_damaged("a text file", read_ckpt(p, &mc, &r, &st, err, sizeof err), err, p, "HDF5");
    /* an HDF5 file of d2v's format that is a dataset, not a checkpoint */
    snprintf(p, sizeof p, "%s/dataset.h5", run);
    H5Out o;
    h5out_create(&o, p);
    h5_write_root_attrs(o.file, "text", "dataset", 0, "test_ckpt");
    h5out_commit(&o);
    err[0] = 0;
    expect_fail("a d2v dataset file", read_ckpt(p, &mc, &r, &st, err, sizeof err), err, p,
                "not a d2v checkpoint");
    arenas_free(&w), arenas_free(&r);
}

/* ---- damage, fall-back, stale files, a full disk (docs/reliability.md) ------------------------
 */

/* Flip `n` bytes of dataset `name`'s data in place (contiguous layout: H5Dget_offset). */
static void flip_bytes(const char *path, const char *name, size_t at, int n) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    haddr_t off = H5Dget_offset(d);
    H5Dclose(d), H5Fclose(f);
    if (off == HADDR_UNDEF) die("%s: %s has no contiguous data", path, name);
    int fd = open(path, O_RDWR);
    for (int i = 0; i < n; i++) {
        unsigned char b;
        if (pread(fd, &b, 1, (off_t)(off + at + 7 * i)) != 1) die("%s: cannot read", path);
        b ^= 0x5a;
        if (pwrite(fd, &b, 1, (off_t)(off + at + 7 * i)) != 1) die("%s: cannot write", path);
    }
    close(fd);
}

static void test_damage(void) {
    printf("-- damaged checkpoints: verified, and fallen back from\n");
    ModelConfig mc, image;
    if (tiny_model(&mc, D2V_TEXT, NULL) || tiny_model(&image, D2V_IMAGE, NULL)) return;
    char run[PATH_MAX], path[PATH_MAX + 64], p[PATH_MAX + 64], err[1024], label[1400];
    run_dir(run, sizeof run, "damage");
    Arenas w = arenas_new(&mc, 5), r = arenas_new(&mc, 1);
    TrainState st;
    write_ckpt(run, &mc, &w, 4, 0);
    write_ckpt(run, &mc, &w, 8, 0);
    step_path(path, sizeof path, run, 8, "model.h5");
    /* a few flipped bytes in each arena, as a bad disk or a torn write would leave them */
    const char *const arena[4] = {"params", "teacher", "adam_m", "adam_v"};
    for (int a = 0; a < 4; a++) {
        snprintf(p, sizeof p, "%s/flipped-%s.h5", run, arena[a]);
        copy_file(path, p);
        flip_bytes(p, arena[a], 4 * (r.np / 2) + (size_t)a, 3);
        char want[64], what[96];
        snprintf(want, sizeof want, "of /%s fails its CRC32", arena[a]);
        snprintf(what, sizeof what, "3 flipped bytes in %s", arena[a]);
        err[0] = 0;
        expect_damaged(what, read_ckpt(p, &mc, &r, &st, err, sizeof err), err, p, want);
    }
    /* anywhere else in the file, HDF5's own metadata included: refused by the size and CRC32
     * that DONE records, before HDF5 parses it (a copy in a step directory of its own) */
    {
        char d12[PATH_MAX + 64], m12[PATH_MAX + 64], done[PATH_MAX + 64], rec[128] = "";
        write_ckpt(run, &mc, &w, 12, 0);
        step_path(m12, sizeof m12, run, 12, "model.h5");
        step_path(done, sizeof done, run, 12, "DONE");
        FILE *df = fopen(done, "r");
        size_t k = df ? fread(rec, 1, sizeof rec - 1, df) : 0;
        if (df) fclose(df);
        rec[k] = 0;
        check_record(strstr(rec, "bytes ") && strstr(rec, "crc32 ") && strchr(rec, '\n'),
                     "DONE records model.h5's size and CRC32");
        check_record(read_ckpt(m12, &mc, &r, &st, err, sizeof err) == 0,
                     "an intact checkpoint passes its whole-file check");
        struct stat sb;
        stat(m12, &sb);
        int fd = open(m12, O_RDWR);
        off_t offs[3] = {48, 600, sb.st_size - 5}; /* superblock, an object header, the end */
        for (int i = 0; i < 3; i++) {
            unsigned char b;
            if (pread(fd, &b, 1, offs[i]) != 1) die("%s: cannot read", m12);
            b ^= 0x10;
            pwrite(fd, &b, 1, offs[i]);
            snprintf(label, sizeof label, "1 flipped bit at byte %lld of %lld", (long long)offs[i],
                     (long long)sb.st_size);
            err[0] = 0;
            expect_damaged(label, read_ckpt(m12, &mc, &r, &st, err, sizeof err), err, m12,
                           "fails the CRC32 recorded in");
            b ^= 0x10;
            pwrite(fd, &b, 1, offs[i]);
        }
        close(fd);
        truncate(m12, sb.st_size - 1);
        err[0] = 0;
        expect_damaged("one byte short", read_ckpt(m12, &mc, &r, &st, err, sizeof err), err, m12,
                       "(truncated or damaged)");
        err[0] = 0;
        TrainConfig tc;
        check_record(ckpt_read_config(m12, &tc, err, sizeof err) != 0 &&
                         strstr(err, "(truncated or damaged)"),
                     "ckpt_read_config refuses it too");
        FILE *g = fopen(done, "w");
        fputs("garbage\n", g);
        fclose(g);
        err[0] = 0;
        expect_damaged("a DONE of garbage", read_ckpt(m12, &mc, &r, &st, err, sizeof err), err,
                       done, "not a d2v checkpoint record");
        step_path(d12, sizeof d12, run, 12, NULL);
        snprintf(p, sizeof p, "%s/model.h5", run);
        unlink(m12), unlink(done), rmdir(d12);
        /* an empty DONE (written by d2v before the record) still loads */
        write_ckpt(run, &mc, &w, 12, 0);
        touch(done);
        check_record(read_ckpt(m12, &mc, &r, &st, err, sizeof err) == 0,
                     "an empty DONE (an older d2v's): not checked, loads");
        unlink(m12), unlink(done), rmdir(d12);
    }
    /* values no run reaches */
    struct {
        const char *attr, *want;
        int64_t v;
    } bad[4] = {{"update", "update 1000000000000 is out of range", 1000000000000LL},
                {"skipped", "skipped -1 is out of range", -1},
                {"epoch", "epoch -3 is out of range", -3},
                {"position", "position -5 is negative", -5}};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/bad-%s.h5", run, bad[i].attr);
        copy_file(path, p);
        hid_t h = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
        H5Adelete(h, bad[i].attr);
        h5_attr_i64(h, bad[i].attr, bad[i].v);
        H5Fclose(h);
        char what[96];
        snprintf(what, sizeof what, "%s = %lld", bad[i].attr, (long long)bad[i].v);
        err[0] = 0;
        expect_damaged(what, read_ckpt(p, &mc, &r, &st, err, sizeof err), err, p, bad[i].want);
    }
    /* another model's checkpoints are never moved aside: CKPT_OTHER, nothing renamed */
    Arenas ri = arenas_new(&image, 1);
    int rc = ckpt_load_latest(run, &image, ri.a[0], ri.a[1], ri.a[2], ri.a[3], ri.np, &st, p,
                              sizeof p, err, sizeof err);
    step_path(p, sizeof p, run, 8, NULL);
    check_record(rc == CKPT_OTHER && exists(p) && strstr(err, "a text checkpoint"),
                 "an image run on a text run's checkpoints: stops, moves nothing");
    arenas_free(&ri);
    /* the newest damaged: reported, moved aside, the previous one loaded */
    flip_bytes(path, "teacher", 40, 2);
    arenas_fill(&r, 0);
    fflush(stdout);
    rc = ckpt_load_latest(run, &mc, r.a[0], r.a[1], r.a[2], r.a[3], r.np, &st, p, sizeof p, err,
                          sizeof err);
    char want4[PATH_MAX + 64], moved[PATH_MAX + 64];
    step_path(want4, sizeof want4, run, 4, "model.h5");
    step_path(moved, sizeof moved, run, 8, NULL);
    strcat(moved, ".damaged");
    int same = 1;
    for (int k = 0; k < 4; k++)
        same &= memcmp(r.a[k], w.a[k], r.np * sizeof(float)) == 0;
    snprintf(label, sizeof label,
             "damaged step 8: moved to step_00000008.damaged, step 4 loaded "
             "bit-exactly (rc %d, %.900s)",
             rc, p);
    check_record(rc == 0 && !strcmp(p, want4) && st.update == 4 && same && exists(moved), label);
    char latest[PATH_MAX + 64];
    check_record(ckpt_find_latest(run, latest, sizeof latest) == 0 && !strcmp(latest, want4),
                 "the damaged one is never offered again");
    /* every one damaged: none left, a fresh start */
    flip_bytes(want4, "params", 0, 1);
    rc = ckpt_load_latest(run, &mc, r.a[0], r.a[1], r.a[2], r.a[3], r.np, &st, p, sizeof p, err,
                          sizeof err);
    step_path(moved, sizeof moved, run, 4, NULL);
    strcat(moved, ".damaged");
    check_record(rc == 1 && exists(moved), "all damaged: none left (1), step 4 moved aside too");
    arenas_free(&w), arenas_free(&r);
}

static void test_stale_and_keep_every(void) {
    printf("-- stale temporary files; keep_last with keep_every\n");
    ModelConfig mc;
    if (tiny_model(&mc, D2V_TEXT, NULL)) return;
    char run[PATH_MAX], p[PATH_MAX + 64], q[PATH_MAX + 64];
    run_dir(run, sizeof run, "stale");
    Arenas w = arenas_new(&mc, 2);
    write_ckpt(run, &mc, &w, 5, 0);
    step_path(p, sizeof p, run, 5, "model.h5.tmp.424242"); /* beside a complete one */
    touch(p);
    step_path(q, sizeof q, run, 9, NULL); /* a writer killed before DONE: only its tmp file */
    mkdir(q, 0775);
    strcat(q, "/model.h5.tmp.4243");
    touch(q);
    ckpt_remove_stale(run);
    step_path(q, sizeof q, run, 9, NULL);
    char keep[PATH_MAX + 64];
    step_path(keep, sizeof keep, run, 5, "model.h5");
    check_record(!exists(p) && !exists(q) && exists(keep),
                 "stale *.tmp.* removed (and their empty step directory); the checkpoint kept");
    char run2[PATH_MAX];
    run_dir(run2, sizeof run2, "every");
    TrainState st = {0, 0, {0, 0}, 0};
    for (int u = 1; u <= 8; u++) {
        st.update = u;
        ckpt_write(run2, &mc, "", w.a[0], w.a[1], w.a[2], w.a[3], w.np, &st, 2, 3);
    }
    int ok = 1;
    for (int u = 1; u <= 8; u++) {
        step_path(p, sizeof p, run2, u, NULL);
        ok &= exists(p) == (u == 3 || u == 6 || u == 7 || u == 8);
    }
    check_record(ok, "keep_last 2, keep_every 3 after updates 1..8: steps 3, 6, 7 and 8 remain");
    arenas_free(&w);
}

/* A disk that fills during a checkpoint (RLIMIT_FSIZE: writes past the limit fail with EFBIG):
 * one line naming the file, no temporary file left, no DONE, the previous checkpoint intact. */
static void test_disk_full(void) {
    printf("-- a full disk during a checkpoint\n");
    ModelConfig mc;
    if (tiny_model(&mc, D2V_TEXT, NULL)) return;
    char run[PATH_MAX], log[PATH_MAX + 16], p[PATH_MAX + 64], err[1024];
    run_dir(run, sizeof run, "full");
    Arenas w = arenas_new(&mc, 7), r = arenas_new(&mc, 1);
    write_ckpt(run, &mc, &w, 10, 0);
    step_path(p, sizeof p, run, 10, "model.h5");
    struct stat sb;
    stat(p, &sb);
    snprintf(log, sizeof log, "%s/full.log", dir);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2), close(fd);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit lim = {(rlim_t)sb.st_size / 2, (rlim_t)sb.st_size / 2};
        setrlimit(RLIMIT_FSIZE, &lim);
        write_ckpt(run, &mc, &w, 20, 0);
        _exit(0);
    }
    char msg[1024];
    int status = wait_child(pid, log, msg, sizeof msg);
    char step20[PATH_MAX + 64], label[1400];
    step_path(step20, sizeof step20, run, 20, NULL);
    int tmp_left = 0;
    DIR *d = opendir(step20);
    struct dirent *e;
    while (d && (e = readdir(d)))
        tmp_left |= strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    strcat(step20, "/DONE");
    snprintf(label, sizeof label,
             "exit %d (signal %d), \"%.900s\": names the file, no temporary file, no DONE",
             WIFEXITED(status) ? WEXITSTATUS(status) : -1,
             WIFSIGNALED(status) ? WTERMSIG(status) : 0, msg);
    check_record(WIFEXITED(status) && WEXITSTATUS(status) != 0 && strstr(msg, "step_00000020") &&
                     strstr(msg, "disk full") && !tmp_left && !exists(step20),
                 label);
    TrainState st;
    char path[PATH_MAX + 64];
    int rc = ckpt_load_latest(run, &mc, r.a[0], r.a[1], r.a[2], r.a[3], r.np, &st, path,
                              sizeof path, err, sizeof err);
    check_record(rc == 0 && st.update == 10 && !memcmp(r.a[1], w.a[1], r.np * sizeof(float)),
                 "the previous checkpoint (update 10) still loads bit-exactly");
    unlink(log);
    arenas_free(&w), arenas_free(&r);
}

/* ckpt_write dies (the process exits non-zero) with a message naming the path it cannot create. */
static void test_write_failure(void) {
    printf("-- ckpt_write on an unusable run directory\n");
    ModelConfig mc;
    if (tiny_model(&mc, D2V_TEXT, NULL)) return;
    char run[PATH_MAX], log[PATH_MAX + 16];
    snprintf(run, sizeof run, "%s/a-file", dir);
    touch(run); /* a regular file where the run directory should be */
    snprintf(log, sizeof log, "%s/stderr.log", dir);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 2), close(fd);
        Arenas w = arenas_new(&mc, 1);
        write_ckpt(run, &mc, &w, 1, 0);
        _exit(0); /* not reached when ckpt_write dies */
    }
    char msg[1024];
    int status = wait_child(pid, log, msg, sizeof msg);
    char label[1200];
    snprintf(label, sizeof label, "exit status %d, \"%s\"",
             WIFEXITED(status) ? WEXITSTATUS(status) : -1, msg);
    check_record(WIFEXITED(status) && WEXITSTATUS(status) != 0 && strstr(msg, run), label);
    unlink(log), unlink(run);
}

/* The resolved configuration a checkpoint carries comes back through the checkpoint API alone:
 * every key equal, and a broken or missing config a one-line error naming the file. */
static void test_config(void) {
    printf("-- ckpt_read_config\n");
    TrainConfig c, back;
    char err[1024], run[PATH_MAX], path[PATH_MAX + 64];
    train_config_defaults(&c);
    int ok = train_config_load(&c, "configs/speech-tiny.cfg", err, sizeof err) == 0 &&
             train_config_set(&c, "data.train=some/where.h5", err, sizeof err) == 0 &&
             train_config_set(&c, "optim.lr=3.25e-4", err, sizeof err) == 0;
    check_record(ok, "speech-tiny.cfg with two overrides loads");
    ModelConfig mc;
    Dataset ds = {0};
    train_config_to_model(&mc, &c, &ds);
    Arenas r = arenas_new(&mc, 5);
    TrainState st = {3, 0, {0, 0}, 0};
    char *text = train_config_text(&c);
    run_dir(run, sizeof run, "config");
    ckpt_write(run, &mc, text, r.a[0], r.a[1], r.a[2], r.a[3], r.np, &st, 0, 0);
    step_path(path, sizeof path, run, 3, "model.h5");
    int rc = ckpt_read_config(path, &back, err, sizeof err);
    char *again = rc ? NULL : train_config_text(&back);
    check_record(rc == 0 && again && !strcmp(text, again),
                 "the resolved config reads back key for key");
    check_record(rc == 0 && back.lr == 3.25e-4 && !strcmp(back.train_path, "some/where.h5") &&
                     back.modality == D2V_SPEECH,
                 "overrides and the modality survive the round trip");
    ckpt_write(run, &mc, "model: { layers = oops; };", r.a[0], r.a[1], r.a[2], r.a[3], r.np,
               &(TrainState){4, 0, {0, 0}, 0}, 0, 0);
    step_path(path, sizeof path, run, 4, "model.h5");
    rc = ckpt_read_config(path, &back, err, sizeof err);
    expect_fail("a checkpoint whose config does not parse", rc, err, path, NULL);
    /* one that parses but fails the cross-key checks (d2v-eval would build a model from it),
     * and one that would make libconfig read another file */
    ckpt_write(run, &mc, "data: { train = \"x.h5\"; }; model: { width = 30; heads = 4; };", r.a[0],
               r.a[1], r.a[2], r.a[3], r.np, &(TrainState){5, 0, {0, 0}, 0}, 0, 0);
    step_path(path, sizeof path, run, 5, "model.h5");
    rc = ckpt_read_config(path, &back, err, sizeof err);
    expect_fail("a checkpoint whose config fails validation", rc, err, path, "model.heads");
    ckpt_write(run, &mc, "  @include \"/etc/passwd\"\n", r.a[0], r.a[1], r.a[2], r.a[3], r.np,
               &(TrainState){6, 0, {0, 0}, 0}, 0, 0);
    step_path(path, sizeof path, run, 6, "model.h5");
    rc = ckpt_read_config(path, &back, err, sizeof err);
    expect_fail("a checkpoint whose config @includes a file", rc, err, path, "@include");
    snprintf(path, sizeof path, "%s/none.h5", run);
    rc = ckpt_read_config(path, &back, err, sizeof err);
    expect_fail("ckpt_read_config of a missing file", rc, err, path, NULL);
    free(text), free(again);
    arenas_free(&r);
}

/* rm -r of the test directory */
static void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[PATH_MAX];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            remove_tree(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

int main(void) {
    gemm_init(0);
    h5io_init();
    if (!mkdtemp(dir)) die("%s: cannot create a temporary directory", dir);
    for (int mod = 0; mod < 3; mod++)
        test_round_trip(mod);
    test_done_and_retention();
    test_bad_reads();
    test_write_failure();
    test_damage();
    test_stale_and_keep_every();
    test_disk_full();
    test_config();
    remove_tree(dir);
    check_record(!exists(dir), "the test directory is removed");
    return check_summary();
}
