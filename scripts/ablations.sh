#!/bin/bash
# ablations.sh: make ablations: the data2vec paper's image ablations (§5.4; configs/ablations/
# image.sweep) run locally, one variant after another, through the same jobs/sweep.sbatch the
# Slurm array runs: each pretrains configs/ablations/image.cfg on Fashion-MNIST for
# ABLATION_MINUTES (default 2) of wall time, then a linear and a kNN probe of its frozen
# mean-pooled features (first 10k training images -> the 10k test images). Prints the table and
# writes it into docs/ablations.md between its table markers, with the command. Each sweep gets
# a new directory (runs/ablations-DATE); ABLATION_DIR=DIR of an earlier one continues it,
# skipping finished variants as a requeued array task does. Nothing earlier is removed.
set -euo pipefail
build=${1:-build/release}
minutes=${ABLATION_MINUTES:-2}
out=${ABLATION_DIR:-runs/ablations-$(date +%Y%m%d-%H%M%S)}
config=configs/ablations/image.cfg
sweep=configs/ablations/image.sweep
src=/usr/share/datasets/fashion-mnist
names="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 D2V_BIN=$build/bin
threads=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} BLIS_NUM_THREADS=${BLIS_NUM_THREADS:-$threads}
# (a task with a result.json is skipped, as after a requeue)
mkdir -p data "$out"
for split in train t10k; do # as scripts/demo.sh
    f=data/fmnist-$split.h5
    [ "$split" = t10k ] && f=data/fmnist-test.h5
    [ -f "$f" ] || "$build/bin/d2v-prep-image" --idx-images "$src/$split-images-idx3-ubyte.gz" \
        --idx-labels "$src/$split-labels-idx1-ubyte.gz" --class-names "$names" -o "$f"
done
# the probe's training set: the first 10000 training images (an IDX pair cut to 10000 items),
# so that each variant's extraction and L-BFGS fit take seconds, not minutes
probe=data/fmnist-train10k.h5
if [ ! -f "$probe" ]; then
    tmp=$(mktemp -d)
    { printf '\0\0\10\3\0\0\47\20\0\0\0\34\0\0\0\34'; gzip -dc "$src/train-images-idx3-ubyte.gz" |
        tail -c +17 | head -c $((10000 * 784)) || :; } >"$tmp/img.idx" # head ends the pipe early
    { printf '\0\0\10\1\0\0\47\20'; gzip -dc "$src/train-labels-idx1-ubyte.gz" |
        tail -c +9 | head -c 10000 || :; } >"$tmp/lab.idx"
    "$build/bin/d2v-prep-image" --idx-images "$tmp/img.idx" --idx-labels "$tmp/lab.idx" \
        --class-names "$names" -o "$probe"
    rm -rf "$tmp"
fi
jobs/sweep.sh check "$config" "$sweep"
n=$(jobs/sweep.sh count "$sweep")
results=$out/results.jsonl
echo "== $n variants of $sweep, $minutes min of pretraining each; results in $results"
for ((i = 0; i < n; i++)); do
    SLURM_ARRAY_TASK_ID=$i jobs/sweep.sbatch "$config" "$sweep" "$out" --budget $((minutes * 60)) \
        --probe-train "$probe" --probe-test data/fmnist-test.h5 2>&1 |
        grep -E '^(sweep task|run.max_time|done:|d2v: error)' || true
done
# the table: the newest line per variant, in sweep order, against the untrained baseline and base
table=$(jq -rs --arg sweep "$sweep" '
    def pct: (. * 1000 | round) as $t | ($t | fabs) as $a
        | "\(if $t < 0 then "-" else "" end)\($a / 10 | floor).\($a % 10)";
    (map(select(.sweep == $sweep)) | group_by(.variant) | map(max_by(.line))) as $r
    | ($r | map({key: .variant, value: .}) | from_entries) as $by
    | ($by.base.probe.mean_final.linear_top1 // null) as $b
    | "| variant | overrides | updates | linear top-1 | vs base | kNN top-1 |",
      "|---|---|---:|---:|---:|---:|",
      ($r | sort_by(.line)[] |
        "| \(.variant) | \(if (.sets | length) > 0 then (.sets | map("`" + . + "`") | join(" ")) elif .variant == "untrained" then "(no pretraining)" else "(configs/ablations/image.cfg)" end) | \(.updates) | \(.probe.mean_final.linear_top1 | pct)% | \(if $b == null or .variant == "base" then "" else (.probe.mean_final.linear_top1 - $b | pct) end) | \(.probe.mean_final.knn_top1 | pct)% |")' \
    "$results")
echo "$table"
doc=docs/ablations.md
if [ -f "$doc" ] && grep -q '^<!-- table -->' "$doc"; then
    {
        sed '/^<!-- table -->/q' "$doc"
        echo
        echo "\`OMP_NUM_THREADS=$OMP_NUM_THREADS ABLATION_MINUTES=$minutes make ablations\` on $(nproc --all) cores ($(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1)), $(date -u +%Y-%m-%d):"
        echo
        echo "$table"
        echo
        sed -n '/^<!-- end table -->/,$p' "$doc"
    } >"$doc.tmp" && mv "$doc.tmp" "$doc"
    echo "== table written to $doc"
fi
