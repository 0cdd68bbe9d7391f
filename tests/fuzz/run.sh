#!/bin/sh
# run.sh: runs each libFuzzer target of FUZZ_BUILD for SECONDS on a scratch copy of its seed
# corpus (tests/fuzz/corpus/<target>, never modified) and of the inputs of past findings
# (tests/fuzz/regress/<target>); prints executions, corpus growth and findings per target, and
# the closing "N passed, N failed".
#
# Every finding (crash, sanitizer report, leak, timeout, out-of-memory, an exit) is replayed
# alone and attributed from its stacks: to HDF5 when the fault is inside libhdf5 on memory
# libhdf5 allocated (HDF5 1.10.8 has known memory errors on damaged files that no caller can
# prevent; docs/fuzzing.md), otherwise to d2v. A d2v finding fails the target; an HDF5 one is
# counted, kept in FUZZ_BUILD/hdf5/, and fuzzing resumes for the rest of the time. Inputs and
# reports: FUZZ_BUILD/artifacts/, FUZZ_BUILD/logs/<target>.log.
# Usage: tests/fuzz/run.sh FUZZ_BUILD SECONDS [TARGET[:SECONDS]...]; FUZZ_RUNS=N also ends each
# target after N executions (SECONDS stays its cap), for a count that does not depend on the load.
set -u
fz=${1:-build/fuzz}
secs=${2:-300}
shift 2 2>/dev/null || shift $#
targets=${*:-"config dataset ckpt h5edit bpe idx image audio safetensors"}
passed=0 failed=0 total=0
mkdir -p "$fz/artifacts" "$fz/logs" "$fz/hdf5"
# allocator_may_return_null: an allocation HDF5 sizes from a damaged header fails as it would
# without ASan (HDF5 then reports an error). Leaks are looked for after the fuzzing, on every
# input it kept, with allocation stacks unwound through HDF5 (no frame pointers; slow) for
# tests/fuzz/lsan.supp; while fuzzing they are not, for speed.
asan_fuzz=detect_leaks=0:allocator_may_return_null=1
asan_leaks=detect_leaks=1:allocator_may_return_null=1:fast_unwind_on_malloc=0:malloc_context_size=8
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export LSAN_OPTIONS=suppressions=$(pwd)/tests/fuzz/lsan.supp:print_suppressions=0
flags="-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=4194304 -close_fd_mask=3"

# A report's culprit: "hdf5" when its first frame past the sanitizer, libFuzzer and libc is in
# libhdf5 and no allocation or free stack of the memory involved starts outside it; else "d2v"
# (leaks, UBSan and exits are d2v's). Also prints where; "none" when the log holds no report.
attribute() {
    awk '
    # sanitizer, libFuzzer and libc frames (the runtime in the fuzz binary has no source lines,
    # d2v code has)
    function skip(l) { return l ~ /__interceptor_|__asan|__sanitizer|__ubsan|fuzzer::|libc\.so|\/libc|sysdeps\/|raise|abort|pthread_kill|\/fuzz_[a-z0-9]+\+0x[0-9a-f]+\)/ }
    function fn(l) { if (l !~ / in [^ ]+/) return ""; sub(/^.* in /, "", l); sub(/ .*/, "", l); return l }
    /ERROR: LeakSanitizer|runtime error:|fuzz target exited|out-of-memory \(used/ { who = "d2v"; what = $0; exit }
    /ERROR: (AddressSanitizer|libFuzzer)/ { if (!what) what = $0; crash = 1; next }
    crash && /^    #[0-9]+ / { if (skip($0)) next
        if (!top) top = $0 ~ /libhdf5/ ? "hdf5" : "d2v"
        if ($0 ~ /libhdf5/ && !inh && fn($0) != "") inh = fn($0)
        if ($0 !~ /libhdf5/ && !caller) caller = fn($0)
        next }
    crash && !/^    #/ && top { crash = 0 }
    /(allocated|freed) by thread/ { mem = 1; next }
    mem && /^    #[0-9]+ / { if (skip($0)) next
        if ($0 !~ /libhdf5/) byd2v = 1; mem = 0; next }
    END { if (!who && !what) { print "none"; exit }
          if (!who) who = top == "hdf5" && !byd2v ? "hdf5" : "d2v"
          sub(/^.*ERROR: /, "", what); sub(/ on (unknown )?address.*| after.*|: detected.*| \(malloc.*/, "", what)
          print who " " what (inh ? " in " inh : "") (caller ? " (from " caller ")" : "") }' "$1"
}

for spec in $targets; do
    t=${spec%%:*} tsecs=$secs
    [ "$t" != "$spec" ] && tsecs=${spec#*:}
    bin="$fz/fuzz_$t"
    if [ ! -x "$bin" ]; then
        echo "FAIL $t: $bin not built (make fuzz-build)"
        failed=$((failed + 1))
        continue
    fi
    work=$(mktemp -d "/tmp/d2v-fuzz-$t.XXXXXX")
    cp tests/fuzz/corpus/"$t"/* "$work"/
    # the inputs of past findings, kept as regression tests
    [ -d tests/fuzz/regress/"$t" ] && cp tests/fuzz/regress/"$t"/* "$work"/
    seeds=$(ls "$work" | wc -l)
    art="$fz/artifacts/$t"
    rm -rf "$art" "$fz/hdf5/$t-"* "$fz/hdf5/$t.summary" && mkdir -p "$art"
    log="$fz/logs/$t.log"
    : >"$log"
    start=$(date +%s) execs=0 hdf5=0 d2v=0 restarts=0
    while :; do
        left=$((tsecs - ($(date +%s) - start)))
        [ "$left" -le 0 ] && break
        runs=
        if [ -n "${FUZZ_RUNS:-}" ]; then
            [ "$execs" -ge "$FUZZ_RUNS" ] && break
            runs=-runs=$((FUZZ_RUNS - execs))
        fi
        # -close_fd_mask=3: the targets' own output (rejected inputs' messages) is not shown;
        # libFuzzer's and the sanitizers' reports still are
        ASAN_OPTIONS=$asan_fuzz "$bin" -max_total_time="$left" $runs $flags -print_final_stats=1 \
            -artifact_prefix="$art/" "$work" >"$log.part" 2>&1
        rc=$?
        cat "$log.part" >>"$log"
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log.part" | tail -n 1)
        execs=$((execs + ${n:-0}))
        [ "$rc" -eq 0 ] && break
        a=$(ls -t "$art" | grep -v '\.log$' | head -n 1)
        if [ -z "$a" ]; then
            d2v=$((d2v + 1)) && echo "     exit $rc without an input (see $log)" && break
        fi
        # (an out-of-memory input is replayed with a malloc limit, for the stack of the
        # allocation; RSS growth alone has none and stays d2v's)
        case "$a" in
        oom-*) ASAN_OPTIONS=$asan_fuzz "$bin" $flags -malloc_limit_mb=1024 -rss_limit_mb=8192 \
            "$art/$a" >"$art/$a.log" 2>&1 ;;
        *) ASAN_OPTIONS=$asan_leaks "$bin" $flags "$art/$a" >"$art/$a.log" 2>&1 ;;
        esac
        verdict=$(attribute "$art/$a.log")
        # not reproducible alone (HDF5's caches carry state from earlier inputs): the report
        # the fuzzing itself printed
        [ "$verdict" = none ] && cp "$log.part" "$art/$a.log" &&
            verdict="$(attribute "$art/$a.log") (only after earlier inputs)"
        if [ "${verdict%% *}" = hdf5 ] && [ "$restarts" -lt 100 ]; then
            hdf5=$((hdf5 + 1)) restarts=$((restarts + 1))
            mv "$art/$a" "$fz/hdf5/$t-$a" && mv "$art/$a.log" "$fz/hdf5/$t-$a.log"
            echo "${verdict#hdf5 }" >>"$fz/hdf5/$t.summary"
        else
            d2v=$((d2v + 1))
            echo "     d2v finding: ${verdict#* } (input $art/$a, report $art/$a.log)"
            break
        fi
    done
    rm -f "$log.part"
    # every kept input once more, looking for leaks
    if [ "$d2v" -eq 0 ]; then
        ASAN_OPTIONS=$asan_leaks "$bin" -runs=0 $flags -artifact_prefix="$art/leak-replay-" \
            "$work" >>"$log" 2>&1 ||
            { d2v=$((d2v + 1)) && echo "     d2v finding: a leak replaying the corpus (see $log)"; }
    fi
    kept=$(ls "$work" | wc -l)
    total=$((total + execs))
    elapsed=$(($(date +%s) - start))
    line="$t: $execs executions in $elapsed s, corpus $seeds -> $kept inputs, $d2v d2v findings, $hdf5 in HDF5"
    if [ "$d2v" -eq 0 ] && [ "$execs" -gt 0 ]; then
        echo "ok   $line"
        passed=$((passed + 1))
    else
        echo "FAIL $line"
        failed=$((failed + 1))
        rm -rf "$fz/corpus-$t" && cp -r "$work" "$fz/corpus-$t"
        echo "     its corpus: $fz/corpus-$t"
    fi
    if [ "$hdf5" -gt 0 ]; then
        sort "$fz/hdf5/$t.summary" | uniq -c | sort -rn | sed 's/^/     HDF5: /'
        rm -f "$fz/hdf5/$t.summary"
    fi
    rm -rf "$work"
done
echo "fuzzing: $total executions in all"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
