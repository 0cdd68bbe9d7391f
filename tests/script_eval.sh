#!/bin/sh
# script_eval.sh: d2v-eval on text: pretrain text-tiny on the Moby-Dick fixture (its own BPE
# vocabulary), embed a labelled set tokenised with that vocabulary (paragraphs of two groups of
# chapters), and probe; a vocabulary mismatch is refused naming the file.
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
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
