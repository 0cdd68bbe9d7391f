#!/bin/sh
# demo.sh: the main job end to end on one machine: Fashion-MNIST (Debian's dataset-fashion-mnist)
# -> HDF5 with d2v-prep-image -> data2vec image pretraining with d2v-train (configs/image-tiny.cfg)
# -> a kNN probe of the frozen features with d2v-eval, against the untrained model -> frozen
# features of both with d2v-extract, linear and kNN probes with d2v-probe (JSON reports), and the
# training curves with d2v-plot (docs/evaluation.md).
set -eu
build=${1:-build/release}
[ $# -gt 0 ] && shift
src=/usr/share/datasets/fashion-mnist
names="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
mkdir -p data runs
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
threads=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads} BLIS_NUM_THREADS=${BLIS_NUM_THREADS:-$threads}
for split in train t10k; do
    out=data/fmnist-$split.h5
    [ "$split" = t10k ] && out=data/fmnist-test.h5
    if [ ! -f "$out" ]; then
        "$build/bin/d2v-prep-image" --idx-images "$src/$split-images-idx3-ubyte.gz" \
            --idx-labels "$src/$split-labels-idx1-ubyte.gz" --class-names "$names" -o "$out"
    fi
done
echo "== pretraining (configs/image-tiny.cfg, $threads threads); metrics in runs/demo/metrics.jsonl"
# --resume: a finished earlier demo is kept (and reused), an interrupted one continues
"$build/bin/d2v-train" configs/image-tiny.cfg --run-dir runs/demo --resume "$@"
echo "== kNN probe of the frozen features on fmnist-test (pretrained vs the same model untrained)"
"$build/bin/d2v-eval" runs/demo --train data/fmnist-train.h5 --test data/fmnist-test.h5 2>/dev/null | grep kNN
"$build/bin/d2v-eval" runs/demo --train data/fmnist-train.h5 --test data/fmnist-test.h5 \
    --random-init 2>/dev/null | grep kNN
echo "== frozen features (d2v-extract) of the pretrained and the untrained model, both splits"
feat=runs/demo/features
mkdir -p "$feat"
for net in student random-init; do
    flag=""
    [ "$net" = random-init ] && flag=--random-init
    for split in train test; do
        out=$feat/$net-$split.h5
        rm -f "$out" # this demo's own output: always from the run's newest checkpoint
        "$build/bin/d2v-extract" runs/demo $flag --data "data/fmnist-$split.h5" -o "$out" --quiet |
            grep wrote
    done
done
echo "== linear (softmax regression, L-BFGS, held-out L2) and kNN probes (d2v-probe)"
for net in student random-init; do
    "$build/bin/d2v-probe" "$feat/$net-train.h5" "$feat/$net-test.h5" --json "runs/demo/probe-$net.json"
done
"$build/bin/d2v-plot" runs/demo -o runs/demo/metrics.png
echo "== reports: runs/demo/probe-student.json (pretrained), runs/demo/probe-random-init.json"
echo "   (untrained); training curves: runs/demo/metrics.png"
