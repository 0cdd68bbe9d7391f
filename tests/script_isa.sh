#!/bin/sh
# script_isa.sh: every element-wise row kernel compiled for each ISA level really is vector code:
# each simd_<isa>_* function of build/.../simd_<isa>.o must use packed instructions on that
# level's widest registers (base: packed SSE on xmm; avx2: ymm; avx512: zmm). A loop GCC leaves
# scalar (as target_clones once did for the AVX2 GELU) fails here, whatever CPU runs the test.
set -u
build=${1:-build/release}
passed=0 failed=0
# Vector code is a property of the optimised build: a MODE=asan or debug build (-O1, -O0) checks
# the release objects when they are there (make test-asan builds them for the fuzzers).
case "$build" in
*/asan | */debug)
    if [ -f build/release/src/kernels/simd_base.o ]; then
        echo "($build is not optimised: checking build/release's objects)"
        build=build/release
    else
        echo "skipped: $build is not optimised and build/release has no kernel objects"
        echo "0 passed, 0 failed"
        exit 0
    fi ;;
esac
for isa in base avx2 avx512; do
    obj="$build/src/kernels/simd_$isa.o"
    if [ ! -f "$obj" ]; then
        failed=$((failed + 1)); echo "FAIL $obj missing"; continue
    fi
    case $isa in
    base) pat='(mul|add|sub|max|min|and|or|div)p[sd][[:space:]].*%xmm' ;;
    avx2) pat='v(fmadd|fnmadd|fmsub|mul|add|sub|max|min|div|blendv|and)[0-9a-z]*p[sd][[:space:]].*%ymm' ;;
    avx512) pat='v(fmadd|fnmadd|fmsub|mul|add|sub|max|min|div|blendm|and)[0-9a-z]*p[sd][[:space:]].*%zmm' ;;
    esac
    report=$(objdump -d --no-show-raw-insn "$obj" | awk -v pat="$pat" -v isa="$isa" '
        /^[0-9a-f]+ <simd_/ { if (f != "") print f, n, s; f = $2; gsub(/[<>:]/, "", f); n = 0; s = 0; next }
        /^[0-9a-f]+ </ { if (f != "") print f, n, s; f = ""; next }
        f != "" && $0 ~ pat { n++ }
        f != "" && /(mul|add|sub)ss[[:space:]]/ { s++ }
        END { if (f != "") print f, n, s }')
    [ -n "$report" ] || { failed=$((failed + 1)); echo "FAIL $isa: no simd_ functions in $obj"; }
    echo "$report" | while read -r fn n s; do
        [ -n "$fn" ] || continue
        case "$isa:$fn" in # SSE2 has no 64-bit vector multiply: the counter hash stays scalar there
        base:*dropout_* | base:*branch_*) echo "ok   $isa $fn: scalar allowed (64-bit hash, no SSE2 multiply)"; continue ;;
        esac
        if [ "$n" -gt 0 ]; then echo "ok   $isa $fn: $n packed ops on its widest registers ($s scalar)"
        else echo "FAIL $isa $fn: no packed ops on its widest registers ($s scalar): a scalar loop"; fi
    done > "/tmp/d2v-isa.$$"
    p=$(grep -c '^ok' "/tmp/d2v-isa.$$"); f=$(grep -c '^FAIL' "/tmp/d2v-isa.$$")
    cat "/tmp/d2v-isa.$$"; rm -f "/tmp/d2v-isa.$$"
    [ "$p" -eq 15 ] || { echo "FAIL $isa: $p of 15 kernels checked"; f=$((f + 1)); }
    passed=$((passed + p)); failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
