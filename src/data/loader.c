/* loader.c: the per-rank batch loader. Every rank draws the same permutation per epoch from one
 * seed and takes its slice of each global batch, so shards are disjoint and cover the data, and
 * the cursor (epoch, global position) means the same on any rank count. Batches are assembled per
 * modality (text blocks, augmented images, cropped speech) by a background thread. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "d2v/dataset.h"
#include "d2v/h5io.h"
#include "d2v/rng.h"
#include "d2v/util.h"

typedef struct { /* a text block: tokens from (doc, off) of the doc + eos stream */
    int64_t doc, off;
} TextBlock;

struct Loader {
    Dataset *d;
    LoaderConfig c;
    int rank, world;
    int64_t n;         // loader samples per epoch (eligible samples or text blocks)
    int64_t *items;    // (n) dataset index per item (NULL: identity); text: block index
    TextBlock *blocks; // text blocks
    int64_t *perm;     // (n) order of the producer's epoch
    int64_t perm_epoch;
    LoaderCursor produce;            // next batch the producer builds
    LoaderCursor consume;            // next batch handed out
    int n_slots, head, count, taken; // ring of prepared batches
    Batch *slots;
    uint8_t *pixels; // scratch: one image
    float *src;      // scratch: the same image as floats in [0, 255] (colour jitter, resampling)
    float *crop;     // scratch: one image crop / utterance
    int stop, failed;
    char err[PATH_MAX + 512];
    pthread_t thread;
    int threaded, sync_ready;
    pthread_mutex_t mu;
    pthread_cond_t can_fill, can_take;
};

/* ---- items, blocks and permutations ---- */

static void grow_blocks(Loader *l, int64_t *cap) {
    TextBlock *b = realloc(l->blocks, (size_t)(*cap *= 2) * sizeof(TextBlock));
    if (!b) die("%s: out of memory building %lld text blocks", l->d->path, (long long)*cap);
    l->blocks = b;
}

static void build_text_blocks(Loader *l) {
    const Dataset *d = l->d;
    int64_t per = l->c.text_T - 1, cap = 1024, n = 0; /* tokens per block after bos */
    l->blocks = xalloc((size_t)cap * sizeof(TextBlock), "text blocks");
    if (l->c.text_stream) { /* one stream of doc + eos: a block starts every `per` tokens */
        int64_t pos = 0, doc = 0, start = 0;
        for (; doc < d->num_samples; doc++) {
            int64_t len = dataset_sample_len(d, doc) + 1;
            while (start < pos + len) {
                if (n == cap) grow_blocks(l, &cap);
                l->blocks[n++] = (TextBlock){doc, start - pos};
                start += per;
            }
            pos += len;
        }
    } else { /* blocks never cross documents; long documents split */
        for (int64_t doc = 0; doc < d->num_samples; doc++) {
            int64_t len = dataset_sample_len(d, doc) + 1;
            /* a document that exactly fills its blocks would leave a block of <s></s> alone */
            if (len > 1 && (len - 1) % per == 0) len--;
            for (int64_t off = 0; off < len; off += per) {
                if (n == cap) grow_blocks(l, &cap);
                l->blocks[n++] = (TextBlock){doc, off};
            }
        }
    }
    l->n = n;
}

static void make_perm(Loader *l, int64_t epoch) {
    for (int64_t i = 0; i < l->n; i++)
        l->perm[i] = i;
    if (l->c.shuffle) { /* Fisher-Yates from a stream every rank derives alike */
        RngStream r = rng_stream(l->c.seed, (uint64_t)epoch, UINT64_MAX, RNG_SHUFFLE);
        for (int64_t i = l->n - 1; i > 0; i--) {
            int64_t j = rng_stream_int(&r, 0, i), t = l->perm[i];
            l->perm[i] = l->perm[j], l->perm[j] = t;
        }
    }
    l->perm_epoch = epoch;
}

/* ---- one row per modality ---- */

static int fill_text(Loader *l, int64_t block, int32_t *row) {
    const Dataset *d = l->d;
    int T = l->c.text_T;
    row[0] = d->bos_id;
    int filled = 1;
    int64_t doc = l->blocks[block].doc, off = l->blocks[block].off;
    while (filled < T && doc < d->num_samples) {
        int64_t len = dataset_sample_len(d, doc);
        if (off < len) {
            int64_t take = len - off < T - filled ? len - off : T - filled;
            if (dataset_read_tokens(d, doc, off, take, row + filled, l->err, sizeof l->err) < 0)
                return -1;
            for (int64_t k = 0; k < take; k++) /* the embedding would otherwise die anonymously */
                if (row[filled + k] < 0 || row[filled + k] >= d->vocab_size) {
                    if (snprintf(
                            l->err, sizeof l->err,
                            "%s: document %lld holds token id %d, outside the vocabulary of %d",
                            d->path, (long long)doc, row[filled + k],
                            d->vocab_size) >= (int)sizeof l->err)
                        l->err[sizeof l->err - 1] = '\0'; /* truncated path */
                    return -1;
                }
            filled += (int)take, off += take;
        }
        if (filled < T && off == len) row[filled++] = d->eos_id, off++;
        if (off > len) {
            if (!l->c.text_stream) break;
            doc++, off = 0;
        }
    }
    for (int i = filled; i < T; i++)
        row[i] = d->pad_id;
    return 0;
}

/* Bilinear sample of every channel at (y, x) of a H x W x C image (edge-clamped) into out. */
static void bilinear(float *out, const float *img, int H, int W, int C, float y, float x) {
    y = y < 0 ? 0 : (y > H - 1 ? H - 1 : y);
    x = x < 0 ? 0 : (x > W - 1 ? W - 1 : x);
    int y0 = (int)y, x0 = (int)x, y1 = y0 + 1 < H ? y0 + 1 : y0, x1 = x0 + 1 < W ? x0 + 1 : x0;
    float fy = y - y0, fx = x - x0;
    for (int ch = 0; ch < C; ch++) {
        float a = img[((size_t)y0 * W + x0) * C + ch], b = img[((size_t)y0 * W + x1) * C + ch];
        float c = img[((size_t)y1 * W + x0) * C + ch], e = img[((size_t)y1 * W + x1) * C + ch];
        out[ch] = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + e * fx) * fy;
    }
}

/* Weights of the 4 taps at offsets -1..2 from floor(x), t = x - floor(x): Keys' cubic convolution
 * with A = -0.75 (PyTorch upsample_bicubic2d's cubic_convolution1/2). */
static void cubic_weights(float t, float w[4]) {
    const float A = -0.75f;
    float d[4] = {t + 1, t, 1 - t, 2 - t}; /* tap distances */
    for (int k = 0; k < 4; k++)
        w[k] = d[k] <= 1 ? ((A + 2) * d[k] - (A + 3)) * d[k] * d[k] + 1
                         : ((A * d[k] - 5 * A) * d[k] + 8 * A) * d[k] - 4 * A;
}

static int clamp_index(int i, int n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

/* Bicubic sample of every channel at (y, x) (taps edge-clamped, no antialiasing), along x first
 * then y as PyTorch does; clamped to [0, 255]. */
static void bicubic(float *out, const float *img, int H, int W, int C, float y, float x) {
    float fy = floorf(y), fx = floorf(x), wy[4], wx[4];
    cubic_weights(y - fy, wy), cubic_weights(x - fx, wx);
    int ys[4], xs[4];
    for (int k = 0; k < 4; k++)
        ys[k] = clamp_index((int)fy - 1 + k, H), xs[k] = clamp_index((int)fx - 1 + k, W);
    for (int ch = 0; ch < C; ch++) {
        float v = 0;
        for (int i = 0; i < 4; i++) {
            const float *row = img + (size_t)ys[i] * W * C + ch;
            v += wy[i] * (wx[0] * row[(size_t)xs[0] * C] + wx[1] * row[(size_t)xs[1] * C] +
                          wx[2] * row[(size_t)xs[2] * C] + wx[3] * row[(size_t)xs[3] * C]);
        }
        out[ch] = v < 0 ? 0 : (v > 255 ? 255 : v);
    }
}

ColorJitter color_jitter_draw(uint64_t seed, int64_t epoch, int64_t sample, float s) {
    /* torchvision get_params: a random order first (randperm), then the factors in the order
     * brightness, contrast, saturation (the same distribution, not the same bits) */
    RngStream r = rng_stream(seed, (uint64_t)epoch, (uint64_t)sample, RNG_JITTER);
    ColorJitter j = {{1, 1, 1}, {0, 1, 2}};
    for (int i = 2; i > 0; i--) {
        int k = (int)rng_stream_int(&r, 0, i), t = j.order[i];
        j.order[i] = j.order[k], j.order[k] = t;
    }
    double lo = s < 1 ? 1.0 - s : 0.0, hi = 1.0 + s;
    for (int f = 0; f < 3; f++)
        j.factor[f] = (float)(lo + (hi - lo) * rng_stream_uniform(&r));
    return j;
}

static float clamp255(float v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

static float gray(const float *px) { return 0.2989f * px[0] + 0.587f * px[1] + 0.114f * px[2]; }

void color_jitter_apply(float *img, int H, int W, int C, const ColorJitter *j) {
    size_t n = (size_t)H * W, nc = n * C;
    for (int step = 0; step < 3; step++) {
        int op = j->order[step];
        float f = j->factor[op];
        if (op == 0) { /* adjust_brightness: blend with black */
            for (size_t i = 0; i < nc; i++)
                img[i] = clamp255(f * img[i]);
        } else if (op == 1) { /* adjust_contrast: blend with the grayscale image's mean */
            double m = 0;     /* RGB: of the gray image; otherwise of every value */
            for (size_t i = 0; i < (C == 3 ? n : nc); i++)
                m += C == 3 ? gray(img + i * 3) : img[i];
            float mean = (float)(m / (double)(C == 3 ? n : nc));
            for (size_t i = 0; i < nc; i++)
                img[i] = clamp255(f * img[i] + (1 - f) * mean);
        } else if (C == 3) { /* adjust_saturation: blend with each pixel's gray */
            for (size_t p = 0; p < n; p++) {
                float *px = img + p * 3, g = gray(px);
                for (int c = 0; c < 3; c++)
                    px[c] = clamp255(f * px[c] + (1 - f) * g);
            }
        }
    }
}

static int fill_image(Loader *l, int64_t idx, int64_t epoch, float *out) {
    const Dataset *d = l->d;
    const LoaderConfig *c = &l->c;
    int H = d->H, W = d->W, C = d->C, oh = c->out_H ? c->out_H : H, ow = c->out_W ? c->out_W : W;
    if (dataset_read_image(d, idx, l->pixels, l->err, sizeof l->err) < 0) return -1;
    for (size_t i = 0; i < (size_t)H * W * C; i++) /* exact: the uint8 values as floats */
        l->src[i] = l->pixels[i];
    float top = 0, left = 0, ch = (float)H, cw = (float)W;
    int flip = 0;
    if (c->image_augment) {
        /* The official order (data2vec vision / BEiT DataAugmentationForBEiT): ColorJitter,
         * RandomHorizontalFlip, RandomResizedCrop. The jitter needs the whole image (contrast
         * blends with its mean); the flip commutes with the crop in distribution (a uniform crop
         * of the mirrored image is the mirror of a uniform crop), so the crop is drawn first. */
        if (c->color_jitter > 0) {
            ColorJitter j = color_jitter_draw(c->seed, epoch, idx, c->color_jitter);
            color_jitter_apply(l->src, H, W, C, &j);
        }
        /* torchvision RandomResizedCrop's parameters, then RandomHorizontalFlip's */
        RngStream r = rng_stream(c->seed, (uint64_t)epoch, (uint64_t)idx, RNG_AUGMENT);
        int found = 0;
        double area = (double)H * W, lr0 = log(c->crop_ratio_min), lr1 = log(c->crop_ratio_max);
        for (int attempt = 0; attempt < 10 && !found; attempt++) {
            double target = area * (c->crop_scale_min + (c->crop_scale_max - c->crop_scale_min) *
                                                            rng_stream_uniform(&r));
            double ratio = exp(lr0 + (lr1 - lr0) * rng_stream_uniform(&r));
            int w = (int)lround(sqrt(target * ratio)), h = (int)lround(sqrt(target / ratio));
            if (w > 0 && h > 0 && w <= W && h <= H) {
                top = (float)rng_stream_int(&r, 0, H - h),
                left = (float)rng_stream_int(&r, 0, W - w);
                ch = (float)h, cw = (float)w, found = 1;
            }
        }
        flip = rng_stream_uniform(&r) < c->flip_prob;
    }
    float v[4];
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            /* pixel centres of the output grid mapped into the crop (align_corners = False) */
            float sy = top + (y + 0.5f) * ch / oh - 0.5f;
            float sx = left + ((flip ? ow - 1 - x : x) + 0.5f) * cw / ow - 0.5f;
            if (c->interpolation == LOADER_INTERP_BICUBIC)
                bicubic(v, l->src, H, W, C, sy, sx);
            else
                bilinear(v, l->src, H, W, C, sy, sx);
            for (int k = 0; k < C; k++)
                out[((size_t)y * ow + x) * C + k] = (v[k] / 255.0f - c->mean[k]) / c->std[k];
        }
    return 0;
}

static int fill_speech(Loader *l, int64_t idx, int64_t epoch, int S, float *out) {
    int64_t len = dataset_sample_len(l->d, idx);
    RngStream r = rng_stream(l->c.seed, (uint64_t)epoch, (uint64_t)idx, RNG_CROP);
    int64_t start = rng_stream_int(&r, 0, len - S); /* fairseq crop_to_max_size */
    if (dataset_read_audio(l->d, idx, start, S, out, l->err, sizeof l->err) < 0) return -1;
    if (l->c.speech_normalize) { /* F.layer_norm(wav, wav.shape): eps 1e-5 */
        double m = 0, v = 0;
        for (int i = 0; i < S; i++)
            m += out[i];
        m /= S;
        for (int i = 0; i < S; i++)
            v += (out[i] - m) * (out[i] - m);
        float s = (float)(1.0 / sqrt(v / S + 1e-5));
        for (int i = 0; i < S; i++)
            out[i] = (float)(out[i] - m) * s;
    }
    return 0;
}

/* Build the batch at the producer cursor into slot b; advance the cursor. */
static int produce(Loader *l, Batch *b) {
    int64_t global = (int64_t)l->c.batch_size * l->world;
    if (l->produce.position + global > l->n) l->produce.epoch++, l->produce.position = 0;
    if (l->perm_epoch != l->produce.epoch) make_perm(l, l->produce.epoch);
    int64_t base = l->produce.position + (int64_t)l->rank * l->c.batch_size;
    if (base < 0 || base + l->c.batch_size > l->n) { /* loader_create checked the cursor */
        snprintf(l->err, sizeof l->err, "loader: position %lld outside the epoch of %lld",
                 (long long)base, (long long)l->n);
        return -1;
    }
    b->B = l->c.batch_size, b->epoch = l->produce.epoch;
    for (int i = 0; i < b->B; i++) {
        int64_t item = l->perm[base + i];
        b->ids[i] = l->items ? l->items[item] : item;
    }
    int rc = 0;
    if (l->d->modality == D2V_TEXT) {
        for (int i = 0; i < b->B && rc == 0; i++)
            rc = fill_text(l, b->ids[i], b->tokens + (size_t)i * b->T);
    } else if (l->d->modality == D2V_IMAGE) {
        size_t per = (size_t)b->H * b->W * b->C;
        for (int i = 0; i < b->B && rc == 0; i++)
            rc = fill_image(l, b->ids[i], b->epoch, b->images + i * per);
    } else {
        int64_t shortest = l->c.speech_max_samples;
        for (int i = 0; i < b->B; i++) {
            int64_t len = dataset_sample_len(l->d, b->ids[i]);
            if (len < shortest) shortest = len;
        }
        b->S = (int)shortest;
        for (int i = 0; i < b->B && rc == 0; i++)
            rc = fill_speech(l, b->ids[i], b->epoch, b->S, b->audio + (size_t)i * b->S);
    }
    for (int i = 0; i < b->B; i++) /* text rows are blocks, not documents: no label */
        b->labels[i] = l->d->labels && l->d->modality != D2V_TEXT ? l->d->labels[b->ids[i]] : -1;
    l->produce.position += global;
    return rc;
}

static void *worker(void *arg) {
    Loader *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        /* one slot stays with the consumer until its next call */
        if (l->count + l->taken >= l->n_slots || l->failed) {
            pthread_cond_wait(&l->can_fill, &l->mu);
            continue;
        }
        Batch *b = &l->slots[(l->head + l->taken + l->count) % l->n_slots];
        pthread_mutex_unlock(&l->mu);
        int rc = produce(l, b);
        pthread_mutex_lock(&l->mu);
        if (rc < 0)
            l->failed = 1;
        else
            l->count++;
        pthread_cond_signal(&l->can_take);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- public ---- */

static void alloc_batch(Loader *l, Batch *b) {
    const LoaderConfig *c = &l->c;
    int B = c->batch_size;
    b->ids = xalloc(sizeof(int64_t) * B, "batch ids");
    b->labels = xalloc(sizeof(int32_t) * B, "batch labels");
    if (l->d->modality == D2V_TEXT) {
        b->T = c->text_T;
        b->tokens = xalloc(sizeof(int32_t) * B * b->T, "text batch");
    } else if (l->d->modality == D2V_IMAGE) {
        b->H = c->out_H ? c->out_H : l->d->H, b->W = c->out_W ? c->out_W : l->d->W;
        b->C = l->d->C;
        b->images = xalloc(sizeof(float) * B * b->H * b->W * b->C, "image batch");
    } else {
        b->audio = xalloc(sizeof(float) * B * c->speech_max_samples, "speech batch");
    }
}

#define FAIL(...) (snprintf(err, errlen, __VA_ARGS__), loader_destroy(l), (Loader *)NULL)

Loader *loader_create_err(Dataset *d, const LoaderConfig *c, int rank, int world,
                          LoaderCursor start, char *err, size_t errlen) {
    Loader *l = xalloc(sizeof *l, "loader");
    l->d = d, l->c = *c, l->rank = rank, l->world = world;
    if (c->batch_size <= 0 || world <= 0 || rank < 0 || rank >= world)
        return FAIL("loader: batch size %d on rank %d of %d", c->batch_size, rank, world);
    if (d->modality == D2V_TEXT) {
        if (c->text_T < 2) return FAIL("loader: text block length %d (at least 2)", c->text_T);
        build_text_blocks(l);
    } else if (d->modality == D2V_SPEECH) {
        if (c->speech_max_samples <= 0) return FAIL("loader: speech_max_samples must be positive");
        l->items = xalloc(sizeof(int64_t) * d->num_samples, "loader items");
        for (int64_t i = 0; i < d->num_samples; i++)
            if (dataset_sample_len(d, i) >= (c->speech_min_samples > 0 ? c->speech_min_samples : 1))
                l->items[l->n++] = i;
    } else {
        if (d->C < 1 || d->C > 3) return FAIL("%s: %d image channels (1 to 3)", d->path, d->C);
        for (int k = 0; k < d->C; k++)
            if (!(c->std[k] > 0)) return FAIL("loader: image std[%d] must be positive", k);
        if (!(c->color_jitter >= 0 && c->color_jitter <= 1) ||
            (c->interpolation != LOADER_INTERP_BILINEAR &&
             c->interpolation != LOADER_INTERP_BICUBIC))
            return FAIL("loader: colour jitter %g (0..1) or interpolation %d (bilinear 0, bicubic "
                        "1)",
                        c->color_jitter, c->interpolation);
        if (c->out_H < 0 || c->out_W < 0 || c->out_H > D2V_MAX_IMAGE_SIDE ||
            c->out_W > D2V_MAX_IMAGE_SIDE)
            return FAIL("loader: output size %dx%d", c->out_H, c->out_W);
        l->n = d->num_samples;
    }
    int64_t global = (int64_t)c->batch_size * world;
    if (l->n < global)
        return FAIL("%s: %lld usable samples cannot fill one global batch of %lld (%d ranks x %d)",
                    d->path, (long long)l->n, (long long)global, world, c->batch_size);
    /* A cursor comes from a checkpoint: any position in [0, n] is one a run can reach (past the
     * last full batch the next batch starts a new epoch), anything else would index outside the
     * permutation. */
    if (start.epoch < 0 || start.position < 0 || start.position > l->n)
        return FAIL("%s: loader cursor (epoch %lld, position %lld) is outside an epoch of %lld "
                    "samples (a checkpoint of another dataset?)",
                    d->path, (long long)start.epoch, (long long)start.position, (long long)l->n);
    l->perm = xalloc(sizeof(int64_t) * l->n, "loader permutation");
    l->perm_epoch = -1;
    l->produce = l->consume = start;
    l->n_slots = c->prefetch > 0 ? c->prefetch + 1 : 1;
    l->slots = xalloc(sizeof(Batch) * l->n_slots, "loader slots");
    for (int i = 0; i < l->n_slots; i++)
        alloc_batch(l, &l->slots[i]);
    if (d->modality == D2V_IMAGE) {
        l->pixels = xalloc((size_t)d->H * d->W * d->C, "image scratch");
        l->src = xalloc(sizeof(float) * d->H * d->W * d->C, "image scratch (float)");
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->can_fill, NULL), pthread_cond_init(&l->can_take, NULL);
    l->sync_ready = 1;
    if (c->prefetch > 0) {
        if (pthread_create(&l->thread, NULL, worker, l) != 0)
            return FAIL("loader: cannot start the prefetch thread");
        l->threaded = 1;
    }
    return l;
}
#undef FAIL

Loader *loader_create(Dataset *d, const LoaderConfig *c, int rank, int world, LoaderCursor start) {
    char err[PATH_MAX + 512];
    Loader *l = loader_create_err(d, c, rank, world, start, err, sizeof err);
    if (!l) die("%s", err);
    return l;
}

void loader_destroy(Loader *l) {
    if (!l) return;
    if (l->threaded) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        pthread_cond_broadcast(&l->can_fill);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    for (int i = 0; l->slots && i < l->n_slots; i++) {
        Batch *b = &l->slots[i];
        free(b->ids), free(b->labels), free(b->tokens), free(b->images), free(b->audio);
    }
    if (l->sync_ready) { /* a loader_create_err that failed early has none */
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->can_fill), pthread_cond_destroy(&l->can_take);
    }
    free(l->slots), free(l->perm), free(l->items), free(l->blocks), free(l->pixels), free(l->src);
    free(l);
}

const Batch *loader_next_err(Loader *l, char *err, size_t errlen) {
    Batch *b;
    if (!l->threaded) {
        b = &l->slots[0];
        if (produce(l, b) < 0) return snprintf(err, errlen, "%s", l->err), (const Batch *)NULL;
    } else {
        pthread_mutex_lock(&l->mu);
        if (l->taken) { /* the previous batch goes back to the ring */
            l->head = (l->head + 1) % l->n_slots, l->taken = 0;
            pthread_cond_signal(&l->can_fill);
        }
        while (l->count == 0 && !l->failed)
            pthread_cond_wait(&l->can_take, &l->mu);
        if (l->count == 0 && l->failed) {
            pthread_mutex_unlock(&l->mu);
            return snprintf(err, errlen, "%s", l->err), (const Batch *)NULL;
        }
        b = &l->slots[l->head];
        l->count--, l->taken = 1;
        pthread_mutex_unlock(&l->mu);
    }
    int64_t global = (int64_t)l->c.batch_size * l->world;
    if (l->consume.position + global > l->n) l->consume.epoch++, l->consume.position = 0;
    l->consume.position += global;
    return b;
}

const Batch *loader_next(Loader *l) {
    char err[PATH_MAX + 512];
    const Batch *b = loader_next_err(l, err, sizeof err);
    if (!b) die("%s", err);
    return b;
}

LoaderCursor loader_cursor(const Loader *l) {
    LoaderCursor c = l->consume;
    if (c.position + (int64_t)l->c.batch_size * l->world > l->n) c.epoch++, c.position = 0;
    return c;
}

int64_t loader_epoch_samples(const Loader *l) { return l->n; }
