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

/// Longest input accepted, in frames (about 12 h at 48 kHz); longer files are bad inputs.
#define AUDIO_MAX_FRAMES ((sf_count_t)1 << 31)

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
    else if (info.channels < 1 || info.samplerate < 1)
        why = "no channels or no sample rate";
    else if (!resample && info.samplerate != rate) {
        snprintf(buf, sizeof buf, "sample rate %d Hz, expected %d Hz (--no-resample)",
                 info.samplerate, rate);
        why = buf;
    }
    if (why) {
        sf_close(sf);
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    size_t frames = (size_t)info.frames, ch = (size_t)info.channels;
    float *all = malloc(sizeof(float) * frames * ch);
    if (!all) {
        sf_close(sf);
        snprintf(err, errlen, "out of memory for %zu frames", frames);
        return -1;
    }
    sf_count_t got = sf_readf_float(sf, all, info.frames);
    int sferr = sf_error(sf);
    if (got != info.frames || sferr) {
        snprintf(err, errlen, "truncated or corrupt: read %lld of %lld frames%s%s", (long long)got,
                 (long long)info.frames, sferr ? ": " : "", sferr ? sf_error_number(sferr) : "");
        free(all), sf_close(sf);
        return -1;
    }
    sf_close(sf);
    /* Mix down in place: frame i's mean lands at all[i], never ahead of unread frames. */
    for (size_t i = 0; i < frames; i++) {
        double s = 0;
        for (size_t c = 0; c < ch; c++)
            s += all[i * ch + c];
        all[i] = (float)(s / ch);
        if (!isfinite(all[i])) {
            free(all);
            snprintf(err, errlen, "non-finite sample at frame %zu", i);
            return -1;
        }
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
