#!/bin/sh
# script_demo.sh: a smoke run of every make-demo path (scripts/demo.sh, image, speech and text) on
# the committed fixtures with the tiny configs and a training budget of a few seconds (speech on 2
# MPI ranks, the others on 1): each must exit 0, print its table and leave the run, the features,
# the plot and a JSON report that parses with three rows and a gain. And d2v-report on hand-made
# probe reports: the best variant of each side and the gain, refusals of a file that is not a
# probe report and of a missing run.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d /tmp/d2v-demo.XXXXXX)
trap 'rm -rf "$dir"' EXIT
. tests/lib.sh
bin=$build/bin
fx=tests/fixtures

# ---- d2v-report on reports whose best variants are known ----
mkrep() { # FILE NETWORK then "variant linear knn" triples
    f=$1 net=$2
    shift 2
    {
        printf '{ "train": { "samples": 90, "network": "%s" }, "test": { "samples": 10 },' "$net"
        printf ' "classes": 3, "variants": ['
        sep=""
        while [ $# -ge 3 ]; do
            printf '%s{ "variant": "%s", "linear_top1": %s, "knn_top1": %s }' "$sep" "$1" "$2" "$3"
            sep=", "
            shift 3
        done
        printf '] }\n'
    } >"$f"
}
mkdir -p "$dir/fake"
echo '{"update": 10, "samples_per_s": 100.0}' >"$dir/fake/metrics.jsonl"
echo '{"update": 30, "samples_per_s": 50.0}' >>"$dir/fake/metrics.jsonl"
mkrep "$dir/a.json" student mean_final 0.70 0.60 mean_norm 0.80 0.55 cls 0.75 0.65
mkrep "$dir/b.json" random-init mean_final 0.50 0.52 mean_norm 0.55 0.40 cls 0.60 0.45
out=$("$bin/d2v-report" "$dir/fake" --probe pretrained="$dir/a.json" --probe random-init="$dir/b.json" \
    --time train=12 --json "$dir/r.json" 2>&1)
echo "$out"
# 30 updates: 10 at 100/s and 20 at 50/s, so 30 / (0.1 + 0.4) = 60 samples/s
echo "$out" | grep -q '^pretrained  *80.0% mean_norm  *65.0% cls ' &&
    echo "$out" | grep -q '^random-init  *60.0% cls  *52.0% mean_final ' &&
    echo "$out" | grep -q 'linear +20.0 points, kNN +13.0 points' &&
    echo "$out" | grep -q '30 updates at 60.0 samples/s; train 12 s' &&
    ok "d2v-report: the best variant of each side, named; the gain; updates and mean rate" ||
    bad "d2v-report table: $out"
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert [x["name"] for x in r["rows"]] == ["pretrained", "random-init"], r
assert r["rows"][0]["linear_variant"] == "mean_norm" and r["rows"][1]["knn_variant"] == "mean_final"
assert abs(r["gain"]["linear_points"] - 20) < 1e-9 and r["updates"] == 30 and r["wall_s"]["train"] == 12
' "$dir/r.json" && ok "d2v-report: the JSON report" || bad "d2v-report JSON"
# negative controls: a wrong best (the gain line must not claim +10), not a probe report, no run
echo "$out" | grep -q 'linear +10.0 points' && bad "d2v-report: the check above cannot fail" ||
    ok "d2v-report: a wrong gain is not matched"
echo '{"variants": 3}' >"$dir/bad.json"
err=$("$bin/d2v-report" "$dir/fake" --probe x="$dir/bad.json" 2>&1) &&
    bad "d2v-report accepted a file that is not a probe report" ||
    { echo "$err" | grep -q "bad.json" && ok "d2v-report refuses a non-report, naming it: $err" ||
        bad "d2v-report refusal: $err"; }
err=$("$bin/d2v-report" "$dir/none" --probe x="$dir/a.json" 2>&1) &&
    bad "d2v-report accepted a missing run" ||
    { echo "$err" | grep -q "none/metrics.jsonl" && ok "d2v-report refuses a missing run: $err" ||
        bad "d2v-report refusal: $err"; }

# ---- the demo paths on the fixtures ----
"$bin/d2v-prep-image" --idx-images $fx/fmnist-t500-images-idx3.gz \
    --idx-labels $fx/fmnist-t500-labels-idx1.gz -o "$dir/fm.h5" >/dev/null 2>&1
"$bin/d2v-prep-speech" --tree $fx/speech -o "$dir/sp.h5" >/dev/null 2>&1
mkdir -p "$dir/tx/a" "$dir/tx/b"
cp $fx/text/moby-dick/chapter_1.txt $fx/text/moby-dick/chapter_2.txt "$dir/tx/a/"
cp $fx/text/moby-dick/chapter_42.txt $fx/text/moby-dick/chapter_135.txt "$dir/tx/b/"
"$bin/d2v-prep-text" --vocab-size 400 --save-tokenizer "$dir/tok" -o "$dir/tp.h5" \
    $fx/text/moby-dick >/dev/null 2>&1
"$bin/d2v-prep-text" --vocab "$dir/tok/vocab.json" --merges "$dir/tok/merges.txt" --split-blank \
    --labels-from-dirs -o "$dir/tl.h5" "$dir/tx" >/dev/null 2>&1
[ -f "$dir/fm.h5" ] && [ -f "$dir/sp.h5" ] && [ -f "$dir/tp.h5" ] && [ -f "$dir/tl.h5" ] &&
    ok "fixture datasets for the demo paths" || bad "fixture datasets"

for mod in image speech text; do
    case $mod in
    image) pre=$dir/fm.h5 tr=$dir/fm.h5 te=$dir/fm.h5 secs=3 ranks=1 ;;
    speech) pre=$dir/sp.h5 tr=$dir/sp.h5 te=$dir/sp.h5 secs=8 ranks=2 ;; # 10 timed updates of ~0.15 s (more under ASan)
    text) pre=$dir/tp.h5 tr=$dir/tl.h5 te=$dir/tl.h5 secs=3 ranks=1 ;;
    esac
    run=$dir/run-$mod
    out=$(DEMO_CONFIG=configs/$mod-tiny.cfg DEMO_RUN="$run" DEMO_PRETRAIN="$pre" \
        DEMO_SETS="smoke:$tr:$te" DEMO_TRAIN_SECONDS=$secs DEMO_RANKS=$ranks \
        scripts/demo.sh "$build" $mod --set run.log_every=1 --set data.prefetch=0 2>&1)
    rc=$?
    echo "$out" | tail -n 9
    [ $rc -eq 0 ] && ok "demo $mod: exit 0" || bad "demo $mod: exit $rc: $out"
    echo "$out" | grep -qE '^pretrained +[0-9.]+% ' && echo "$out" | grep -qE '^random-init +[0-9.]+% ' &&
        echo "$out" | grep -qE '^raw-input +[0-9.]+% raw ' && echo "$out" | grep -q ' over random-init: linear ' &&
        ok "demo $mod: the table (pretrained, random init, raw input, gain)" ||
        bad "demo $mod: no table"
    n=0
    for f in metrics.png metrics.jsonl train.log report-smoke.json probe-smoke-student.json \
        probe-smoke-random-init.json probe-smoke-raw.json features/smoke-student-test.h5 \
        features/smoke-random-init-train.h5 features/smoke-raw-test.h5; do
        [ -s "$run/$f" ] && n=$((n + 1)) || echo "missing $run/$f"
    done
    [ $n -eq 10 ] && ok "demo $mod: plot, metrics, log, reports and features left behind" ||
        bad "demo $mod: $n of 10 outputs"
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert [x["name"] for x in r["rows"]] == ["pretrained", "random-init", "raw-input"], r
assert r["rows"][2]["linear_variant"] == "raw" and r["updates"] >= 1 and r["samples_per_s"] > 0
assert all(0 <= x["linear_top1"] <= 1 and 0 <= x["knn_top1"] <= 1 for x in r["rows"])
assert set(r["wall_s"]) == {"train", "eval", "total"} and r["gain"]["over"] == "random-init"
' "$run/report-smoke.json" && ok "demo $mod: the JSON report parses" || bad "demo $mod: JSON report"
done
out=$(scripts/demo.sh "$build" sound 2>&1) && bad "demo accepted MODALITY=sound" ||
    { echo "$out" | grep -q "MODALITY must be" && ok "demo refuses an unknown modality" ||
        bad "demo refusal: $out"; }

finish
