#!/bin/sh
# script_probe.sh: the evaluation tools end to end on the 500-image Fashion-MNIST fixture:
# pretrain image-tiny briefly, d2v-extract student / random-init / raw features, d2v-probe them
# (every variant, the JSON report, the same result for the same seed, the kNN of d2v-eval to
# the digit), its refusals (no labels, different models, different widths, a missing variant,
# not a features file), and d2v-plot of the run.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d /tmp/d2v-probe.XXXXXX)
trap 'rm -rf "$dir"' EXIT
. tests/lib.sh
bin=$build/bin
fx=tests/fixtures

"$bin/d2v-prep-image" --idx-images $fx/fmnist-t500-images-idx3.gz \
    --idx-labels $fx/fmnist-t500-labels-idx1.gz -o "$dir/fm.h5" >/dev/null 2>&1
"$bin/d2v-prep-image" --idx-images $fx/fmnist-t500-images-idx3.gz -o "$dir/nolabels.h5" \
    >/dev/null 2>&1
"$bin/d2v-train" configs/image-tiny.cfg --set data.train="$dir/fm.h5" --set run.max_updates=6 \
    --set run.log_every=2 --set data.prefetch=0 --run-dir "$dir/run" >/dev/null 2>&1 ||
    bad "d2v-train for the probe tests"
"$bin/d2v-extract" "$dir/run" --data "$dir/fm.h5" -o "$dir/s.h5" --quiet >/dev/null 2>&1
"$bin/d2v-extract" "$dir/run" --random-init --data "$dir/fm.h5" -o "$dir/r.h5" --quiet \
    >/dev/null 2>&1
"$bin/d2v-extract" --raw --data "$dir/fm.h5" -o "$dir/raw.h5" --quiet >/dev/null 2>&1
"$bin/d2v-extract" --raw --data "$dir/nolabels.h5" -o "$dir/raw-nolabels.h5" --quiet \
    >/dev/null 2>&1
[ -f "$dir/s.h5" ] && [ -f "$dir/r.h5" ] && [ -f "$dir/raw.h5" ] && [ -f "$dir/raw-nolabels.h5" ] &&
    ok "d2v-extract: student, random-init and raw features" || bad "d2v-extract outputs missing"

# every variant of the student; the report; the same seed, the same numbers
out=$("$bin/d2v-probe" "$dir/s.h5" "$dir/s.h5" --seed 5 --json "$dir/a.json" 2>&1)
echo "$out"
n=$(echo "$out" | grep -cE '^(mean_final|mean_norm|cls|mean_lastk) +64 ')
[ "$n" -eq 4 ] && ok "d2v-probe: four variants of width 64" || bad "d2v-probe variants: $out"
"$bin/d2v-probe" "$dir/s.h5" "$dir/s.h5" --seed 5 --json "$dir/b.json" >/dev/null 2>&1
cmp -s "$dir/a.json" "$dir/b.json" && ok "the same seed gives the same report, byte for byte" ||
    bad "two runs with --seed 5 differ"
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
v = r["variants"]
assert [x["variant"] for x in v] == ["mean_final", "mean_norm", "cls", "mean_lastk"], v
for x in v:
    assert 0 <= x["linear_top1"] <= 1 and 0 <= x["knn_top1"] <= 1 and x["dim"] == 64
    assert len(x["l2_grid"]) == 7 and x["l2"] in [g["l2"] for g in x["l2_grid"]]
    assert x["fit_samples"] + x["heldout_samples"] == 500
assert r["train"]["network"] == "student" and r["train"]["step"] == 6 and r["classes"] == 10
' "$dir/a.json" && ok "the JSON report: variants, accuracies, the L2 grid, the split, the model" ||
    bad "the JSON report"
# the kNN probe is d2v-eval's: the same accuracy on the same features
knn=$(echo "$out" | awk '$1 == "mean_final" { print $5 }')
ev=$("$bin/d2v-eval" "$dir/run" --train "$dir/fm.h5" --test "$dir/fm.h5" 2>/dev/null |
    sed -n 's/.*top-1 accuracy \([0-9.]*%\).*/\1/p')
[ -n "$knn" ] && [ "$knn" = "$ev" ] && ok "mean_final kNN $knn = d2v-eval's $ev" ||
    bad "kNN: d2v-probe '$knn', d2v-eval '$ev'"
out=$("$bin/d2v-probe" "$dir/raw.h5" "$dir/raw.h5" --max-iter 40 2>&1)
echo "$out" | grep -qE '^raw +784 ' && ok "raw pixels probed (784 wide)" || bad "raw probe: $out"

# refusals: one line naming the file, a non-zero exit
refused() { # what, expected text, command...
    what=$1 want=$2
    shift 2
    msg=$("$@" 2>&1)
    rc=$?
    lines=$(echo "$msg" | wc -l)
    if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && echo "$msg" | grep -qF -- "$want"; then
        ok "$what: $msg"
    else
        bad "$what (rc $rc): $msg"
    fi
}
refused "features without labels" "$dir/raw-nolabels.h5: has no /labels" \
    "$bin/d2v-probe" "$dir/raw-nolabels.h5" "$dir/raw.h5"
refused "train and test of different models" "$dir/s.h5 and $dir/r.h5: features of different models" \
    "$bin/d2v-probe" "$dir/s.h5" "$dir/r.h5"
refused "a missing variant" "$dir/raw.h5: no feature variant 'mean_norm'" \
    "$bin/d2v-probe" "$dir/raw.h5" "$dir/raw.h5" --variant mean_norm
refused "not a features file" "$dir/fm.h5: not a d2v features file" \
    "$bin/d2v-probe" "$dir/fm.h5" "$dir/s.h5"
# the same model, one variant of another width (a file edited by hand)
cp "$dir/s.h5" "$dir/narrow.h5"
/usr/bin/python3 -c '
import sys, h5py
with h5py.File(sys.argv[1], "a") as f:
    x = f["cls"][:, :10]
    del f["cls"]
    f["cls"] = x
' "$dir/narrow.h5" && refused "train and test of different widths" "$dir/narrow.h5: variant 'cls' is 10 wide" \
    "$bin/d2v-probe" "$dir/s.h5" "$dir/narrow.h5" --variant cls
refused "an existing output" "$dir/s.h5: already exists" \
    "$bin/d2v-extract" "$dir/run" --data "$dir/fm.h5" -o "$dir/s.h5" --quiet

# the training curves
out=$("$bin/d2v-plot" "$dir/run" 2>&1)
sig=$(head -c 8 "$dir/run/metrics.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')
[ "$sig" = "89504e470d0a1a0a" ] && ok "d2v-plot: $out" || bad "d2v-plot: $out"

finish
