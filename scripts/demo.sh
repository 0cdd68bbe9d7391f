#!/bin/sh
# demo.sh: one modality end to end on one machine, inside a wall-time budget (docs/demo.md):
# the data (prepared on first use) -> data2vec pretraining with d2v-train under run.max_time ->
# frozen features of the pretrained student, the same architecture at random init and the raw
# input (d2v-extract) -> linear and kNN probes (d2v-probe) -> training curves (d2v-plot) -> one
# table and JSON report of the best variant of each (d2v-report).
#   image:  Fashion-MNIST (Debian's dataset-fashion-mnist), probed on its 10k test images
#   speech: spoken digits synthesised with espeak-ng and flite (data-prep/fetch_speech.sh),
#           probed on voices the pretraining and the probe's train split never heard
#   text:   books + WordNet glosses (data-prep/fetch_text.sh), probed on WordNet supersenses
#           (45 classes) and on SpamAssassin bodies (ham / spam), fixed train/test splits
# Usage: scripts/demo.sh BUILD_DIR [MODALITY] [--set KEY=VALUE ...]   (make demo MODALITY=...)
#   DEMO_MINUTES=10      the whole demo's budget; training gets the share left after the
#                        evaluation's measured cost (DEMO_TRAIN_SECONDS sets it directly)
#   DEMO_CONFIG=FILE     the recipe (default configs/MODALITY-demo.cfg; speech: speech-demo-v2.cfg)
#   DEMO_RUN=DIR         the run directory (default runs/demo-MODALITY; an existing one is
#                        moved aside to DIR.DATE, DEMO_KEEP=1 reuses its newest checkpoint)
#   DEMO_PRETRAIN, DEMO_TRAIN, DEMO_TEST  datasets instead of the real ones (the smoke test);
#   DEMO_SETS="name:train.h5:test.h5 ..."  the probe sets (default: the modality's own)
set -eu
build=${1:-build/release}
[ $# -gt 0 ] && shift
mod=${1:-image}
case "$mod" in image | speech | text) [ $# -gt 0 ] && shift ;; -*) mod=image ;; esac
case "$mod" in
image | speech | text) ;;
*) echo "demo: MODALITY must be image, speech or text, not '$mod'" >&2 && exit 1 ;;
esac
bin=$build/bin
# data2vec 2.0 for speech, where it gives both the higher accuracy and the larger gain in the
# same 10 minutes (89.0%, +22.4, against 1.0's 84.3%, +17.6); 1.0 for images, whose gain over
# the untrained model is the larger, and for text (docs/demo.md §4)
case "$mod" in
speech) cfg=${DEMO_CONFIG:-configs/speech-demo-v2.cfg} ;;
*) cfg=${DEMO_CONFIG:-configs/$mod-demo.cfg} ;;
esac
run=${DEMO_RUN:-runs/demo-$mod}
minutes=${DEMO_MINUTES:-10}
mkdir -p data runs
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One MPI rank per core, one thread each (DEMO_RANKS): on a shared machine a descheduled OpenMP
# thread stalls every parallel region of the other, while ranks meet once per update (a speech
# extraction took 53 s with 2 threads and 1.6 s with 2 ranks at a load of 8; docs/demo.md).
ranks=${DEMO_RANKS:-$(nproc)}
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" BLIS_NUM_THREADS="${BLIS_NUM_THREADS:-1}"
mpi() {
    if [ "$ranks" -gt 1 ]; then
        mpirun --oversubscribe -np "$ranks" -x OMP_NUM_THREADS -x BLIS_NUM_THREADS "$@"
    else
        "$@"
    fi
}
t_start=$(date +%s)

# ---- the data: prepared once, kept in data/ ----
case "$mod" in
image)
    src=/usr/share/datasets/fashion-mnist
    names="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
    if [ -z "${DEMO_PRETRAIN:-}" ]; then
        for split in train t10k; do
            out=data/fmnist-$split.h5
            [ "$split" = t10k ] && out=data/fmnist-test.h5
            [ -f "$out" ] || "$bin/d2v-prep-image" --idx-images "$src/$split-images-idx3-ubyte.gz" \
                --idx-labels "$src/$split-labels-idx1-ubyte.gz" --class-names "$names" -o "$out"
        done
        # The probe's train split: the first 10,000 training images (an IDX header for 10,000
        # (0x2710) before their pixels), so that features and probes fit the budget.
        if [ ! -f data/fmnist-train10k.h5 ]; then
            tmp=$(mktemp -d)
            (printf '\000\000\010\003\000\000\047\020\000\000\000\034\000\000\000\034'
                zcat "$src/train-images-idx3-ubyte.gz" | tail -c +17 | head -c 7840000) >"$tmp/i.idx"
            (printf '\000\000\010\001\000\000\047\020'
                zcat "$src/train-labels-idx1-ubyte.gz" | tail -c +9 | head -c 10000) >"$tmp/l.idx"
            "$bin/d2v-prep-image" --idx-images "$tmp/i.idx" --idx-labels "$tmp/l.idx" \
                --class-names "$names" -o data/fmnist-train10k.h5
            rm -rf "$tmp"
        fi
    fi
    pretrain=${DEMO_PRETRAIN:-data/fmnist-train.h5}
    sets=${DEMO_SETS:-fmnist:${DEMO_TRAIN:-data/fmnist-train10k.h5}:${DEMO_TEST:-data/fmnist-test.h5}}
    variants=${DEMO_VARIANTS:-all}
    raw_args="--l2 1e-2,1e-3,1e-4 --max-iter 150" # 784 pixels: the strengths that won before
    share=85 # of the budget for training: features and probes take the rest
    ;;
speech)
    if [ -z "${DEMO_PRETRAIN:-}" ] && [ ! -f data/digits-eval.h5 ]; then
        JOBS=$(nproc) data-prep/fetch_speech.sh data "$build"
    fi
    pretrain=${DEMO_PRETRAIN:-data/digits-train.h5}
    sets=${DEMO_SETS:-digits:${DEMO_TRAIN:-data/digits-train.h5}:${DEMO_TEST:-data/digits-eval.h5}}
    variants=${DEMO_VARIANTS:-all}
    raw_args=""
    share=85
    ;;
text)
    if [ -z "${DEMO_PRETRAIN:-}" ] && [ ! -f data/wordnet-test.h5 ]; then
        data-prep/fetch_text.sh data "$build"
    fi
    pretrain=${DEMO_PRETRAIN:-data/text-pretrain.h5}
    sets=${DEMO_SETS:-wordnet:data/wordnet-train.h5:data/wordnet-test.h5 spam:data/spam-train.h5:data/spam-test.h5}
    variants=${DEMO_VARIANTS:-all}
    # 4096 token buckets, no preconditioner at that width: two strengths, fewer iterations
    raw_args="--l2 1e-2,1e-3 --max-iter 60"
    share=75
    ;;
esac
train_s=${DEMO_TRAIN_SECONDS:-$(awk -v m="$minutes" -v s="$share" 'BEGIN { printf "%d", m * 60 * s / 100 }')}

# ---- pretraining inside the budget ----
# an earlier demo's run is kept, moved aside (DEMO_KEEP=1 continues it instead)
if [ -z "${DEMO_KEEP:-}" ] && [ -e "$run" ]; then
    old="$run.$(date -r "$run" +%Y%m%d-%H%M%S)"
    mv "$run" "$old" && echo "== the previous $run is kept as $old"
fi
mkdir -p "$run"
echo "== pretraining $cfg on $pretrain for $train_s s (run.max_time; $ranks ranks x $OMP_NUM_THREADS thread; load: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "   log: $run/train.log, metrics: $run/metrics.jsonl"
t0=$(date +%s)
mpi "$bin/d2v-train" "$cfg" --run-dir "$run" --resume --set data.train="$pretrain" \
    --set run.max_time="$train_s" "$@" >"$run/train.log" 2>&1 || {
    tail -n 20 "$run/train.log" >&2
    echo "demo: d2v-train failed (log: $run/train.log)" >&2
    exit 1
}
grep -E '^(run.max_time|done)' "$run/train.log" || true
updates=$(sed -n 's/^done: update \([0-9]*\) of .*/\1/p' "$run/train.log" | tail -n 1)
t_train=$(($(date +%s) - t0))

# ---- features and probes, per probe set ----
feat=$run/features
mkdir -p "$feat"
t0=$(date +%s)
for s in $sets; do
    name=${s%%:*} rest=${s#*:}
    tr=${rest%%:*} te=${rest#*:}
    echo "== $name: features (d2v-extract) of $tr and $te: pretrained student, random init, raw input"
    for net in student random-init raw; do
        for split in train test; do
            data=$tr
            [ $split = test ] && data=$te
            out=$feat/$name-$net-$split.h5
            rm -f "$out" # this demo's own output
            case $net in
            student) mpi "$bin/d2v-extract" "$run" --data "$data" -o "$out" --quiet ;;
            random-init) mpi "$bin/d2v-extract" "$run" --random-init --data "$data" -o "$out" --quiet ;;
            raw) "$bin/d2v-extract" --raw --data "$data" -o "$out" --quiet ;;
            esac >/dev/null
        done
    done
    echo "== $name: linear and kNN probes (d2v-probe) -> $run/probe-$name-*.json"
    # the three probes side by side, one thread each
    pids=""
    for net in student random-init raw; do
        v=$variants args=""
        [ $net = raw ] && v=raw args=$raw_args
        # $args is a word list on purpose.
        # shellcheck disable=SC2086
        "$bin/d2v-probe" "$feat/$name-$net-train.h5" "$feat/$name-$net-test.h5" --variant "$v" \
            $args --json "$run/probe-$name-$net.json" >"$run/probe-$name-$net.log" 2>&1 &
        pids="$pids $!"
    done
    for p in $pids; do
        wait "$p" || { cat "$run"/probe-"$name"-*.log >&2; echo "demo: d2v-probe failed" >&2; exit 1; }
    done
done
t_eval=$(($(date +%s) - t0))
"$bin/d2v-plot" "$run" -o "$run/metrics.png"
t_total=$(($(date +%s) - t_start))

# ---- the table ----
echo
for s in $sets; do
    name=${s%%:*}
    "$bin/d2v-report" "$run" --title "== $mod demo, $name: $cfg, top-1 on the test split (load: $(cut -d' ' -f1-3 /proc/loadavg))" \
        --probe pretrained="$run/probe-$name-student.json" \
        --probe random-init="$run/probe-$name-random-init.json" \
        --probe raw-input="$run/probe-$name-raw.json" \
        --time train=$t_train --time eval=$t_eval --time total=$t_total ${updates:+--updates "$updates"} \
        --json "$run/report-$name.json"
    echo "   report: $run/report-$name.json"
    echo
done
echo "run: $run (checkpoints, train.log, metrics.jsonl); features: $feat; plot: $run/metrics.png"
