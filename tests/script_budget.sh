#!/bin/sh
# script_budget.sh: run.max_time, a wall-time budget instead of an update count. The run plans
# its update count from the measured rate (and scales the recipe's schedules to it), ends within
# the budget, keeps its plan across --resume, and refuses a budget too small for one logging
# interval with one line naming the keys.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
dir=$(mktemp -d /tmp/d2v-budget.XXXXXX)
trap 'rm -rf "$dir"' EXIT
. tests/lib.sh
train="$build/bin/d2v-train"
prep_fmnist "$dir/fm.h5"
set -- configs/image-tiny.cfg --set data.train="$dir/fm.h5" --set data.batch_size=16 \
    --set run.max_updates=100000 --set run.log_every=5 --set run.checkpoint_every=0

budget=10
t0=$(date +%s)
"$train" "$@" --set run.max_time=$budget --run-dir "$dir/a" >"$dir/a.log" 2>&1
rc=$?
took=$(($(date +%s) - t0))
plan=$(grep "^run.max_time .* s/update" "$dir/a.log" | tail -1)
n=$(echo "$plan" | sed -n 's/.*, so \([0-9]*\) updates in all.*/\1/p')
[ $rc -eq 0 ] && [ -n "$n" ] && [ "$n" -gt 10 ] && [ $took -le $((budget + 15)) ] &&
    ok "a ${budget} s budget: planned $n updates, ended after $took s: $plan" ||
    bad "budget run: rc $rc after $took s, plan '$plan': $(tail -3 "$dir/a.log")"
grep -q "^run.max_time .* s/update over updates 2-10," "$dir/a.log" &&
    ok "the first plan comes after the 10-update probe" || bad "no plan after the probe"
# three plans: after the probe, a tenth in, and halfway from the updates since the second only
plans=$(sed -n 's/^run.max_time .* s\/update over updates \([0-9]*\)-\([0-9]*\),.*/\1-\2/p' "$dir/a.log" | tr '\n' ' ')
echo "$plans" | awk '{ split($2, p, "-"); split($3, q, "-")
                       exit !(NF == 3 && $1 ~ /^2-/ && p[1] == 2 && q[1] == p[2] + 1) }' &&
    ok "three plans, the third timing only the updates since the second: $plans" ||
    bad "plans (updates timed): '$plans'"
last=$(ls -d "$dir"/a/ckpt/step_* | tail -1)
got=$(/usr/bin/python3 -c "import h5py, sys; f = h5py.File(sys.argv[1]); print(f.attrs['planned_updates'], f.attrs['update'])" "$last/model.h5")
[ "${got% *}" = "$n" ] && ok "the checkpoint keeps the plan ($got: planned, reached)" ||
    bad "checkpoint planned_updates/update '$got', plan $n"

# resumed: no new plan, the same count
"$train" "$@" --set run.max_time=$budget --resume --run-dir "$dir/a" >"$dir/b.log" 2>&1
rc=$?
grep -q "s/update over updates" "$dir/b.log" && bad "the resumed run planned again" ||
    ok "the resumed run keeps its plan (no new probe)"
tail -1 "$dir/b.log" | grep -q "of $n," && [ $rc -eq 0 ] &&
    ok "the resumed run works towards the same $n updates: $(tail -1 "$dir/b.log")" ||
    bad "resumed: rc $rc: $(tail -2 "$dir/b.log")"

out=$("$train" "$@" --set run.max_time=2 --set run.log_every=100000 --run-dir "$dir/c" 2>&1)
rc=$?
line=$(echo "$out" | grep "d2v: error")
[ $rc -ne 0 ] && echo "$line" | grep -q "run.max_time = 2 s allows only .*(run.log_every = 100000)" &&
    ok "a budget below one logging interval is refused: $line" || bad "small budget: rc $rc: $out"
finish
