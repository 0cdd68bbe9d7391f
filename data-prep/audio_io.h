/* audio_io.h: audio inputs for d2v-prep-speech: any libsndfile format (WAV, FLAC, Ogg, ...) read
 * as mono float, resampled with libsamplerate, and converted to int16. */
#ifndef D2V_AUDIO_IO_H
#define D2V_AUDIO_IO_H

#include <stddef.h>
#include <stdint.h>

/// Longest input (and resampled output) accepted, in frames (about 12 h at 48 kHz), and the
/// sample rates accepted: other files are bad inputs.
#define AUDIO_MAX_FRAMES ((int64_t)1 << 31)
#define AUDIO_MIN_RATE 1000
#define AUDIO_MAX_RATE 1000000

/// A mono signal at `rate` Hz.
typedef struct {
    float *x; // (S,), malloc'd, nominally in [-1, 1]
    size_t n;
    int rate;
    int rate_in, channels_in; // the file's own rate and channel count
    int64_t frames_in;        // the file's frame count at its own rate
} AudioClip;

/// Read a sound file, average its channels to mono and bring it to `rate` Hz with libsamplerate
/// converter `quality` (SRC_SINC_BEST_QUALITY, ...); with resample = 0 another rate is an error.
/// Returns 0, or -1 with err saying why without the path (unreadable, corrupt or truncated, no
/// frames, too long, non-finite samples, a rate outside AUDIO_MIN_RATE..AUDIO_MAX_RATE, wrong
/// rate).
int audio_load_mono(const char *path, int rate, int resample, int quality, AudioClip *clip,
                    char *err, size_t errlen);
void audio_free(AudioClip *clip);

/// Resample mono x (n frames) by ratio = rate_out / rate_in in one pass (so the result never
/// depends on how the input was split). Returns the malloc'd output (*n_out frames, about
/// n * ratio), or NULL with err.
float *audio_resample_alloc(const float *x, size_t n, double ratio, int quality, size_t *n_out,
                            char *err, size_t errlen);

/// Scale by 32768, round to nearest and clip to [-32768, 32767] (the inverse of the 1/32768 read
/// scaling, so 16-bit input at the target rate round-trips exactly). Returns the clipped count.
size_t audio_to_int16(const float *x, size_t n, int16_t *out);

#endif
