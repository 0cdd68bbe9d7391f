/* dump.c: --dump-step files: everything needed to check one update independently, in the
 * dataset names of docs/dump-step.md, with the checkpoint's parameter table. */
#include <stdio.h>

#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/trainer.h"
#include "d2v/util.h"

static hid_t trace_type(int type) {
    return type == TRACE_U8    ? H5T_NATIVE_UINT8
           : type == TRACE_I32 ? H5T_NATIVE_INT32
                               : H5T_NATIVE_FLOAT;
}

void dump_step(const char *path, const Trainer *t, const Batch *b, const float *params_before,
               const float *teacher_before, const float *teacher_after, const float *grads,
               double loss, double tau, double lr) {
    const ModelConfig *mc = &t->mc;
    ModelTrace tr = model_trace(t->model, b);
    H5Out o;
    h5out_create(&o, path);
    h5_attr_str(o.file, "modality", d2v_modality_names[mc->modality]);
    h5_attr_i32(o.file, "format_version", D2V_FORMAT_VERSION);
    h5_attr_str(o.file, "config", t->config_text); /* the resolved configuration */
    if (mc->modality == D2V_TEXT) h5_attr_i32(o.file, "pad_id", mc->text.pad_id); /* dataset's */
    hsize_t one[1] = {1};
    h5_write(o.file, "loss", H5T_NATIVE_DOUBLE, 1, one, NULL, &loss);
    h5_write(o.file, "tau", H5T_NATIVE_DOUBLE, 1, one, NULL, &tau);
    h5_write(o.file, "lr", H5T_NATIVE_DOUBLE, 1, one, NULL, &lr);
    h5_attr_str(o.file, "mode", mc->v2 ? "v2" : "v1");
    if (mc->v2) h5_attr_i32(o.file, "clones", mc->v2c.clones);
    hsize_t ids[1] = {(hsize_t)tr.B}, sel[2] = {(hsize_t)tr.rows, (hsize_t)tr.T};
    h5_write(o.file, "sample_ids", H5T_NATIVE_INT64, 1, ids, NULL, b->ids);
    h5_write(o.file, "loss_positions", H5T_NATIVE_UINT8, 2, sel, NULL, tr.sel);
    for (int i = 0; i < tr.n_arrays; i++) { /* the front-end's batch and mask arrays */
        const TraceArray *a = &tr.arrays[i];
        hsize_t d[4];
        for (int j = 0; j < a->rank; j++)
            d[j] = (hsize_t)a->dims[j];
        h5_write(o.file, a->name, trace_type(a->type), a->rank, d, NULL, a->data);
    }
    hsize_t mc2[2] = {(hsize_t)tr.M, (hsize_t)tr.C};
    h5_write(o.file, "targets", H5T_NATIVE_FLOAT, 2, mc2, NULL, tr.targets);
    h5_write(o.file, "predictions", H5T_NATIVE_FLOAT, 2, mc2, NULL, tr.preds);
    hsize_t tl[3] = {(hsize_t)tr.B, (hsize_t)tr.T, (hsize_t)tr.C};
    for (int k = 0; k < mc->top_k; k++) {
        char name[64];
        snprintf(name, sizeof name, "teacher_layer_%d", mc->enc.L - mc->top_k + k);
        h5_write(o.file, name, H5T_NATIVE_FLOAT, 3, tl, NULL, tr.teacher_layers[k]);
    }
    ckpt_write_table(o.file, mc);
    hsize_t p[1] = {t->np};
    h5_write(o.file, "params_before", H5T_NATIVE_FLOAT, 1, p, NULL, params_before);
    h5_write(o.file, "teacher_before", H5T_NATIVE_FLOAT, 1, p, NULL, teacher_before);
    h5_write(o.file, "grads", H5T_NATIVE_FLOAT, 1, p, NULL, grads);
    h5_write(o.file, "params_after", H5T_NATIVE_FLOAT, 1, p, NULL, t->params);
    h5_write(o.file, "teacher_after", H5T_NATIVE_FLOAT, 1, p, NULL, teacher_after);
    h5out_commit(&o);
    log0("wrote %s\n", path);
}
