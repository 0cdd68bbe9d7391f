#!/bin/sh
# script_prep_media.sh: end-to-end checks of d2v-prep-image and d2v-prep-speech on the committed
# fixtures: the same samples for 1, 2 and 3 MPI ranks, labels, the IDX pixel round trip, and each
# bad input (skipped with a count by default; under --strict a non-zero exit, no partial output,
# an existing output untouched).
set -u
build=${1:-build/release}
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
check() { if [ "$1" -eq 0 ]; then ok "$2"; else bad "$2"; fi; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
PY=/usr/bin/python3
IMG=$build/bin/d2v-prep-image
SPEECH=$build/bin/d2v-prep-speech
FX=tests/fixtures
IDXI=$FX/fmnist-t500-images-idx3.gz
IDXL=$FX/fmnist-t500-labels-idx1.gz
NAMES="T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
for f in "$IMG" "$SPEECH" "$build/tests/test_prep_media" "$IDXI" "$FX/speech/7/en-us_m1.wav"; do
    [ -e "$f" ] || { echo "missing $f (build the prep tools and tests first)"; echo "0 passed, 1 failed"; exit 1; }
done
T=$(mktemp -d /tmp/d2v-prep-media.XXXXXX)
trap 'rm -rf "$T"' EXIT

# h5 CMD FILE...: dataset checks in h5py; a shard file or an index (shards concatenated in order).
cat >"$T/h5.py" <<'EOF'
import gzip, hashlib, os, sys, wave
import h5py, numpy as np

def load(path):
    f = h5py.File(path, "r")
    a = dict(f.attrs)
    if a["kind"] == b"index" or a["kind"] == "index":
        d = os.path.dirname(path)
        names = [s.decode() if isinstance(s, bytes) else s for s in f["shards"][()]]
        parts = [load(os.path.join(d, n)) for n in names]
        assert list(f["shard_samples"][()]) == [p["n"] for p in parts], "shard_samples"
        out = {"n": sum(p["n"] for p in parts), "attrs": a}
        assert out["n"] == a["num_samples"], "index num_samples"
        for k in ("images", "labels", "audio"):
            if k in parts[0]:
                out[k] = np.concatenate([p[k] for p in parts])
        if "offsets" in parts[0]:
            offs, base = [0], 0
            for p in parts:
                offs += list(p["offsets"][1:] + base)
                base += p["offsets"][-1]
            out["offsets"] = np.array(offs)
        for k in ("label_names", "transcripts"):
            if k in parts[0]:
                out[k] = sum((p[k] for p in parts), []) if k == "transcripts" else parts[0][k]
        return out
    out = {"n": int(a["num_samples"]), "attrs": a}
    for k in ("images", "labels", "audio", "offsets"):
        if k in f:
            out[k] = f[k][()]
    for k in ("label_names", "transcripts"):
        if k in f:
            out[k] = [s.decode() if isinstance(s, bytes) else s for s in f[k][()]]
    n_rows = len(out["images"]) if "images" in out else len(out["offsets"]) - 1
    assert n_rows == out["n"], "num_samples"
    return out

def digest(path):
    d = load(path)
    h = hashlib.sha256()
    for k in ("images", "labels", "audio", "offsets", "label_names", "transcripts"):
        if k in d:
            h.update(k.encode() + repr(d[k].shape if hasattr(d[k], "shape") else len(d[k])).encode())
            h.update(d[k].tobytes() if hasattr(d[k], "tobytes") else "\n".join(d[k]).encode())
    return "%d samples %s" % (d["n"], h.hexdigest()[:16])

def idx(path, ndims):
    b = gzip.open(path).read()
    dims = [int.from_bytes(b[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndims)]
    return np.frombuffer(b[4 + 4 * ndims:], np.uint8).reshape(dims)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "digest":
    print(digest(args[0]))
elif cmd == "idx":  # OUT IMAGES LABELS NAMES: pixels and labels equal the IDX files
    d, im, lb = load(args[0]), idx(args[1], 3), idx(args[2], 1)
    assert d["images"].shape == im.shape + (1,), d["images"].shape
    assert np.array_equal(d["images"][..., 0], im), "pixels differ"
    assert np.array_equal(d["labels"], lb), "labels differ"
    assert d["label_names"] == args[3].split(","), d["label_names"]
    a = d["attrs"]
    assert (a["height"], a["width"], a["channels"]) == (28, 28, 1)
elif cmd == "tree":  # OUT TREE IMAGES: sorted order, folder label names, PNGs exact, JPEGs close
    d, root, im = load(args[0]), args[1], idx(args[2], 3)
    classes = sorted(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c)))
    files = [(c, f) for c in classes for f in sorted(os.listdir(os.path.join(root, c)))]
    assert d["label_names"] == classes, d["label_names"]
    assert d["n"] == len(files), (d["n"], len(files))
    assert list(d["labels"]) == [classes.index(c) for c, _ in files]
    for k, (c, f) in enumerate(files):
        want, got = im[int(f[:5])].astype(int), d["images"][k].astype(int)
        for ch in range(got.shape[2]):
            err = np.abs(got[..., ch] - want).max()
            assert err <= (0 if f.endswith(".png") else 40), (f, ch, err)
            assert f.endswith(".png") or np.abs(got[..., ch] - want).mean() < 3, (f, ch)
elif cmd == "speech":  # OUT TREE: folder labels; 16 kHz files exact, 22.05 kHz ones resampled
    d, root = load(args[0]), args[1]
    a = d["attrs"]
    assert a["sample_rate"] == 16000 and a["sample_format"] in (b"int16", "int16"), a
    classes = sorted(os.listdir(root))
    files = [(c, f) for c in classes for f in sorted(os.listdir(os.path.join(root, c)))]
    assert d["label_names"] == classes and d["n"] == len(files)
    assert list(d["labels"]) == [classes.index(c) for c, _ in files]
    o = d["offsets"]
    for k, (c, f) in enumerate(files):
        w = wave.open(os.path.join(root, c, f))
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        got = d["audio"][o[k]:o[k + 1]]
        if w.getframerate() == 16000:
            assert np.array_equal(got, x), f
        else:
            assert abs(len(got) - len(x) * 16000 / w.getframerate()) <= 1, (f, len(got))
            assert abs(np.abs(got.astype(float)).max() / np.abs(x.astype(float)).max() - 1) < 0.1
elif cmd == "manifest":  # OUT LABELS TRANSCRIPTS: names sorted, labels and texts in order
    d = load(args[0])
    labs = [l.split("\t")[0] for l in open(args[1]).read().splitlines()]
    names = sorted(set(labs))
    assert d["label_names"] == names, d["label_names"]
    assert [names[i] for i in d["labels"]] == labs
    assert d["transcripts"] == open(args[2]).read().splitlines()
elif cmd == "count":  # OUT: samples
    print(load(args[0])["n"])
EOF
h5() { $PY "$T/h5.py" "$@"; }

# same_for_ranks LABEL OUTNAME CMD...: run CMD -o OUT on 1, 2 and 3 ranks; the samples must match.
same_for_ranks() {
    label=$1 name=$2
    shift 2
    first="" same=0
    for k in 1 2 3; do
        out="$T/$name-np$k.h5"
        if ! mpirun --oversubscribe -np $k "$@" -o "$out" >"$T/log" 2>&1; then
            cat "$T/log"; same=1; break
        fi
        dg=$(h5 digest "$out") || { same=1; break; }
        echo "   np=$k: $dg"
        [ -z "$first" ] && first=$dg
        [ "$dg" = "$first" ] || same=1
    done
    check $same "$label: the same samples on 1, 2 and 3 ranks"
}

# leftovers DIR: names in DIR other than out.h5 (temporary files, shards).
leftovers() {
    for x in "$1"/* "$1"/.[!.]*; do
        [ -e "$x" ] && [ "${x##*/}" != out.h5 ] && printf '%s ' "${x##*/}"
    done
    return 0
}

# bad_case LABEL FILE COUNT CMD...: FILE is reported on one line and skipped (COUNT skipped in
# total); under --strict the job fails naming FILE, leaving an existing output untouched and no
# temporary or shard files.
bad_case() {
    label=$1 file=$2 count=$3
    shift 3
    rm -rf "$T/bad"; mkdir -p "$T/bad"
    "$@" -o "$T/bad/out.h5" >"$T/out" 2>"$T/err"
    rc=$?
    lines=$(grep -cF "d2v: skipping $file:" "$T/err")
    if [ $rc -eq 0 ] && [ "$lines" -eq 1 ] && grep -q "skipped $count bad input" "$T/out"; then
        ok "$label: skipped with a count ($(grep -F "$file" "$T/err" | head -n 1))"
    else
        bad "$label: skipped with a count (exit $rc, $lines message lines)"; cat "$T/out" "$T/err"
    fi
    rm -rf "$T/bad"; mkdir -p "$T/bad"
    echo "an earlier dataset" >"$T/bad/out.h5"
    "$@" --strict -o "$T/bad/out.h5" >"$T/out" 2>"$T/err"
    rc=$?
    errs=$(grep -cF "d2v: error: $file:" "$T/err")
    left=$(leftovers "$T/bad")
    if [ $rc -ne 0 ] && [ "$errs" -eq 1 ] && [ "$(cat "$T/bad/out.h5")" = "an earlier dataset" ] &&
        [ -z "$left" ]; then
        ok "$label: --strict fails naming the file, output untouched, nothing left over"
    else
        bad "$label: --strict (exit $rc, $errs error lines, left: $left)"; cat "$T/err"
    fi
}

echo "== images"
same_for_ranks "IDX 28x28x1" idx "$IMG" --idx-images "$IDXI" --idx-labels "$IDXL" --class-names "$NAMES"
h5 idx "$T/idx-np1.h5" "$IDXI" "$IDXL" "$NAMES" && h5 idx "$T/idx-np3.h5" "$IDXI" "$IDXL" "$NAMES"
check $? "IDX round trip: pixels, labels and label names equal the IDX files (1 and 3 ranks)"
same_for_ranks "IDX resized to 14x20x3" idxr "$IMG" --idx-images "$IDXI" --idx-labels "$IDXL" --size 14x20 --channels 3
"$build/tests/test_prep_media" --write-tree "$T/tree" "$IDXI" "$IDXL" 27
same_for_ranks "PNG/JPEG tree 28x28x1" tree "$IMG" --tree "$T/tree" --size 28x28 --channels 1
h5 tree "$T/tree-np2.h5" "$T/tree" "$IDXI"
check $? "tree: sorted order, folder names as labels, PNG pixels exact, JPEG close"
same_for_ranks "PNG/JPEG tree 32x24x3" treer "$IMG" --tree "$T/tree" --size 32x24

echo "== speech"
same_for_ranks "speech tree int16" sp "$SPEECH" --tree "$FX/speech"
h5 speech "$T/sp-np1.h5" "$FX/speech" && h5 speech "$T/sp-np3.h5" "$FX/speech"
check $? "speech: folder labels, 16 kHz files bit-exact, 22.05 kHz files resampled"
same_for_ranks "speech tree float32" spf "$SPEECH" --tree "$FX/speech" --float
(cd "$FX/speech" && find . -name '*.wav' | sed 's|^\./||' | sort -r) >"$T/list"
{ echo "$PWD/$FX/speech"
  while read -r f; do echo "$f	$($PY -c "import wave,sys; print(wave.open(sys.argv[1]).getnframes())" "$FX/speech/$f")"; done <"$T/list"
} >"$T/manifest.tsv"
sed 's|/.*||; s|$|	extra column|' "$T/list" >"$T/labels.tsv"
awk -F/ 'BEGIN { split("zero one two three four five six seven eight nine", w, " ") }
    { print w[$1 + 1] }' "$T/list" >"$T/words.txt"
same_for_ranks "speech manifest (reverse order) with labels and transcripts" man "$SPEECH" --manifest "$T/manifest.tsv" --labels "$T/labels.tsv" --transcripts "$T/words.txt"
h5 manifest "$T/man-np2.h5" "$T/labels.tsv" "$T/words.txt"
check $? "manifest: label names, labels and transcripts in manifest order"

echo "== bad inputs"
cp -r "$T/tree" "$T/tree-bad-png"
f="$T/tree-bad-png/Coat/00010_rgb.png"
$PY -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); i=b.find(b'IDAT')+12; b[i:i+8]=b'\xff'*8; open(p,'wb').write(b)" "$f"
bad_case "corrupt PNG" "$f" 1 "$IMG" --tree "$T/tree-bad-png" --size 28x28

cp -r "$T/tree" "$T/tree-bad-jpg"
f="$T/tree-bad-jpg/Shirt/00026_rgb.jpg"
head -c $(($(wc -c <"$T/tree/Shirt/00026_rgb.jpg") * 3 / 4)) "$T/tree/Shirt/00026_rgb.jpg" >"$f"
bad_case "truncated JPEG" "$f" 1 "$IMG" --tree "$T/tree-bad-jpg" --size 28x28
# That file is 18th of 27 in sorted order, so rank 1 stops: ranks 0 and 2 must leave no shard behind.
rm -rf "$T/bad"; mkdir -p "$T/bad"; echo "an earlier index" >"$T/bad/out.h5"
mpirun --oversubscribe -np 3 "$IMG" --tree "$T/tree-bad-jpg" --size 28x28 --strict -o "$T/bad/out.h5" >/dev/null 2>"$T/err"
rc=$?; left=$(leftovers "$T/bad")
[ $rc -ne 0 ] && [ -z "$left" ] && [ "$(cat "$T/bad/out.h5")" = "an earlier index" ] && grep -qF "$f" "$T/err"
check $? "--strict on 3 ranks, bad file on rank 1: job fails, no shard or temporary file left ($left)"

mkdir -p "$T/tree-empty/Sandal"
cp -r "$T/tree/Trouser" "$T/tree-empty/"
bad_case "empty class folder" "$T/tree-empty/Sandal" 1 "$IMG" --tree "$T/tree-empty" --size 28x28
mkdir -p "$T/nothing"
! "$IMG" --tree "$T/nothing" --size 8x8 -o "$T/nothing.h5" 2>"$T/err" &&
    grep -qF "$T/nothing: no .png" "$T/err" && [ ! -e "$T/nothing.h5" ]
check $? "an empty input folder is an error naming it ($(head -n 1 "$T/err"))"

f="$T/idx-501.gz"
$PY -c "import gzip,sys; b=bytearray(gzip.open(sys.argv[1]).read()); b[4:8]=(501).to_bytes(4,'big'); gzip.open(sys.argv[2],'wb').write(b)" "$IDXI" "$f"
bad_case "inconsistent IDX header" "$f" 1 "$IMG" --idx-images "$f"
"$IMG" --idx-images "$f" -o "$T/idx501.h5" >/dev/null 2>&1
[ "$(h5 count "$T/idx501.h5")" = 500 ]
check $? "inconsistent IDX header: the 500 complete images are kept"

cp -r "$FX/speech" "$T/speech-empty"
f="$T/speech-empty/4/empty.wav"
$PY -c "import wave,sys; w=wave.open(sys.argv[1],'wb'); w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.close()" "$f"
bad_case "empty WAV" "$f" 1 "$SPEECH" --tree "$T/speech-empty"

mkdir -p "$T/speech-rate/3"
cp "$FX/speech/3/"*.wav "$T/speech-rate/3/"
f="$T/speech-rate/3/en-gb_f4.wav" # the first 22.05 kHz file in sorted order
bad_case "22.05 kHz file with --no-resample" "$f" 2 "$SPEECH" --tree "$T/speech-rate" --no-resample

{ head -n 3 "$T/manifest.tsv"; echo "9/missing.wav	12345"; } >"$T/missing.tsv"
f="$PWD/$FX/speech/9/missing.wav"
bad_case "missing file in a manifest" "$f" 1 "$SPEECH" --manifest "$T/missing.tsv"

# ended from outside mid-write (scancel, Ctrl-C, or MPI_Abort's SIGTERM when another rank
# fails): no temporary file stays behind, and an earlier output is untouched
for sig in TERM INT; do
    rm -rf "$T/sig"; mkdir -p "$T/sig"; echo "an earlier output" >"$T/sig/out.h5"
    "$IMG" --idx-images "$IDXI" --size 224 --channels 3 --deflate 9 -o "$T/sig/out.h5" \
        >/dev/null 2>&1 &
    pid=$!
    i=0 # until its temporary file exists (at most 10 s)
    while ! ls "$T/sig" | grep -q '\.tmp\.' && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    seen=$(ls "$T/sig" | grep -c '\.tmp\.')
    kill -$sig $pid
    wait $pid
    rc=$?
    left=$(leftovers "$T/sig")
    [ "$seen" = 1 ] && [ $rc -ne 0 ] && [ -z "$left" ] && [ "$(cat "$T/sig/out.h5")" = "an earlier output" ]
    check $? "SIG$sig while writing: exit $rc, temporary file removed, earlier output untouched (left: ${left:-nothing})"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
