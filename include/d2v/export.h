/* export.h: d2v checkpoints into the ecosystem and back (docs/export.md): safetensors files, the
 * HF Data2Vec{Text,Vision,Audio}Model tensor names and config.json, fairseq's names, and the
 * import of an HF directory into a d2v checkpoint that d2v-train --init-from starts from. */
#ifndef D2V_EXPORT_H
#define D2V_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include "d2v/config.h"
#include "d2v/dataset.h"
#include "d2v/model.h"

/* ---- safetensors: u64 LE header length, a JSON header {name: {dtype, shape, data_offsets}},
 * then the raw little-endian tensors, back to back ---- */

#define ST_MAX_HEADER (100u << 20) // a larger header is refused as damaged
typedef struct {
    char name[128];
    int rank;
    int64_t shape[4];
    size_t count;
    char dtype[8]; // st_read: the file's dtype ("F32", "I64", ...)
    float *data;   // st_read: owned, every float dtype converted to float32; NULL for integer
                   // and boolean tensors (HF's index buffers), which are checked but not read
} StTensor;

/// Write n float32 tensors to path in the given order, with __metadata__ {"format": "pt"} (as
/// transformers requires), the header written by json-c and padded with spaces to 8 bytes.
/// Under a temporary name, fsynced, then renamed. 0, or -1 with one line naming the file.
int st_write(const char *path, const StTensor *t, int n, char *err, size_t errlen);
/// Read and check a whole file: header length within the file, a JSON object, every entry's
/// dtype (one of the format's), shape and data_offsets consistent, in the buffer, not overlapping
/// and covering it without holes. 0 with *out (n tensors, free with st_free), or -1 with one line
/// naming the file and the tensor.
int st_read(const char *path, StTensor **out, int *n, char *err, size_t errlen);
void st_free(StTensor *t, int n);

/* ---- the name maps ---- */

enum { EXPORT_HF = 0, EXPORT_FAIRSEQ = 1 };

/// One exported tensor: a contiguous slice of a d2v tensor, under the target's name and shape.
typedef struct {
    char name[128];
    int rank;
    int64_t shape[4];
    size_t count;
    float *src;   // into the bound view; NULL: zeros with no d2v counterpart (HF text's
                  // token_type_embeddings), which an import requires to be zero
    int optional; // an import may lack it (HF's use_mask_token / mask_time_prob switch it off):
                  // the d2v tensor then keeps its fresh initialisation
} ExportEntry;

typedef struct {
    ExportEntry *e;
    int n, cap;
    char (*left_out)[48]; // d2v tensors with no counterpart in the target (the regression head)
    int n_left;
} ExportPlan;

/// 0 when the model can be written in `format`, else -1 with the reason (data2vec 2.0, an image
/// model without cls token or with sin-cos positions, a text vocabulary whose <pad> is not 1, an
/// eps HF cannot express, ...).
int export_supported(const TrainConfig *cfg, const ModelConfig *mc, int format, char *err,
                     size_t errlen);
/// Every target tensor in the target's order, pointing into `view` (a bound ModelParams of mc).
void export_plan(ExportPlan *p, const ModelConfig *mc, const ModelParams *view, int format);
void export_plan_free(ExportPlan *p);
/// The HF config.json of the model (malloc'd, 2-space indented, ends in a newline); d is the
/// text dataset (ids), NULL for the other modalities.
char *export_hf_config(const TrainConfig *cfg, const ModelConfig *mc, const Dataset *d);
/// An HF config.json against the one the d2v configuration exports: every architecture field
/// equal (model_type, sizes, eps, conv specs, positions, ...). 0, or -1 with one line naming the
/// file, the HF field, both values and the d2v key.
int export_hf_config_check(const char *path, const TrainConfig *cfg, const ModelConfig *mc,
                           const Dataset *d, char *err, size_t errlen);

/* ---- the tools (die with one line naming the file on any error) ---- */

typedef struct {
    const char *checkpoint; // model.h5 or a run directory (its newest complete checkpoint)
    const char *out;        // directory to create; an existing non-empty one is refused
    const char *data;       // text: the dataset with the tokenizer (default: the config's)
    int format;             // EXPORT_*
    int teacher;            // 1: the EMA teacher instead of the student
} ExportJob;
/// Writes OUT/model.safetensors (+ config.json, preprocessor or tokenizer files for HF) into a
/// temporary directory renamed to OUT when complete; prints the tensors left out on stdout.
void export_run(const ExportJob *j);

typedef struct {
    const char *hf_dir; // model.safetensors + config.json (+ vocab.json for text)
    const char *config; // the d2v configuration to continue with
    const char *const *sets;
    int n_sets;
    const char *data; // text: the dataset (default: the config's data.train)
    const char *out;  // run directory to create: OUT/ckpt/step_00000000/model.h5
} ImportJob;
/// HF weights into a d2v checkpoint (update 0, teacher = student, zero AdamW moments; tensors HF
/// lacks, the regression head, freshly initialised from run.seed). Prefixes of HF task models
/// (data2vec_text. ...) are stripped; HF tensors with no d2v counterpart are listed on stdout.
void import_run(const ImportJob *j);

#endif
