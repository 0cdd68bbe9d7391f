#!/bin/sh
# script_tta.sh: a short make tta (bench/tta.sh) on the 500 fixture images: two budgets of a few
# seconds, image-tiny against image-v2-tiny. Every row has both recipes' updates and probe
# accuracies, both readings of the ratio and the random-init lines are printed; a failing probe
# and an existing output directory stop it with one line.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
dir=$(mktemp -d /tmp/d2v-tta.XXXXXX)
trap 'rm -rf "$dir"' EXIT
. tests/lib.sh
prep_fmnist "$dir/fm.h5" || { bad "d2v-prep-image"; finish; exit; }
# the tiny configs, logging (and so planning) every 5 updates to fit budgets of seconds
for m in v1 v2; do
    cfg=configs/image-tiny.cfg
    [ $m = v2 ] && cfg=configs/image-v2-tiny.cfg
    sed 's/log_every = 100;/log_every = 5;/' "$cfg" >"$dir/$m.cfg"
done
run() { # OUT [env...]: bench/tta.sh into OUT
    out=$1
    shift
    env TTA_BUDGETS="6 12" TTA_RANKS=2 TTA_TRAIN="$dir/fm.h5" TTA_TEST="$dir/fm.h5" \
        TTA_V1="$dir/v1.cfg" TTA_V2="$dir/v2.cfg" "$@" sh bench/tta.sh "$build" "$out"
}
run "$dir/a" >"$dir/a.log" 2>&1
rc=$?
[ $rc -eq 0 ] && ok "a 2-budget run finishes" || bad "tta: rc $rc: $(tail -3 "$dir/a.log")"
rows=$(awk 'NF == 9 && $2 > 0 && $3 > 10 && $7 > 0 && $8 > 10' "$dir/a/table.txt" 2>/dev/null | wc -l)
[ "$rows" -eq 2 ] && ok "two table rows with updates and accuracies: $(tr '\n' ';' <"$dir/a/table.txt")" ||
    bad "table: $(cat "$dir/a/table.txt" 2>&1)"
n=$(grep -c "^   \(linear probe\|kNN\): v2 \(reaches\|did not reach\) v1's" "$dir/a.log")
[ "$n" -eq 4 ] && ok "both readings of the ratio, linear and kNN" || bad "$n ratio lines: $(cat "$dir/a.log")"
n=$(grep -c "^   v[12] at random init (the same network untrained): [0-9.]*% linear" "$dir/a.log")
[ "$n" -eq 2 ] && ok "random-init lines: $(grep -m1 'random init' "$dir/a.log" | sed 's/^ *//')" ||
    bad "$n random-init lines"
[ -f "$dir/a/v1-12/probe-random-init.json" ] && [ -f "$dir/a/v2-12/probe.json" ] &&
    ok "probe reports kept per run" || bad "probe reports: $(ls "$dir/a"/*)"

# an existing output directory is not touched
mkdir "$dir/keep" && echo x >"$dir/keep/mine"
err=$(run "$dir/keep" 2>&1)
rc=$?
[ $rc -ne 0 ] && [ "$(cat "$dir/keep/mine")" = x ] && echo "$err" | grep -q "keep exists; not overwritten" &&
    ok "an existing output directory is refused: $err" || bad "existing dir: rc $rc, $err"

# negative control: a test split the probe cannot use (image features against a wrong-shaped
# file) ends the run with the run named, instead of a 0.00 row
/usr/bin/python3 -c "import h5py, numpy; f = h5py.File('$dir/junk.h5', 'w'); f['x'] = numpy.zeros(3)" ||
    bad "h5py"
run "$dir/b" TTA_TEST="$dir/junk.h5" >"$dir/b.log" 2>&1
rc=$?
[ $rc -ne 0 ] && grep -q "^tta: probing $dir/b/v1-6 failed" "$dir/b.log" && [ ! -s "$dir/b/table.txt" ] &&
    ok "a failing probe stops it: $(grep '^tta:' "$dir/b.log")" ||
    bad "failing probe: rc $rc, $(tail -3 "$dir/b.log")"
finish
