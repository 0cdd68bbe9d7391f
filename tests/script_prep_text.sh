#!/bin/sh
# script_prep_text.sh: d2v-prep-text end to end on Moby-Dick chapters (tests/fixtures/text): the
# same documents for 1, 2 and 3 ranks, decoded documents equal to the files, the index, loading
# the saved vocab.json/merges.txt, document splitting, labels from folders, bad inputs (skipped
# with a count, or a non-zero exit under --strict) and an existing output left untouched.
# Each check's condition is a single-quoted string evaluated later by check() (hence SC2016/2034).
# shellcheck disable=SC2016,SC2034
set -u
build=${1:-build/release}
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
prep=$build/bin/d2v-prep-text
fix=tests/fixtures/text/moby-dick
py=/usr/bin/python3
tmp=$(mktemp -d /tmp/script_prep_text.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
run() { np=$1; shift; mpirun --oversubscribe -np "$np" "$prep" "$@"; }

# h5py checker: "digest F" prints the documents' hash over shards; "index F K" checks the index;
# "decode F FILE..." compares decoded documents with the files; "docs F" prints documents (repr)
# and labels; "labels F" prints the labels and label names.
cat >"$tmp/check.py" <<'EOF'
import hashlib, os, sys
import h5py, numpy as np

def b2u():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return {chr(c): b for b, c in zip(bs, cs)}

def attr(f, k):
    v = f.attrs[k]
    return v.decode() if isinstance(v, bytes) else v

def shards(path):
    f = h5py.File(path, "r")
    if attr(f, "kind") == "index":
        d = os.path.dirname(path)
        return [h5py.File(os.path.join(d, s.decode()), "r") for s in f["shards"][:]]
    return [f]

def docs(path):
    out = []
    for s in shards(path):
        t, o = s["tokens"][:], s["doc_offsets"][:]
        lab = s["labels"][:] if "labels" in s else [None] * (len(o) - 1)
        out += [(t[o[i]:o[i + 1]], lab[i]) for i in range(len(o) - 1)]
    return out

def decode(path):
    s = shards(path)[0]
    vocab = [v.decode() for v in s["tokenizer/vocab"][:]]
    dec = b2u()
    toks = [bytes(dec[c] for c in v) if all(c in dec for c in v) else v.encode() for v in vocab]
    return [b"".join(toks[i] for i in d) for d, _ in docs(path)]

cmd, path = sys.argv[1], sys.argv[2]
if cmd == "digest":
    h = hashlib.sha1()
    for d, lab in docs(path):
        h.update(d.astype("<i4").tobytes() + b"|" + str(lab).encode())
    f = h5py.File(path, "r")
    a = {k: f.attrs[k] for k in ("num_samples", "vocab_size", "mask_id", "bos_id", "unk_id")}
    print(len(docs(path)), h.hexdigest(), a["num_samples"], a["vocab_size"], a["mask_id"],
          a["bos_id"], a["unk_id"], attr(f, "tokenizer"), attr(f, "modality"))
elif cmd == "index":
    f = h5py.File(path, "r")
    names = [s.decode() for s in f["shards"][:]]
    counts = [int(shards_f.attrs["num_samples"]) for shards_f in shards(path)]
    stem = os.path.basename(path)[:-3]
    want = ["%s.shard-%05d-of-%05d.h5" % (stem, r, int(sys.argv[3])) for r in range(int(sys.argv[3]))]
    good = (names == want and list(f["shard_samples"][:]) == counts and
            sum(counts) == f.attrs["num_samples"] and attr(f, "kind") == "index")
    print("ok" if good else "bad index: %s %s" % (names, counts))
elif cmd == "decode":
    got = decode(path)
    want = [open(p, "rb").read() for p in sys.argv[3:]]
    print("ok" if got == want else "decoded %d documents, %d files; first difference at %s" % (
        len(got), len(want), next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), None)))
elif cmd == "labels":
    print([int(l) for _, l in docs(path)], [s.decode() for s in shards(path)[0]["label_names"][:]])
elif cmd == "docs":
    print(repr([d.decode("utf-8", "replace") for d in decode(path)]),
          [None if l is None else int(l) for _, l in docs(path)],
          [s.decode() for s in shards(path)[0]["label_names"][:]] if "label_names" in shards(path)[0] else "")
EOF

check "--help exits 0 and documents the options" \
    '"$prep" --help | grep -q -- "--vocab-size N" && "$prep" --help | grep -q -- "--split-on"'

# 1, 2, 3 ranks train the same vocabulary and write the same documents in the same order.
files=$(find "$fix" -name '*.txt' | LC_ALL=C sort) # the fixture names have no spaces
run 1 --vocab-size 800 --save-tokenizer "$tmp/tok" --out "$tmp/np1.h5" "$fix" >"$tmp/log1" 2>&1 ||
    { bad "1 rank"; cat "$tmp/log1"; }
d1=$($py "$tmp/check.py" digest "$tmp/np1.h5")
echo "np1: $d1"
check "9 documents, vocab_size 800, <mask> = 799, <s> = 0, <unk> = 3" \
    'echo "$d1" | grep -q "^9 [0-9a-f]* 9 800 799 0 3 byte-bpe text$"'
# shellcheck disable=SC2086
r=$($py "$tmp/check.py" decode "$tmp/np1.h5" $files)
check "decoded documents equal the input files (sorted order): $r" '[ "$r" = ok ]'
for k in 2 3; do
    run $k --vocab-size 800 --out "$tmp/np$k.h5" "$fix" >"$tmp/log$k" 2>&1 || { bad "$k ranks"; cat "$tmp/log$k"; }
    dk=$($py "$tmp/check.py" digest "$tmp/np$k.h5")
    check "$k ranks: same documents as 1 rank" '[ "$dk" = "$d1" ]'
    r=$($py "$tmp/check.py" index "$tmp/np$k.h5" $k)
    check "$k ranks: the index lists the $k shards and their counts ($r)" '[ "$r" = ok ]'
done

# The saved vocab.json + merges.txt reproduce the trained tokenizer.
run 2 --vocab "$tmp/tok/vocab.json" --merges "$tmp/tok/merges.txt" --out "$tmp/load.h5" "$fix" \
    >"$tmp/logl" 2>&1 || { bad "load vocab.json"; cat "$tmp/logl"; }
dl=$($py "$tmp/check.py" digest "$tmp/load.h5")
check "loading the saved vocab.json/merges.txt gives the same documents" '[ "$dl" = "$d1" ]'

# Splitting: separator lines (fortune style) and blank lines; empty documents are dropped.
printf 'first\n%%\nsecond line\nand more\n%%\n%%\n  \n%%\nlast\n%%\n' >"$tmp/fortunes"
printf '\n\npara one\nstill one\n\n \t\npara two\r\n\r\npara three' >"$tmp/paras.txt"
run 1 --vocab "$tmp/tok/vocab.json" --merges "$tmp/tok/merges.txt" --split-on % \
    --out "$tmp/f.h5" "$tmp/fortunes" >/dev/null 2>&1
r=$($py "$tmp/check.py" docs "$tmp/f.h5")
check "--split-on %: 3 documents ($r)" \
    '[ "$r" = "['"'"'first'"'"', '"'"'second line\\nand more'"'"', '"'"'last'"'"'] [None, None, None] " ]'
run 1 --vocab "$tmp/tok/vocab.json" --merges "$tmp/tok/merges.txt" --split-blank \
    --out "$tmp/p.h5" "$tmp/paras.txt" >/dev/null 2>&1
r=$($py "$tmp/check.py" docs "$tmp/p.h5")
check "--split-blank: 3 paragraphs ($r)" \
    '[ "$r" = "['"'"'para one\\nstill one'"'"', '"'"'para two'"'"', '"'"'para three'"'"'] [None, None, None] " ]'

# Labels from folder names (like SpamAssassin's ham/spam), with --ext filtering directories.
mkdir -p "$tmp/lab/spam" "$tmp/lab/ham"
cp "$fix/chapter_1.txt" "$tmp/lab/spam/a.txt"
cp "$fix/chapter_2.txt" "$tmp/lab/ham/b.txt"
cp "$fix/chapter_4.txt" "$tmp/lab/ham/c.txt"
cp "$fix/chapter_5.txt" "$tmp/lab/ham/c.json"
run 2 --vocab "$tmp/tok/vocab.json" --merges "$tmp/tok/merges.txt" --labels-from-dirs --ext .txt \
    --out "$tmp/lab.h5" "$tmp/lab" >/dev/null 2>&1
r=$($py "$tmp/check.py" labels "$tmp/lab.h5")
check "--labels-from-dirs: labels [0, 0, 1], names [ham, spam] ($r)" \
    '[ "$r" = "[0, 0, 1] ['"'"'ham'"'"', '"'"'spam'"'"']" ]'

# Bad inputs: a missing file and an empty file are named, skipped and counted.
: >"$tmp/empty.txt"
run 2 --vocab-size 600 --out "$tmp/skip.h5" "$fix/chapter_1.txt" "$tmp/missing.txt" \
    "$fix/chapter_2.txt" "$tmp/empty.txt" >"$tmp/logs" 2>&1
rc=$?
cat "$tmp/logs"
check "bad inputs are skipped: exit 0" '[ $rc -eq 0 ]'
check "the missing file is named on one line" \
    '[ "$(grep -c "^d2v: skipping $tmp/missing.txt: No such file" "$tmp/logs")" = 1 ]'
check "the empty file is named on one line" \
    '[ "$(grep -c "^d2v: skipping $tmp/empty.txt: empty file" "$tmp/logs")" = 1 ]'
check "the skipped files are counted" 'grep -q "skipped 2 bad input(s)" "$tmp/logs"'
r=$($py "$tmp/check.py" digest "$tmp/skip.h5" | cut -d" " -f1)
check "the good files are kept (2 documents)" '[ "$r" = 2 ]'
mkdir -p "$tmp/links"
cp "$fix/chapter_5.txt" "$tmp/links/a.txt"
ln -s "$tmp/gone.txt" "$tmp/links/b.txt"
run 1 --vocab "$tmp/tok/vocab.json" --merges "$tmp/tok/merges.txt" --out "$tmp/links.h5" \
    "$tmp/links" >"$tmp/logd" 2>&1
check "a dangling link in a directory is named and skipped" \
    'grep -q "^d2v: skipping $tmp/links/b.txt: No such file" "$tmp/logd" && [ -f "$tmp/links.h5" ]'
if [ "$(id -u)" != 0 ]; then
    printf 'secret\n' >"$tmp/noread.txt" && chmod 000 "$tmp/noread.txt"
    run 1 --vocab-size 600 --out "$tmp/nr.h5" "$fix/chapter_1.txt" "$tmp/noread.txt" >"$tmp/lognr" 2>&1
    check "an unreadable file is named and skipped" \
        'grep -q "^d2v: skipping $tmp/noread.txt: cannot read" "$tmp/lognr"'
else
    echo "note: running as root, so no file is unreadable: that case is not checked"
fi

# --strict: a bad input stops the job (any rank count) and the existing output stays as it was.
cp "$tmp/np1.h5" "$tmp/keep.h5"
cp "$tmp/np1.h5" "$tmp/keep2.h5"
sum_before=$(cksum <"$tmp/keep.h5")
for k in 1 2; do
    out=$tmp/keep.h5
    [ $k = 2 ] && out=$tmp/keep2.h5
    run $k --strict --vocab-size 600 --out "$out" "$fix" "$tmp/empty.txt" >"$tmp/logst" 2>&1
    rc=$?
    check "--strict on $k rank(s): non-zero exit ($rc)" '[ $rc -ne 0 ]'
    check "--strict on $k rank(s): one error line naming the empty file" \
        '[ "$(grep -c "^d2v: error: .*$tmp/empty.txt: empty file (--strict)" "$tmp/logst")" = 1 ]'
    check "--strict on $k rank(s): the existing output is untouched" \
        '[ "$(cksum <"$out")" = "$sum_before" ]'
done
run 2 --strict --vocab "$tmp/tok/vocab.json" --merges "$tmp/tok/merges.txt" --out "$tmp/keep2.h5" \
    "$fix" "$tmp/missing.txt" >"$tmp/logst" 2>&1
rc=$?
check "--strict with a missing file (loaded vocab, 2 ranks): non-zero exit naming it" \
    '[ $rc -ne 0 ] && grep -q "$tmp/missing.txt: No such file" "$tmp/logst"'
check "... and the existing index is untouched" '[ "$(cksum <"$tmp/keep2.h5")" = "$sum_before" ]'
run 1 --vocab "$tmp/nope.json" --merges "$tmp/tok/merges.txt" --out "$tmp/keep.h5" "$fix" \
    >"$tmp/logv" 2>&1
rc=$?
check "a missing vocab.json fails naming it, output untouched" \
    '[ $rc -ne 0 ] && grep -q "$tmp/nope.json" "$tmp/logv" && [ "$(cksum <"$tmp/keep.h5")" = "$sum_before" ]'
check "no temporary files are left behind" '[ -z "$(ls "$tmp" | grep "\.tmp\.")" ]'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
