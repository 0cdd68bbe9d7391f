#!/bin/sh
# Installs the Debian packages d2v needs, only those missing; a no-op when all are present.
# Usage: scripts/deps.sh [--test|--demo|--demo-image|--demo-speech|--demo-text|--fuzz]
#   --test adds the PyTorch reference stack for tests/ref; --demo (= --demo-image) adds
#   Fashion-MNIST; --demo-speech the synthesisers of data-prep/fetch_speech.sh (espeak-ng, flite);
#   --demo-text WordNet for data-prep/fetch_text.sh (wordnet-base); --fuzz adds
#   clang with libFuzzer and the sanitizer runtimes (libclang-rt-14-dev holds clang 14's
#   -fsanitize=fuzzer library, libfuzzer-14-dev the standalone one) and llvm-symbolizer (llvm)
#   for the fuzz targets of tests/fuzz.
set -eu
pkgs="libopenmpi-dev openmpi-bin libblis-dev libhdf5-dev hdf5-tools libconfig-dev pkg-config zlib1g-dev libpng-dev libjpeg62-turbo-dev libsndfile1-dev libsamplerate0-dev libjson-c-dev gnuplot-nox jq"
case "${1:-}" in
--test) pkgs="$pkgs python3-torch python3-h5py python3-numpy" ;;
--demo | --demo-image) pkgs="$pkgs dataset-fashion-mnist" ;;
--demo-speech) pkgs="$pkgs espeak-ng flite" ;;
--demo-text) pkgs="$pkgs wordnet-base" ;; # npm: fetch_text.sh installs it if no npm is on PATH
--fuzz) pkgs="$pkgs clang libclang-rt-14-dev libfuzzer-14-dev llvm" ;;
esac
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "deps: need root or sudo to install:$missing" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
