/* audio_io.c: libsndfile reading to mono, libsamplerate resampling and int16 conversion (see
 * audio_io.h). */
#define _POSIX_C_SOURCE 200809L
#include "audio_io.h"

#include <math.h>
#include <samplerate.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int audio_load_mono(const char *path, int rate, int resample, int quality, AudioClip *clip,
                    char *err, size_t errlen) {
    memset(clip, 0, sizeof *clip);
    SF_INFO info;
    memset(&info, 0, sizeof info);
    SNDFILE *sf = sf_open(path, SFM_READ, &info);
    if (!sf) {
        snprintf(err, errlen, "cannot read: %s", sf_strerror(NULL));
        return -1;
    }
    clip->rate_in = info.samplerate, clip->channels_in = info.channels;
    clip->frames_in = info.frames;
    const char *why = NULL;
    char buf[256];
    if (info.frames <= 0)
        why = "empty (no audio frames)";
    else if (info.frames > AUDIO_MAX_FRAMES)
        why = "too long";
    else if (info.channels < 1 || info.samplerate < AUDIO_MIN_RATE ||
             info.samplerate > AUDIO_MAX_RATE) {
        snprintf(buf, sizeof buf, "%d channel(s) at %d Hz (%d to %d Hz expected)", info.channels,
                 info.samplerate, AUDIO_MIN_RATE, AUDIO_MAX_RATE);
        why = buf;
    } else if (!resample && info.samplerate != rate) {
        snprintf(buf, sizeof buf, "sample rate %d Hz, expected %d Hz (--no-resample)",
                 info.samplerate, rate);
        why = buf;
    }
    if (why) {
        sf_close(sf);
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    /* Read in blocks, mixing each down to mono as it arrives, into a buffer grown with the
     * frames that actually come: a header's frame count is a claim, not an allocation size. */
    enum { BLOCK = 4096 };
    size_t frames = (size_t)info.frames, ch = (size_t)info.channels, cap = 0, got = 0;
    float *all = NULL, *block = malloc(sizeof(float) * BLOCK * ch);
    const char *fail = block ? NULL : "out of memory";
    int sferr = 0;
    while (!fail && got < frames) {
        sf_count_t want = frames - got < BLOCK ? (sf_count_t)(frames - got) : BLOCK;
        sf_count_t n = sf_readf_float(sf, block, want);
        if ((sferr = sf_error(sf)) != 0 || n <= 0) break;
        if (got + (size_t)n > cap) {
            size_t nc = cap ? cap * 2 : BLOCK;
            while (nc < got + (size_t)n)
                nc *= 2;
            if (nc > frames) nc = frames;
            float *na = realloc(all, sizeof(float) * nc);
            if (!na)
                fail = "out of memory";
            else
                all = na, cap = nc;
        }
        for (sf_count_t i = 0; !fail && i < n; i++) {
            double s = 0;
            for (size_t c = 0; c < ch; c++)
                s += block[(size_t)i * ch + c];
            all[got + (size_t)i] = (float)(s / ch);
            if (!isfinite(all[got + (size_t)i])) {
                snprintf(buf, sizeof buf, "non-finite sample at frame %zu", got + (size_t)i);
                fail = buf;
            }
        }
        got += (size_t)n;
    }
    sf_close(sf);
    free(block);
    if (!fail && got != frames) {
        snprintf(buf, sizeof buf, "truncated or corrupt: read %zu of %zu frames%s%s", got, frames,
                 sferr ? ": " : "", sferr ? sf_error_number(sferr) : "");
        fail = buf;
    }
    if (fail) {
        free(all);
        snprintf(err, errlen, "%s", fail);
        return -1;
    }
    clip->rate = rate;
    if (info.samplerate == rate) {
        clip->x = all, clip->n = frames;
        return 0;
    }
    clip->x = audio_resample_alloc(all, frames, (double)rate / info.samplerate, quality, &clip->n,
                                   err, errlen);
    free(all);
    return clip->x ? 0 : -1;
}

void audio_free(AudioClip *clip) {
    free(clip->x);
    memset(clip, 0, sizeof *clip);
}

float *audio_resample_alloc(const float *x, size_t n, double ratio, int quality, size_t *n_out,
                            char *err, size_t errlen) {
    if (!(ratio > 0) || n * ratio > (double)AUDIO_MAX_FRAMES) {
        snprintf(err, errlen, "resampling %zu frames by %g gives too long a result", n, ratio);
        return NULL;
    }
    size_t cap = (size_t)ceil(n * ratio) + 64, used = 0, made = 0;
    float *y = malloc(sizeof(float) * cap);
    int e = 0;
    SRC_STATE *st = y ? src_new(quality, 1, &e) : NULL;
    if (!st) {
        snprintf(err, errlen, "cannot start the resampler: %s", y ? src_strerror(e) : "no memory");
        free(y);
        return NULL;
    }
    /* end_of_input flushes the filter tail; call until nothing more comes out. */
    for (;;) {
        SRC_DATA d = {.data_in = x + used,
                      .input_frames = (long)(n - used),
                      .data_out = y + made,
                      .output_frames = (long)(cap - made),
                      .end_of_input = 1,
                      .src_ratio = ratio};
        if ((e = src_process(st, &d)) != 0) {
            snprintf(err, errlen, "resampling failed: %s", src_strerror(e));
            src_delete(st), free(y);
            return NULL;
        }
        used += (size_t)d.input_frames_used, made += (size_t)d.output_frames_gen;
        if (d.output_frames_gen == 0 || made == cap) break;
    }
    src_delete(st);
    *n_out = made;
    return y;
}

size_t audio_to_int16(const float *x, size_t n, int16_t *out) {
    size_t clipped = 0;
    for (size_t i = 0; i < n; i++) {
        float v = rintf(x[i] * 32768.0f);
        if (v > 32767.0f) v = 32767.0f, clipped++;
        if (v < -32768.0f) v = -32768.0f, clipped++;
        out[i] = (int16_t)v;
    }
    return clipped;
}
