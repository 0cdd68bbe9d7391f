#!/bin/sh
# script_faults.sh: fault trials on real d2v-train jobs (docs/reliability.md). A frozen rank
# (SIGSTOP, as a wedged node or a hung NFS read looks) ends the whole 2-rank job within the
# watchdog limit plus 10 s, with one line naming the waiting rank; a dead rank (kill -9) ends it
# too; kill -9 at random moments then --resume ends bit-identical to an uninterrupted run; a
# damaged newest checkpoint is moved aside and --resume continues from the previous one, again
# bit-identical; flipped bits in a dataset's HDF5 metadata are refused or harmless, never read
# as other values. TRIALS (default 1, `make faults`: more) per kind. Usage: script_faults.sh BUILD
# [TRIALS]
set -u
build=${1:-build/release}
trials=${2:-1}
kinds=${FAULT_KINDS:-"rank drift kill meta damage"} # which trials (make faults FAULT_KINDS=...)
want() { case " $kinds " in *" $1 "*) return 0 ;; esac; return 1; }
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
dir=$(mktemp -d /tmp/d2v-faults.XXXXXX)
trap 'pkill -CONT -f "$dir" 2>/dev/null; pkill -9 -f "$dir" 2>/dev/null; rm -rf "$dir"' EXIT
. tests/lib.sh
train="$build/bin/d2v-train"
prep_fmnist "$dir/fm.h5"
set -- configs/image-tiny.cfg --set data.train="$dir/fm.h5" --set run.log_every=1 \
    --set data.batch_size=16

# pid of rank R of the d2v-train job whose run directory is $1
rank_pid() {
    for p in $(pgrep -f "run-dir $1"); do
        [ "$(tr '\0' '\n' </proc/"$p"/environ 2>/dev/null | sed -n 's/^OMPI_COMM_WORLD_RANK=//p')" = "$2" ] &&
            echo "$p" && return
    done
}

# wait until the run in $1 has logged $2 updates (at most 120 s)
wait_updates() {
    i=0
    while [ "$(cat "$1/metrics.jsonl" 2>/dev/null | wc -l)" -lt "$2" ] && [ $i -lt 240 ]; do
        sleep 0.5
        i=$((i + 1))
    done
}

limit=4
want rank && sigs="STOP KILL" || sigs=""
for sig in $sigs; do
    for k in $(seq 1 "$trials"); do
        run="$dir/$sig-$k"
        start=$(date +%s)
        timeout 200 mpirun --oversubscribe -np 2 "$train" "$@" --set run.max_updates=100000 \
            --set run.watchdog_s=$limit --run-dir "$run" >"$run.log" 2>&1 &
        job=$!
        wait_updates "$run" 3
        victim=$(rank_pid "$run" 1)
        [ -n "$victim" ] || { bad "$sig trial $k: no rank 1 found"; kill -9 $job; continue; }
        t0=$(date +%s)
        kill -"$sig" "$victim"
        wait $job
        rc=$?
        took=$(($(date +%s) - t0))
        kill -CONT "$victim" 2>/dev/null
        kill -9 "$victim" 2>/dev/null
        if [ "$sig" = STOP ]; then
            line=$(grep -m1 "watchdog: no progress" "$run.log")
            if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le $((limit + 10)) ] &&
                echo "$line" | grep -q "\[rank 0\].*another rank is stuck"; then
                ok "rank 1 frozen (SIGSTOP), trial $k: the job ended after $took s (limit $limit s): $line"
            else
                bad "rank 1 frozen, trial $k: rc $rc after $took s; log: $(tail -3 "$run.log")"
            fi
        else
            if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -le 10 ]; then
                ok "rank 1 killed (kill -9), trial $k: the job ended after $took s (rc $rc)"
            else
                bad "rank 1 killed, trial $k: rc $rc after $took s"
            fi
        fi
        [ -z "$(pgrep -f "run-dir $run")" ] && ok "$sig trial $k: no process of the job is left" ||
            bad "$sig trial $k: processes left: $(pgrep -f "run-dir $run")"
    done
done

# replicas that drift apart: one parameter changed on rank 1 after update 3 (a silent memory
# error), or rank 1 a step ahead; the replica check (every 2 updates here) and the schedule
# broadcast stop the job with a line naming the rank and the tensor
want drift && faults="params counter" || faults=""
for fault in $faults; do
    out=$(D2V_FAULT=$fault:1:3 timeout 120 mpirun --oversubscribe -np 2 -x D2V_FAULT "$train" "$@" \
        --set run.max_updates=8 --set run.consistency_every=2 --set run.checkpoint_every=0 \
        --run-dir "$dir/drift-$fault" 2>&1)
    rc=$?
    case $fault in
    params) want="replicas drifted apart at update 4: rank 1 differs from rank 0 in .* of /params" ;;
    counter) want="\[rank 1\] replicas out of step: this rank is at update 4, rank 0 at 3" ;;
    esac
    line=$(echo "$out" | grep -m1 "d2v: error")
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "$line" | grep -q "$want" &&
        ok "D2V_FAULT=$fault:1:3: the job stops: $line" || bad "D2V_FAULT=$fault:1:3: rc $rc: $line"
done
if want drift; then
    out=$(timeout 120 mpirun --oversubscribe -np 2 "$train" "$@" --set run.max_updates=4 \
        --set run.consistency_every=1 --run-dir "$dir/nodrift" 2>&1)
    [ $? -eq 0 ] && ok "no fault: the replica check passes every update" || bad "no fault: $out"
fi

# kill -9 at a random moment (mid-update, mid-checkpoint), then --resume until done: the run
# ends bit-identical to an uninterrupted one
set -- "$@" --set run.max_updates=8 --set run.checkpoint_every=2 --set run.keep_last=0
"$train" "$@" --run-dir "$dir/whole" >/dev/null 2>&1
same() { # RUN_A RUN_B: the final checkpoints hold the same bits
    for k in params teacher adam_m adam_v; do
        h5diff "$1/ckpt/step_00000008/model.h5" "$2/ckpt/step_00000008/model.h5" /$k >/dev/null 2>&1 ||
            return 1
    done
}
good=0
want kill && n_kill=$trials || n_kill=0
for k in $(seq 1 "$n_kill"); do
    run="$dir/kill-$k"
    delay=$(awk -v s="$k" 'BEGIN { srand(s * 7919); printf "%.2f", 0.3 + 2.5 * rand() }')
    "$train" "$@" --run-dir "$run" >/dev/null 2>&1 &
    sleep "$delay"
    kill -9 $! 2>/dev/null
    wait $! 2>/dev/null
    tries=0
    while [ ! -f "$run/ckpt/step_00000008/DONE" ] && [ $tries -lt 5 ]; do
        "$train" "$@" --resume --run-dir "$run" >"$run.log" 2>&1
        tries=$((tries + 1))
    done
    same "$dir/whole" "$run" && good=$((good + 1)) ||
        echo "     kill after $delay s: not bit-identical (log $(tail -2 "$run.log"))"
done
if want kill; then
    [ "$good" -eq "$trials" ] &&
        ok "kill -9 at a random moment, then --resume: $good of $trials trials bit-identical" ||
        bad "kill -9 then --resume: only $good of $trials trials bit-identical"
fi
# damaged HDF5 metadata of a d2v dataset (not its data: a few flipped bits anywhere else, 20 x
# TRIALS files): each read through d2v-extract --raw either is refused with one line or gives
# exactly the undamaged samples; never a crash, a hang or silently different values (the 1.8
# file format's metadata checksums; docs/reliability.md §1)
if want meta; then
    "$build/bin/d2v-extract" --raw --data "$dir/fm.h5" -o "$dir/meta-ref.h5" >/dev/null 2>&1
    out=$(/usr/bin/python3 - "$build/bin/d2v-extract" "$dir" $((20 * trials)) <<'PY'
import os, random, subprocess, sys
import h5py, numpy as np
tool, d, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
src = d + "/fm.h5"
data = bytearray(open(src, "rb").read())
spans = []  # the bytes of every dataset's values, contiguous or chunked
with h5py.File(src, "r") as f:
    def visit(name, o):
        if not isinstance(o, h5py.Dataset): return
        if o.chunks is None:
            off = o.id.get_offset()
            if off is not None: spans.append((off, off + o.id.get_storage_size()))
        else:
            for i in range(o.id.get_num_chunks()):
                c = o.id.get_chunk_info(i)
                spans.append((c.byte_offset, c.byte_offset + c.size))
    f.visititems(visit)
meta = [i for i in range(len(data)) if not any(a <= i < b for a, b in spans)]
with h5py.File(d + "/meta-ref.h5", "r") as f:
    ref = {k: f[k][()] for k in f.keys()}
random.seed(int.from_bytes(os.urandom(4), "little"))
# (under make test-asan: no leak check of a process that dies on a refused file, where HDF5's
# error paths leave memory behind; memory errors are still reported)
env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0")
res = {"refused": 0, "identical": 0, "WRONG": 0, "CRASH": 0, "HANG": 0, "unclear": 0}
for t in range(n):
    b = bytearray(data)
    for _ in range(random.randint(1, 3)):
        i = random.choice(meta)
        b[i] ^= 1 << random.randrange(8)
    bad, out = d + "/meta-bad.h5", d + "/meta-out.h5"
    open(bad, "wb").write(b)
    if os.path.exists(out): os.remove(out)
    try:
        r = subprocess.run([tool, "--raw", "--data", bad, "-o", out, "--quiet"],
                           capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        res["HANG"] += 1; continue
    err = r.stderr.strip().splitlines()
    if r.returncode < 0 or r.returncode >= 128:
        res["CRASH"] += 1; print("crash", r.returncode, err[-1:] if err else "")
    elif r.returncode != 0:
        one = len(err) == 1 and err[0].startswith("d2v: error: ") and bad in err[0]
        res["refused" if one else "unclear"] += 1
        if not one: print("unclear:", " | ".join(err[:3]))
    else:
        with h5py.File(out, "r") as f:
            same = set(f.keys()) == set(ref) and all(np.array_equal(f[k][()], ref[k]) for k in ref)
        res["identical" if same else "WRONG"] += 1
print("metadata %d: %s (%d of %d bytes are metadata)" % (n, " ".join("%s %d" % kv for kv in res.items()), len(meta), len(data)))
PY
)
    echo "$out" | grep -v "^metadata" | head -n 5 | sed 's/^/     /'
    line=$(echo "$out" | grep "^metadata")
    echo "$line" | grep -q "WRONG 0 CRASH 0 HANG 0 unclear 0" && echo "$line" | grep -q "^metadata [1-9]" &&
        ok "flipped bits in a dataset's HDF5 metadata, $line" ||
        bad "flipped bits in a dataset's HDF5 metadata: ${line:-no result}"
fi
if ! want damage; then
    finish
    exit $?
fi

# a damaged newest checkpoint: resume falls back to the previous one and still ends
# bit-identical to an uninterrupted run (the lost interval is recomputed)
"$train" "$@" --set run.max_updates=6 --run-dir "$dir/cut" >/dev/null 2>&1
/usr/bin/python3 - "$dir/cut/ckpt/step_00000006/model.h5" <<'PY'
import sys, h5py
f = h5py.File(sys.argv[1], "r")
off = f["teacher"].id.get_offset() + 4 * 1000  # contiguous data: flip bytes in place
f.close()
with open(sys.argv[1], "r+b") as g:
    g.seek(off)
    b = bytearray(g.read(3))
    g.seek(off)
    g.write(bytes(x ^ 0x5A for x in b))
PY
out=$("$train" "$@" --resume --run-dir "$dir/cut" 2>&1)
rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q "fails the CRC32 recorded in .*DONE.*moved aside" &&
    [ -d "$dir/cut/ckpt/step_00000006.damaged" ] && echo "$out" | grep -q "resuming from .*step_00000004"; then
    ok "damaged step 6: reported, moved aside, resumed from step 4"
else
    bad "damaged newest checkpoint: rc $rc: $out"
fi
if same "$dir/whole" "$dir/cut"; then
    ok "after the fall-back the run ends bit-identical to an uninterrupted one"
else
    bad "the resumed run differs from the uninterrupted one"
fi
finish
