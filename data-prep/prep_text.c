/* prep_text.c: d2v-prep-text: UTF-8 text files to byte-level BPE token shards (docs/datasets.md):
 * rank 0 trains (or loads) the tokenizer and broadcasts it, then every rank encodes a contiguous
 * block of the sorted file list into its own shard. */
#define _XOPEN_SOURCE 700 // realpath
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bpe.h"
#include "d2v/dist.h"
#include "d2v/h5io.h"
#include "d2v/util.h"
#include "prep_common.h"

#define CREATED_BY "d2v-prep-text 1"
#define TOKEN_CHUNK 65536     // /tokens chunk (int32s): 256 KiB
#define TOKEN_FLUSH (1 << 20) // tokens buffered per append
#define MAX_DEPTH 64          // directory nesting limit (guards against symlink loops)

static void usage(void) {
    printf(
        "usage: d2v-prep-text [options] --out OUT.h5 (--vocab-size N | --vocab vocab.json --merges "
        "merges.txt) INPUT...\n"
        "Tokenizes UTF-8 text with byte-level BPE (GPT-2 / RoBERTa) into a text dataset\n"
        "(docs/datasets.md): /tokens, /doc_offsets, /tokenizer/{vocab,merges}, optional /labels.\n"
        "\n"
        "inputs: files and directories, in the order given; a directory contributes every regular\n"
        "file below it (hidden names skipped), sorted by path. Each file is one document unless\n"
        "split:\n"
        "  --split-blank          documents are runs of non-blank lines (paragraphs)\n"
        "  --split-on LINE        documents are separated by lines equal to LINE (e.g. %%)\n"
        "  --ext .txt[,.md...]    from directories, take only files with these extensions\n"
        "  --labels-from-dirs     label = name of each file's parent directory (/labels,\n"
        "                         /label_names: the sorted distinct names)\n"
        "  --min-doc-tokens N     drop documents with fewer than N tokens (default 1)\n"
        "tokenizer (one of):\n"
        "  --vocab-size N         train a vocabulary of N tokens on the inputs (rank 0), ids\n"
        "                         <s>=0 <pad>=1 </s>=2 <unk>=3, 256 bytes, merges, <mask> last\n"
        "  --train-max-mb M       train on the first M MB of the input list only (whole files,\n"
        "                         in input order; default: all of it)\n"
        "  --vocab FILE --merges FILE\n"
        "                         load a GPT-2/RoBERTa vocab.json + merges.txt; special tokens\n"
        "                         missing from it are appended (<mask> last)\n"
        "  --save-tokenizer DIR   also write DIR/vocab.json and DIR/merges.txt\n"
        "output:\n"
        "  -o, --out FILE         output file; under mpirun -n N > 1, FILE is an index listing N\n"
        "                         shards FILE-without-.h5.shard-RRRRR-of-NNNNN.h5\n"
        "  --strict               stop at the first bad input instead of skipping it\n"
        "\n"
        "Any bytes are valid text (byte-level BPE encodes invalid UTF-8 byte by byte and decodes\n"
        "it back exactly), so the bad inputs are files that are missing, unreadable, directories\n"
        "given where a file was expected, or empty (0 bytes): each is named on stderr and skipped\n"
        "with a count, or stops the job under --strict. Split documents exclude the separator\n"
        "lines and the final line break; documents that are empty or all whitespace after\n"
        "splitting are dropped. Documents are in input order for any number of ranks; outputs are\n"
        "written under a temporary name and renamed only when every rank succeeded.\n");
}

typedef struct {
    const char *out, *vocab, *merges, *save_dir, *split_on, *exts;
    int vocab_size, split_blank, labels, strict;
    long min_doc_tokens;
    double train_max_mb;
    char **inputs;
    int n_inputs;
} TextArgs;

static long parse_long(const char *s, const char *opt, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        die("%s %s: expected an integer in %ld..%ld", opt, s, lo, hi);
    return v;
}

static void parse_args(int argc, char **argv, TextArgs *a) {
    memset(a, 0, sizeof *a);
    a->min_doc_tokens = 1;
    a->inputs = xalloc(sizeof(char *) * (size_t)(argc + 1), "input list");
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (o[0] != '-' || !strcmp(o, "-")) {
            a->inputs[a->n_inputs++] = argv[i];
            continue;
        }
        if (!strcmp(o, "--")) {
            while (++i < argc)
                a->inputs[a->n_inputs++] = argv[i];
            break;
        }
        if (!strcmp(o, "--strict")) {
            a->strict = 1;
            continue;
        }
        if (!strcmp(o, "--split-blank")) {
            a->split_blank = 1;
            continue;
        }
        if (!strcmp(o, "--labels-from-dirs")) {
            a->labels = 1;
            continue;
        }
        if (i + 1 >= argc) die("%s: missing value (see --help)", o);
        const char *v = argv[++i];
        if (!strcmp(o, "-o") || !strcmp(o, "--out"))
            a->out = v;
        else if (!strcmp(o, "--vocab-size"))
            a->vocab_size = (int)parse_long(v, o, BPE_N_SPECIAL + 256, 1 << 24);
        else if (!strcmp(o, "--vocab"))
            a->vocab = v;
        else if (!strcmp(o, "--merges"))
            a->merges = v;
        else if (!strcmp(o, "--save-tokenizer"))
            a->save_dir = v;
        else if (!strcmp(o, "--split-on"))
            a->split_on = v;
        else if (!strcmp(o, "--ext"))
            a->exts = v;
        else if (!strcmp(o, "--min-doc-tokens"))
            a->min_doc_tokens = parse_long(v, o, 0, 1L << 40);
        else if (!strcmp(o, "--train-max-mb"))
            a->train_max_mb = (double)parse_long(v, o, 1, 1L << 30);
        else
            die("%s: unknown option (see --help)", o);
    }
    if (!a->out) die("no output file: give --out OUT.h5 (see --help)");
    if (a->n_inputs == 0) die("no inputs: give text files or directories (see --help)");
    if (!!a->vocab_size + !!(a->vocab || a->merges) != 1)
        die("give exactly one tokenizer: --vocab-size N, or --vocab FILE with --merges FILE");
    if (!!a->vocab != !!a->merges) die("--vocab and --merges go together");
    if (a->train_max_mb && !a->vocab_size) die("--train-max-mb goes with --vocab-size");
    if (a->split_blank && a->split_on) die("give one of --split-blank and --split-on");
    if (a->split_on && (!*a->split_on || strchr(a->split_on, '\n')))
        die("--split-on: the separator must be one non-empty line");
}

/* ---- the input list ---- */

typedef struct {
    size_t n, cap;
    char **paths;
} FileList;

static void list_push(FileList *l, const char *path) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->paths = realloc(l->paths, l->cap * sizeof(char *));
        if (!l->paths) die("out of memory listing input files");
    }
    l->paths[l->n] = strdup(path);
    if (!l->paths[l->n++]) die("out of memory listing input files");
}

static int has_ext(const char *name, const char *exts) {
    if (!exts) return 1;
    size_t n = strlen(name);
    for (const char *p = exts; *p;) {
        size_t e = strcspn(p, ",");
        if (e && n > e && strncasecmp(name + n - e, p, e) == 0) return 1;
        p += e + (p[e] == ',');
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file below dir, depth first with the entries of each directory sorted. */
static void list_dir(FileList *l, const char *dir, const char *exts, int depth) {
    if (depth > MAX_DEPTH) die("%s: directories nested deeper than %d (symlink loop?)", dir, depth);
    DIR *d = opendir(dir);
    if (!d) die("%s: cannot list directory: %s", dir, strerror(errno));
    FileList names = {0};
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') list_push(&names, e->d_name);
    closedir(d);
    qsort(names.paths, names.n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < names.n; i++) {
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", dir, names.paths[i]) >= (int)sizeof p)
            die("%s/%s: path too long", dir, names.paths[i]);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            list_dir(l, p, exts, depth + 1);
        else if (stat(p, &st) != 0 || (S_ISREG(st.st_mode) && has_ext(names.paths[i], exts)))
            list_push(l, p); // a dangling link stays, to be reported as a bad input
        free(names.paths[i]);
    }
    free(names.paths);
}

/* Name of the directory holding path: its last directory component as written, resolved with
 * realpath only when that is "." or ".." or absent. */
static void parent_name(const char *path, char *out, size_t n) {
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        dir[--len] = '\0';
    const char *base = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    if (!strcmp(base, ".") || !strcmp(base, "..") || !*base) {
        char *real = realpath(dir, NULL);
        if (real) {
            const char *b = strrchr(real, '/');
            snprintf(out, n, "%s", b && b[1] ? b + 1 : real);
            free(real);
            return;
        }
    }
    snprintf(out, n, "%s", base);
}

/* ---- documents ---- */

typedef struct {
    size_t off, len;
} Span;

static int all_space(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n\v\f", s[i])) return 0;
    return 1;
}

/* The documents of one file's text: the whole text, or the runs of lines between separator lines
 * (blank lines, or lines equal to sep), each without its final line break. */
static size_t split_docs(const char *buf, size_t n, const TextArgs *a, Span **spans, size_t *cap) {
    size_t k = 0;
    if (!a->split_blank && !a->split_on) {
        if (*cap < 1) *spans = realloc(*spans, sizeof(Span)), *cap = 1;
        if (!*spans) die("out of memory splitting documents");
        (*spans)[0] = (Span){0, n};
        return 1;
    }
    size_t sep_len = a->split_on ? strlen(a->split_on) : 0, start = 0, end = 0;
    int open = 0;
    for (size_t ls = 0; ls <= n;) {
        const char *nl = ls < n ? memchr(buf + ls, '\n', n - ls) : NULL;
        size_t le = nl ? (size_t)(nl - buf) : n, ce = le;
        if (ce > ls && buf[ce - 1] == '\r') ce--;
        int at_end = ls == n, sep;
        if (a->split_blank) {
            sep = 1;
            for (size_t i = ls; i < ce && sep; i++)
                sep = buf[i] == ' ' || buf[i] == '\t';
        } else {
            sep = ce - ls == sep_len && !memcmp(buf + ls, a->split_on, sep_len);
        }
        if ((sep || at_end) && open) {
            if (!all_space(buf + start, end - start)) {
                if (k == *cap) {
                    *cap = *cap ? 2 * *cap : 64;
                    *spans = realloc(*spans, *cap * sizeof(Span));
                    if (!*spans) die("out of memory splitting documents");
                }
                (*spans)[k++] = (Span){start, end - start};
            }
            open = 0;
        }
        if (at_end) break;
        if (!sep) {
            if (!open) start = ls, open = 1;
            end = ce;
        }
        ls = nl ? le + 1 : n;
    }
    return k;
}

/* Whole file into memory (NUL-terminated); NULL with err on failure. */
static char *read_file(const char *path, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        snprintf(err, errlen, "is a directory");
        return NULL;
    }
    size_t cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0;) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    if (!buf) die("%s: out of memory reading the file", path);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        snprintf(err, errlen, "read error: %s", strerror(errno));
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Why path cannot be a document source, or NULL: checked before any output exists, so a --strict
 * stop leaves nothing behind. */
static const char *precheck(const char *path, char *why, size_t n) {
    struct stat st;
    if (stat(path, &st) != 0)
        snprintf(why, n, "%s", strerror(errno));
    else if (S_ISDIR(st.st_mode))
        snprintf(why, n, "is a directory");
    else if (access(path, R_OK) != 0)
        snprintf(why, n, "cannot read: %s", strerror(errno));
    else if (S_ISREG(st.st_mode) && st.st_size == 0)
        snprintf(why, n, "empty file");
    else
        return NULL;
    return why;
}

/* ---- tokenizer: trained or loaded on rank 0, then broadcast ---- */

static void tokenizer_train(Bpe *b, const TextArgs *a, const FileList *fl, PrepErrors *pe) {
    double t0 = now_seconds(), max_bytes = a->train_max_mb * 1e6, bytes = 0;
    BpeCounts *c = bpe_counts_alloc();
    Span *spans = NULL;
    size_t cap = 0, files = 0, docs = 0;
    for (size_t i = 0; i < fl->n && (max_bytes == 0 || bytes < max_bytes); i++) {
        char err[512];
        size_t len = 0;
        char *text = read_file(fl->paths[i], &len, err, sizeof err);
        // Bad inputs are reported by the rank that encodes them; here only --strict stops.
        if (!text || len == 0) {
            if (pe->strict) prep_bad_input(pe, fl->paths[i], "%s", text ? "empty file" : err);
            free(text);
            continue;
        }
        size_t n = split_docs(text, len, a, &spans, &cap);
        for (size_t d = 0; d < n; d++)
            bpe_counts_add(c, text + spans[d].off, spans[d].len);
        bytes += (double)len, files++, docs += n;
        free(text);
    }
    free(spans);
    double t1 = now_seconds();
    char err[512];
    if (bpe_train(b, c, a->vocab_size, err, sizeof err) < 0) die("%s", err);
    printf("trained %d tokens (%d merges) on %.1f MB (%zu files, %zu documents, %zu distinct "
           "words): counting %.1f s, merging %.1f s\n",
           b->n_vocab, b->n_merges, bytes / 1e6, files, docs, bpe_counts_words(c), t1 - t0,
           now_seconds() - t1);
    bpe_counts_free(c);
}

static void tokenizer_setup(Bpe *b, const TextArgs *a, const FileList *fl, PrepErrors *pe) {
    char err[1024];
    char *buf = NULL;
    uint64_t len = 0;
    if (g_dist.rank == 0) {
        if (a->vocab_size) {
            tokenizer_train(b, a, fl, pe);
        } else {
            if (bpe_load_gpt2(b, a->vocab, a->merges, err, sizeof err) < 0) die("%s", err);
            printf("loaded %d tokens and %d merges from %s and %s\n", b->n_vocab, b->n_merges,
                   a->vocab, a->merges);
        }
        if (a->save_dir) {
            char vj[PATH_MAX], mt[PATH_MAX];
            if (mkdir(a->save_dir, 0777) != 0 && errno != EEXIST)
                die("%s: cannot create directory: %s", a->save_dir, strerror(errno));
            if (snprintf(vj, sizeof vj, "%s/vocab.json", a->save_dir) >= (int)sizeof vj ||
                snprintf(mt, sizeof mt, "%s/merges.txt", a->save_dir) >= (int)sizeof mt)
                die("%s: path too long", a->save_dir);
            if (bpe_save_gpt2(b, vj, mt, err, sizeof err) < 0) die("%s", err);
            printf("wrote %s and %s\n", vj, mt);
        }
        size_t n;
        buf = bpe_pack_alloc(b, &n);
        len = n;
    }
    fflush(stdout);
    if (g_dist.world == 1) {
        free(buf);
        return;
    }
    dist_bcast_bytes(&len, sizeof len);
    if (g_dist.rank != 0) buf = xalloc(len, "broadcast tokenizer");
    dist_bcast_bytes(buf, len);
    if (g_dist.rank != 0 && bpe_unpack(b, buf, len, err, sizeof err) < 0) die("%s", err);
    free(buf);
}

/* ---- main ---- */

int main(int argc, char **argv) {
    prep_start(&argc, &argv, usage);
    TextArgs a;
    parse_args(argc, argv, &a);
    PrepErrors pe = {a.strict, 0};

    FileList fl = {0};
    for (int i = 0; i < a.n_inputs; i++) {
        struct stat st;
        if (stat(a.inputs[i], &st) == 0 && S_ISDIR(st.st_mode))
            list_dir(&fl, a.inputs[i], a.exts, 0);
        else
            list_push(&fl, a.inputs[i]); // missing files are reported when encoded
    }
    if (fl.n == 0) die("no input files found (check the paths and --ext)");

    // Labels: the sorted distinct parent directory names of the whole list (same on every rank).
    char **file_dir = NULL, **label_names = NULL; // (fl.n) owned; (n_labels) views of file_dir
    int32_t *file_label = NULL;
    size_t n_labels = 0;
    if (a.labels) {
        file_dir = xalloc(sizeof(char *) * fl.n, "label names");
        label_names = xalloc(sizeof(char *) * fl.n, "label names");
        for (size_t i = 0; i < fl.n; i++) {
            char name[PATH_MAX];
            parent_name(fl.paths[i], name, sizeof name);
            if (!(file_dir[i] = strdup(name))) die("out of memory listing labels");
            label_names[i] = file_dir[i];
        }
        qsort(label_names, fl.n, sizeof(char *), cmp_str);
        for (size_t i = 0; i < fl.n; i++)
            if (i == 0 || strcmp(label_names[i], label_names[n_labels - 1]))
                label_names[n_labels++] = label_names[i];
        file_label = xalloc(sizeof(int32_t) * fl.n, "file labels");
        for (size_t i = 0; i < fl.n; i++) {
            char **hit = bsearch(&file_dir[i], label_names, n_labels, sizeof(char *), cmp_str);
            file_label[i] = (int32_t)(hit - label_names);
        }
    }

    Bpe bpe;
    tokenizer_setup(&bpe, &a, &fl, &pe);

    size_t lo, hi;
    prep_rank_block(fl.n, g_dist.rank, g_dist.world, &lo, &hi);
    unsigned char *bad = xalloc(hi - lo + 1, "input flags");
    for (size_t i = lo; i < hi; i++) {
        char why[512];
        if (precheck(fl.paths[i], why, sizeof why)) {
            prep_bad_input(&pe, fl.paths[i], "%s", why);
            bad[i - lo] = 1;
        }
    }
    dist_barrier(); // a --strict stop in the checks above happens before any output exists

    char path[PATH_MAX];
    prep_shard_path(path, sizeof path, a.out, g_dist.rank, g_dist.world);
    H5Out o;
    prep_out_create(&o, path);
    H5Append tokens;
    h5_append_open(&tokens, o.file, "tokens", H5T_NATIVE_INT32, 1, NULL, TOKEN_CHUNK, 0);
    int64_t *offsets = NULL;
    int32_t *labels = NULL;
    size_t n_docs = 0, doc_cap = 0, dropped = 0, span_cap = 0;
    Span *spans = NULL;
    BpeIds ids = {0};
    double bytes = 0, enc_seconds = 0;
    int64_t n_tokens = 0;
    for (size_t i = lo; i < hi; i++) {
        if (bad[i - lo]) continue;
        char err[512];
        size_t len = 0;
        char *text = read_file(fl.paths[i], &len, err, sizeof err);
        if (!text || len == 0) {
            prep_bad_input(&pe, fl.paths[i], "%s", text ? "empty file" : err);
            free(text);
            continue;
        }
        size_t nd = split_docs(text, len, &a, &spans, &span_cap);
        for (size_t d = 0; d < nd; d++) {
            size_t start = ids.n; // ids buffers the tokens not yet appended to /tokens
            double t0 = now_seconds();
            bpe_encode(&bpe, text + spans[d].off, spans[d].len, &ids);
            enc_seconds += now_seconds() - t0;
            bytes += (double)spans[d].len;
            size_t n = ids.n - start;
            if ((long)n < a.min_doc_tokens) {
                ids.n = start, dropped++;
                continue;
            }
            if (n_docs == doc_cap) {
                doc_cap = doc_cap ? 2 * doc_cap : 1024;
                offsets = realloc(offsets, (doc_cap + 1) * sizeof *offsets);
                labels = realloc(labels, doc_cap * sizeof *labels);
                if (!offsets || !labels) die("out of memory: %zu documents", doc_cap);
            }
            offsets[n_docs] = n_tokens;
            if (a.labels) labels[n_docs] = file_label[i];
            n_tokens += (int64_t)n;
            n_docs++;
            if (ids.n >= TOKEN_FLUSH) h5_append(&tokens, ids.ids, ids.n), ids.n = 0;
        }
        free(text);
    }
    h5_append(&tokens, ids.ids, ids.n);
    h5_append_close(&tokens);
    if (!offsets) offsets = xalloc(sizeof *offsets, "document offsets");
    offsets[n_docs] = n_tokens;
    hsize_t dims[1] = {n_docs + 1};
    h5_write(o.file, "doc_offsets", H5T_NATIVE_INT64, 1, dims, NULL, offsets);
    if (a.labels) {
        dims[0] = n_docs;
        h5_write(o.file, "labels", H5T_NATIVE_INT32, 1, dims, NULL, labels);
        h5_write_strings(o.file, "label_names", (const char *const *)label_names, n_labels);
    }
    bpe_write_h5(&bpe, o.file);
    h5_write_root_attrs(o.file, "text", "shard", (int64_t)n_docs, CREATED_BY);

    prep_report_skipped(&pe);
    double tot[5] = {(double)n_docs, (double)n_tokens, bytes, enc_seconds, (double)dropped};
    dist_allreduce_sum_f64(tot, 5);
    if (tot[0] == 0) {
        prep_out_discard();
        dist_barrier();
        if (g_dist.rank == 0)
            die("%s: no documents to write (all inputs were bad or empty)", a.out);
        dist_barrier(); // the other ranks wait here until rank 0's abort ends the job
    }
    prep_out_commit(&o);
    prep_write_index(a.out, "text", CREATED_BY, (int64_t)n_docs);
    if (tot[4] > 0)
        log0("dropped %.0f document(s) with fewer than %ld tokens\n", tot[4], a.min_doc_tokens);
    log0("encoded %.1f MB into %.0f documents, %.0f tokens (%.2f bytes/token) at %.1f MB/s per "
         "rank\n",
         tot[2] / 1e6, tot[0], tot[1], tot[2] / (tot[1] > 0 ? tot[1] : 1),
         tot[2] / 1e6 / (tot[3] > 0 ? tot[3] : 1e-9));
    if (g_dist.world == 1)
        printf("wrote %s: %zu documents, %lld tokens, vocabulary %d\n", a.out, n_docs,
               (long long)n_tokens, bpe.n_vocab);

    bpe_ids_free(&ids);
    free(spans), free(offsets), free(labels), free(bad), free(file_label);
    for (size_t i = 0; file_dir && i < fl.n; i++)
        free(file_dir[i]);
    free(file_dir), free(label_names);
    for (size_t i = 0; i < fl.n; i++)
        free(fl.paths[i]);
    free(fl.paths), free(a.inputs);
    bpe_free(&bpe);
    dist_finalize();
    return 0;
}
