/* bpe.h: byte-level BPE as in GPT-2 / RoBERTa: the byte-to-unicode alphabet, GPT-2's
 * pre-tokenizer, vocabulary training, GPT-2 vocab.json + merges.txt and d2v HDF5 (/tokenizer)
 * input and output, cached encoding, and decoding. */
#ifndef D2V_BPE_H
#define D2V_BPE_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

/// Special tokens. Trained vocabularies use RoBERTa's ids <s>=0, <pad>=1, </s>=2, <unk>=3 and
/// give <mask> the last id; loaded ones keep the ids of their vocab.json.
enum { BPE_BOS, BPE_PAD, BPE_EOS, BPE_UNK, BPE_MASK, BPE_N_SPECIAL };
extern const char *const bpe_special_names[BPE_N_SPECIAL]; // "<s>", "<pad>", "</s>", ...

typedef struct BpeIndex BpeIndex; // lookup tables, decoded token bytes and the encode cache

typedef struct {
    int32_t n_vocab;
    char **vocab; // (n_vocab) token strings in the byte-to-unicode alphabet, UTF-8
    int32_t n_merges;
    int32_t *merges;                // (n_merges, 3) left id, right id, merged id; rank order
    int32_t special[BPE_N_SPECIAL]; // ids of <s>, <pad>, </s>, <unk>, <mask>
    int32_t byte_id[256];           // token of each byte; -1 if missing (encodes as <unk>)
    BpeIndex *index;
} Bpe;

/// The token string of one byte in GPT-2's byte-to-unicode alphabet (e.g. ' ' -> "Ġ").
const char *bpe_byte_token(int byte);

/// End of the pre-token that starts at pos (< len): GPT-2's split
/// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
/// on bytes; an invalid UTF-8 byte counts as one character of the [^\s\p{L}\p{N}] class.
size_t bpe_pretok_next(const char *text, size_t len, size_t pos);

/* ---- training ---- */

typedef struct BpeCounts BpeCounts; // pre-token (word) frequencies of a corpus
BpeCounts *bpe_counts_alloc(void);
/// Count the pre-tokens of one document (words never span two calls).
void bpe_counts_add(BpeCounts *c, const char *text, size_t len);
/// Distinct words counted so far.
size_t bpe_counts_words(const BpeCounts *c);
void bpe_counts_free(BpeCounts *c);

/// Learn merges until the vocabulary has vocab_size tokens (4 specials, 256 bytes, merges,
/// <mask>) or no pair is left: each step merges the most frequent adjacent pair, ties going to the
/// smaller (left id, right id). Returns 0, or -1 with err.
int bpe_train(Bpe *b, const BpeCounts *c, int32_t vocab_size, char *err, size_t errlen);

/* ---- building, loading and saving ---- */

/// Build from token strings (in id order) and "left right" merge strings (in rank order); `src`
/// names the origin in messages. Copies its inputs. Returns 0, or -1 with err.
int bpe_init_strings(Bpe *b, const char *const *vocab, int32_t n_vocab, const char *const *merges,
                     int32_t n_merges, const int32_t special[BPE_N_SPECIAL], const char *src,
                     char *err, size_t errlen);
/// Load a GPT-2 / RoBERTa vocab.json + merges.txt; special tokens missing from vocab.json are
/// appended in the order <s>, <pad>, </s>, <unk>, <mask>. Returns 0, or -1 with err.
int bpe_load_gpt2(Bpe *b, const char *vocab_json, const char *merges_txt, char *err, size_t errlen);
/// Write vocab.json and merges.txt (each under a temporary name, then renamed).
int bpe_save_gpt2(const Bpe *b, const char *vocab_json, const char *merges_txt, char *err,
                  size_t errlen);
/// Write /tokenizer/vocab, /tokenizer/merges and the root attributes vocab_size, bos_id, eos_id,
/// pad_id, unk_id, mask_id and tokenizer = "byte-bpe" (docs/datasets.md). Dies on HDF5 errors.
void bpe_write_h5(const Bpe *b, hid_t file);
/// Read what bpe_write_h5 wrote; `path` names the file in messages. Returns 0, or -1 with err.
int bpe_read_h5(Bpe *b, hid_t file, const char *path, char *err, size_t errlen);
/// Serialise for a broadcast (malloc'd; free it), and rebuild from that buffer.
char *bpe_pack_alloc(const Bpe *b, size_t *len);
int bpe_unpack(Bpe *b, const char *buf, size_t len, char *err, size_t errlen);
void bpe_free(Bpe *b);

/* ---- encoding and decoding ---- */

typedef struct {
    int32_t *ids;
    size_t n, cap;
} BpeIds;
void bpe_ids_free(BpeIds *v);

/// Append the token ids of text[0..len) to out. Any bytes are accepted (invalid UTF-8 included);
/// no special tokens are added, and text such as "<s>" is encoded as ordinary bytes. Words are
/// cached, so `b` is modified (one Bpe per thread).
void bpe_encode(Bpe *b, const char *text, size_t len, BpeIds *out);
/// The bytes of ids[0..n) (special tokens as their names) into buf, up to cap bytes; *len gets
/// the full length. Returns 0, or -1 when an id is out of range.
int bpe_decode(const Bpe *b, const int32_t *ids, size_t n, char *buf, size_t cap, size_t *len);

#endif
