#!/bin/sh
# script_trainer_ranks.sh: data.batch_size is the global batch, so one config describes one
# experiment on any allocation: 1 rank, 2 ranks and 1 rank in 2 micro-batches of the same 16
# samples give the same trajectory (to summation order), data2vec 2.0 text and speech included;
# the bucketed allreduce gives the same
# bits as the blocking one; a batch the ranks cannot divide is an error naming the key.
set -u
build=${1:-build/release}
dir=$(mktemp -d /tmp/d2v-ranks.XXXXXX)
trap 'rm -rf "$dir"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
"$build/bin/d2v-prep-image" --idx-images tests/fixtures/fmnist-t500-images-idx3.gz \
    --idx-labels tests/fixtures/fmnist-t500-labels-idx1.gz -o "$dir/fm.h5" >/dev/null
set -- configs/image-tiny.cfg --set data.train="$dir/fm.h5" --set run.max_updates=8 \
    --set run.log_every=1 --set data.batch_size=16
"$build/bin/d2v-train" "$@" --run-dir "$dir/one" >/dev/null 2>&1
timeout 300 mpirun --oversubscribe -np 2 "$build/bin/d2v-train" "$@" --run-dir "$dir/two" \
    >"$dir/two.log" 2>&1
"$build/bin/d2v-train" "$@" --set data.micro_batch=8 --run-dir "$dir/micro" >"$dir/micro.log" 2>&1
compare() {
    /usr/bin/python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
worst = 0.0
for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "target_var", "pred_var"):
        worst = max(worst, abs(x[k] - y[k]) / max(abs(x[k]), 1e-12))
print(f"{len(a)} and {len(b)} updates, worst relative difference {worst:.1e}")
sys.exit(0 if len(a) == len(b) == 8 and worst < 1e-4 else 1)
PY
}
msg=$(compare "$dir/one" "$dir/two") && ok "batch 16 on 2 ranks == on 1 rank: $msg" ||
    bad "batch 16 on 2 ranks != on 1 rank: $msg"
grep -q "batch 16 per update = 2 ranks x 1 micro-batches x 8" "$dir/two.log" &&
    ok "2 ranks take 8 samples each" || bad "split on 2 ranks: $(grep '^batch' "$dir/two.log")"
msg=$(compare "$dir/one" "$dir/micro") && ok "data.micro_batch = 8 (2 micro-batches) == one pass: $msg" ||
    bad "micro-batches: $msg"
grep -q "batch 16 per update = 1 ranks x 2 micro-batches x 8" "$dir/micro.log" &&
    ok "data.micro_batch = 8 gives update_freq 2" || bad "split: $(grep '^batch' "$dir/micro.log")"
# bucketed allreduce during the backward: bit-identical parameters and teacher for any bucket
# size, on 2 and 3 ranks (1 KB: every part on its own; 64 KB: a few buckets, the last one after
# the backward; 0: one blocking call after the backward)
for np in 2 3; do
    b=$((np == 3 ? 12 : 16))
    for kb in 0 1 64; do
        timeout 300 mpirun --oversubscribe -np $np -x OMP_NUM_THREADS=1 -x BLIS_NUM_THREADS=1 \
            "$build/bin/d2v-train" "$@" --set data.batch_size=$b --set run.max_updates=4 \
            --set run.allreduce_bucket_kb=$kb --run-dir "$dir/b$np-$kb" >/dev/null 2>&1
    done
    f=ckpt/step_00000004/model.h5
    for kb in 1 64; do
        if h5diff "$dir/b$np-0/$f" "$dir/b$np-$kb/$f" /params >/dev/null 2>&1 &&
            h5diff "$dir/b$np-0/$f" "$dir/b$np-$kb/$f" /teacher >/dev/null 2>&1; then
            ok "$np ranks: $kb KB buckets during the backward: bit-identical parameters and teacher"
        else
            bad "$np ranks: $kb KB buckets change the result (or a run failed: $dir/b$np-*)"
        fi
    done
done
# data2vec 2.0 (text): 4 masks per sample keyed on (update, sample, clone), so 2 ranks of 4
# samples train what 1 rank of 8 does
"$build/bin/d2v-prep-text" --vocab-size 512 --split-blank -o "$dir/text.h5" tests/fixtures/text \
    >/dev/null 2>&1
v2set="--set data.train=$dir/text.h5 --set run.max_updates=8 --set run.log_every=1"
"$build/bin/d2v-train" configs/text-v2-tiny.cfg $v2set --run-dir "$dir/v2one" >/dev/null 2>&1
timeout 300 mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x BLIS_NUM_THREADS=1 \
    "$build/bin/d2v-train" configs/text-v2-tiny.cfg $v2set --run-dir "$dir/v2two" >/dev/null 2>&1
msg=$(compare "$dir/v2one" "$dir/v2two") && ok "v2 text, batch 8 with 4 clones: 2 ranks == 1 rank: $msg" ||
    bad "v2 text on 2 ranks != on 1 rank: $msg"
# data2vec 2.0 (speech): 4 clones of 1-D block masks, ALiBi, dropout on. Every crop is
# speech_max_samples long (utterances shorter than speech_min_samples = the same are skipped),
# so a rank's batch has the frames the whole batch has: each loader crops its own slice to its
# shortest, which would otherwise differ between 1 and 2 ranks.
"$build/bin/d2v-prep-speech" --tree tests/fixtures/speech -o "$dir/speech.h5" >/dev/null 2>&1
v2set="--set data.train=$dir/speech.h5 --set run.max_updates=8 --set run.log_every=1
    --set data.speech_max_samples=4800 --set data.speech_min_samples=4800"
"$build/bin/d2v-train" configs/speech-v2-tiny.cfg $v2set --run-dir "$dir/v2sone" >/dev/null 2>&1
timeout 300 mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x BLIS_NUM_THREADS=1 \
    "$build/bin/d2v-train" configs/speech-v2-tiny.cfg $v2set --run-dir "$dir/v2stwo" >/dev/null 2>&1
msg=$(compare "$dir/v2sone" "$dir/v2stwo") &&
    ok "v2 speech, batch 8 with 4 clones: 2 ranks == 1 rank: $msg" ||
    bad "v2 speech on 2 ranks != on 1 rank: $msg"
"$build/bin/d2v-train" configs/speech-v2-tiny.cfg $v2set --set data.micro_batch=4 \
    --run-dir "$dir/v2smicro" >/dev/null 2>&1
msg=$(compare "$dir/v2sone" "$dir/v2smicro") &&
    ok "v2 speech: 2 micro-batches of 4 == one pass of 8: $msg" ||
    bad "v2 speech micro-batches != one pass: $msg"
out=$(timeout 120 mpirun --oversubscribe -np 3 "$build/bin/d2v-train" "$@" --run-dir "$dir/three" 2>&1)
rc=$?
n=$(echo "$out" | grep -c "data.batch_size 16 .* is not a multiple of the 3 ranks")
[ $rc -ne 0 ] && [ "$n" -ge 1 ] && [ ! -e "$dir/three" ] &&
    ok "batch 16 on 3 ranks: one clear error, non-zero exit, no run directory" ||
    bad "batch 16 on 3 ranks: rc $rc: $out"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
