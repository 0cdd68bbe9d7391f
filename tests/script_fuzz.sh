#!/bin/sh
# script_fuzz.sh: the short fuzzing run of make test: every libFuzzer target of tests/fuzz for
# FUZZ_TEST_SECONDS (default 20) on its seed corpus and past findings, through tests/fuzz/run.sh
# (make fuzz is the long run; docs/fuzzing.md). Skips, saying so, only when clang cannot build a
# libFuzzer binary here (scripts/deps.sh --fuzz installs it).
set -u
secs=${FUZZ_TEST_SECONDS:-20}
probe=$(mktemp -d /tmp/d2v-fuzz-probe.XXXXXX)
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' >"$probe/p.c"
if ! command -v clang >/dev/null 2>&1 ||
    ! clang -fsanitize=fuzzer,address,undefined "$probe/p.c" -o "$probe/p" >/dev/null 2>&1; then
    rm -rf "$probe"
    echo "skipped: clang with libFuzzer is not installed (scripts/deps.sh --fuzz installs it)"
    echo "0 passed, 0 failed"
    exit 0
fi
rm -rf "$probe"
out=$(make -s fuzz-build 2>&1) || { echo "$out" | tail -n 20; echo "FAIL make fuzz-build"; echo "0 passed, 1 failed"; exit 1; }
OMP_NUM_THREADS=1 tests/fuzz/run.sh build/fuzz "$secs"
