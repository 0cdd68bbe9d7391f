/* prep_speech.c: d2v-prep-speech: a folder tree of sound files or a fairseq-style manifest to
 * speech shards (docs/datasets.md): mono, 16 kHz, int16 or float32, one shard per MPI rank. */
#include <samplerate.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio_io.h"
#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/util.h"
#include "prep_common.h"

#define CREATED_BY "d2v-prep-speech 1"
#define RATE 16000
#define CHUNK_SAMPLES 32768 // /audio chunk: 2 s at 16 kHz

static void usage(void) {
    fputs(
        "usage: d2v-prep-speech [options] -o OUT.h5 (--tree DIR | --manifest TSV [--labels FILE]\n"
        "                       [--transcripts FILE])\n"
        "Writes a speech dataset (docs/datasets.md): /audio (all utterances' mono 16 kHz samples,\n"
        "concatenated), /offsets, and /labels, /label_names, /transcripts when known; root\n"
        "attributes sample_rate = 16000 and sample_format.\n"
        "\n"
        "inputs (one kind):\n"
        "  --tree DIR          DIR/<class>/*.wav|*.flac|*.ogg; label names are the sorted class\n"
        "                      folder names. With no class folders, utterances are unlabelled.\n"
        "  --manifest TSV      fairseq style: the first line is the root directory, then one\n"
        "                      \"relative_path<TAB>num_samples\" line per utterance\n"
        "                      (num_samples, the file's frame count, is checked when given).\n"
        "                      Samples keep the manifest's order.\n"
        "  --labels FILE       one line per manifest entry; its first TAB-separated field is the\n"
        "                      class name. Label ids index the sorted distinct names\n"
        "                      (/label_names).\n"
        "  --transcripts FILE  one line per manifest entry (e.g. fairseq .wrd): /transcripts\n"
        "output:\n"
        "  -o, --out FILE      output file; under mpirun -n N > 1, FILE is an index listing N\n"
        "                      shards FILE-without-.h5.shard-RRRRR-of-NNNNN.h5\n"
        "  --float             store float32 samples (default int16: x * 32768 rounded, clipped)\n"
        "  --no-resample       treat a sample rate other than 16 kHz as a bad input\n"
        "  --quality Q         libsamplerate converter: best (SRC_SINC_BEST_QUALITY, default),\n"
        "                      medium (SRC_SINC_MEDIUM_QUALITY, about 4x faster) or fast\n"
        "  --strict            stop at the first bad input instead of skipping it\n"
        "\n"
        "Any format libsndfile reads is accepted (WAV, FLAC, Ogg Vorbis/Opus, ...). Channels are\n"
        "averaged to mono, then other rates are resampled to 16 kHz in one pass per file.\n"
        "bad inputs (missing, unreadable, corrupt or truncated files; files with no frames; a\n"
        "manifest line that does not parse or whose num_samples disagrees with the file; a wrong\n"
        "rate under --no-resample; files outside class folders; empty class folders) are reported\n"
        "with the file name and skipped with a count, or stop the job under --strict. Outputs are\n"
        "written under a temporary name and renamed only when every rank succeeded. Samples are\n"
        "in sorted input order (manifest: its order) for any number of ranks.\n",
        stdout);
}

typedef struct {
    const char *tree, *manifest, *labels, *transcripts, *out;
    int use_float, no_resample, quality, strict;
} SpeechArgs;

static void parse_args(int argc, char **argv, SpeechArgs *a) {
    memset(a, 0, sizeof *a);
    a->quality = SRC_SINC_BEST_QUALITY;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (!strcmp(o, "--strict")) {
            a->strict = 1;
            continue;
        }
        if (!strcmp(o, "--float")) {
            a->use_float = 1;
            continue;
        }
        if (!strcmp(o, "--no-resample")) {
            a->no_resample = 1;
            continue;
        }
        if (i + 1 >= argc) die("%s: missing value (see --help)", o);
        const char *v = argv[++i];
        if (!strcmp(o, "--tree"))
            a->tree = v;
        else if (!strcmp(o, "--manifest"))
            a->manifest = v;
        else if (!strcmp(o, "--labels"))
            a->labels = v;
        else if (!strcmp(o, "--transcripts"))
            a->transcripts = v;
        else if (!strcmp(o, "-o") || !strcmp(o, "--out"))
            a->out = v;
        else if (!strcmp(o, "--quality")) {
            if (!strcmp(v, "best"))
                a->quality = SRC_SINC_BEST_QUALITY;
            else if (!strcmp(v, "medium"))
                a->quality = SRC_SINC_MEDIUM_QUALITY;
            else if (!strcmp(v, "fast"))
                a->quality = SRC_SINC_FASTEST;
            else
                die("--quality %s: expected best, medium or fast", v);
        } else
            die("%s: unknown option (see --help)", o);
    }
    if (!a->out) die("no output file: give -o OUT.h5 (see --help)");
    if (!!a->tree + !!a->manifest != 1)
        die("give exactly one input: --tree DIR or --manifest TSV (see --help)");
    if (a->tree && (a->labels || a->transcripts))
        die("--labels and --transcripts go with --manifest; --tree names classes by folder");
}

/* ---- text files ---- */

/* The lines of a whole file (a final newline ends the last line; '\r' before '\n' dropped). */
typedef struct {
    char *text;
    char **line;
    size_t n;
} Lines;

static void lines_read(Lines *l, const char *path) {
    memset(l, 0, sizeof *l);
    FILE *f = fopen(path, "rb");
    if (!f) die("%s: cannot open", path);
    size_t cap = 1 << 16, len = 0;
    l->text = malloc(cap);
    size_t got;
    while (l->text && (got = fread(l->text + len, 1, cap - len - 1, f)) > 0) {
        len += got;
        if (len + 1 == cap) l->text = realloc(l->text, cap *= 2);
    }
    if (!l->text || ferror(f)) die("%s: cannot read", path);
    fclose(f);
    l->text[len] = '\0';
    size_t lcap = 1024;
    l->line = xalloc(sizeof(char *) * lcap, "lines");
    for (char *p = l->text; *p;) {
        char *e = strchr(p, '\n');
        if (e) *e = '\0';
        size_t k = strlen(p);
        if (k && p[k - 1] == '\r') p[k - 1] = '\0';
        if (l->n == lcap) {
            char **nl = realloc(l->line, sizeof(char *) * (lcap *= 2));
            if (!nl) die("%s: out of memory", path);
            l->line = nl;
        }
        l->line[l->n++] = p;
        if (!e) break;
        p = e + 1;
    }
}

static void lines_free(Lines *l) {
    free(l->text), free(l->line);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- inputs ---- */

typedef struct {
    size_t n;
    char **paths;    // (n) full paths (manifest: root/relative)
    int64_t *frames; // (n) manifest num_samples, or -1
    char **bad;      // (n) manifest: why line i cannot be used, or NULL
    int32_t *label;  // (n) or NULL
    char **names;    // label names (n_names)
    size_t n_names;
    char **transcripts;      // (n) or NULL
    PrepTree tree;           // --tree
    Lines man, lab, trans;   // --manifest text
    char name_buf[PATH_MAX]; // scratch for messages
} SpeechSource;

static void source_open_manifest(SpeechSource *s, const SpeechArgs *a) {
    lines_read(&s->man, a->manifest);
    if (s->man.n == 0 || !s->man.line[0][0])
        die("%s: empty manifest (the first line must be the root directory)", a->manifest);
    const char *root = s->man.line[0];
    s->n = s->man.n - 1;
    if (s->n == 0) die("%s: the manifest lists no files", a->manifest);
    s->paths = xalloc(sizeof(char *) * s->n, "manifest paths");
    s->frames = xalloc(sizeof(int64_t) * s->n, "manifest frames");
    s->bad = xalloc(sizeof(char *) * s->n, "manifest errors");
    for (size_t i = 0; i < s->n; i++) {
        char *ln = s->man.line[i + 1], *tab = strchr(ln, '\t');
        if (tab) *tab = '\0';
        char path[PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", root, ln) >= (int)sizeof path)
            die("%s: line %zu: path too long", a->manifest, i + 2);
        s->paths[i] = strdup(path);
        s->frames[i] = -1;
        char *end = NULL;
        if (tab) s->frames[i] = strtoll(tab + 1, &end, 10);
        if (!*ln)
            s->bad[i] = "manifest line has no file name";
        else if (tab && (end == tab + 1 || *end || s->frames[i] < 0))
            s->bad[i] = "manifest num_samples is not a non-negative integer";
    }
    if (a->labels) {
        lines_read(&s->lab, a->labels);
        if (s->lab.n != s->n)
            die("%s: %zu lines for the %zu entries of %s", a->labels, s->lab.n, s->n, a->manifest);
        s->names = xalloc(sizeof(char *) * s->n, "label names");
        for (size_t i = 0; i < s->n; i++) {
            char *tab = strchr(s->lab.line[i], '\t');
            if (tab) *tab = '\0';
            if (!s->lab.line[i][0]) die("%s: line %zu: empty label", a->labels, i + 1);
            s->names[i] = s->lab.line[i];
        }
        qsort(s->names, s->n, sizeof(char *), cmp_str);
        for (size_t i = 0; i < s->n; i++)
            if (!s->n_names || strcmp(s->names[s->n_names - 1], s->names[i]))
                s->names[s->n_names++] = s->names[i];
        s->label = xalloc(sizeof(int32_t) * s->n, "labels");
        for (size_t i = 0; i < s->n; i++) {
            char **hit = bsearch(&s->lab.line[i], s->names, s->n_names, sizeof(char *), cmp_str);
            s->label[i] = (int32_t)(hit - s->names);
        }
    }
    if (a->transcripts) {
        lines_read(&s->trans, a->transcripts);
        if (s->trans.n != s->n)
            die("%s: %zu lines for the %zu entries of %s", a->transcripts, s->trans.n, s->n,
                a->manifest);
        s->transcripts = s->trans.line;
    }
}

/* Global checks every rank makes identically; bad inputs found here are reported by rank 0 only,
 * so each counts once. */
static void source_open(SpeechSource *s, const SpeechArgs *a, PrepErrors *pe) {
    memset(s, 0, sizeof *s);
    if (a->manifest) {
        source_open_manifest(s, a);
        return;
    }
    static const char *const exts[] = {".wav", ".flac", ".ogg", NULL};
    char err[1024];
    if (prep_list_tree(&s->tree, a->tree, exts, err, sizeof err) < 0) die("%s", err);
    if (s->tree.n == 0) die("%s: no .wav, .flac or .ogg files (empty folder?)", a->tree);
    s->n = s->tree.n;
    s->paths = s->tree.paths;
    s->frames = xalloc(sizeof(int64_t) * s->n, "frames");
    for (size_t i = 0; i < s->n; i++)
        s->frames[i] = -1;
    if (s->tree.n_classes) {
        s->label = s->tree.label;
        s->names = s->tree.classes, s->n_names = s->tree.n_classes;
        size_t *per = xalloc(sizeof(size_t) * s->n_names, "class counts");
        for (size_t i = 0; i < s->n; i++)
            if (s->label[i] >= 0) per[s->label[i]]++;
        for (size_t c = 0; c < s->n_names && g_dist.rank == 0; c++)
            if (!per[c]) {
                char dir[PATH_MAX + 256];
                snprintf(dir, sizeof dir, "%s/%s", a->tree, s->names[c]);
                prep_bad_input(pe, dir, "empty class folder (no .wav, .flac or .ogg files)");
            }
        free(per);
    }
}

static void source_close(SpeechSource *s) {
    free(s->frames);
    if (s->man.text) {
        for (size_t i = 0; i < s->n; i++)
            free(s->paths[i]);
        free(s->paths), free(s->bad), free(s->label), free(s->names);
        lines_free(&s->man), lines_free(&s->lab), lines_free(&s->trans);
    } else {
        prep_tree_free(&s->tree);
    }
}

/* Utterance i as mono 16 kHz float; -1 with err. */
static int source_get(SpeechSource *s, size_t i, const SpeechArgs *a, AudioClip *clip, char *err,
                      size_t errlen) {
    if (s->bad && s->bad[i]) {
        snprintf(err, errlen, "%s (%s line %zu)", s->bad[i], a->manifest, i + 2);
        return -1;
    }
    if (s->label && s->label[i] < 0) {
        snprintf(err, errlen, "not inside a class folder (the tree has class folders)");
        return -1;
    }
    if (audio_load_mono(s->paths[i], RATE, !a->no_resample, a->quality, clip, err, errlen) < 0)
        return -1;
    if (s->frames[i] >= 0 && s->frames[i] != clip->frames_in) {
        snprintf(err, errlen, "%s says %lld samples, the file has %lld", a->manifest,
                 (long long)s->frames[i], (long long)clip->frames_in);
        audio_free(clip);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    prep_start(&argc, &argv, usage);
    SpeechArgs a;
    parse_args(argc, argv, &a);
    PrepErrors pe = {a.strict, 0};
    SpeechSource src;
    source_open(&src, &a, &pe);
    size_t lo, hi;
    prep_rank_block(src.n, g_dist.rank, g_dist.world, &lo, &hi);
    dist_barrier(); // a --strict stop in the checks above happens before any output exists

    char path[PATH_MAX];
    prep_shard_path(path, sizeof path, a.out, g_dist.rank, g_dist.world);
    H5Out o;
    prep_out_create(&o, path);
    H5Append audio;
    h5_append_open(&audio, o.file, "audio", a.use_float ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT16, 1,
                   NULL, CHUNK_SAMPLES, 0);
    size_t m = hi - lo + 1;
    int64_t *offsets = xalloc(sizeof(int64_t) * (m + 1), "offsets");
    int32_t *labels = xalloc(sizeof(int32_t) * m, "labels");
    const char **texts = xalloc(sizeof(char *) * m, "transcripts");
    size_t count = 0, clipped = 0;
    char err[1024];
    for (size_t i = lo; i < hi; i++) {
        AudioClip clip;
        if (source_get(&src, i, &a, &clip, err, sizeof err) < 0) {
            prep_bad_input(&pe, src.paths[i], "%s", err);
            continue;
        }
        if (a.use_float) {
            h5_append(&audio, clip.x, clip.n);
        } else {
            int16_t *pcm = xalloc(sizeof(int16_t) * clip.n, "int16 samples");
            clipped += audio_to_int16(clip.x, clip.n, pcm);
            h5_append(&audio, pcm, clip.n);
            free(pcm);
        }
        if (src.label) labels[count] = src.label[i];
        if (src.transcripts) texts[count] = src.transcripts[i];
        offsets[count + 1] = offsets[count] + (int64_t)clip.n;
        count++;
        audio_free(&clip);
    }
    h5_append_close(&audio);
    hsize_t n_off[1] = {count + 1}, n_utt[1] = {count};
    h5_write(o.file, "offsets", H5T_NATIVE_INT64, 1, n_off, NULL, offsets);
    if (src.label) h5_write(o.file, "labels", H5T_NATIVE_INT32, 1, n_utt, NULL, labels);
    if (src.names)
        h5_write_strings(o.file, "label_names", (const char *const *)src.names, src.n_names);
    if (src.transcripts) h5_write_strings(o.file, "transcripts", texts, count);
    h5_write_root_attrs(o.file, "speech", "shard", (int64_t)count, CREATED_BY);
    h5_attr_i32(o.file, "sample_rate", RATE);
    h5_attr_str(o.file, "sample_format", a.use_float ? "float32" : "int16");
    double sums[2] = {(double)count, (double)offsets[count]};
    free(offsets), free(labels), free(texts);

    prep_report_skipped(&pe);
    double n_clipped = (double)clipped;
    dist_allreduce_sum_f64(&n_clipped, 1);
    if (n_clipped > 0) log0("clipped %.0f samples to the int16 range\n", n_clipped);
    dist_allreduce_sum_f64(sums, 2);
    if (sums[0] == 0) {
        prep_out_discard();
        dist_barrier();
        if (g_dist.rank == 0) die("%s: no usable utterances (all inputs were bad)", a.out);
        dist_barrier(); // the other ranks wait here until rank 0's abort ends the job
    }
    prep_out_commit(&o);
    prep_write_index(a.out, "speech", CREATED_BY, (int64_t)count);
    log0("%s: %.0f utterances, %.1f s of audio at %d Hz (%s)\n", a.out, sums[0], sums[1] / RATE,
         RATE, a.use_float ? "float32" : "int16");
    source_close(&src);
    dist_finalize();
    return 0;
}
