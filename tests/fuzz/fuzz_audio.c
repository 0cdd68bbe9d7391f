/* fuzz_audio.c: libFuzzer target for sound files: audio_load_mono (any format libsndfile
 * recognises by content: WAV first, also AIFF, AU, FLAC, ...), mixed to mono and resampled to
 * 16 kHz, then converted to int16 as d2v-prep-speech writes it. libsamplerate's fastest sinc
 * converter keeps the rate up; the code path is the same as with the best one. */
#include <math.h>
#include <samplerate.h>

#include "audio_io.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (fuzz_seed_dir()) exit(0); /* seeds: cut-down tests/fixtures/speech WAV files */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_path("input.wav");
    fuzz_write(path, data, size);
    AudioClip clip;
    char err[1024];
    if (audio_load_mono(path, 16000, 1, SRC_SINC_FASTEST, &clip, err, sizeof err) == 0) {
        if (clip.rate != 16000 || (clip.n && !clip.x)) abort();
        for (size_t i = 0; i < clip.n; i++)
            if (!isfinite(clip.x[i])) abort(); /* non-finite input is refused */
        int16_t *s = malloc(sizeof(int16_t) * (clip.n ? clip.n : 1));
        audio_to_int16(clip.x, clip.n, s);
        free(s);
        audio_free(&clip);
    } else if (!err[0] || clip.x) {
        abort();
    }
    return 0;
}
