#!/bin/sh
# fetch_images.sh: Fashion-MNIST (Debian package dataset-fashion-mnist, MIT licence, Zalando SE) to
# d2v image datasets OUT_DIR/fmnist-train.h5 (60,000 images) and OUT_DIR/fmnist-test.h5 (10,000),
# 28x28x1 with the ten class names, via d2v-prep-image.
# Usage: data-prep/fetch_images.sh OUT_DIR [BUILD_DIR]
#   NP=4 ...                     prepare on 4 MPI ranks (an index file plus 4 shards per split)
#   PREP_ARGS="--size 32x32 --channels 3" ...   extra d2v-prep-image options
set -eu
out=${1:?usage: data-prep/fetch_images.sh OUT_DIR [BUILD_DIR]}
build=${2:-build/release}
prep=$build/bin/d2v-prep-image
src=/usr/share/datasets/fashion-mnist
names="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"

[ -x "$prep" ] || { echo "fetch_images: $prep not found; run: make $prep" >&2; exit 1; }
if [ ! -e "$src/train-images-idx3-ubyte.gz" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "fetch_images: installing dataset-fashion-mnist (31 MB)"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        dataset-fashion-mnist || {
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            dataset-fashion-mnist
    }
fi

mkdir -p "$out"
run() {
    if [ "${NP:-1}" -gt 1 ]; then mpirun -np "$NP" "$@"; else "$@"; fi
}
for pair in train:train t10k:test; do
    in=${pair%%:*} split=${pair#*:}
    # PREP_ARGS is split into words on purpose.
    # shellcheck disable=SC2086
    run "$prep" --idx-images "$src/$in-images-idx3-ubyte.gz" --idx-labels "$src/$in-labels-idx1-ubyte.gz" \
        --class-names "$names" ${PREP_ARGS:-} -o "$out/fmnist-$split.h5"
done
echo "fetch_images: wrote $out/fmnist-train.h5 and $out/fmnist-test.h5"
