#!/bin/sh
# script_trainer_guards.sh: d2v-train's user-facing failure paths on real (fixture) data: config
# errors name file, line and key; a missing dataset names the file; the collapse guard and the
# non-finite guard stop with their messages (or skip and count, when configured); --help works.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
dir=$(mktemp -d /tmp/d2v-guards.XXXXXX)
trap 'rm -rf "$dir"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
train="$build/bin/d2v-train"

# expect LABEL PATTERN CMD...: the command fails, and its one-line error matches PATTERN
expect() {
    label=$1 pattern=$2
    shift 2
    out=$("$@" 2>&1 >/dev/null)
    rc=$?
    line=$(echo "$out" | grep '^d2v: error:' | head -n 1)
    if [ $rc -ne 0 ] && echo "$line" | grep -qE -- "$pattern"; then ok "$label: $line"; else
        bad "$label (exit $rc): $out"
    fi
}

"$build/bin/d2v-prep-image" --idx-images tests/fixtures/fmnist-t500-images-idx3.gz \
    --idx-labels tests/fixtures/fmnist-t500-labels-idx1.gz -o "$dir/fm.h5" >/dev/null
cfg=configs/image-tiny.cfg
common="--set data.train=$dir/fm.h5 --set data.batch_size=8"

printf 'model: { layers = 2;\n  layrs = 3; };\n' >"$dir/unknown.cfg"
expect "unknown key" "unknown.cfg:2: unknown key 'model.layrs'" "$train" "$dir/unknown.cfg"
printf 'model: { heads = "two"; };\n' >"$dir/type.cfg"
expect "wrong type" "type.cfg:1: key 'model.heads' should be an integer" "$train" "$dir/type.cfg"
printf 'optim: { lr = 50.0; };\n' >"$dir/range.cfg"
expect "out of range" "range.cfg:1: key 'optim.lr' = 50 is out of range" "$train" "$dir/range.cfg"
printf 'model: { layers = 2 \n' >"$dir/syntax.cfg"
expect "syntax error" "syntax.cfg:[0-9]+: syntax error" "$train" "$dir/syntax.cfg"
expect "missing config" "nope.cfg: cannot read" "$train" "$dir/nope.cfg"
expect "bad --set" "--set: unknown key 'optim.lrr'" "$train" $cfg --set optim.lrr=1
expect "cross-key check" "model.width 64 is not a multiple of model.heads 3" \
    "$train" $cfg $common --set model.heads=3
expect "missing dataset" "$dir/none.h5: no such file" "$train" $cfg --set data.train=$dir/none.h5
[ ! -e runs/unknown ] && [ ! -e runs/type ] && ok "no run directory made for a bad config" ||
    bad "a bad config created a run directory"

expect "collapse guard" "representation collapse at update 2: target_var .* lower optim.lr" \
    "$train" $cfg $common --set run.collapse_after=2 --set run.min_target_var=100 \
    --set run.max_updates=5 --run-dir "$dir/run-collapse"

# a float32 speech set with one utterance of NaNs: refused when the loader reads it, naming it
"$build/bin/d2v-prep-speech" --tree tests/fixtures/speech --float -o "$dir/sp.h5" >/dev/null
cp "$dir/sp.h5" "$dir/nan.h5"
/usr/bin/python3 - "$dir/nan.h5" "$dir/sp.h5" <<'PY'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    o = f["offsets"][:]
    f["audio"][o[0]:o[1]] = np.nan
# finite samples the conv extractor overflows on (3e38 of alternating sign): the loss turns
# non-finite, unnormalised
with h5py.File(sys.argv[2], "r+") as f:
    o = f["offsets"][:]
    f["audio"][o[0]:o[1]] = 3e38 * (1 - 2 * (np.arange(o[1] - o[0]) % 2))
PY
expect "NaN audio" "nan.h5: utterance 0 holds a non-finite sample" \
    "$train" configs/speech-tiny.cfg --set data.train=$dir/nan.h5 --set run.max_updates=10 \
    --set data.batch_size=8 --run-dir "$dir/run-nanaudio"
sp="--set data.train=$dir/sp.h5 --set run.max_updates=10 --set data.batch_size=8"
sp="$sp --set data.speech_normalize=false"
expect "non-finite guard" "non-finite loss at update [0-9]+: loss -?nan" \
    "$train" configs/speech-tiny.cfg $sp --run-dir "$dir/run-nan"
out=$("$train" configs/speech-tiny.cfg $sp --set run.skip_nonfinite=true \
    --run-dir "$dir/run-skip" 2>&1)
if [ $? -eq 0 ] && echo "$out" | grep -q "skipped: non-finite"; then
    ok "run.skip_nonfinite skips and counts: $(echo "$out" | grep -c 'skipped: non-finite') update(s)"
else bad "run.skip_nonfinite: $out"; fi

"$train" --help | grep -q "usage: d2v-train" && ok "--help" || bad "--help"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
