#!/bin/sh
# tta.sh (make tta): time to accuracy of data2vec 1.0 against 2.0 on Fashion-MNIST (or on the
# spoken digits, TTA_MODALITY=speech: held-out voices as the probe's test split). For each
# wall-time budget, each recipe pretrains from scratch with run.max_time = budget (its LR and tau
# schedules planned for that budget), then the frozen student is probed (d2v-extract, d2v-probe:
# linear and kNN). Prints one table row per budget and the budget at which v2 first reaches v1's
# accuracy at the largest budget (linear interpolation between budgets). docs/performance.md §5.
# Usage: bench/tta.sh BUILD [OUT_DIR]; TTA_BUDGETS (seconds, ascending, default "60 120 240 480"),
# TTA_V1 / TTA_V2 (configs, default configs/image-tta-p4-v1.cfg and configs/image-tta-p4-v2.cfg: the
# same 4 x 128 encoder over 49 patches; configs/image-tta-v{1,2}.cfg are the 16-patch pair; speech:
# configs/speech-demo.cfg and configs/speech-demo-v2.cfg), TTA_RANKS
# (default the online cores: one MPI rank per core, one thread each, as make demo runs; docs/demo.md §1),
# TTA_TRAIN / TTA_TEST (the pretraining and probe-training split, and the probe's test split).
set -eu
build=${1:-build/release}
out=${2:-runs/tta}
budgets=${TTA_BUDGETS:-60 120 240 480}
case ${TTA_MODALITY:-image} in
image)
    v1=${TTA_V1:-configs/image-tta-p4-v1.cfg} v2=${TTA_V2:-configs/image-tta-p4-v2.cfg}
    train=data/fmnist-train.h5 test=data/fmnist-test.h5 make=data-image
    ;;
speech)
    v1=${TTA_V1:-configs/speech-demo.cfg} v2=${TTA_V2:-configs/speech-demo-v2.cfg}
    train=data/digits-train.h5 test=data/digits-eval.h5 make=data-speech
    ;;
*) echo "tta: TTA_MODALITY must be image or speech, not '$TTA_MODALITY'" >&2 && exit 1 ;;
esac
train=${TTA_TRAIN:-$train} test=${TTA_TEST:-$test}
for f in "$train" "$test" "$v1" "$v2"; do
    [ -f "$f" ] || { echo "tta: $f: missing (make $make makes the datasets)" >&2; exit 1; }
done
if [ -e "$out" ]; then
    echo "tta: $out exists; not overwritten (remove it or pass another OUT_DIR)" >&2
    exit 1
fi
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# getconf, not nproc: nproc reports OMP_NUM_THREADS when it is set
cores=$(getconf _NPROCESSORS_ONLN)
ranks=${TTA_RANKS:-$cores}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} BLIS_NUM_THREADS=${BLIS_NUM_THREADS:-1}
mpi() { mpirun --oversubscribe -np "$ranks" -x OMP_NUM_THREADS -x BLIS_NUM_THREADS "$@"; }
echo "== time to accuracy: $v1 (v1) against $v2 (v2), budgets $budgets s, $ranks ranks x $OMP_NUM_THREADS thread"
echo "   $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
# probe RUN [random-init]: "linear knn variant" of the best linear variant of the student (of
# the same architecture untrained with random-init); fails when any step does
probe() {
    tag=${2:+-$2}
    for split in train test; do
        data=$train
        [ $split = test ] && data=$test
        mpi "$build/bin/d2v-extract" "$1" ${2:+--$2} --data "$data" -o "$1/feat$tag-$split.h5" \
            --quiet >/dev/null || return 1
    done
    OMP_NUM_THREADS=$cores BLIS_NUM_THREADS=$cores "$build/bin/d2v-probe" "$1/feat$tag-train.h5" \
        "$1/feat$tag-test.h5" --json "$1/probe$tag.json" >"$1/probe$tag.txt" || return 1
    awk '$3 ~ /%$/ { l = $3 + 0; if (l > best) { best = l; k = $5 + 0; v = $1 } }
         END { if (v == "") exit 1; printf "%.2f %.2f %s\n", best, k, v }' "$1/probe$tag.txt"
}
rows=$out/table.txt
: >"$rows"
for b in $budgets; do
    line="$b"
    for mode in v1 v2; do
        cfg=$v1
        [ $mode = v2 ] && cfg=$v2
        run=$out/$mode-$b
        mpi "$build/bin/d2v-train" "$cfg" --set run.max_time=$b --set data.train=$train \
            --run-dir "$run" >"$run.log" 2>&1 || { echo "tta: $run failed (see $run.log)" >&2; exit 1; }
        ups=$(sed -n 's/^done: update \([0-9]*\) .*/\1/p' "$run.log")
        p=$(probe "$run") || { echo "tta: probing $run failed (see $run/probe.txt)" >&2; exit 1; }
        line="$line $ups $p"
    done
    echo "$line" >>"$rows"
done
awk 'BEGIN { printf "   %7s | %7s %8s %6s | %7s %8s %6s\n", "budget", "v1 upd", "linear", "kNN",
             "v2 upd", "linear", "kNN" }
     { printf "   %6ds | %7d %7.2f%% %5.2f%% | %7d %7.2f%% %5.2f%%\n", $1, $2, $3, $4, $6, $7, $8
       b[NR] = $1; a1[NR] = $3; a2[NR] = $7; k1[NR] = $4; k2[NR] = $8 }
     END { reach("linear probe", a1, a2); reach("kNN", k1, k2) }
     # t2(goal): the budget at which v2 first reaches goal (interpolated between budgets; the
     # smallest budget, an upper bound, when v2 is there already), -1 if it never does
     function t2(v2, goal,    i) {
           for (i = 1; i <= NR; i++)
               if (v2[i] >= goal)
                   return i == 1 ? b[1] : b[i - 1] + (b[i] - b[i - 1]) * (goal - v2[i - 1]) / (v2[i] - v2[i - 1])
           return -1 }
     # two readings: v1'"'"'s accuracy at the largest budget (the issue'"'"'s), and v1'"'"'s best at any
     # budget against the budget it first got there (robust to a noisy last point)
     function reach(name, v1, v2,    at, best, bi, i) {
           at = t2(v2, v1[NR])
           if (at < 0) printf "   %s: v2 did not reach v1'"'"'s %.2f%% (at %d s) within %d s\n", name, v1[NR], b[NR], b[NR]
           else printf "   %s: v2 reaches v1'"'"'s %.2f%% (at %d s) after %s%.0f s: %.2fx the time\n",
                       name, v1[NR], b[NR], at == b[1] ? "at most " : "about ", at, at / b[NR]
           bi = 1
           for (i = 2; i <= NR; i++) if (v1[i] > v1[bi]) bi = i
           at = t2(v2, v1[bi])
           if (at < 0) printf "   %s: v2 did not reach v1'"'"'s best, %.2f%% (at %d s), within %d s\n", name, v1[bi], b[bi], b[NR]
           else printf "   %s: v2 reaches v1'"'"'s best, %.2f%% (at %d s), after %s%.0f s: %.2fx the time\n",
                       name, v1[bi], b[bi], at == b[1] ? "at most " : "about ", at, at / b[bi] }' "$rows" | tee "$out/summary.txt"
# The untrained networks, for scale: the two recipes' architectures differ (v2 is post-LN with
# fixed positions), so they start from different accuracies (docs/performance.md §5).
last=${budgets##* }
for mode in v1 v2; do
    p=$(probe "$out/$mode-$last" random-init) ||
        { echo "tta: probing $out/$mode-$last at random init failed" >&2; exit 1; }
    set -- $p
    echo "   $mode at random init (the same network untrained): $1% linear ($3), $2% kNN" |
        tee -a "$out/summary.txt"
done
echo "   runs, features and probe reports in $out/"
