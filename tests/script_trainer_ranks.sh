#!/bin/sh
# script_trainer_ranks.sh: data parallelism is transparent: 2 ranks x batch B give the same
# losses and gradient norms as 1 rank x batch 2B (masks, dropout and drop path are keyed on the
# global sample index; only the summation order differs).
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d /tmp/d2v-ranks.XXXXXX)
trap 'rm -rf "$dir"' EXIT
passed=0 failed=0
"$build/bin/d2v-prep-image" --idx-images tests/fixtures/fmnist-t500-images-idx3.gz \
    --idx-labels tests/fixtures/fmnist-t500-labels-idx1.gz -o "$dir/fm.h5" >/dev/null
set -- configs/image-tiny.cfg --set data.train="$dir/fm.h5" --set run.max_updates=8 \
    --set run.log_every=1
"$build/bin/d2v-train" "$@" --set data.batch_size=16 --run-dir "$dir/one" >/dev/null 2>&1
timeout 300 mpirun --oversubscribe -np 2 "$build/bin/d2v-train" "$@" --set data.batch_size=8 \
    --run-dir "$dir/two" >/dev/null 2>&1
/usr/bin/python3 - "$dir/one/metrics.jsonl" "$dir/two/metrics.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
ok = len(a) == len(b) == 8
worst = 0.0
for x, y in zip(a, b):
    for k in ("loss", "grad_norm", "target_var", "pred_var"):
        worst = max(worst, abs(x[k] - y[k]) / max(abs(x[k]), 1e-12))
print(f"{'ok  ' if ok and worst < 1e-4 else 'FAIL'} 2 ranks x 8 == 1 rank x 16 over {len(a)} updates "
      f"(worst relative difference {worst:.1e})")
sys.exit(0 if ok and worst < 1e-4 else 1)
PY
[ $? -eq 0 ] && passed=1 || failed=1
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
