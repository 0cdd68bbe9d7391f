#!/bin/bash
# sweep.sh: the sweep-file parser shared by jobs/sweep-submit.sh, jobs/sweep.sbatch and
# make ablations. A sweep file holds one variant per line: a name, then --set overrides as
# key=value words (a leading "--set" before a word is allowed; values hold no spaces); blank lines
# and lines starting with # are skipped. The name "untrained" is reserved: that task probes the
# untrained initialisation of the config (the baseline) instead of pretraining.
#   jobs/sweep.sh count SWEEP                  number of variants (array tasks 0..count-1)
#   jobs/sweep.sh get SWEEP I                  variant I: its line number, name, then one k=v a line
#   jobs/sweep.sh check CONFIG SWEEP [--ranks N] [--set k=v ...]
#                                              every variant through d2v-train --check-config;
#                                              each error as SWEEP:LINE: ..., exit 1 if any
# D2V_BIN: where d2v-train is (default build/release/bin).
set -uo pipefail
bin=${D2V_BIN:-build/release/bin}
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# variants SWEEP: "LINE<TAB>NAME<TAB>k=v k=v ..." per variant; syntax errors as SWEEP:LINE: on
# stderr (and exit 1 after reading the whole file).
variants() {
    [ -r "$1" ] || { echo "$1: no such file or not readable" >&2; return 1; }
    awk -v f="$1" '
        function err(msg) { printf "%s:%d: %s\n", f, NR, msg > "/dev/stderr"; bad = 1 }
        { sub(/\r$/, "") }
        /^[ \t]*(#|$)/ { next }
        {
            name = $1; sets = ""
            if (name ~ /=/ || name ~ /^-/) { err("the line must start with a variant name, not \"" name "\""); next }
            if (name !~ /^[A-Za-z0-9_.+-]+$/) { err("variant name \"" name "\": letters, digits and _ . + - only (it names the run directory)"); next }
            if (name in seen) { err("variant \"" name "\" already defined on line " seen[name]); next }
            seen[name] = NR
            for (i = 2; i <= NF; i++) {
                if ($i == "--set") continue
                if ($i !~ /^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*=./) { err("variant " name ": \"" $i "\" is not key=value"); continue }
                sets = sets (sets == "" ? "" : " ") $i
            }
            printf "%d\t%s\t%s\n", NR, name, sets
        }
        END { exit bad }' "$1"
}

cmd=${1:-}
[ $# -ge 2 ] || usage
case $cmd in
count)
    v=$(variants "$2") || exit 1
    [ -n "$v" ] || { echo "$2: no variants" >&2; exit 1; }
    echo "$v" | wc -l
    ;;
get)
    [ $# -eq 3 ] || usage
    v=$(variants "$2") || exit 1
    row=$(echo "$v" | sed -n "$(($3 + 1))p")
    [ -n "$row" ] || { echo "$2: no variant $3 (it has $(echo "$v" | grep -c .))" >&2; exit 1; }
    IFS=$'\t' read -r line name sets <<<"$row"
    printf '%s\n%s\n' "$line" "$name"
    for s in $sets; do printf '%s\n' "$s"; done
    ;;
check)
    [ $# -ge 3 ] || usage
    config=$2 sweep=$3
    shift 3
    extra=()
    while [ $# -gt 0 ]; do
        case $1 in
        --ranks) extra+=(--ranks "$2"); shift 2 ;;
        --set) extra+=(--set "$2"); shift 2 ;;
        *) echo "sweep.sh check: unexpected argument '$1'" >&2; exit 2 ;;
        esac
    done
    v=$(variants "$sweep")
    rc=$?
    [ -n "$v" ] || { [ $rc -ne 0 ] || echo "$sweep: no variants" >&2; exit 1; }
    n=0
    while IFS=$'\t' read -r line name sets; do
        args=()
        for s in $sets; do args+=(--set "$s"); done
        # the values a task adds itself, so that they are checked too
        [ "$name" = untrained ] && args+=(--set run.max_updates=1)
        out=$("$bin/d2v-train" "$config" "${extra[@]}" "${args[@]}" --check-config 2>&1)
        if [ $? -ne 0 ]; then
            msg=$(echo "$out" | grep -m 1 'error' | sed 's/^d2v: error: //')
            echo "$sweep:$line: variant $name: ${msg:-$out}" >&2
            rc=1
        fi
        n=$((n + 1))
    done <<<"$v"
    [ $rc -eq 0 ] && echo "$sweep: $n variants, every one valid for $config"
    exit $rc
    ;;
*) usage ;;
esac
