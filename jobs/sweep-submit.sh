#!/bin/bash
# sweep-submit.sh: submit jobs/sweep.sbatch as one Slurm array task per variant of SWEEP, after
# checking, before anything is queued, every line (d2v-train --check-config for the job's rank
# count: an unknown key or a bad value is reported as SWEEP:LINE), the probe datasets and that
# OUT_DIR/results.jsonl is writable. Nothing is submitted when any check fails.
# Usage: jobs/sweep-submit.sh CONFIG SWEEP OUT_DIR --probe-train F --probe-test F [--budget S]
#            [--probe-variant V] [--set k=v ...] [-- sbatch options, e.g. --ntasks=4 --array=%2]
# An --array option after -- gives only the throttle (e.g. --array=%2); the index range is the
# sweep's. Prints the array job id.
set -uo pipefail
[ $# -ge 3 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
here=$(dirname "$0")
config=$1 sweep=$2 out=$3
shift 3
task_args=() sets=() sb=() ntasks=1 throttle="" ptrain="" ptest=""
while [ $# -gt 0 ]; do
    case $1 in
    --) shift; sb=("$@"); break ;;
    --set) sets+=(--set "$2"); task_args+=(--set "$2"); shift 2 ;;
    --probe-train) ptrain=$2; task_args+=("$1" "$2"); shift 2 ;;
    --probe-test) ptest=$2; task_args+=("$1" "$2"); shift 2 ;;
    --budget | --probe-variant) task_args+=("$1" "$2"); shift 2 ;;
    *) echo "sweep-submit.sh: unexpected argument '$1'" >&2; exit 2 ;;
    esac
done
filtered=()
for ((i = 0; i < ${#sb[@]}; i++)); do # the rank count the tasks will run with, and the throttle
    o=${sb[$i]}
    case $o in
    --ntasks=*) ntasks=${o#--ntasks=} ;;
    -n | --ntasks) ntasks=${sb[$((i + 1))]} ;;
    -n*) ntasks=${o#-n} ;;
    esac
    case $o in
    --array=*) throttle=${o#--array=}; throttle=${throttle##*%}; continue ;;
    esac
    filtered+=("$o")
done
fail=0
for f in "$ptrain" "$ptest"; do
    [ -n "$f" ] && [ -r "$f" ] || { echo "sweep-submit.sh: probe dataset '${f}' (--probe-train, --probe-test) is not readable" >&2; fail=1; }
done
mkdir -p "$out" 2>/dev/null
{ : >>"$out/results.jsonl"; } 2>/dev/null && [ -f "$out/results.jsonl" ] ||
    { echo "sweep-submit.sh: results file $out/results.jsonl is not writable" >&2; fail=1; }
"$here/sweep.sh" check "$config" "$sweep" --ranks "$ntasks" "${sets[@]}" || fail=1
[ $fail -eq 0 ] || { echo "sweep-submit.sh: nothing submitted" >&2; exit 1; }
n=$("$here/sweep.sh" count "$sweep") || exit 1
jid=$(sbatch --parsable --array="0-$((n - 1))${throttle:+%$throttle}" "${filtered[@]}" \
    "$here/sweep.sbatch" "$config" "$sweep" "$out" "${task_args[@]}") || exit 1
echo "submitted array job $jid: $n variants of $sweep, results in $out/results.jsonl"
