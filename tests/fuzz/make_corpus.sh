#!/bin/sh
# make_corpus.sh: regenerates the seed corpora tests/fuzz/corpus/<target>/ from the repository's
# fixtures, with its own tools (run from the repository root after make all fuzz-build):
#   config   configs/*.cfg
#   dataset  d2v-prep-image/-text/-speech shards of a few fixture images, words and documents
#            (int16 and float32 speech), and fuzz_dataset's index files over its own shards
#   ckpt     fuzz_ckpt's checkpoints of its tiny model (with and without checksums)
#   bpe      tests/fixtures/bpe and a 300-token tokenizer trained on Moby-Dick (vocab.json, NUL,
#            merges.txt)
#   idx      the first 3 Fashion-MNIST images and labels, gzipped and plain
#   image    9 Fashion-MNIST images as PNG (every colour type) and JPEG
#   audio    20 ms cuts of fixture WAVs (16 and 22.05 kHz, 8 and 16 bits, mono and stereo)
#   h5edit   each of its 8 base files unedited, and 4 one-edit programs
#   safetensors  small files as transformers writes them (F32, F16, BF16 and I64 tensors)
# Usage: tests/fuzz/make_corpus.sh [BUILD [FUZZ_BUILD]]
set -eu
build=${1:-build/release}
fz=${2:-build/fuzz}
out=tests/fuzz/corpus
py="python3 -W ignore"
tmp=$(mktemp -d /tmp/d2v-corpus.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$out"
mkdir -p "$out/config" "$out/dataset" "$out/ckpt" "$out/bpe" "$out/idx" "$out/image" "$out/audio" \
    "$out/h5edit" "$out/safetensors"

cp configs/*.cfg "$out/config/"

# IDX: a header for n items, then the first n items of the fixture
idx_cut() { # FIXTURE DIMS-HEADER-BYTES ITEM-BYTES N OUT
    $py - "$1" "$2" "$3" "$4" "$5" <<'PY'
import gzip, struct, sys
src, hb, item, n, dst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
raw = gzip.open(src).read()
head = bytearray(raw[:hb]); head[4:8] = struct.pack(">I", n)
open(dst, "wb").write(bytes(head) + raw[hb:hb + n * item])
PY
}
idx_cut tests/fixtures/fmnist-t500-images-idx3.gz 16 784 3 "$out/idx/images3.idx"
idx_cut tests/fixtures/fmnist-t500-labels-idx1.gz 8 1 3 "$out/idx/labels3.idx"
gzip -9nc "$out/idx/images3.idx" > "$out/idx/images3.idx.gz"
gzip -9nc "$out/idx/labels3.idx" > "$out/idx/labels3.idx.gz"

# images: one of each kind test_prep_media writes
"$build/tests/test_prep_media" --write-tree "$tmp/tree" tests/fixtures/fmnist-t500-images-idx3.gz \
    tests/fixtures/fmnist-t500-labels-idx1.gz 9 >/dev/null
find "$tmp/tree" -type f | sort | while read -r f; do cp "$f" "$out/image/$(basename "$f")"; done

# audio: 20 ms cuts (the wave module writes plain PCM WAV)
$py - "$out/audio" <<'PY'
import sys, wave, audioop
out = sys.argv[1]
def cut(src, dst, width=2, channels=1):
    r = wave.open(src); rate = r.getframerate(); n = rate // 50
    r.readframes(rate // 10)  # skip the leading silence
    pcm = r.readframes(n)
    if width == 1: pcm = audioop.bias(audioop.lin2lin(pcm, 2, 1), 1, 128)
    if channels == 2: pcm = audioop.tostereo(pcm, width, 1, 0.5)
    w = wave.open(dst, "wb"); w.setnchannels(channels); w.setsampwidth(width)
    w.setframerate(rate); w.writeframes(pcm); w.close()
cut("tests/fixtures/speech/3/en-gb-scotland_m5.wav", out + "/three-16k.wav")
cut("tests/fixtures/speech/7/en-us_m1.wav", out + "/seven-22k.wav")
cut("tests/fixtures/speech/5/en-029_f1.wav", out + "/five-16k-8bit.wav", width=1)
cut("tests/fixtures/speech/9/en-gb_f4.wav", out + "/nine-22k-stereo.wav", channels=2)
PY

# tokenizers: vocab.json, NUL, merges.txt
cat_tok() { cat "$1/vocab.json"; printf '\0'; cat "$1/merges.txt"; }
cat_tok tests/fixtures/bpe > "$out/bpe/fixture"
"$build/bin/d2v-prep-text" --vocab-size 300 --save-tokenizer "$tmp/tok" --out "$tmp/moby.h5" \
    tests/fixtures/text/moby-dick/etymology.txt >/dev/null 2>&1
cat_tok "$tmp/tok" > "$out/bpe/moby-300"

# dataset shards through the prep tools
mkdir -p "$tmp/img"
idx_cut tests/fixtures/fmnist-t500-images-idx3.gz 16 784 4 "$tmp/img/i.idx"
idx_cut tests/fixtures/fmnist-t500-labels-idx1.gz 8 1 4 "$tmp/img/l.idx"
"$build/bin/d2v-prep-image" --idx-images "$tmp/img/i.idx" --idx-labels "$tmp/img/l.idx" \
    --class-names a,b,c,d,e,f,g,h,i,j --size 6 -o "$out/dataset/image-4.h5" >/dev/null
"$build/bin/d2v-prep-image" --idx-images "$tmp/img/i.idx" --size 4x5 --channels 3 \
    --deflate 6 -o "$out/dataset/image-rgb-deflate.h5" >/dev/null
mkdir -p "$tmp/docs/a" "$tmp/docs/b"
head -c 200 tests/fixtures/text/moby-dick/chapter_1.txt > "$tmp/docs/a/1.txt"
head -c 120 tests/fixtures/text/moby-dick/epilogue.txt > "$tmp/docs/b/2.txt"
# (h5repack: the tools' 64 Ki-entry chunks would make 100-300 KB seeds of a few hundred values)
"$build/bin/d2v-prep-text" --vocab tests/fixtures/bpe/vocab.json \
    --merges tests/fixtures/bpe/merges.txt --labels-from-dirs --out "$tmp/text.h5" \
    "$tmp/docs" >/dev/null 2>&1
h5repack -l /tokens:CHUNK=128 "$tmp/text.h5" "$out/dataset/text-2.h5"
mkdir -p "$tmp/sp/three" "$tmp/sp/seven"
cp "$out/audio/three-16k.wav" "$tmp/sp/three/" && cp "$out/audio/seven-22k.wav" "$tmp/sp/seven/"
"$build/bin/d2v-prep-speech" --tree "$tmp/sp" --quality fast -o "$tmp/sp.h5" >/dev/null
"$build/bin/d2v-prep-speech" --tree "$tmp/sp" --quality fast --float -o "$tmp/spf.h5" >/dev/null
h5repack -l /audio:CHUNK=256 "$tmp/sp.h5" "$out/dataset/speech-2.h5"
h5repack -l /audio:CHUNK=256 "$tmp/spf.h5" "$out/dataset/speech-2-float.h5"
D2V_FUZZ_SEEDS="$out/dataset" "$fz/fuzz_dataset" >/dev/null 2>&1
D2V_FUZZ_SEEDS="$out/ckpt" "$fz/fuzz_ckpt" >/dev/null 2>&1
# edit programs (fuzz_h5edit.c): base, then opcode and operands
for b in 0 1 2 3 4 5 6 7; do printf "\\$(printf %03o $b)" > "$out/h5edit/base-$b"; done
printf '\000\000\004\003\020' > "$out/h5edit/image-height-int64"
printf '\004\005\010\004\000' > "$out/h5edit/index-poke-count"
printf '\001\005\001\005\000' > "$out/h5edit/text-poke-token"
printf '\007\000\022\004\000' > "$out/h5edit/ckpt-update"
# safetensors: header length, JSON header (with __metadata__), little-endian data
$py - "$out/safetensors" <<'PY'
import json, struct, sys
import numpy as np
def write(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, dtype, a in tensors:
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
r = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
write(sys.argv[1] + "/f32.safetensors", [("embeddings.LayerNorm.weight", "F32", r[0, 0]),
      ("encoder.layer.0.attention.self.query.weight", "F32", r.reshape(4, 6))])
write(sys.argv[1] + "/f16.safetensors", [("a.weight", "F16", r.astype(np.float16)),
      ("b.bias", "F32", r[1, 2])])
bf = (r.view(np.uint32) >> 16).astype(np.uint16)
write(sys.argv[1] + "/bf16-i64.safetensors", [("w", "BF16", bf),
      ("relative_position_index", "I64", np.arange(9, dtype=np.int64).reshape(3, 3))])
write(sys.argv[1] + "/empty.safetensors", [])
PY
for d in "$out"/*; do
    echo "$(basename "$d"): $(ls "$d" | wc -l) seeds, $(du -sk "$d" | cut -f1) KB"
done
