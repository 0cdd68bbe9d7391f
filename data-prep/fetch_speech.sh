#!/bin/sh
# fetch_speech.sh: a labelled spoken-digit set synthesised offline: "zero".."nine" by espeak-ng over
# several English accents and voice variants, speeds and pitches, plus CMU flite voices. Whole
# voices are held out for the eval split, so evaluation measures generalisation to new speakers.
# Writes OUT_DIR/wav/{train,eval}/<digit>/*.wav (espeak-ng: 22.05 kHz, flite: 16 kHz) and the
# d2v speech datasets OUT_DIR/digits-train.h5 and OUT_DIR/digits-eval.h5 (resampled to 16 kHz,
# labels "0".."9") via d2v-prep-speech. Existing WAV files are kept, so a rerun resumes.
# Usage: data-prep/fetch_speech.sh OUT_DIR [BUILD_DIR]
#   JOBS=2 ...   synthesis processes (default 1)
#   NP=2 ...     MPI ranks for d2v-prep-speech (default 1)
#   QUICK=1 ...  one speed and pitch per voice (a smoke test: about 140 files)
set -eu
out=${1:?usage: data-prep/fetch_speech.sh OUT_DIR [BUILD_DIR]}
build=${2:-build/release}
prep=$build/bin/d2v-prep-speech
[ -x "$prep" ] || { echo "fetch_speech: $prep not found; run: make $prep" >&2; exit 1; }

# Synthesis tools: scripts/deps.sh --demo-speech installs them (make demo MODALITY=speech); run
# alone, this script installs what is missing itself.
missing=""
command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
command -v flite >/dev/null 2>&1 || missing="$missing flite"
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "fetch_speech: installing$missing"
    # $missing is a word list on purpose.
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing || {
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
    }
fi

# espeak-ng accent+variant voices and flite voices; the eval ones never appear in train.
train_espeak="en-us+m1 en-us+f2 en-gb+m3 en-gb+f4 en-gb-scotland+m5 en-gb-x-rp+f3 en-029+m2 en-us-nyc+f5"
eval_espeak="en-gb-x-gbclan+m4 en-gb-x-gbcwmd+f1"
train_flite="kal16 awb rms"
eval_flite="slt"
# espeak-ng falls back to its default voice without an error on an unknown name: check first.
known=$(espeak-ng --voices | awk 'NR > 1 { print $2 }')
for v in $train_espeak $eval_espeak; do
    echo "$known" | grep -qx "${v%%+*}" || { echo "fetch_speech: espeak-ng has no voice ${v%%+*}" >&2; exit 1; }
done
if [ "${QUICK:-0}" = 1 ]; then
    speeds="170" pitches="50" stretches="1.0"
else
    speeds="130 170 210" pitches="35 50 65" stretches="0.85 1.0 1.2"
fi
words="zero one two three four five six seven eight nine"

# One synthesis command per line, for files not made yet.
jobs=$out/wav/jobs.txt
mkdir -p "$out/wav"
: >"$jobs"
for split in train eval; do
    if [ $split = train ]; then ev=$train_espeak fv=$train_flite; else ev=$eval_espeak fv=$eval_flite; fi
    d=0
    for word in $words; do
        dir=$out/wav/$split/$d
        mkdir -p "$dir"
        for v in $ev; do
            for s in $speeds; do
                for p in $pitches; do
                    f="$dir/espeak-$(echo "$v" | tr + _)_s${s}_p$p.wav"
                    [ -s "$f" ] || echo "espeak-ng -v $v -s $s -p $p -w '$f' $word" >>"$jobs"
                done
            done
        done
        for v in $fv; do
            for x in $stretches; do
                f="$dir/flite-${v}_d$x.wav"
                [ -s "$f" ] || echo "flite -voice $v --setf duration_stretch=$x -t $word -o '$f'" >>"$jobs"
            done
        done
        d=$((d + 1))
    done
done
n=$(wc -l <"$jobs")
echo "fetch_speech: synthesising $n utterances with ${JOBS:-1} process(es)"
# Each line is one shell command; a failed synthesis stops the script (set -e).
tr '\n' '\0' <"$jobs" | xargs -0 -r -P "${JOBS:-1}" -n 1 sh -c
rm -f "$jobs"

run() {
    if [ "${NP:-1}" -gt 1 ]; then mpirun -np "$NP" "$@"; else "$@"; fi
}
for split in train eval; do
    run "$prep" --tree "$out/wav/$split" -o "$out/digits-$split.h5"
done
echo "fetch_speech: wrote $out/digits-train.h5 and $out/digits-eval.h5"
