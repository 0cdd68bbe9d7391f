/* test_features_parity.c: model_features_multi (the variants d2v-extract writes) against
 * PyTorch (tests/ref/features_ref.py, fixture build/fixtures/features_ref.h5) on image-tiny and
 * text-tiny with three blocks: mean_final, mean_norm (images), cls and mean_lastk, every
 * parameter loaded by its parameter-table name; with negative controls. Run from the
 * repository root (reads configs/). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "d2v/config.h"
#include "d2v/kernels.h"
#include "d2v/model.h"
#include "fixture.h"

#define TOL 1e-4 /* float32 on both sides, different summation orders */

static void load_config(ModelConfig *mc, TrainConfig *cfg, const char *file, const Dataset *ds) {
    char err[1024];
    train_config_defaults(cfg);
    if (train_config_load(cfg, file, err, sizeof err) ||
        train_config_set(cfg, "data.train=unused.h5", err, sizeof err) ||
        train_config_set(cfg, "model.layers=3", err, sizeof err) ||
        train_config_validate(cfg, 1, err, sizeof err))
        die("%s", err);
    train_config_to_model(mc, cfg, ds);
}

/* Every tensor of the model's table from group/params, by name and shape. */
static float *load_params(hid_t file, const char *path, const char *group, const ModelConfig *mc,
                          ModelParams *p) {
    ParamTable t;
    model_declare(&t, mc);
    float *arena = xalloc(sizeof(float) * t.total, "params");
    char name[64];
    snprintf(name, sizeof name, "%s/params", group);
    Fixture fx = fx_group(file, path, name);
    for (int i = 0; i < t.n; i++) {
        hsize_t dims[4];
        for (int k = 0; k < t.t[i].rank; k++)
            dims[k] = (hsize_t)t.t[i].shape[k];
        float *v = fx_load_f32(&fx, t.t[i].name, t.t[i].rank, dims);
        memcpy(arena + t.t[i].offset, v, sizeof(float) * t.t[i].count);
        free(v);
    }
    fx_close(&fx);
    ptab_bind(&t, p, arena);
    ptab_free(&t);
    return arena;
}

static void check_shape(const Fixture *fx, const ModelConfig *mc) {
    int same = (int)fx_attr(fx, "L") == mc->enc.L && (int)fx_attr(fx, "C") == mc->enc.C &&
               (int)fx_attr(fx, "NH") == mc->enc.NH && (int)fx_attr(fx, "F") == mc->enc.F &&
               (float)fx_attr(fx, "eps") == mc->enc.ln_eps;
    char label[160];
    snprintf(label, sizeof label, "%s: the fixture's shape is the config's (L %d, C %d)", fx->name,
             mc->enc.L, mc->enc.C);
    if (!check_record(same, label)) die("regenerate %s (make %s)", fx->path, fx->path);
}

typedef struct {
    float *mean_final, *mean_norm, *cls, *mean_lastk;
} Want;

static void compare_all(const char *group, const ModelFeatures *f, const Want *w, size_t n) {
    fx_compare(group, "mean_final", f->mean_final, w->mean_final, n, TOL, NULL, 0);
    if (w->mean_norm) fx_compare(group, "mean_norm", f->mean_norm, w->mean_norm, n, TOL, NULL, 0);
    fx_compare(group, "cls (token 0)", f->first, w->cls, n, TOL, NULL, 0);
    fx_compare(group, "mean_lastk (k = 2)", f->mean_lastk, w->mean_lastk, n, TOL, NULL, 0);
}

static void test_image(hid_t file, const char *path) {
    printf("-- image (configs/image-tiny.cfg, 3 blocks, real Fashion-MNIST images)\n");
    ModelConfig mc;
    TrainConfig cfg;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    load_config(&mc, &cfg, "configs/image-tiny.cfg", &ds);
    Fixture fx = fx_group(file, path, "image");
    check_shape(&fx, &mc);
    int B = (int)fx_attr(&fx, "B"), C = mc.enc.C, H = cfg.image_height, W = cfg.image_width;
    ModelParams p;
    float *arena = load_params(file, path, "image", &mc, &p);
    Batch b;
    memset(&b, 0, sizeof b);
    b.B = B, b.H = H, b.W = W, b.C = cfg.image_channels;
    b.images = fx_load_f32(&fx, "images", 4, (hsize_t[]){B, H, W, 1});
    int64_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    b.ids = ids;
    const hsize_t bc[2] = {B, C};
    Want w = {fx_load_f32(&fx, "mean_final", 2, bc), fx_load_f32(&fx, "mean_norm", 2, bc),
              fx_load_f32(&fx, "cls", 2, bc), fx_load_f32(&fx, "mean_lastk", 2, bc)};
    size_t n = (size_t)B * C;
    float *out = xalloc(sizeof(float) * 4 * n, "features");
    ModelFeatures f = {out, out + n, out + 2 * n, out + 3 * n, (int)fx_attr(&fx, "last_k")};
    Model *m = model_create(&mc, B, 0);
    check_record(model_final_norm(&mc), "image-tiny has a final norm (head.ln_*)");
    model_features_multi(m, &p, &b, &f);
    compare_all("image", &f, &w, n);
    float *single = xalloc(sizeof(float) * n, "features");
    model_features(m, &p, &b, single);
    check_record(!memcmp(single, f.mean_final, sizeof(float) * n),
                 "image: model_features is mean_final bit for bit");

    /* negative controls */
    ModelFeatures k1 = {NULL, NULL, NULL, single, 1};
    model_features_multi(m, &p, &b, &k1);
    check_record(!fx_compare("image", "", single, w.mean_lastk, n, TOL, NULL, 1) &&
                     fx_compare("image", "", single, w.mean_final, n, TOL, NULL, 1),
                 "negative control: last_k = 1 is not the k = 2 reference (it is mean_final)");
    check_record(!fx_compare("image", "", f.first, w.mean_final, n, TOL, NULL, 1),
                 "negative control: cls is not the pooled mean");
    p.head.ln_w[5] += 0.5f; /* the final norm's weight moves mean_norm only */
    model_features_multi(m, &p, &b, &f);
    check_record(!fx_compare("image", "", f.mean_norm, w.mean_norm, n, TOL, NULL, 1) &&
                     fx_compare("image", "", f.mean_final, w.mean_final, n, TOL, NULL, 1),
                 "negative control: a changed head.ln_w moves mean_norm, not mean_final");
    model_destroy(m);
    free(arena), free(b.images), free(out), free(single);
    free(w.mean_final), free(w.mean_norm), free(w.cls), free(w.mean_lastk);
    fx_close(&fx);
}

static void test_text(hid_t file, const char *path) {
    printf("-- text (configs/text-tiny.cfg, 3 blocks, Moby-Dick bytes as tokens, padding)\n");
    Fixture fx = fx_group(file, path, "text");
    ModelConfig mc;
    TrainConfig cfg;
    Dataset ds;
    memset(&ds, 0, sizeof ds);
    ds.vocab_size = (int32_t)fx_attr(&fx, "V");
    ds.bos_id = 0, ds.pad_id = 1, ds.eos_id = 2, ds.unk_id = 3, ds.mask_id = ds.vocab_size - 1;
    load_config(&mc, &cfg, "configs/text-tiny.cfg", &ds);
    check_shape(&fx, &mc);
    int B = (int)fx_attr(&fx, "B"), T = (int)fx_attr(&fx, "T"), C = mc.enc.C;
    ModelParams p;
    float *arena = load_params(file, path, "text", &mc, &p);
    Batch b;
    memset(&b, 0, sizeof b);
    b.B = B, b.T = T;
    b.tokens = fx_load_i32(&fx, "tokens", 2, (hsize_t[]){B, T});
    int64_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    b.ids = ids;
    const hsize_t bc[2] = {B, C};
    Want w = {fx_load_f32(&fx, "mean_final", 2, bc), NULL, fx_load_f32(&fx, "cls", 2, bc),
              fx_load_f32(&fx, "mean_lastk", 2, bc)};
    size_t n = (size_t)B * C;
    float *out = xalloc(sizeof(float) * 3 * n, "features");
    ModelFeatures f = {out, NULL, out + n, out + 2 * n, (int)fx_attr(&fx, "last_k")};
    Model *m = model_create(&mc, B, T);
    check_record(!model_final_norm(&mc), "text-tiny (post-LN) has no final norm");
    model_features_multi(m, &p, &b, &f);
    compare_all("text", &f, &w, n);
    /* negative control: <pad> counted as a token changes the padded rows' means */
    int pad_row = 2, T_real = 0;
    for (int t = 0; t < T; t++)
        T_real += b.tokens[pad_row * T + t] != 1;
    b.tokens[pad_row * T + T_real] = 2; /* one pad more becomes a real (</s>) token */
    model_features_multi(m, &p, &b, &f);
    check_record(!fx_compare("text", "", f.mean_final, w.mean_final, n, TOL, NULL, 1),
                 "negative control: one more real token in a padded row changes mean_final");
    model_destroy(m);
    free(arena), free(b.tokens), free(out);
    free(w.mean_final), free(w.cls), free(w.mean_lastk);
    fx_close(&fx);
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "build/fixtures/features_ref.h5";
    gemm_init(0);
    hid_t file = fx_open(path);
    test_image(file, path);
    test_text(file, path);
    H5Fclose(file);
    return check_summary();
}
