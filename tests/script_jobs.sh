#!/bin/bash
# script_jobs.sh: the Slurm jobs of jobs/ on a real single-node cluster (tests/slurm/start.sh):
#   sweep files  jobs/sweep.sh check names SWEEP:LINE for an unknown key and a bad value, passes a
#                valid file; jobs/sweep-submit.sh submits nothing for a bad one; a results file
#                that is not writable stops jobs/sweep.sbatch before it trains
#   prep         jobs/prep.sbatch on 2 ranks (index + 2 shards) gives the dataset of 1 rank: the
#                samples as the reader sees them (d2v-extract --raw) compared with h5diff, with a
#                negative control (h5diff must tell shard 0's samples from shard 1's)
#   multinode    jobs/multinode.sbatch on 1 node x 2 ranks x 1 thread prints its layout and trains
#   sweep        a 2-task array through jobs/sweep-submit.sh: task 0 gets USR1 (what --signal=B:
#                USR1 sends before the time limit), checkpoints, requeues itself and resumes; both
#                tasks finish and results.jsonl holds exactly two JSON lines, one per variant
# A cluster that was already running is reused and left running; one started here is stopped.
set -u
build=${1:-build/release}
here=$(pwd)
sdir=${D2V_SLURM_DIR:-/tmp/d2v-slurm}
export D2V_BIN=$build/bin OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
FX=tests/fixtures
for f in "$build/bin/d2v-train" "$build/bin/d2v-prep-image" "$build/bin/d2v-extract" \
    "$build/bin/d2v-probe" "$FX/fmnist-t500-images-idx3.gz"; do
    [ -e "$f" ] || { bad "missing $f (make all)"; finish; }
done
for t in jq h5diff flock; do
    command -v $t >/dev/null || { bad "$t is not installed (scripts/deps.sh)"; finish; }
done
dir=$(mktemp -d /tmp/d2v-jobs-test.XXXXXX)
was_up=0
SLURM_CONF=$sdir/etc/slurm.conf scontrol ping 2>/dev/null | grep -q 'is UP' && was_up=1
started=0
jids=()
cleanup() {
    for j in "${jids[@]}"; do scancel "$j" >/dev/null 2>&1; done
    [ $started -eq 1 ] && [ $was_up -eq 0 ] && tests/slurm/stop.sh >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT
trap "exit 1" INT TERM
prep=(--idx-images "$FX/fmnist-t500-images-idx3.gz" --idx-labels "$FX/fmnist-t500-labels-idx1.gz")
"$build/bin/d2v-prep-image" "${prep[@]}" -o "$dir/fm.h5" >/dev/null || { bad "d2v-prep-image"; finish; }
data=(--set data.train="$dir/fm.h5" --set data.batch_size=8)

echo "-- sweep files"
printf '# a comment, then a blank line\n\nbase\nffn   target.tensor=ffn\nbad   target.topk=1\nneg   --set model.width=-3\n' \
    >"$dir/bad.sweep"
jobs/sweep.sh check configs/image-tiny.cfg "$dir/bad.sweep" "${data[@]}" >/dev/null 2>"$dir/check.err"
rc=$?
grep -q "^$dir/bad.sweep:5: variant bad: --set: unknown key 'target.topk'" "$dir/check.err" &&
    [ $rc -eq 1 ] && ok "an unknown key is refused naming the file and line: $(sed -n 1p "$dir/check.err")" ||
    bad "unknown key: exit $rc, $(cat "$dir/check.err")"
grep -q "^$dir/bad.sweep:6: variant neg: .*model.width.*out of range" "$dir/check.err" &&
    ok "an out-of-range value is refused naming its line: $(sed -n 2p "$dir/check.err")" ||
    bad "bad value not reported: $(cat "$dir/check.err")"
! grep -q ":[34]: " "$dir/check.err" && ok "the valid lines are not reported" ||
    bad "valid lines reported: $(cat "$dir/check.err")"
printf 'a target.top_k=1\na\nb target.top_k\n' >"$dir/syntax.sweep"
jobs/sweep.sh check configs/image-tiny.cfg "$dir/syntax.sweep" "${data[@]}" >/dev/null 2>"$dir/syntax.err"
grep -q "syntax.sweep:2: variant \"a\" already defined on line 1" "$dir/syntax.err" &&
    grep -q "syntax.sweep:3: variant b: \"target.top_k\" is not key=value" "$dir/syntax.err" &&
    ok "duplicate names and words without = are refused with their lines" ||
    bad "syntax errors: $(cat "$dir/syntax.err")"
printf 'base\nattn target.tensor=attn\n' >"$dir/ok.sweep"
jobs/sweep.sh check configs/image-tiny.cfg "$dir/ok.sweep" "${data[@]}" >"$dir/ok.log" 2>&1 &&
    ok "negative control: a valid sweep passes ($(cat "$dir/ok.log"))" || bad "valid sweep: $(cat "$dir/ok.log")"
[ "$(jobs/sweep.sh count "$dir/bad.sweep" 2>/dev/null)" = 4 ] &&
    [ "$(jobs/sweep.sh get "$dir/bad.sweep" 1 | tr '\n' ' ')" = "4 ffn target.tensor=ffn " ] &&
    ok "count and get: 4 variants; variant 1 is line 4" || bad "sweep.sh count/get"
mkdir -p "$dir/ro/results.jsonl" # a directory where the results file should be
SLURM_ARRAY_TASK_ID=0 jobs/sweep.sbatch configs/image-tiny.cfg "$dir/ok.sweep" "$dir/ro" \
    --probe-train "$dir/fm.h5" --probe-test "$dir/fm.h5" "${data[@]}" >"$dir/ro.log" 2>&1
rc=$?
[ $rc -ne 0 ] && grep -q "not writable: stopping before training" "$dir/ro.log" &&
    [ ! -e "$dir/ro/runs/base/metrics.jsonl" ] &&
    ok "a results file that is not writable stops the task before it trains" ||
    bad "unwritable results: exit $rc, $(cat "$dir/ro.log")"

if ! tests/slurm/start.sh >"$dir/start.log" 2>&1; then
    bad "local Slurm did not start: $(tail -n 1 "$dir/start.log")"
    finish
fi
started=1
. "$sdir/env.sh"
jobs/sweep-submit.sh configs/image-tiny.cfg "$dir/bad.sweep" "$dir/sw-bad" --probe-train "$dir/fm.h5" \
    --probe-test "$dir/fm.h5" "${data[@]}" -- --chdir="$here" >"$dir/submit-bad.log" 2>&1
rc=$?
[ $rc -ne 0 ] && grep -q "bad.sweep:5: " "$dir/submit-bad.log" && grep -q "nothing submitted" "$dir/submit-bad.log" &&
    ! grep -q "submitted array" "$dir/submit-bad.log" &&
    ok "sweep-submit.sh: a bad line fails at submission, naming it; nothing queued" ||
    bad "sweep-submit.sh on a bad sweep: exit $rc, $(cat "$dir/submit-bad.log")"

echo "-- prep.sbatch"
for n in 1 2; do
    mkdir -p "$dir/p$n"
    sbatch --wait --parsable --chdir="$here" --ntasks=$n --output="$dir/prep$n.out" jobs/prep.sbatch \
        image "$dir/p$n/fm.h5" "${prep[@]}" >/dev/null 2>&1
    rc=$?
    [ $rc -eq 0 ] && ok "prep.sbatch on $n rank(s): $(grep '^wrote' "$dir/prep$n.out" | tail -n 1)" ||
        bad "prep.sbatch on $n rank(s): exit $rc, $(tail -n 3 "$dir/prep$n.out")"
done
shards=$(ls "$dir/p2" | grep -c '\.shard-0000[01]-of-00002\.h5$')
h5dump -a /kind "$dir/p2/fm.h5" 2>/dev/null | grep -q '"index"' && [ "$shards" = 2 ] &&
    ok "2 ranks wrote an index and 2 shards" || bad "2 ranks: $(ls "$dir/p2")"
raw() { "$build/bin/d2v-extract" --raw --data "$1" -o "$2" --quiet >/dev/null 2>&1; }
raw "$dir/p1/fm.h5" "$dir/raw1.h5" && raw "$dir/p2/fm.h5" "$dir/raw2.h5" &&
    raw "$dir/p2/fm.shard-00000-of-00002.h5" "$dir/raw-shard0.h5" &&
    raw "$dir/p2/fm.shard-00001-of-00002.h5" "$dir/raw-shard1.h5" || bad "d2v-extract --raw"
same=1
for obj in $(h5ls "$dir/raw1.h5" | awk '$2 == "Dataset" {print $1}'); do
    h5diff "$dir/raw1.h5" "$dir/raw2.h5" "/$obj" "/$obj" >"$dir/diff.log" 2>&1 ||
        { same=0; echo "     /$obj differs: $(head -n 3 "$dir/diff.log")"; }
done
objs=$(h5ls "$dir/raw1.h5" | awk '$2 == "Dataset" {printf "%s ", $1}')
[ $same -eq 1 ] && [ -n "$objs" ] && ok "2 ranks == 1 rank: h5diff finds no difference in $objs" ||
    bad "2 ranks differ from 1 rank"
h5diff "$dir/raw-shard0.h5" "$dir/raw-shard1.h5" /raw /raw >/dev/null 2>&1
[ $? -eq 1 ] && ok "negative control: h5diff tells the two shards' 250 samples apart" ||
    bad "negative control: h5diff found shard 0 equal to shard 1"

echo "-- multinode.sbatch"
sbatch --wait --chdir="$here" --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=5 \
    --output="$dir/mn.out" jobs/multinode.sbatch configs/image-tiny.cfg "$dir/mn" "${data[@]}" \
    --set run.max_updates=4 --set run.log_every=2 >/dev/null 2>&1
rc=$?
grep -q "1 node(s) .* 2 rank(s), 2 per node, 1 thread(s) per rank, OMP_PLACES=cores OMP_PROC_BIND=close" "$dir/mn.out" &&
    [ "$(grep -c '^  rank [01] on ' "$dir/mn.out")" = 2 ] && ok "multinode.sbatch prints its layout: $(grep -m 1 '^  rank 0' "$dir/mn.out")" ||
    bad "multinode layout: $(head -n 5 "$dir/mn.out")"
[ $rc -eq 0 ] && grep -q "ranks=2" "$dir/mn.out" && grep -q "^done: update 4 of 4" "$dir/mn.out" &&
    ok "multinode.sbatch trains on 2 ranks under srun --mpi=pmix --cpu-bind=cores" ||
    bad "multinode.sbatch: exit $rc, $(tail -n 5 "$dir/mn.out")"

echo "-- sweep.sbatch, a 2-task array"
out=$dir/sweep
jobs/sweep-submit.sh configs/image-tiny.cfg "$dir/ok.sweep" "$out" --budget 16 \
    --probe-train "$dir/fm.h5" --probe-test "$dir/fm.h5" "${data[@]}" --set run.log_every=20 \
    -- --chdir="$here" --cpus-per-task=1 --output="$dir/sw-%a.out" >"$dir/submit.log" 2>&1 ||
    { bad "sweep-submit.sh: $(cat "$dir/submit.log")"; finish; }
jid=$(sed -n 's/^submitted array job \([0-9]*\).*/\1/p' "$dir/submit.log")
jids+=("$jid")
ok "sweep-submit.sh: $(tail -n 1 "$dir/submit.log")"
for _ in $(seq 120); do grep -q "^update" "$dir/sw-0.out" 2>/dev/null && break; sleep 0.5; done
scancel --batch --signal=USR1 "${jid}_0"
for _ in $(seq 360); do
    [ "$(squeue -h -j "$jid" 2>/dev/null | wc -l)" = 0 ] && [ -s "$out/results.jsonl" ] && break
    sleep 0.5
done
grep -q "^stopping after update" "$dir/sw-0.out" && grep -q "^resuming from" "$dir/sw-0.out" &&
    ok "task 0: USR1 -> checkpoint, requeue, $(grep -m 1 '^resuming from' "$dir/sw-0.out" | sed 's/ (.*//')" ||
    bad "task 0 did not requeue and resume: $(grep -E 'stopping|resuming|error' "$dir/sw-0.out")"
lines=$(wc -l <"$out/results.jsonl")
names=$(jq -r .variant "$out/results.jsonl" 2>/dev/null | sort | tr '\n' ' ')
[ "$lines" = 2 ] && [ "$names" = "attn base " ] &&
    jq -e 'select(.probe.mean_final.linear_top1 > 0 and .updates > 0 and .network == "student")' \
        "$out/results.jsonl" >/dev/null &&
    [ "$(jq -s 'map(select(.probe.mean_final.linear_top1 > 0)) | length' "$out/results.jsonl")" = 2 ] &&
    ok "both tasks finished: 2 result lines ($names): $(jq -c '{variant, updates, top1: .probe.mean_final.linear_top1}' "$out/results.jsonl" | tr '\n' ' ')" ||
    bad "results.jsonl: $lines lines: $(cat "$out/results.jsonl"; tail -n 3 "$dir"/sw-*.out)"
finish
