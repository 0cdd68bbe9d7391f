#!/bin/sh
# script_configs.sh: every shipped configs/*.cfg passes d2v-train --check-config on 2 ranks
# against a fixture dataset of its modality and opens with its one-line header; a misspelt key
# is refused naming the file and line (the negative control).
set -u
build=${1:-build/release}
dir=$(mktemp -d /tmp/d2v-configs.XXXXXX)
trap 'rm -rf "$dir"' EXIT
. tests/lib.sh
train="$build/bin/d2v-train"
prep_fmnist "$dir/image.h5" || bad "d2v-prep-image"
"$build/bin/d2v-prep-text" --vocab-size 512 --split-blank -o "$dir/text.h5" tests/fixtures/text \
    >"$dir/prep.log" 2>&1 || bad "d2v-prep-text: $(tail -1 "$dir/prep.log")"
"$build/bin/d2v-prep-speech" --tree tests/fixtures/speech -o "$dir/speech.h5" >"$dir/prep.log" 2>&1 ||
    bad "d2v-prep-speech: $(tail -1 "$dir/prep.log")"
n=0
for c in configs/*.cfg; do
    n=$((n + 1))
    m=$(sed -n 's/^modality = "\([a-z]*\)";.*/\1/p' "$c")
    out=$("$train" "$c" --check-config --ranks 2 --set data.train="$dir/$m.h5" 2>&1)
    rc=$?
    [ $rc -eq 0 ] && echo "$out" | grep -q "^config ok: $c " && ok "$c ($m)" ||
        bad "$c: rc $rc: $(echo "$out" | tail -1)"
    head -1 "$c" | grep -q "^# $(basename "$c"): ." || bad "$c: no '# $(basename "$c"): ...' header"
done
[ $n -ge 27 ] && ok "$n configs checked" || bad "only $n configs under configs/"
sed 's/^model: { layers = /model: { layerz = /' configs/image-tiny.cfg >"$dir/bad.cfg"
err=$("$train" "$dir/bad.cfg" --check-config --ranks 2 --set data.train="$dir/image.h5" 2>&1)
rc=$?
line=$(grep -n "layerz" "$dir/bad.cfg" | cut -d: -f1)
[ $rc -eq 1 ] && [ "$err" = "d2v: error: $dir/bad.cfg:$line: unknown key 'model.layerz'" ] &&
    ok "negative control: a misspelt key is refused: $err" || bad "bad key: rc $rc, '$err'"
finish
