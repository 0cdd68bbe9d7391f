#!/bin/sh
# make bench: encoder fwd+bwd at 1 and 2 threads beside the BLIS rate and PyTorch on the same model.
set -eu
build=${1:-build/release}
for t in 1 2; do
    echo "== d2v encoder, $t thread(s)"
    OMP_NUM_THREADS=$t BLIS_NUM_THREADS=$t "$build/bench/bench_encoder" "$t"
    echo "== d2v modality front-ends, $t thread(s)"
    OMP_NUM_THREADS=$t BLIS_NUM_THREADS=$t "$build/bench/bench_frontends" "$t"
    if /usr/bin/python3 -c "import torch" 2>/dev/null; then
        echo "== PyTorch reference, $t thread(s)"
        OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t /usr/bin/python3 bench/torch_encoder.py "$t"
    fi
done
echo "== training updates, small configs, 2 threads"
OMP_NUM_THREADS=2 BLIS_NUM_THREADS=2 "$build/bench/bench_train" 2
echo "== dataset reader and loader alone (no model), 1 thread"
OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1 "$build/bench/bench_loader"
