#!/bin/sh
# script_export.sh: d2v-export and d2v-import end to end (docs/export.md). For text, images (learned
# positions and BEiT's relative bias) and speech: pretrain the tiny config for 3 updates, export the
# student (and, for one, the teacher) as HF Data2Vec*Model, run tests/ref/hf_ref.py (the HF-named PyTorch
# module tree on the exported safetensors against d2v-extract's features, 1e-5, with a negative
# control, and the name list from HF's source), import the export back, export again
# (byte-identical), and continue training from it with d2v-train --init-from. Then fairseq's names
# and every refusal: one line naming the file, a non-zero exit, nothing overwritten.
set -u
build=${1:-build/release}
export OMP_NUM_THREADS=1 BLIS_NUM_THREADS=1
. tests/lib.sh
bin=$build/bin
py=/usr/bin/python3
dir=$(mktemp -d /tmp/d2v-export.XXXXXX)
trap 'rm -rf "$dir"' EXIT

# a refusal: non-zero exit, one line on stderr containing $2
refused() { # what expected-text command...
    what=$1 want=$2
    shift 2
    out=$("$@" 2>&1 >/dev/null)
    rc=$?
    if [ $rc -ne 0 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] && echo "$out" | grep -qF -- "$want"; then
        ok "$what: $out"
    else
        bad "$what (rc $rc): $out"
    fi
}

"$bin/d2v-prep-text" --vocab-size 600 --out "$dir/text.h5" tests/fixtures/text/moby-dick >/dev/null 2>&1
prep_fmnist "$dir/image.h5"
"$bin/d2v-prep-speech" --tree tests/fixtures/speech -o "$dir/speech.h5" >/dev/null 2>&1

run() { # name config extra-set...
    name=$1 cfg=$2
    shift 2
    "$bin/d2v-train" "$cfg" --set data.train="$dir/$data.h5" --set run.max_updates=3 "$@" \
        --run-dir "$dir/$name" >"$dir/$name.log" 2>&1 || bad "train $name: $(tail -n 1 "$dir/$name.log")"
}

for m in text image image-rel speech; do
    data=${m%-rel}
    case $m in
    image-rel) run $m configs/image-tiny.cfg --set image.pos='"relative"' ;;
    *) run $m configs/$data-tiny.cfg ;;
    esac
    nets=student
    [ $m = image-rel ] && nets="student teacher" # the teacher view: one modality is enough
    for net in $nets; do
        flag=""
        [ $net = teacher ] && flag=--teacher
        "$bin/d2v-export" "$dir/$m" $flag --out "$dir/hf-$m-$net" >"$dir/export.log" 2>&1 ||
            bad "export $m $net: $(tail -n 1 "$dir/export.log")"
        "$bin/d2v-extract" "$dir/$m" $flag --data "$dir/$data.h5" -o "$dir/feat-$m-$net.h5" \
            >/dev/null 2>&1 || bad "extract $m $net"
        out=$($py tests/ref/hf_ref.py "$dir/hf-$m-$net" "$dir/feat-$m-$net.h5" "$dir/$data.h5" 2>&1)
        line=$(echo "$out" | tail -n 1)
        if echo "$line" | grep -q "^[1-9][0-9]* passed, 0 failed"; then
            ok "$m $net: HF-named PyTorch forward = d2v features, names and shapes ($line)"
        else
            bad "$m $net: $(echo "$out" | grep -v '^ok' | head -n 5)"
        fi
    done
    grep -q "^left out: head.w1 (no HF counterpart)" "$dir/export.log" &&
        ok "$m: the regression head is listed as left out" || bad "$m: left-out list: $(cat "$dir/export.log")"
    # export -> import -> export, byte for byte
    "$bin/d2v-import" "$dir/hf-$m-student" --config "$dir/$m/config.resolved.cfg" \
        --out "$dir/imp-$m" >"$dir/import.log" 2>&1 || bad "import $m: $(tail -n 1 "$dir/import.log")"
    "$bin/d2v-export" "$dir/imp-$m" --out "$dir/hf2-$m" >/dev/null 2>&1 || bad "re-export $m"
    same=1
    for f in "$dir/hf-$m-student"/*; do
        cmp -s "$f" "$dir/hf2-$m/$(basename "$f")" || same=0
    done
    [ $same = 1 ] && ok "$m: export -> import -> export is byte-identical ($(ls "$dir/hf2-$m" | tr '\n' ' '))" ||
        bad "$m: the re-export differs"
    cfg=configs/$data-tiny.cfg
    [ $m = image-rel ] && set -- --set image.pos='"relative"' || set --
    "$bin/d2v-train" $cfg --set data.train="$dir/$data.h5" --set run.max_updates=2 "$@" \
        --init-from "$dir/imp-$m" --run-dir "$dir/cont-$m" >"$dir/cont.log" 2>&1 &&
        grep -q "init-from .*student weights of update 0" "$dir/cont.log" &&
        ok "$m: d2v-train --init-from the imported checkpoint trains" ||
        bad "$m: --init-from: $(grep error "$dir/cont.log")"
done

# fairseq's names: the same encoder tensors, plus the regression head
"$bin/d2v-export" "$dir/text" --format fairseq-names --out "$dir/fs-text" >/dev/null 2>&1
"$bin/d2v-export" "$dir/speech" --format fairseq-names --out "$dir/fs-speech" >/dev/null 2>&1
"$bin/d2v-export" "$dir/image-rel" --format fairseq-names --out "$dir/fs-image" >/dev/null 2>&1
out=$($py - "$dir" <<'PY'
import json, struct, sys
d = sys.argv[1]
def names(p):
    raw = open(p, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return {k: v["shape"] for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}
t, s, i = (names(d + "/fs-%s/model.safetensors" % m) for m in ("text", "speech", "image"))
need = {"text": (t, ["encoder.sentence_encoder.embed_tokens.weight", "encoder.sentence_encoder.layers.1.self_attn.k_proj.bias",
                     "encoder.sentence_encoder.layers.0.final_layer_norm.weight", "encoder.regression_head.2.weight"]),
        "speech": (s, ["feature_extractor.conv_layers.0.0.weight", "feature_extractor.conv_layers.4.2.1.bias", "post_extract_proj.weight",
                       "mask_emb", "encoder.pos_conv.0.0.weight", "encoder.layers.1.self_attn_layer_norm.bias", "final_proj.weight"]),
        "image": (i, ["cls_token", "patch_embed.proj.weight", "rel_pos_bias.relative_position_bias_table", "blocks.0.attn.qkv.weight",
                      "blocks.1.attn.q_bias", "blocks.1.attn.v_bias", "blocks.0.gamma_1", "norm.weight", "lm_head.weight"])}
bad = [(m, n) for m, (have, ns) in need.items() for n in ns if n not in have]
print("missing %s" % bad if bad else "ok %d %d %d %s" % (len(t), len(s), len(i), i["blocks.0.attn.qkv.weight"]))
PY
)
case "$out" in
"ok 40 58 39 [192, 64]") ok "fairseq-names: fairseq's names and fused BEiT qkv ($out)" ;;
*) bad "fairseq-names: $out" ;;
esac

# F16 and BF16 files (what transformers often saves) import exactly: re-exported as float32, every
# value is the half-precision one widened
for dt in F16 BF16; do
    cp -r "$dir/hf-text-student" "$dir/h-$dt"
    $py - "$dir/hf-text-student/model.safetensors" "$dir/h-$dt/model.safetensors" $dt <<'PY'
import json, struct, sys
import numpy as np
raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
h = json.loads(raw[8:8 + n])
meta = h.pop("__metadata__")
out, blobs, at = {"__metadata__": meta}, [], 0
for k, e in h.items():
    x = np.frombuffer(raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]], "<f4")
    b = x.astype("<f2").tobytes() if sys.argv[3] == "F16" else (x.view("<u4") >> 16).astype("<u2").tobytes()
    out[k] = {"dtype": sys.argv[3], "shape": e["shape"], "data_offsets": [at, at + len(b)]}
    blobs.append(b)
    at += len(b)
s = json.dumps(out).encode()
s += b" " * (-len(s) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(s)) + s + b"".join(blobs))
PY
    "$bin/d2v-import" "$dir/h-$dt" --config "$dir/text/config.resolved.cfg" --out "$dir/imp-$dt" \
        >/dev/null 2>&1 && "$bin/d2v-export" "$dir/imp-$dt" --out "$dir/hf-$dt" >/dev/null 2>&1
    out=$($py - "$dir/hf-text-student/model.safetensors" "$dir/hf-$dt/model.safetensors" $dt <<'PY'
import json, struct, sys
import numpy as np
def load(p):
    raw = open(p, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    return {k: np.frombuffer(raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]], "<f4")
            for k, e in h.items() if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
if sys.argv[3] == "F16":
    want = {k: v.astype("<f2").astype("<f4") for k, v in a.items()}
else:
    want = {k: ((v.view("<u4") >> 16) << 16).view("<f4") for k, v in a.items()}
bad = [k for k in a if not np.array_equal(want[k], b[k])]
print("ok" if not bad and len(b) == len(a) else "differ: %s" % bad[:3])
PY
)
    [ "$out" = ok ] && ok "$dt safetensors import exactly" || bad "$dt import: $out"
done

# an older or task-model HF file: integer buffers (relative_position_index as I64, what earlier
# transformers saved), no mask token (use_mask_token false): imported, the buffer skipped and the
# mask token freshly initialised; every other tensor re-exports exactly
cp -r "$dir/hf-image-rel-student" "$dir/h-old"
$py - "$dir/hf-image-rel-student" "$dir/h-old" <<'PY'
import json, struct, sys
import numpy as np
src, dst = sys.argv[1:3]
raw = open(src + "/model.safetensors", "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
h = json.loads(raw[8:8 + n])
meta = h.pop("__metadata__")
out, blobs, at = {"__metadata__": meta}, [], 0
def put(k, dtype, shape, b):
    global at
    out[k] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(b)]}
    blobs.append(b)
    at += len(b)
for k, e in h.items():
    if k != "embeddings.mask_token":
        put(k, e["dtype"], e["shape"], raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]])
put("encoder.relative_position_bias.relative_position_index", "I64", [17, 17], np.arange(289, dtype="<i8").tobytes())
s = json.dumps(out).encode()
s += b" " * (-len(s) % 8)
open(dst + "/model.safetensors", "wb").write(struct.pack("<Q", len(s)) + s + b"".join(blobs))
c = json.load(open(src + "/config.json"))
c["use_mask_token"] = False
json.dump(c, open(dst + "/config.json", "w"), indent=2)
PY
"$bin/d2v-import" "$dir/h-old" --config "$dir/image-rel/config.resolved.cfg" --out "$dir/imp-old" \
    >"$dir/import-old.log" 2>&1 && "$bin/d2v-export" "$dir/imp-old" --out "$dir/hf-old" >/dev/null 2>&1
out=$($py - "$dir/hf-image-rel-student/model.safetensors" "$dir/hf-old/model.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def load(p):
    raw = open(p, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    h = json.loads(raw[8:8 + n])
    return {k: np.frombuffer(raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]], "<f4")
            for k, e in h.items() if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
bad = [k for k in a if k != "embeddings.mask_token" and not np.array_equal(a[k], b[k])]
print("ok" if not bad and set(a) == set(b) else "differ: %s" % bad[:3])
PY
)
if [ "$out" = ok ] && grep -q "^initialised: embeddings.mask_token (not in the HF file" "$dir/import-old.log" &&
    grep -q "^ignored: encoder.relative_position_bias.relative_position_index" "$dir/import-old.log"; then
    ok "an HF file with an I64 buffer and no mask token imports (buffer ignored, mask token fresh, the rest exact)"
else
    bad "old-style HF file: $out $(cat "$dir/import-old.log")"
fi

# refusals
refused "a missing checkpoint" "$dir/nope: no such checkpoint" "$bin/d2v-export" "$dir/nope" --out "$dir/x1"
mkdir "$dir/full" && echo keep >"$dir/full/keep"
refused "a non-empty output directory" "$dir/full: exists and is not empty; not overwritten" \
    "$bin/d2v-export" "$dir/text" --out "$dir/full"
[ "$(cat "$dir/full/keep")" = keep ] && [ "$(ls "$dir/full")" = keep ] &&
    ok "the non-empty directory is untouched" || bad "the non-empty directory changed"
[ -z "$(ls -d "$dir"/full.tmp.* "$dir"/x1.tmp.* 2>/dev/null)" ] && ok "no temporary directory left" ||
    bad "temporary directories left: $(ls -d "$dir"/*.tmp.*)"
"$bin/d2v-train" configs/text-v2-tiny.cfg --set data.train="$dir/text.h5" --set run.max_updates=1 \
    --run-dir "$dir/v2" >/dev/null 2>&1
refused "a data2vec 2.0 checkpoint" "data2vec 2.0 checkpoint (model.mode = \"v2\"): not exported" \
    "$bin/d2v-export" "$dir/v2" --out "$dir/x2"
"$bin/d2v-train" configs/image-tiny.cfg --set data.train="$dir/image.h5" --set image.pos='"sincos"' \
    --set run.max_updates=1 --run-dir "$dir/sincos" >/dev/null 2>&1
refused "sin-cos image positions" "cannot export to HF transformers: image.pos = \"sincos\"" \
    "$bin/d2v-export" "$dir/sincos" --out "$dir/x3"
refused "a text model without its dataset" "no such dataset" \
    "$bin/d2v-export" "$dir/text" --data "$dir/gone.h5" --out "$dir/x4"
echo "not hdf5" >"$dir/junk.h5"
refused "a file that is not a checkpoint" "$dir/junk.h5" "$bin/d2v-export" "$dir/junk.h5" --out "$dir/x5"

# damaged safetensors for the import
cp -r "$dir/hf-text-student" "$dir/trunc"
head -c 100000 "$dir/hf-text-student/model.safetensors" >"$dir/trunc/model.safetensors"
refused "a truncated safetensors file" "trunc/model.safetensors: tensor" \
    "$bin/d2v-import" "$dir/trunc" --config "$dir/text/config.resolved.cfg" --out "$dir/y1"
cp -r "$dir/hf-text-student" "$dir/lie"
$py - "$dir/hf-text-student/model.safetensors" "$dir/lie/model.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
h = json.loads(raw[8:8 + n])
e = h["embeddings.LayerNorm.weight"]["data_offsets"]
h["embeddings.LayerNorm.weight"]["data_offsets"] = [e[0] - 64, e[1] - 64]  # overlaps its neighbour
s = json.dumps(h).encode()
s += b" " * (-len(s) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(s)) + s + raw[8 + n:])
PY
refused "a header that lies about offsets" "(overlapping or missing data: a header that lies)" \
    "$bin/d2v-import" "$dir/lie" --config "$dir/text/config.resolved.cfg" --out "$dir/y2"
printf 'abc' >"$dir/lie/model.safetensors"
refused "a 3-byte safetensors file" "lie/model.safetensors: 3 bytes, shorter than the 8-byte header" \
    "$bin/d2v-import" "$dir/lie" --config "$dir/text/config.resolved.cfg" --out "$dir/y3"
refused "an HF config of another width" "config.json: hidden_size is 32, the d2v config gives 64 (model.width)" \
    "$bin/d2v-import" "$dir/hf-text-student" --config "$dir/text/config.resolved.cfg" \
    --set model.width=64 --out "$dir/y4"
refused "an HF config of another modality" "config.json: model_type is \"data2vec-audio\"" \
    "$bin/d2v-import" "$dir/hf-speech-student" --config "$dir/text/config.resolved.cfg" --out "$dir/y5"
rm "$dir/lie/model.safetensors"
refused "a directory without model.safetensors" "lie/model.safetensors: no such file" \
    "$bin/d2v-import" "$dir/lie" --config "$dir/text/config.resolved.cfg" --out "$dir/y6"
refused "layer-scaled HF weights into a config without layer scale" \
    "hf-image-student/model.safetensors: tensor encoder.layer.0.lambda_1 is part of HF's encoder" \
    "$bin/d2v-import" "$dir/hf-image-student" --config "$dir/image/config.resolved.cfg" \
    --set model.layer_scale=0 --out "$dir/y7"
refused "a non-square image model" "a non-square image model (image.height 28, image.width 56)" \
    "$bin/d2v-import" "$dir/hf-image-student" --config "$dir/image/config.resolved.cfg" \
    --set image.width=56 --out "$dir/y8"
refused "--init-from a checkpoint of another architecture" "model.ffn is 64 in the checkpoint, 128 in this config" \
    "$bin/d2v-train" configs/text-tiny.cfg --set data.train="$dir/text.h5" --set model.ffn=128 \
    --init-from "$dir/imp-text" --run-dir "$dir/z1"
finish
