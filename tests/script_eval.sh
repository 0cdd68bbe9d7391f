#!/bin/sh
# script_eval.sh: d2v-eval on text: pretrain text-tiny on the Moby-Dick fixture (its own BPE
# vocabulary), embed a labelled set tokenised with that vocabulary (paragraphs of two groups of
# chapters), and probe; a vocabulary mismatch, a label no class count can hold and non-finite
# weights are each refused with one line naming the file.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
dir=$(mktemp -d /tmp/d2v-eval.XXXXXX)
trap 'rm -rf "$dir"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
src=tests/fixtures/text/moby-dick
mkdir -p "$dir/groups/early" "$dir/groups/late"
for f in "$src"/chapter_1.txt "$src"/chapter_2.txt "$src"/chapter_3.txt; do cp "$f" "$dir/groups/early/"; done
for f in "$src"/chapter_42.txt "$src"/chapter_135.txt "$src"/epilogue.txt; do cp "$f" "$dir/groups/late/"; done
"$build/bin/d2v-prep-text" --vocab-size 600 --save-tokenizer "$dir/tok" --out "$dir/pre.h5" \
    "$src" >/dev/null 2>&1
"$build/bin/d2v-prep-text" --vocab "$dir/tok/vocab.json" --merges "$dir/tok/merges.txt" \
    --split-blank --labels-from-dirs --out "$dir/labelled.h5" "$dir/groups" >/dev/null 2>&1
"$build/bin/d2v-train" configs/text-tiny.cfg --set data.train="$dir/pre.h5" \
    --set run.max_updates=30 --run-dir "$dir/run" >/dev/null 2>&1
out=$("$build/bin/d2v-eval" "$dir/run" --train "$dir/labelled.h5" --test "$dir/labelled.h5" \
    --k 5 2>&1)
acc=$(echo "$out" | sed -n 's/.*top-1 accuracy \([0-9.]*\)%.*/\1/p')
[ -n "$acc" ] && ok "text kNN probe runs: $acc% (test = train)" || bad "text probe: $out"
"$build/bin/d2v-prep-text" --vocab-size 700 --split-blank --labels-from-dirs \
    --out "$dir/other.h5" "$dir/groups" >/dev/null 2>&1
out=$("$build/bin/d2v-eval" "$dir/run" --train "$dir/other.h5" --test "$dir/other.h5" 2>&1)
echo "$out" | grep -q "model.h5: tensor 0 is text.tok 600x32, this model has text.tok 700x32" &&
    ok "another vocabulary is refused: $(echo "$out" | grep error)" || bad "vocab mismatch: $out"
# The right train set but a test set of another vocabulary: its ids would index the model's
# embedding out of bounds; refused naming the file.
out=$("$build/bin/d2v-eval" "$dir/run" --train "$dir/labelled.h5" --test "$dir/other.h5" 2>&1 >/dev/null)
rc=$?
[ $rc -ne 0 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] &&
    echo "$out" | grep -q "other.h5: its vocabulary (700 tokens" &&
    ok "a test set of another vocabulary is refused: $out" || bad "test vocab (rc $rc): $out"
# A label of 2^31 - 1 and no /label_names: once a signed overflow of the class count and a 17 PB
# allocation; now refused naming the file.
/usr/bin/python3 - "$dir/labelled.h5" "$dir/biglabel.h5" <<'PY'
import shutil, sys, h5py
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    if "label_names" in f: del f["label_names"]
    lab = f["labels"][()]
    lab[0] = 2**31 - 1
    del f["labels"]
    f["labels"] = lab
PY
out=$("$build/bin/d2v-eval" "$dir/run" --train "$dir/biglabel.h5" --test "$dir/labelled.h5" 2>&1 >/dev/null)
rc=$?
[ $rc -ne 0 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] &&
    echo "$out" | grep -q "biglabel.h5: sample 0 has label 2147483647" &&
    ok "a label of 2^31 - 1 is refused: $out" || bad "label 2^31 - 1 (rc $rc): $out"
# All-NaN weights, with CRC32s that match them (a diverged run's checkpoint, not a damaged one):
# once "11.00%" and exit 0; now refused naming the file and tensor.
ck=$(ls -d "$dir"/run/ckpt/step_* | tail -n 1)/model.h5
/usr/bin/python3 - "$ck" "$dir/nan.h5" <<'PY'
import shutil, sys, zlib, h5py, numpy as np
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "r+") as f:
    p = f["params"][()]
    p[:] = np.nan
    f["params"][...] = p
    off, shp = f["param_offsets"][()], f["param_shapes"][()]
    crc = f["checksums"][()]
    for i in range(len(off)):
        n = int(np.prod([d for d in shp[i] if d >= 0]))
        crc[0, i] = zlib.crc32(p[off[i]:off[i] + n].astype("<f4").tobytes())
    f["checksums"][...] = crc
PY
out=$("$build/bin/d2v-eval" "$dir/nan.h5" --train "$dir/labelled.h5" --test "$dir/labelled.h5" 2>&1 >/dev/null)
rc=$?
[ $rc -ne 0 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] &&
    echo "$out" | grep -q "nan.h5: tensor text.tok of /params holds non-finite values" &&
    ok "all-NaN weights are refused: $out" || bad "NaN weights (rc $rc): $out"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
