#!/bin/sh
# Runs every test binary in BUILD/tests and prints the combined "N passed, N failed" line.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} BLIS_NUM_THREADS=${BLIS_NUM_THREADS:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
passed=0 failed=0 broken=""
for t in "$build"/tests/test_* tests/script_*.sh; do
    [ -x "$t" ] || continue
    case "$t" in
    *.d) continue ;;
    */test_mpi_*) cmd="mpirun --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x BLIS_NUM_THREADS=1 $t" ;;
    *.sh) cmd="$t $build" ;;
    *) cmd="$t" ;;
    esac
    echo "== $cmd"
    out=$($cmd 2>&1); rc=$?
    echo "$out"
    line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    p=$(echo "$line" | sed -E 's/^([0-9]+) passed.*/\1/'); f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    [ -n "$line" ] || { p=0; f=1; }
    [ $rc -ne 0 ] && [ "$f" -eq 0 ] && f=1
    passed=$((passed + p)); failed=$((failed + f))
    [ "$f" -ne 0 ] && broken="$broken $(basename "$t")"
done
[ -n "$broken" ] && echo "failing:$broken"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
