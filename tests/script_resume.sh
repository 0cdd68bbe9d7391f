#!/bin/sh
# script_resume.sh: checkpoints and resume. A run stopped (RUN_DIR/stop, SIGUSR1) and resumed
# ends bit-identical to an uninterrupted one; resuming on 2 ranks continues the same trajectory;
# a checkpoint of another model is refused with a message naming the file and tensor.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d /tmp/d2v-resume.XXXXXX)
trap 'rm -rf "$dir"' EXIT
. tests/lib.sh
train="$build/bin/d2v-train"
prep_fmnist "$dir/fm.h5"
set -- configs/image-tiny.cfg --set data.train="$dir/fm.h5" --set run.max_updates=12 \
    --set run.log_every=1 --set data.batch_size=16 --set run.keep_last=0

# compare A B TOL: the newest checkpoints of two run dirs (0 = bit-identical)
compare() {
    /usr/bin/python3 - "$1" "$2" "$3" <<'PY'
import glob, sys, h5py, numpy as np
def latest(d):
    return sorted(glob.glob(d + "/ckpt/step_*/DONE"))[-1].replace("DONE", "model.h5")
a, b, tol = h5py.File(latest(sys.argv[1])), h5py.File(latest(sys.argv[2])), float(sys.argv[3])
worst = 0.0
for k in ("params", "teacher", "adam_m", "adam_v"):
    x, y = a[k][:], b[k][:]
    worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-30)))
same = a.attrs["update"] == b.attrs["update"] and a.attrs["position"] == b.attrs["position"]
print(f"update {a.attrs['update']}, worst relative difference {worst:.2e}")
sys.exit(0 if same and worst <= tol else 1)
PY
}

"$train" "$@" --run-dir "$dir/a" >/dev/null 2>&1
[ -f "$dir/a/ckpt/step_00000012/DONE" ] && ok "a finished run writes its final checkpoint" ||
    bad "no final checkpoint in $dir/a"

# stopped by RUN_DIR/stop after update 1, then resumed to the end
mkdir -p "$dir/b" && touch "$dir/b/stop"
out=$("$train" "$@" --run-dir "$dir/b" 2>&1)
rc=$?
rm -f "$dir/b/stop"
echo "$out" | grep -q "stopping after update 1" && [ $rc -eq 0 ] &&
    ok "RUN_DIR/stop: checkpoint after update 1 and a clean exit" || bad "stop file: $out"
"$train" "$@" --run-dir "$dir/b" --resume >/dev/null 2>&1
msg=$(compare "$dir/a" "$dir/b" 0) && ok "stop + resume is bit-identical to straight: $msg" ||
    bad "stop + resume differs: $msg"

# resumed on 2 ranks (8 each) from a 1-rank checkpoint of the same batch 16: the same trajectory (summation order only)
mkdir -p "$dir/c" && touch "$dir/c/stop"
"$train" "$@" --run-dir "$dir/c" >/dev/null 2>&1
rm -f "$dir/c/stop"
timeout 300 mpirun --oversubscribe -np 2 "$train" "$@" --run-dir "$dir/c" \
    --resume >/dev/null 2>&1
msg=$(compare "$dir/a" "$dir/c" 1e-5) && ok "resume on 2 ranks continues the same run: $msg" ||
    bad "resume on 2 ranks: $msg"

# SIGUSR1 (Slurm --signal) mid-run: checkpoint, clean exit, resume to the same end
"$train" "$@" --set run.max_updates=100000 --run-dir "$dir/d" >/dev/null 2>&1 &
pid=$!
i=0
lines() { [ -f "$dir/d/metrics.jsonl" ] && wc -l <"$dir/d/metrics.jsonl" || echo 0; }
while [ $i -lt 300 ] && [ "$(lines)" -lt 5 ]; do
    sleep 0.1
    i=$((i + 1))
done
kill -USR1 $pid
wait $pid
rc=$?
ls "$dir"/d/ckpt/step_*/DONE >/dev/null 2>&1 && [ $rc -eq 0 ] &&
    ok "SIGUSR1: checkpoint and exit 0 ($(ls -d "$dir"/d/ckpt/step_* | sed 's/.*step_//'))" ||
    bad "SIGUSR1: exit $rc, no checkpoint"

# a checkpoint of another model is refused, naming file and tensor; it stays in place
out=$("$train" "$@" --set model.width=32 --run-dir "$dir/a" --resume 2>&1)
rc=$?
line=$(echo "$out" | grep '^d2v: error:')
echo "$line" | grep -q "step_00000012/model.h5: .*another config" && [ $rc -ne 0 ] &&
    ok "incompatible checkpoint refused: $line" || bad "incompatible checkpoint: $out"
[ -f "$dir/a/ckpt/step_00000012/DONE" ] && ok "the refused checkpoint is untouched" ||
    bad "the refused checkpoint was removed"

# d2v-eval on the finished run: a kNN probe of the frozen features (labels from the IDX file)
out=$("$build/bin/d2v-eval" "$dir/a" --train "$dir/fm.h5" --test "$dir/fm.h5" --k 5 2>&1)
acc=$(echo "$out" | sed -n 's/.*top-1 accuracy \([0-9.]*\)%.*/\1/p')
[ -n "$acc" ] && echo "$out" | grep -q "500 train, 500 test" &&
    ok "d2v-eval: kNN accuracy $acc% of the final checkpoint (test = train here)" ||
    bad "d2v-eval: $out"
"$build/bin/d2v-prep-image" --idx-images tests/fixtures/fmnist-t500-images-idx3.gz \
    -o "$dir/nolabels.h5" >/dev/null
out=$("$build/bin/d2v-eval" "$dir/a" --train "$dir/nolabels.h5" --test "$dir/fm.h5" 2>&1)
echo "$out" | grep -q "nolabels.h5: has no /labels" && ok "d2v-eval refuses unlabelled data" ||
    bad "d2v-eval on unlabelled data: $out"

finish
