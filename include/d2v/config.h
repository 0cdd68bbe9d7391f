/* config.h: the d2v-train configuration: one POD struct (broadcast to every rank as bytes),
 * filled from a libconfig file plus --set overrides, with every key validated against a schema
 * (unknown key, wrong type, out-of-range value: an error naming the file, line and key). */
#ifndef D2V_CONFIG_H
#define D2V_CONFIG_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "d2v/model.h"
#include "d2v/optim.h"

#define CFG_MAX_CONV 16

/// model.init: the initialisation recipe (docs/algorithm.md §6.5).
enum {
    MODEL_INIT_FAIRSEQ = 0, // init_bert_params; head N(0, 0.02) for text, nn.Linear for speech
    MODEL_INIT_BEIT = 1,    // data2vec vision: trunc_normal_(0.02) everywhere, fix_init_weight
    MODEL_INIT_MAE = 2,     // xavier patch conv, N(0, 0.02) tokens and encoder, nn.Linear head
};

typedef struct {
    int modality;
    /* model */
    int layers, width, heads, ffn, pre_ln, k_bias, final_norm, head_layers, model_init;
    double layer_scale, ln_eps, attn_dropout, act_dropout, dropout, layerdrop, drop_path;
    double final_norm_eps;
    /* front-ends */
    int text_max_positions;
    double text_dropout, text_ln_eps;
    int image_height, image_width, image_channels, image_patch, image_cls, image_pos;
    int speech_n_conv, speech_conv[CFG_MAX_CONV][3]; // (dim, kernel, stride) per layer
    int speech_pos_layers, speech_pos_kernel, speech_pos_groups;
    double speech_ln_eps;
    int speech_alibi; // v2: ALiBi attention biases with a learned scale per head
    /* masking */
    double mask_text_prob, mask_text_leave, mask_text_random;
    int mask_text_span, mask_text_loss_all;
    int mask_image_patches, mask_image_min_patches, mask_image_max_patches;
    double mask_image_min_aspect;
    double mask_speech_prob, mask_speech_dropout;
    int mask_speech_length, mask_speech_min_masks, mask_speech_same;
    /* targets and loss */
    int target_top_k, target_tensor, target_layer_norm, target_final_norm;
    double target_eps, loss_beta, loss_scale;
    /* EMA */
    double ema_tau0, ema_tau_end;
    int64_t ema_tau_steps;
    int ema_frontend;
    /* optimiser */
    double lr, lr_min, warmup_init, beta1, beta2, adam_eps, weight_decay, clip;
    double tri_hold, tri_decay;
    int schedule, exempt_1d;
    int adam_eps_mode; // ADAM_EPS_TORCH / ADAM_EPS_FAIRSEQ (optim.h)
    int64_t warmup;
    /* data */
    char train_path[PATH_MAX];
    int batch_size, micro_batch, text_block, text_stream, augment, prefetch;
    int speech_max_samples, speech_min_samples, speech_normalize;
    double crop_scale_min, crop_scale_max, flip_prob, mean[3], std[3];
    double color_jitter; // ColorJitter(s, s, s) strength, 0 = off
    int interpolation;   // LOADER_INTERP_BILINEAR / LOADER_INTERP_BICUBIC (dataset.h)
    /* run */
    /* data2vec 2.0 (model.mode = "v2", docs/algorithm.md §7) */
    int mode; // 0 v1, 1 v2
    int v2_clones, v2_mask_length;
    double v2_mask_prob, v2_mask_adjust, v2_noise_std, v2_cls_loss;
    int dec_dim, dec_kernel, dec_groups, dec_layers, dec_residual, dec_proj_hidden;
    double dec_input_dropout;
    int64_t max_updates, collapse_after, checkpoint_every;
    double max_time;    // > 0: a wall-time budget (s); the update count and schedules are planned
                        // from the measured update rate, scaled from the max_updates recipe
    int keep_last;      // newest complete checkpoints kept (0: all)
    int64_t keep_every; // and every checkpoint whose update is a multiple of this (0: none)
    int allreduce_bucket_kb; // > 0: gradients allreduced in buckets of this size as the backward
                             // completes them (default 4096); 0: one blocking call after it
    int store_attention;
    double watchdog_s;         // end the job when no collective completes for this long (0: off)
    int64_t consistency_every; // compare the replicas' arenas every this many updates (0: off) //
                               // keep attention probabilities (memory) instead of recomputing
    int log_every, skip_nonfinite, threads;
    int64_t seed;
    double min_target_var, min_pred_var;
} TrainConfig;

/// Defaults for every key: the schema's default column (configs/ override what differs).
void train_config_defaults(TrainConfig *c);
/// Read `path` into c. 0, or -1 with "PATH:LINE: message" in err.
int train_config_load(TrainConfig *c, const char *path, char *err, size_t errlen);
/// Read libconfig text into c; `name` stands for the file in messages (e.g. a checkpoint path).
/// The text may not @include files.
int train_config_load_string(TrainConfig *c, const char *text, const char *name, char *err,
                             size_t errlen);
/// Apply one "key=value" override (same validation). 0, or -1 with a message in err.
int train_config_set(TrainConfig *c, const char *assignment, char *err, size_t errlen);
/// Every cross-key check (heads divide width, top_k <= layers, the global batch over `ranks`
/// ranks, ...); ranks <= 0 skips the rank-count checks. 0, or -1 with a message.
int train_config_validate(const TrainConfig *c, int ranks, char *err, size_t errlen);

/// data.batch_size is the global batch: samples per update over all ranks. Each rank takes
/// per_rank = batch_size / ranks, in update_freq micro-batches of `micro` (data.micro_batch caps
/// it; 0 = one pass).
typedef struct {
    int per_rank, update_freq, micro;
} TrainSplit;
int train_config_split(const TrainConfig *c, int ranks, TrainSplit *sp, char *err, size_t errlen);

/// Write the resolved configuration in libconfig syntax (readable back by train_config_load).
int train_config_write(const TrainConfig *c, const char *path);
/// The same text, malloc'd.
char *train_config_text(const TrainConfig *c);
/// Build the model configuration (vocabulary and special ids from the dataset for text).
void train_config_to_model(ModelConfig *m, const TrainConfig *c, const Dataset *d);
/// The loader of one rank's micro-batches (speech: the shortest clip raised to one mask span).
LoaderConfig train_config_to_loader(const TrainConfig *c, int micro_batch);
AdamW train_config_to_optim(const TrainConfig *c);
/// The first architecture key (the tensors' names and shapes, or what the network computes with
/// them: sizes, norms, eps, front-end shapes; not optimiser, data or masking keys) on which a and
/// b differ: 1 with its name in key and both values (config syntax) in va and vb; 0 when none.
int train_config_arch_diff(const TrainConfig *a, const TrainConfig *b, char *key, size_t keylen,
                           char *va, char *vb, size_t vlen);
LrSchedule train_config_to_schedule(const TrainConfig *c);

#endif
