#!/bin/bash
# script_slurm.sh: jobs/pretrain.sbatch on a real single-node Slurm cluster (tests/slurm/start.sh):
# 2 ranks under srun --mpi=pmix; USR1 to the batch shell (what --signal=B:USR1 sends before the
# time limit) makes every rank checkpoint and exit; the job requeues itself and resumes.
# A cluster that was already running is reused and left running; one started here is stopped.
set -u
build=${1:-build/release}
here=$(pwd)
sdir=${D2V_SLURM_DIR:-/tmp/d2v-slurm}
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
dir=$(mktemp -d /tmp/d2v-slurm-test.XXXXXX)
was_up=0
SLURM_CONF=$sdir/etc/slurm.conf scontrol ping 2>/dev/null | grep -q 'is UP' && was_up=1
jid=""
cleanup() {
    [ -n "$jid" ] && scancel "$jid" >/dev/null 2>&1
    [ $was_up -eq 1 ] || tests/slurm/stop.sh >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT
trap "exit 1" INT TERM
if ! tests/slurm/start.sh >"$dir/start.log" 2>&1; then
    bad "local Slurm did not start: $(tail -n 1 "$dir/start.log")"
    finish
fi
. "$sdir/env.sh"
"$build/bin/d2v-prep-image" --idx-images tests/fixtures/fmnist-t500-images-idx3.gz \
    --idx-labels tests/fixtures/fmnist-t500-labels-idx1.gz -o "$dir/fm.h5" >/dev/null
jid=$(sbatch --parsable --chdir="$here" --output="$dir/job.out" jobs/pretrain.sbatch \
    configs/image-tiny.cfg "$dir/run" --set data.train="$dir/fm.h5" \
    --set run.max_updates=1000000 --set run.log_every=100 --set data.batch_size=8) ||
    { bad "sbatch failed"; finish; }
state() { scontrol show job "$jid" | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }
restarts() { scontrol show job "$jid" | sed -n 's/.*Restarts=\([0-9]*\).*/\1/p'; }
for _ in $(seq 120); do grep -q "^update" "$dir/job.out" 2>/dev/null && break; sleep 0.5; done
grep -q "ranks=2" "$dir/job.out" 2>/dev/null &&
    ok "job $jid runs d2v-train on 2 ranks under srun --mpi=pmix" ||
    bad "job did not start (state $(state)): $(cat "$dir/job.out" 2>/dev/null)"
scancel --batch --signal=USR1 "$jid"
for _ in $(seq 120); do [ "$(restarts)" = 1 ] && break; sleep 0.5; done
step=$(sed -n 's/^stopping after update \([0-9]*\).*/\1/p' "$dir/job.out" | head -n 1)
[ -n "$step" ] && [ -f "$dir/run/ckpt/step_$(printf %08d "$step")/DONE" ] &&
    ok "USR1: every rank stopped after update $step with a complete checkpoint" ||
    bad "no checkpoint after USR1: $(tail -n 5 "$dir/job.out")"
[ "$(restarts)" = 1 ] && ok "the job requeued itself" || bad "no requeue (state $(state))"
for _ in $(seq 240); do grep -q "^resuming from" "$dir/job.out" && break; sleep 0.5; done
grep -q "^resuming from .*step_$(printf %08d "${step:-0}")/model.h5: update $step" "$dir/job.out" &&
    ok "the requeued job resumed from update $step" ||
    bad "no resume: $(grep -E 'resuming|error' "$dir/job.out")"
finish
