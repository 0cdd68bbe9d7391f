# step_ref.py: independent PyTorch check of d2v-train's training step from its --dump-step files.
"""Rebuilds the data2vec model of a d2v-train step dump in PyTorch and recomputes the step.

The model comes from the dump's resolved configuration text (root attribute "config", parsed
here: the libconfig subset d2v writes) and its parameter table (param_names, param_offsets,
param_shapes). params_before / teacher_before are loaded into it, and the dumped batch and masks
are fed as they are (student_tokens for text, patch_mask for image, frame_mask for speech, and
loss_positions), so no random number generator needs replicating. Everything else is written
from docs/algorithm.md (§1, §4, §5) with torch doing the maths and the autograd:

  teacher   EMA copy; sharing per docs/algorithm.md §4.1: image everything incl. the front-end (ema.frontend),
            text the encoder only (embeddings shared), speech the encoder + its input LN
            (feature extractor, projection, mask embedding, positional convs shared). The
            teacher sees the unmasked input, no dropout; head and final norm are student-only.
  dropout   none: the dumps must come from a run with every dropout at 0 (model.dropout, which
            also drives the speech encoder-input dropout of wav2vec2's extract_features,
            attn_dropout, act_dropout, drop_path, layerdrop, text.dropout); d2v's keyed masks
            are not replayed, so a dump with dropout on is refused.
  targets   mean of the top-K blocks' FFN branch ("ffn"), block output ("end") or self-attention
            branch before its residual ("attn", the paper's §5.4 ablation), each
            instance-normalised over time or layer-normalised over C (no affine), then an
            optional final LN over C; rows at the loss positions.
  student   masked input -> encoder -> rows at the loss positions -> final LN (optional) ->
            head (Linear, or Linear-GELU-Linear).
  loss      smooth L1 with beta (beta > 0) or squared error, times scale (<= 0: 1/sqrt(C)),
            summed over positions and dims; the dump's loss is that sum / masked count, and the
            gradients are d(sum)/d(theta) / masked count (autograd); the update clips them to
            optim.clip (torch.nn.utils.clip_grad_norm_; the dump holds them before clipping).
  update    AdamW with decoupled decay (p -= lr*wd*p) and two groups: optim.exempt_1d exempts
            1-D tensors (per layer for the stacked encoder tensors: biases, norms, layer
            scales), cls / mask tokens and image.pos (timm's no_weight_decay). optim.eps_mode
            "torch" is torch.optim.AdamW itself (denominator sqrt(v/bc2) + eps); "fairseq" is
            fairseq's Adam written out here (sqrt(v) + eps, step lr*sqrt(bc2)/bc1,
            fairseq/optim/adam.py). LR schedule and EMA decay tau(n) from their formulas.

data2vec 2.0 (root attribute mode = "v2", docs/algorithm.md §7.2; text, images, speech): the dump
adds v2_masks (B*M, T) and v2_noise (B*M, T, C), so again nothing random is replayed. The
student's front-end runs on the unmasked batch (the local features); row r = b*M + m gathers its
kept positions (ascending) of sample b, runs the encoder, is scattered back over the noise at the
masked slots and decoded by the conv decoder (dec.*, decoder_ref.ConvDecoder, its structure read
from the table's shapes and checked against decoder.*; decoder.input_dropout must be 0 too). The
teacher encodes the local features once (no gradient); its top-K FFN outputs are instance-
normalised over time (eps 1e-5), averaged and repeated per clone; the loss is L2 times scale at
the masked positions, / the masked count over all clones. The teacher averages the encoder
blocks only (text), never the decoder.
Images (§7.2 "Images"): the local features are the patch embedding plus the fixed sin-cos table;
after the gather the cls token image.v2_cls is prepended and the layer norm image.v2_ln_w/b
applied; the 2-D decoder runs over the patch grid on the output without its cls row. The teacher
runs its own EMA front-end (ema.frontend) on the unmasked image; its layers lose the cls row
before the instance norm over the patches, and the average gets a parameter-less LN over C
(target.final_norm). The cls loss: the student's cls output against the mean over patches of its
sample's targets, L2 times scale, weighted v2.cls_loss times the masked tokens per row, so that
after the division by the masked count it is v2.cls_loss times its mean over rows, whatever the
split into ranks and micro-batches (fairseq's per-GPU sample_size is not; cls_predictions /
cls_targets are checked too); teacher_layer_* may hold the cls row or not.
Speech (§7.3): the local features are the conv extractor, its LN and projection; each clone zeroes
its masked frames, the positional convs run over the whole zero-filled sequence, the kept frames
get features + positions, then the context LN; ALiBi (speech.alibi: slope_h x clamp_min(
speech.alibi_scale_h, 0) x -|p_i - p_j|, p the kept frames' true positions) on every block. The
teacher runs the unmasked local features through its own positional convs, LN and ALiBi scale
(all averaged, with the blocks); the extractor and projection are the student's.
--v2-fault clones-1 / repeat-tile / kept-shift / teacher-masked (text, images, speech),
cls-weight / cls-sample-size / cls-in-norm / no-final-ln (images) and pos-unmasked /
pos-after-gather / alibi-unmasked-pos (speech) make one deliberate error each (negative
controls).
--self-test checks these pieces without a dump: gather and scatter by hand, the image context and
the cls loss by hand, the vectorised step against a row-by-row loop (text and images),
autograd against central differences (a 1%-wrong gradient rejected), the image teacher's own
front-end, every fault changing the step, and, with --decoder-fixture decoder_ref.h5, the dec.*
table mapping against that fixture (its text, image and image_k5 cases: 1-D and 2-D).

Modes:
  step (default)  every dump is checked on its own: tau and lr of update n (n from the file name
                  suffix _NNNN, else 0), the batch/mask consistency, the parameter table layout,
                  teacher layers, targets, predictions, loss, every gradient tensor (per-tensor
                  max errors), teacher_after = EMA(teacher_before, dumped params_after,
                  tau(n+1)) per the sharing rules, and at n = 0 (AdamW moments still zero)
                  params_after = AdamW(params_before, clipped dumped grads).
  --trajectory    the dumps form updates 0, 1, ..., N-1 of one run. (a) Optimiser chain: from
                  dump 0's params_before / teacher_before the reference carries its own params,
                  AdamW moments and teacher, driven by the dumped gradients, and must match every
                  dump's params_before/after and teacher_before/after. (b) Free run: the same,
                  driven by its own forward/backward on each dump's batch and masks; its loss
                  curve must follow the dumped one within --traj-rtol (relative, default
                  1e-4: fp32 rounding differences grow to ~1e-6 over 20 updates here), printed
                  step by step.
  --sharing       ema-all / share-all replace docs/algorithm.md §4.1's sharing rule by a wrong one (the teacher
                  averages / borrows its whole front-end): negative controls only.
  --eps-mode      torch / fairseq replace the configuration's optim.eps_mode: negative controls
                  only.

Dumps of single-rank runs only: on several ranks a dump's batch is rank 0's while its loss and
gradients are global.

The float32 reference is cross-checked once against a float64 run of itself on the first dump
(torch 1.13's oneDNN GELU backward bug: wrong gradients for a non-contiguous incoming gradient).

Usage: /usr/bin/python3 tests/ref/step_ref.py [--trajectory] [--traj-rtol R] [--verbose]
           [--dtype float32|float64] [--sharing spec|ema-all|share-all] [--eps-mode M]
           [--v2-fault F] DUMP.h5 [DUMP_0001.h5 ...]
       /usr/bin/python3 tests/ref/step_ref.py --self-test [--decoder-fixture decoder_ref.h5]
Prints one "ok"/"FAIL" line per check and "N passed, N failed"; exits 1 on any mismatch, 2 on a
usage or input error.
"""
import argparse
import math
import re
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from d2vref import Encoder, ImageEmbed, SpeechEmbed, TextEmbed, conv_out_len, sincos_2d
from decoder_ref import ConvDecoder, keep_mask

# Tolerances (fp32 C against the fp32 reference; errors are relative to the tensor's max |value|).
TOL_LOSS = 1e-5     # relative
TOL_FWD = 1e-5      # teacher layers, targets, predictions
TOL_GRAD = 1e-4     # every gradient tensor
TOL_PARAM = 1e-5    # params after the update (absolute; parameters are O(1))
TOL_TEACHER = 1e-6  # teacher after the EMA (absolute)
TOL_F64 = 1e-4      # float32 reference against its float64 run


class InputError(Exception):
    pass


# Every dropout of the trainer (model.dropout also drives the speech encoder-input dropout;
# text.dropout is read by text models only).
DROPOUT_KEYS = ("model.dropout", "model.attn_dropout", "model.act_dropout", "model.drop_path",
                "model.layerdrop", "text.dropout")


# ---- libconfig subset ---------------------------------------------------------------------------

_TOKEN = re.compile(r'\s+|#[^\n]*|//[^\n]*|/\*.*?\*/|("(?:\\.|[^"\\])*")|'
                    r'([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)L?)|'
                    r'(true|false|TRUE|FALSE)\b|([A-Za-z*][-A-Za-z0-9_*]*)|([=:;,{}\[\]()])', re.S)


def parse_libconfig(text):
    """Settings `name = value;` / `name: value;` with groups { }, arrays [ ], lists ( ), strings,
    integers (optional L), floats and booleans. Returns {"group.key": value} (lists as lists)."""
    toks, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise InputError(f"config: cannot parse near {text[pos:pos + 30]!r}")
        pos = m.end()
        s, num, boolean, name, punct = m.groups()
        if s is not None:
            toks.append(("val", bytes(s[1:-1], "utf-8").decode("unicode_escape")))
        elif num is not None:
            n = num.rstrip("L")
            toks.append(("val", float(n) if re.search(r"[.eE]", n) else int(n)))
        elif boolean is not None:
            toks.append(("val", boolean.lower() == "true"))
        elif name is not None:
            toks.append(("name", name))
        elif punct is not None:
            toks.append(("p", punct))
    i = 0

    def peek():
        return toks[i] if i < len(toks) else ("eof", None)

    def take(kind=None, val=None):
        nonlocal i
        t = peek()
        if (kind and t[0] != kind) or (val and t[1] != val):
            raise InputError(f"config: expected {val or kind}, got {t[1]!r}")
        i += 1
        return t

    def value():
        t = peek()
        if t == ("p", "{"):
            take()
            d = settings("}")
            take("p", "}")
            return d
        if t[0] == "p" and t[1] in "[(":
            close = "]" if t[1] == "[" else ")"
            take()
            out = []
            while peek() != ("p", close):
                out.append(value())
                if peek() == ("p", ","):
                    take()
            take("p", close)
            return out
        return take("val")[1]

    def settings(end):
        d = {}
        while peek()[0] != "eof" and peek() != ("p", end):
            name = take("name")[1]
            if peek()[1] not in ("=", ":"):
                raise InputError(f"config: expected = or : after {name}")
            take()
            d[name] = value()
            if peek()[0] == "p" and peek()[1] in ";,":
                take()
        return d

    tree = settings(None)
    flat = {}

    def flatten(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                flatten(v, prefix + k + ".")
            else:
                flat[prefix + k] = v

    flatten(tree, "")
    return flat


# ---- schedules (docs/algorithm.md §1.2, §5.2; optim.h) ------------------------------------------------------------

def ema_tau(cfg, n):
    tau0, tau_end, steps = cfg["ema.tau0"], cfg["ema.tau_end"], cfg["ema.tau_steps"]
    if steps <= 0 or n >= steps:
        return tau_end
    return tau_end - (tau_end - tau0) * (1.0 - n / steps)


def lr_at(cfg, n):
    kind, lr, lr_min = cfg["optim.schedule"], cfg["optim.lr"], cfg["optim.lr_min"]
    warmup, total = cfg["optim.warmup"], cfg["run.max_updates"]
    init = cfg["optim.warmup_init"]
    if kind == "tri_stage" and init == 0:
        init = 0.01 * lr  # fairseq tri_stage init_lr_scale
    if kind == "constant":
        return lr
    if n < warmup:
        return init + (lr - init) * n / warmup
    if kind == "tri_stage":  # warmup, hold, exponential decay to lr_min
        hold, decay = int(cfg["optim.tri_hold"] * total), int(cfg["optim.tri_decay"] * total)
        t = n - warmup
        if t < hold:
            return lr
        t -= hold
        return lr * math.exp(math.log(lr_min / lr) * t / decay) if t < decay else lr_min
    T, t = total - warmup, n - warmup
    f = min(t / T, 1.0) if T > 0 else 1.0
    if kind == "linear":
        return lr + (lr_min - lr) * f
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * f))  # cosine (fairseq)


# ---- the dump ------------------------------------------------------------------------------------

class Dump:
    def __init__(self, path):
        self.path = path
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise InputError(f"{path}: cannot open ({e})")
        with f:
            text = f.attrs["config"]
            self.config_text = text.decode() if isinstance(text, bytes) else text
            mod = f.attrs["modality"]
            self.modality = mod.decode() if isinstance(mod, bytes) else mod
            mode = f.attrs["mode"] if "mode" in f.attrs else "v1"  # v1 dumps predate the key
            self.mode = mode.decode() if isinstance(mode, bytes) else mode
            self.pad_id = int(f.attrs["pad_id"]) if "pad_id" in f.attrs else None  # text
            self.d = {k: f[k][()] for k in f.keys()}
        m = re.search(r"_(\d+)\.h5$", path)
        self.n = int(m.group(1)) if m else 0
        self.cfg = parse_libconfig(self.config_text)
        if self.cfg.get("modality") != self.modality:
            raise InputError(f"{path}: modality attribute {self.modality} but config says "
                             f"{self.cfg.get('modality')}")
        if self.cfg.get("model.mode", "v1") != self.mode:
            raise InputError(f"{path}: mode attribute {self.mode} but config says "
                             f"{self.cfg.get('model.mode', 'v1')}")
        names = [s.decode() if isinstance(s, bytes) else s for s in self.d["param_names"]]
        self.table = []
        for name, off, shp in zip(names, self.d["param_offsets"], self.d["param_shapes"]):
            shape = tuple(int(s) for s in shp if s >= 0)
            self.table.append((name, int(off), shape, int(np.prod(shape))))
        self.np = self.d["params_before"].size

    def __getitem__(self, k):
        return self.d[k]

    def scalar(self, k):
        return float(np.asarray(self.d[k]).reshape(-1)[0])


# ---- the reference model -------------------------------------------------------------------------

def frontend_key(name):
    """Table name -> the front-end module's named_c key: text.tok -> tok, speech.conv_w.3 ->
    conv_w3."""
    return re.sub(r"\.(\d+)$", r"\1", name.split(".", 1)[1])


def decay_exempt(name, shape):
    """optim.exempt_1d, as the official data2vec vision recipe: 1-D tensors (per layer for the
    layer-stacked enc.*), biases, pos_embed and cls_token are exempt; the mask token, 3-D there,
    and the relative position table decay."""
    rank = len(shape) - 1 if name.startswith("enc.") else len(shape)
    return (rank <= 1 and name != "image.mask_token") or name == "image.pos"


class RefModel:
    """Student and teacher networks for one dump configuration."""

    def __init__(self, dump, dtype, sharing="spec"):
        c, self.cfg, self.dtype = dump.cfg, dump.cfg, dtype
        self.modality = dump.modality
        keys = DROPOUT_KEYS + (("decoder.input_dropout",) if dump.mode == "v2" else ())
        on = [k for k in keys if c.get(k, 0) > 0
              and (k != "text.dropout" or self.modality == "text")]
        if on:
            raise InputError(f"{dump.path}: dropout is on ({', '.join(on)}); the reference has "
                             "no dropout: run d2v-train with these set to 0")
        shapes = {name: shape for name, _, shape, _ in dump.table}
        C, L = c["model.width"], c["model.layers"]
        self.C, self.L = C, L
        self.top_k = c["target.top_k"]
        self.target_ffn = c["target.tensor"] == "ffn"
        self.target_tensor = TARGET_TENSOR or c["target.tensor"]
        self.target_norm = c["target.layer_norm"]
        self.target_final = c["target.final_norm"]
        self.target_eps = c["target.eps"]
        self.beta = c["loss.beta"]
        self.scale = c["loss.scale"] if c["loss.scale"] > 0 else 1.0 / math.sqrt(C)
        self.ema_frontend = c["ema.frontend"]

        def frontend():
            return self.build_frontend(dump, shapes)

        def encoder():
            return Encoder(L, C, c["model.heads"], c["model.ffn"], c["model.ln_eps"],
                           c["model.pre_ln"], c["model.layer_scale"] > 0, c["model.k_bias"])

        torch.manual_seed(0)  # the initial values are overwritten from the dump
        self.fe, self.enc = frontend().to(dtype), encoder().to(dtype)
        self.fe_t, self.enc_t = frontend().to(dtype), encoder().to(dtype)
        self.build_output(dump, dtype)
        for p in list(self.fe_t.parameters()) + list(self.enc_t.parameters()):
            p.requires_grad_(False)
        self.student = self.refs(self.fe, self.enc, head=True)
        self.teacher = self.refs(self.fe_t, self.enc_t, head=False)
        self.ema_names = self.teacher_averages(sharing)
        self.check_layout(dump)

    def build_frontend(self, dump, shapes):
        """The modality's input encoder (d2vref): v1 front-ends."""
        c, C = self.cfg, self.C
        if self.modality == "text":
            V = shapes["text.tok"][0]
            if dump.pad_id is None:
                raise InputError(f"{dump.path}: a text dump without the pad_id attribute")
            self.pad_id = dump.pad_id
            return TextEmbed(V, C, c["text.max_positions"], self.pad_id, c["text.ln_eps"])
        if self.modality == "image":
            pos = {"none": 0, "learned": 1, "sincos": 2, "relative": 3}[c["image.pos"]]
            return ImageEmbed(c["image.height"], c["image.width"], c["image.channels"],
                              c["image.patch"], C, int(c["image.cls"]), pos,
                              c["model.heads"])
        conv = [tuple(x) for x in c["speech.conv"]]
        return SpeechEmbed(conv, C, c["speech.pos_layers"], c["speech.pos_kernel"],
                           c["speech.pos_groups"], c["speech.ln_eps"])

    def build_output(self, dump, dtype):
        """v1: the student's optional final LN and regression head (docs/algorithm.md §1.4)."""
        c, C = self.cfg, self.C
        H = 2 * C if c["model.head_layers"] == 2 else C
        self.final_ln = (nn.LayerNorm(C, eps=c["model.final_norm_eps"]).to(dtype)
                         if c["model.final_norm"] else None)
        self.head1 = nn.Linear(C, H).to(dtype)
        self.head2 = nn.Linear(H, C).to(dtype) if c["model.head_layers"] == 2 else None

    def output_refs(self):
        r = {}
        if self.final_ln is not None:
            r["head.ln_w"], r["head.ln_b"] = [self.final_ln.weight], [self.final_ln.bias]
        r["head.w1"], r["head.b1"] = [self.head1.weight], [self.head1.bias]
        if self.head2 is not None:
            r["head.w2"], r["head.b2"] = [self.head2.weight], [self.head2.bias]
        return r

    def teacher_averages(self, sharing):
        """What the teacher averages (docs/algorithm.md §4.1); the rest of its front-end is the
        student's."""
        names = {n for n in self.student if n.startswith("enc.")}
        fe_names = {n for n in self.student if n.startswith(self.modality + ".")}
        head_names = {n for n in self.student if n.startswith("head.")}
        if sharing == "ema-all" or (sharing == "spec" and self.ema_frontend):
            # the official vision code averages the whole model, head included (it is never
            # run by the teacher, so only the exported teacher sees it)
            names |= fe_names | head_names
        elif sharing == "spec" and self.modality == "speech":
            names |= {"speech.enc_ln_w", "speech.enc_ln_b"}
        return names

    def refs(self, fe, enc, head):
        """{table name: [Parameter, ...]} (one per layer for enc.*)."""
        r = {}
        for k, p in fe.named_c().items():  # conv_w3 -> speech.conv_w.3
            r[self.modality + "." + re.sub(r"(\D)(\d+)$", r"\1.\2", k)] = [p]
        for name in ("ln1_w", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b", "ln2_w", "ln2_b",
                     "fc1_w", "fc1_b", "fc2_w", "fc2_b", "gamma1", "gamma2"):
            if name.startswith("gamma") and self.cfg["model.layer_scale"] <= 0:
                continue
            r["enc." + name] = enc.layer_params(name)
        if head:
            r.update(self.output_refs())
        return r

    def check_layout(self, dump):
        """The dumped table must hold exactly the reference's tensors, with their shapes, tiling
        the arena without gaps or overlaps."""
        want = {}
        for name, ps in self.student.items():
            shape = tuple(ps[0].shape)
            want[name] = (len(ps),) + shape if name.startswith("enc.") else shape
        got = {name: shape for name, _, shape, _ in dump.table}
        problems = []
        for n in sorted(set(want) | set(got)):
            if want.get(n) != got.get(n):
                problems.append(f"{n}: reference {want.get(n)}, dump {got.get(n)}")
        end = 0
        for name, off, _, count in sorted(dump.table, key=lambda t: t[1]):
            if off != end:
                problems.append(f"{name} starts at {off}, previous tensor ends at {end}")
            end = off + count
        if end != dump.np:
            problems.append(f"tensors cover {end} of {dump.np} floats")
        self.layout_problems = problems

    def load(self, refs, flat, table):
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(flat)).to(self.dtype)
            for name, off, shape, count in table:
                if name not in refs:  # the teacher has no head or final norm
                    continue
                v = t[off:off + count].view(shape)
                ps = refs[name]
                for i, p in enumerate(ps):
                    p.copy_(v[i] if len(ps) > 1 or name.startswith("enc.") else v)

    def flat_grads(self, table, n):
        g = torch.zeros(n, dtype=torch.float64)
        for name, off, shape, count in table:
            ps = self.student[name]
            parts = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
            v = torch.stack(parts) if name.startswith("enc.") else parts[0]
            g[off:off + count] = v.detach().reshape(-1).double()
        return g

    def student_params(self):
        return [p for ps in self.student.values() for p in ps]

    def norm_layer(self, a):
        if self.target_norm == "instance":  # over time per (sample, channel), no affine
            return F.instance_norm(a.transpose(1, 2).contiguous(), eps=self.target_eps
                                   ).transpose(1, 2)
        if self.target_norm == "layer":  # over C, no affine
            return F.layer_norm(a, (self.C,), eps=self.target_eps)
        return a

    def step(self, dump, params, teacher):
        """Forward both networks on dump's batch with the given flat arenas, backward the loss.
        Returns a dict of numpy results; grads are divided by the masked count, not clipped."""
        self.load(self.student, params, dump.table)
        self.load(self.teacher, teacher, dump.table)
        self.load_shared(params, dump.table)
        for p in self.student_params():
            p.grad = None
        r = self.forward_loss(self.inputs(dump))
        r["mean"].backward()
        res = {"loss": float(r["sum"]) / r["M"], "M": r["M"], "targets": r["y"].numpy(),
               "predictions": r["pred"].detach().numpy(), "layers": r["layers"].numpy(),
               "grads": self.flat_grads(dump.table, dump.np).numpy()}
        for key in ("layers_patches", "cls_predictions", "cls_targets"):  # v2 images
            if key in r:
                res[key] = r[key].detach().numpy()
        if "cls_sum" in r:  # the cls term of the loss, per masked position
            res["loss_cls"] = float(r["cls_sum"]) / r["M"]
        return res

    def inputs(self, dump):
        """The dumped batch and masks as tensors (what forward_loss reads)."""
        x = {"sel": torch.from_numpy(dump["loss_positions"].astype(bool))}
        if self.modality == "text":
            x["st"] = torch.from_numpy(dump["student_tokens"].astype(np.int64))
            x["bt"] = torch.from_numpy(dump["batch_tokens"].astype(np.int64))
        elif self.modality == "image":
            x["img"] = torch.from_numpy(dump["batch_images"]).to(self.dtype)
            x["mask"] = torch.from_numpy(dump["patch_mask"].astype(bool))
        else:
            x["wav"] = torch.from_numpy(dump["batch_audio"]).to(self.dtype)
            x["mask"] = torch.from_numpy(dump["frame_mask"].astype(bool))
        return x

    def forward_loss(self, x):
        """Teacher targets and the student's loss on one batch (no backward). Returns the summed
        loss, its mean over the M masked positions (what is differentiated), and the pieces."""
        sel = x["sel"]
        pad_s = pad_t = None
        bias_s = bias_t = None  # image: BEiT's relative position bias
        if self.modality == "text":
            pad_s, pad_t = x["st"].eq(self.pad_id), x["bt"].eq(self.pad_id)
            x_s = self.fe(x["st"])["out"]
            with torch.no_grad():
                x_t = self.fe_t(x["bt"])["out"]
        elif self.modality == "image":
            fs = self.fe(x["img"], x["mask"])
            x_s, bias_s = fs["out"], fs.get("bias")
            with torch.no_grad():
                ft = self.fe_t(x["img"], None)
                x_t, bias_t = ft["out"], ft.get("bias")
        else:
            feats = self.fe.features(x["wav"])
            x_s = self.fe.context(feats, x["mask"])
            with torch.no_grad():
                x_t = self.fe_t.context(self.fe_t.features(x["wav"]), None)
        # teacher targets (docs/algorithm.md §1.3)
        with torch.no_grad():
            _, ffn_t, end_t = self.enc_t(x_t, pad_t, bias_t)
            layers = {"ffn": ffn_t, "end": end_t,
                      "attn": self.enc_t.attn_outs}[self.target_tensor][self.L - self.top_k:]
            y = sum(self.norm_layer(a) for a in layers) / self.top_k
            if self.target_final:
                y = F.layer_norm(y, (self.C,), eps=self.target_eps)
            y = y[sel]
        # student prediction and loss (docs/algorithm.md §1.4)
        h, _, _ = self.enc(x_s, pad_s, bias_s)
        z = h[sel]
        if self.final_ln is not None:
            z = self.final_ln(z)
        pred = self.head1(z)
        if self.head2 is not None:
            pred = self.head2(F.gelu(pred))
        d = pred - y
        if self.beta > 0:
            ad = d.abs()
            el = torch.where(ad <= self.beta, 0.5 * d * d / self.beta, ad - 0.5 * self.beta)
        else:
            el = d * d
        loss_sum = el.sum() * self.scale
        M = int(sel.sum())
        return {"sum": loss_sum, "mean": loss_sum / M, "M": M, "y": y, "pred": pred,
                "layers": layers}

    def load_shared(self, params, table):
        """Shared front-end tensors (those not averaged): the teacher's front-end module gets the
        student's values."""
        shared = [t for t in table if t[0].startswith(self.modality + ".")
                  and t[0] not in self.ema_names]
        self.load(self.teacher, params, shared)


# ---- data2vec 2.0 (docs/algorithm.md §7.2) ------------------------------------------------------

# the first four apply to text and images, the rest to images (the cls loss and the targets'
# extra token and final LN)
V2_FAULTS = ("clones-1", "repeat-tile", "kept-shift", "teacher-masked", "cls-weight",
             "cls-sample-size", "cls-in-norm", "no-final-ln", "pos-unmasked", "pos-after-gather",
             "alibi-unmasked-pos")
V2_FAULTS_TEXT = V2_FAULTS[:4]
V2_FAULTS_IMAGE = V2_FAULTS[:8]
# speech (docs/algorithm.md §7.3): the positional convs over the clone's unmasked sequence instead
# of the zero-filled one; over the gathered kept frames only; ALiBi distances of the gathered
# sequence (0..Tk-1) instead of the kept frames' true positions
V2_FAULT = None  # --v2-fault: one deliberate error in the v2 step (negative controls only)
TARGET_TENSOR = None  # --target-tensor: v1 targets from another tensor (negative controls only)
# fairseq's make_targets calls F.instance_norm / F.layer_norm with their default eps
V2_TARGET_EPS = 1e-5


def kept_indices(masks):
    """(R, T) bool, True = masked, the same count in every row -> (R, Tk) int64: each row's kept
    positions in ascending order (docs/algorithm.md §7.2 step 2)."""
    R, T = masks.shape
    counts = (~masks).sum(1)
    Tk = int(counts[0]) if R else 0
    if not bool((counts == Tk).all()):
        raise InputError(f"v2 masks keep {sorted(set(counts.tolist()))} tokens per row: every "
                         "row must keep the same count")
    # kept positions sort before every masked one, each group by position
    order = torch.argsort(masks.long() * T + torch.arange(T))
    return order[:, :Tk]


def gather_kept(x, ids_keep, row_sample):
    """xs[r, j] = x[row_sample[r], ids_keep[r, j]] (step 3)."""
    return x[row_sample[:, None], ids_keep]


def scatter_decoder_input(h, ids_keep, noise):
    """The decoder input (step 4): noise (R, T, C) with row r's kept slots ids_keep[r, j] replaced
    by h[r, j]; differentiable in h."""
    rows = torch.arange(h.shape[0])[:, None].expand_as(ids_keep)
    return noise.index_put((rows, ids_keep), h)


def shift_one_kept(ids_keep, masks):
    """Negative control: row 0's first kept position whose right neighbour is masked moves there
    (the order stays ascending, the set changes by one)."""
    out = ids_keep.clone()
    T = masks.shape[1]
    for j in range(out.shape[1]):
        t = int(out[0, j])
        if t + 1 < T and bool(masks[0, t + 1]):
            out[0, j] = t + 1
            return out
    raise InputError("kept-shift: row 0 has no kept token next to a masked one")


class ImageEmbedV2(nn.Module):
    """data2vec 2.0's image input (docs/algorithm.md §7.2 "Images", fairseq ImageEncoder): the
    local features are the P x P stride-P patch convolution plus the fixed 2-D sin-cos table (no
    slot for the cls token); the context of a (gathered) patch sequence is the learned cls token
    prepended, then a layer norm with affine (fairseq BlockEncoder's norm: the blocks are
    post-LN, so it comes first)."""

    def __init__(self, H, W, Cin, P, C, cls, sincos, eps):
        super().__init__()
        self.gh, self.gw, self.C, self.cls_on = H // P, W // P, C, cls
        self.proj = nn.Conv2d(Cin, C, kernel_size=P, stride=P)
        if cls:
            self.cls = nn.Parameter(torch.zeros(C))
        self.ln = nn.LayerNorm(C, eps=eps)
        table = sincos_2d(self.gh, self.gw, C) if sincos else np.zeros((self.gh * self.gw, C))
        self.register_buffer("sincos", torch.from_numpy(table).float())  # float64, rounded once

    def named_c(self):  # table names image.<key>
        d = {"patch_w": self.proj.weight, "patch_b": self.proj.bias}
        if self.cls_on:
            d["v2_cls"] = self.cls
        d["v2_ln_w"], d["v2_ln_b"] = self.ln.weight, self.ln.bias
        return d

    def local(self, img):
        """img (B, H, W, Cin) channels last -> (B, Np, C), patch p = row * gw + col."""
        x = self.proj(img.permute(0, 3, 1, 2).contiguous())
        return x.flatten(2).transpose(1, 2) + self.sincos.to(x.dtype)

    def context(self, x):
        """(R, n, C) patch features -> (R, cls + n, C): cls prepended, then the layer norm."""
        if self.cls_on:
            x = torch.cat([self.cls.expand(x.shape[0], 1, self.C), x], dim=1)
        return self.ln(x)


class SpeechEmbedV2(SpeechEmbed):
    """data2vec 2.0's speech input (docs/algorithm.md §7.3, fairseq AudioEncoder): the local
    features are the conv extractor, its LN and projection (SpeechEmbed.features); no mask
    embedding. The context of a clone: its features with the masked frames zeroed run through the
    positional convs over the whole sequence, the result is added to the kept frames' features,
    then the encoder (context) layer norm. ALiBi: slope_h x clamp_min(alibi_scale_h, 0) x
    -|pos_i - pos_j| on every block's logits, pos the frames' true positions."""

    def __init__(self, conv, C, pos_layers, pos_k, pos_groups, eps, heads, alibi):
        super().__init__(conv, C, pos_layers, pos_k, pos_groups, eps)
        self.mask_emb.requires_grad_(False)  # not a v2 tensor: left out of named_c
        self.heads, self.alibi_on = heads, alibi
        if alibi:
            self.alibi_scale = nn.Parameter(torch.ones(heads))
            self.register_buffer("slopes", torch.tensor(alibi_slopes(heads), dtype=torch.float32))

    def named_c(self):
        d = super().named_c()
        d.pop("mask_emb", None)
        if self.alibi_on:
            d["alibi_scale"] = self.alibi_scale
        return d

    def pos(self, x):
        """(R, T, C) -> the positional conv stack's output (R, T, C)."""
        h = x.transpose(1, 2)
        for conv, ln in zip(self.pos_convs, self.pos_lns):
            h = conv(h)
            if self.pos_k % 2 == 0:  # SamePad
                h = h[:, :, :-1]
            h = self.ln_gelu(ln, h)
        return h.transpose(1, 2)

    def bias(self, pos):
        """pos (R, n) long positions -> (R, NH, n, n) ALiBi biases, or None."""
        if not self.alibi_on:
            return None
        d = -(pos[:, None, :, None] - pos[:, None, None, :]).abs().to(self.slopes.dtype)
        return self.slopes.to(d.dtype)[None, :, None, None] * d * \
            self.alibi_scale.clamp_min(0)[None, :, None, None]


def alibi_slopes(n):
    """fairseq get_alibi's get_slopes, written from its formula."""
    def pow2(k):
        start = 2 ** (-(2 ** -(math.log2(k) - 3)))
        return [start * start ** i for i in range(k)]
    if math.log2(n).is_integer():
        return pow2(n)
    p = 2 ** math.floor(math.log2(n))
    return pow2(p) + pow2(2 * p)[0::2][:n - p]


def cls_loss_sum(cls_pred, y, row_sample, scale):
    """The cls regression before its weight (docs/algorithm.md §7.2 "Images", fairseq
    data2vec2.py cls_loss): row r's cls output against the mean over patches of its sample's
    targets, squared error summed over rows and channels, times scale. y (B, T, C) holds the
    targets at every patch (after the final LN). Returns (sum, the cls targets (R, C))."""
    tgt = y.mean(1)[row_sample]
    return ((cls_pred - tgt) ** 2).sum() * scale, tgt


class RefModelV2(RefModel):
    """data2vec 2.0 (model.mode = "v2"), text and images. The student's front-end on the unmasked
    batch gives the local features; each clone's kept positions (ascending) go through the
    encoder (images: after the cls token and the context layer norm), are scattered back with the
    dumped noise vectors at the masked slots and decoded by the conv decoder (1-D over tokens,
    2-D over the patch grid; decoder_ref.ConvDecoder, named as the dec.* tensors). The teacher
    encodes, once per sample, the student's local features (text) or the image through its own
    EMA front-end (images); it instance-normalises its top-K FFN outputs over the positions
    (images: without the cls row), averages them (images: then a parameter-less LN over C);
    targets repeat per clone; L2 times scale at the masked positions. Images add the cls loss,
    weighted v2.cls_loss times the masked tokens per row. The decoder is student-only."""

    def __init__(self, dump, dtype, sharing="spec"):
        if dump.modality not in ("text", "image", "speech"):
            raise InputError(f"{dump.path}: a v2 {dump.modality} dump: the v2 reference does "
                             "text, images and speech")
        c = dump.cfg
        self.clones = c["v2.clones"]
        self.notes = []
        self.ncls = int(bool(c.get("image.cls", False))) if dump.modality == "image" else 0
        self.cls_weight = c.get("v2.cls_loss", 0.0) if self.ncls else 0.0
        if dump.modality == "image" and c.get("v2.cls_loss", 0) > 0 and not self.ncls:
            self.notes.append("v2.cls_loss is set but image.cls is off: no cls loss")
        super().__init__(dump, dtype, sharing)
        # §7.2 step 5: instance norm per layer (eps 1e-5), images a final LN; L2 loss
        for key, want in (("target.layer_norm", "instance"), ("target.eps", V2_TARGET_EPS),
                          ("loss.beta", 0.0)):
            if key in c and c[key] != want:
                self.notes.append(f"{key} = {c[key]!r} is not used in v2 (§7.2: {want!r})")
        self.target_norm, self.target_eps = "instance", V2_TARGET_EPS
        if self.modality == "image":
            self.target_final = bool(c["target.final_norm"])  # fairseq layer_norm_targets
            if not self.target_final:
                self.notes.append("target.final_norm = false: images normally apply the final "
                                  "LN (§7.2)")
        else:
            self.target_final = False
        self.layout_problems += self.decoder_problems

    def build_frontend(self, dump, shapes):
        if self.modality == "text":
            return super().build_frontend(dump, shapes)
        c = self.cfg
        if self.modality == "speech":
            conv = [tuple(x) for x in c["speech.conv"]]
            return SpeechEmbedV2(conv, self.C, c["speech.pos_layers"], c["speech.pos_kernel"],
                                 c["speech.pos_groups"], c["speech.ln_eps"], c["model.heads"],
                                 bool(c.get("speech.alibi", False)))
        if c["image.pos"] not in ("sincos", "none"):
            raise InputError(f"{dump.path}: image.pos = {c['image.pos']!r} in a v2 dump: data2vec "
                             "2.0 images use the fixed sin-cos table (§7.2)")
        return ImageEmbedV2(c["image.height"], c["image.width"], c["image.channels"],
                            c["image.patch"], self.C, self.ncls, c["image.pos"] == "sincos",
                            c["model.ln_eps"])

    def build_output(self, dump, dtype):
        """The conv decoder, its structure read from the dec.* shapes and cross-checked with the
        decoder.* keys (docs/algorithm.md §7.1)."""
        c, C = self.cfg, self.C
        shapes = {name: shape for name, _, shape, _ in dump.table}
        layers = 0
        while f"dec.conv_w.{layers}" in shapes:
            layers += 1
        if not layers or "dec.proj_w" not in shapes:
            raise InputError(f"{dump.path}: a v2 dump without dec.conv_w.0 / dec.proj_w")
        w0 = shapes["dec.conv_w.0"]
        dims, D, K = len(w0) - 2, w0[0], w0[-1]
        groups = C // w0[1]
        hidden = shapes["dec.proj_w"][0] if "dec.proj2_w" in shapes else 0
        residual = bool(c.get("decoder.residual", False))
        want_dims = 2 if self.modality == "image" else 1
        if dims != want_dims:
            raise InputError(f"{dump.path}: a {dims}-D decoder in a {self.modality} dump")
        H = W = 0
        if dims == 2:
            H, W = c["image.height"] // c["image.patch"], c["image.width"] // c["image.patch"]
        self.decoder_problems = []
        want = {"decoder.dim": D, "decoder.kernel": K, "decoder.groups": groups,
                "decoder.layers": layers, "decoder.proj_hidden": hidden}
        for key, v in want.items():
            got = c.get(key)
            if key == "decoder.dim" and got == 0:
                got = C  # 0: the encoder width
            if got != v:
                self.decoder_problems.append(f"{key} = {got} but the dec.* shapes say {v}")
        self.dec = ConvDecoder(dims, C, D, K, groups, layers, residual, hidden, H, W).to(dtype)
        grid = f" over the {H} x {W} grid" if dims == 2 else ""
        ks = f"{K} x {K}" if dims == 2 else f"{K}"
        self.dec_desc = (f"decoder {layers} x conv(k {ks}, groups {groups}, D {D}){grid}"
                         f"{' + residual' if residual else ''} -> "
                         + (f"Linear({D}, {hidden}) -> GELU -> Linear({hidden}, {C})" if hidden
                            else f"Linear({D}, {C})"))

    def output_refs(self):
        return {"dec." + re.sub(r"(\D)(\d+)$", r"\1.\2", k): [p]
                for k, p in self.dec.named_c().items()}  # conv_w0 -> dec.conv_w.0

    def teacher_averages(self, sharing):
        """The encoder blocks (text: fairseq ema_encoder_only, docs/algorithm.md §7.2 step 8),
        images also their whole front-end (ema.frontend); never the decoder, which the teacher
        does not have. ema-all (also the front-end and the decoder) and share-all (the student's
        front-end) are wrong rules, for negative controls."""
        names = {n for n in self.student if n.startswith("enc.")}
        fe_names = {n for n in self.student if n.startswith(self.modality + ".")}
        if sharing == "ema-all":
            names |= fe_names | {n for n in self.student if n.startswith("dec.")}
        elif sharing == "spec" and self.ema_frontend:
            names |= fe_names
        elif sharing == "spec" and self.modality == "speech":
            # fairseq make_target_model without the local encoder and project_features: the
            # positional convs, the context LN and alibi_scale are averaged (§7.3)
            names |= {n for n in fe_names if n.startswith(("speech.pos_", "speech.enc_ln_",
                                                           "speech.alibi_scale"))}
        return names

    def inputs(self, dump):
        if "v2_masks" not in dump.d or "v2_noise" not in dump.d:
            raise InputError(f"{dump.path}: a v2 dump without v2_masks / v2_noise")
        x = {"masks": torch.from_numpy(dump["v2_masks"].astype(bool)),
             "noise": torch.from_numpy(dump["v2_noise"]).to(self.dtype)}
        if self.modality == "image":
            if "batch_images" not in dump.d:
                raise InputError(f"{dump.path}: an image v2 dump without batch_images")
            x["img"] = torch.from_numpy(dump["batch_images"]).to(self.dtype)
        elif self.modality == "speech":
            if "batch_audio" not in dump.d:
                raise InputError(f"{dump.path}: a speech v2 dump without batch_audio")
            x["wav"] = torch.from_numpy(dump["batch_audio"]).to(self.dtype)
        else:
            x["bt"] = torch.from_numpy(dump["batch_tokens"].astype(np.int64))
        return x

    def targets(self, layers):
        """(K, B, T, C) teacher layers without extra tokens -> (B, T, C) targets (§7.2 step 5):
        instance norm over T per layer, average, images then the final LN."""
        y = sum(self.norm_layer(a) for a in layers) / self.top_k
        if self.target_final and V2_FAULT != "no-final-ln":
            y = F.layer_norm(y, (self.C,), eps=V2_TARGET_EPS)
        return y

    def forward_loss(self, x):
        masks, noise = x["masks"], x["noise"]
        image = self.modality == "image"
        if self.modality == "speech":
            return self.forward_loss_speech(x)
        if image:
            local = self.fe.local(x["img"])  # step 1: patch embedding + sin-cos (B, Np, C)
            pad = None
        else:
            pad = x["bt"].eq(self.pad_id)
            local = self.fe(x["bt"])["out"]  # step 1: local features of the unmasked batch
        B, T, _ = local.shape
        R, M = masks.shape[0], self.clones
        if masks.shape != (B * M, T) or noise.shape != (B * M, T, self.C):
            raise InputError(f"v2_masks {tuple(masks.shape)} / v2_noise {tuple(noise.shape)} for "
                             f"B {B}, v2.clones {M}, T {T}, C {self.C}")
        ids_keep = kept_indices(masks)
        if V2_FAULT == "kept-shift":
            ids_keep = shift_one_kept(ids_keep, masks)
        Mr = M - 1 if V2_FAULT == "clones-1" and M > 1 else M
        row_sample = torch.clamp(torch.arange(R) // Mr, max=B - 1)  # row b M + m is sample b
        # student (step 3, 4): kept tokens -> (images: cls + LN) -> encoder -> decoder input with
        # noise (images: without the cls row) -> decoder
        xs = gather_kept(local, ids_keep, row_sample)
        if image:
            h, _, _ = self.enc(self.fe.context(xs), None, None)
        else:
            h, _, _ = self.enc(xs, gather_kept(pad, ids_keep, row_sample), None)
        pred_all = self.dec(scatter_decoder_input(h[:, self.ncls:], ids_keep, noise), None, None,
                            0.0)
        # teacher (step 5), once per sample: text the student's local features, images the image
        # through the teacher's own front-end
        with torch.no_grad():
            x_t = self.fe_t.local(x["img"]) if image else local.detach()
            if V2_FAULT == "teacher-masked":  # clone 0's student view instead
                x_t = x_t * (~masks[::M]).unsqueeze(-1).to(x_t.dtype)
            if image:
                x_t = self.fe_t.context(x_t)
            _, ffn_t, end_t = self.enc_t(x_t, pad, None)
            layers = (ffn_t if self.target_ffn else end_t)[self.L - self.top_k:]
            # the extra tokens are dropped before the per-layer norm (fairseq: lr[:, extra:])
            patches = layers if V2_FAULT == "cls-in-norm" else layers[:, :, self.ncls:]
            y = self.targets(patches)
            if V2_FAULT == "cls-in-norm":
                y = y[:, self.ncls:]
            y_rows = y.repeat(M, 1, 1) if V2_FAULT == "repeat-tile" else y[row_sample]
            y_sel = y_rows[masks] if "y_fixed" not in x else x["y_fixed"]
        # loss (step 6): L2 at the masked positions of every clone, (r, t) order
        pred = pred_all[masks]
        n = int(masks.sum())
        loss_sum = ((pred - y_sel) ** 2).sum() * self.scale
        out = {"M": n, "y": y_sel, "pred": pred, "layers": layers}
        if image:
            out["layers_patches"] = layers[:, :, self.ncls:]
        if self.ncls and self.cls_weight > 0:
            # the cls loss (§7.2 "Images"): weight v2.cls_loss x the masked tokens per row, i.e.
            # v2.cls_loss x the mean over rows once divided by the masked count (fairseq's
            # cls_loss * sample_size uses the GPU's whole masked count: cls-sample-size)
            cls_sum, cls_tgt = cls_loss_sum(h[:, 0], y, row_sample, self.scale)
            weight = self.cls_weight * (n if V2_FAULT == "cls-sample-size" else n / R)
            if V2_FAULT == "cls-weight":
                weight = self.cls_weight
            loss_sum = loss_sum + weight * cls_sum
            out.update(cls_sum=weight * cls_sum.detach(), cls_predictions=h[:, 0],
                       cls_targets=cls_tgt)
        out.update(sum=loss_sum, mean=loss_sum / n)
        return out


    def forward_loss_speech(self, x):
        """Speech (docs/algorithm.md §7.3, fairseq contextualized_features with remove_masked):
        the student's clones zero their masked frames, run the positional convs over the whole
        sequence, keep the kept frames of features + positions, layer-norm them and encode them
        with ALiBi at the kept frames' true distances; the teacher runs the unmasked local
        features through its own (EMA) positional convs, LN and ALiBi scale."""
        masks, noise = x["masks"], x["noise"]
        local = self.fe.features(x["wav"])  # step 1: the local features (B, T, C)
        B, T, _ = local.shape
        R, M = masks.shape[0], self.clones
        if masks.shape != (B * M, T) or noise.shape != (B * M, T, self.C):
            raise InputError(f"v2_masks {tuple(masks.shape)} / v2_noise {tuple(noise.shape)} for "
                             f"B {B}, v2.clones {M}, T {T}, C {self.C}")
        ids_keep = kept_indices(masks)
        if V2_FAULT == "kept-shift":
            ids_keep = shift_one_kept(ids_keep, masks)
        Mr = M - 1 if V2_FAULT == "clones-1" and M > 1 else M
        row_sample = torch.clamp(torch.arange(R) // Mr, max=B - 1)
        rows = torch.arange(R)[:, None].expand_as(ids_keep)
        kept = torch.zeros(R, T, dtype=torch.bool)
        kept[rows, ids_keep] = True  # the (possibly faulted) kept set decides what is zeroed
        xr = local[row_sample]
        if V2_FAULT == "pos-after-gather":
            xs = gather_kept(local, ids_keep, row_sample)
            xs = xs + self.fe.pos(xs)
        else:
            zin = xr if V2_FAULT == "pos-unmasked" else xr * kept.unsqueeze(-1).to(xr.dtype)
            pos = self.fe.pos(zin)
            xs = gather_kept(local, ids_keep, row_sample) + pos[rows, ids_keep]
        xs = self.fe.enc_ln(xs)
        apos = (torch.arange(ids_keep.shape[1])[None].expand_as(ids_keep)
                if V2_FAULT == "alibi-unmasked-pos" else ids_keep)
        h, _, _ = self.enc(xs, None, self.fe.bias(apos))
        pred_all = self.dec(scatter_decoder_input(h, ids_keep, noise), None, None, 0.0)
        with torch.no_grad():
            x_t = local.detach()
            if V2_FAULT == "teacher-masked":
                x_t = x_t * (~masks[::M]).unsqueeze(-1).to(x_t.dtype)
            x_t = self.fe_t.enc_ln(x_t + self.fe_t.pos(x_t))
            _, ffn_t, end_t = self.enc_t(x_t, None, self.fe_t.bias(torch.arange(T)[None]))
            layers = (ffn_t if self.target_ffn else end_t)[self.L - self.top_k:]
            y = self.targets(layers)
            y_rows = y.repeat(M, 1, 1) if V2_FAULT == "repeat-tile" else y[row_sample]
            y_sel = y_rows[masks]
        pred = pred_all[masks]
        n = int(masks.sum())
        loss_sum = ((pred - y_sel) ** 2).sum() * self.scale
        return {"M": n, "y": y_sel, "pred": pred, "layers": layers, "sum": loss_sum,
                "mean": loss_sum / n}


def make_model(dump, dtype, sharing="spec"):
    if dump.mode == "v2":
        return RefModelV2(dump, dtype, sharing)
    if dump.mode != "v1":
        raise InputError(f"{dump.path}: mode {dump.mode!r}: v1 or v2 expected")
    return RefModel(dump, dtype, sharing)


# ---- self-test of the v2 reference (no d2v dump needed) -----------------------------------------

def synthetic_v2_dump(seed, B=2, M=3, T=7, n_masked=3, C=8, L=2, D=8, K=3, layers=2, hidden=16,
                      V=11, pad_id=1, noise_std=0.3):
    """A text v2 dump object as Dump would read it, with random parameters, tokens (sample 1
    ends in padding), masks and noise: for the self-test only."""
    g = torch.Generator().manual_seed(seed)
    maxpos = 16
    text = f"""modality = "text";
model: {{ mode = "v2"; layers = {L}; width = {C}; heads = 2; ffn = 16; pre_ln = false;
         k_bias = true; ln_eps = 1e-5; layer_scale = 0.0; dropout = 0.0; attn_dropout = 0.0;
         act_dropout = 0.0; drop_path = 0.0; layerdrop = 0.0; }};
text: {{ max_positions = {maxpos}; dropout = 0.0; ln_eps = 1e-5; }};
target: {{ top_k = 2; tensor = "ffn"; layer_norm = "instance"; final_norm = false; eps = 1e-5; }};
loss: {{ beta = 0.0; scale = 1.0; }};
ema: {{ frontend = false; }};
v2: {{ clones = {M}; mask_prob = {n_masked / T!r}; noise_std = {noise_std!r}; }};
decoder: {{ dim = {D}; kernel = {K}; groups = 1; layers = {layers}; residual = false;
           proj_hidden = {hidden}; input_dropout = 0.0; }};
"""
    F_ = 16
    shapes = [("text.tok", (V, C)), ("text.pos", (maxpos + 2, C)), ("text.ln_w", (C,)),
              ("text.ln_b", (C,)), ("enc.ln1_w", (L, C)), ("enc.ln1_b", (L, C)),
              ("enc.qkv_w", (L, 3 * C, C)), ("enc.qkv_b", (L, 3 * C)), ("enc.proj_w", (L, C, C)),
              ("enc.proj_b", (L, C)), ("enc.ln2_w", (L, C)), ("enc.ln2_b", (L, C)),
              ("enc.fc1_w", (L, F_, C)), ("enc.fc1_b", (L, F_)), ("enc.fc2_w", (L, C, F_)),
              ("enc.fc2_b", (L, C))]
    for i in range(layers):
        shapes += [(f"dec.conv_w.{i}", (D, C if i == 0 else D, K)), (f"dec.conv_b.{i}", (D,))]
    shapes += [("dec.proj_w", (hidden, D)), ("dec.proj_b", (hidden,)),
               ("dec.proj2_w", (C, hidden)), ("dec.proj2_b", (C,))]
    d = Dump.__new__(Dump)
    d.path, d.config_text, d.modality, d.mode, d.pad_id, d.n = "<self-test>", text, "text", "v2", \
        pad_id, 0
    d.cfg = parse_libconfig(text)
    d.table, off = [], 0
    for name, shape in shapes:
        count = int(np.prod(shape))
        d.table.append((name, off, shape, count))
        off += count
    d.np = off
    params = 0.4 * torch.randn(off, generator=g)
    for name, o, _, count in d.table:  # layer norm weights near 1
        if re.search(r"ln\d?_w$", name):
            params[o:o + count] += 1
    tokens = torch.randint(2, V, (B, T), generator=g)
    tokens[:, 0] = 0
    tokens[B - 1, T - 1] = pad_id
    masks = torch.zeros(B * M, T, dtype=torch.bool)
    for r in range(B * M):
        masks[r, torch.randperm(T, generator=g)[:n_masked]] = True
    noise = noise_std * torch.randn(B * M, T, C, generator=g) * masks.unsqueeze(-1)
    d.d = {"batch_tokens": tokens.numpy().astype(np.int32), "v2_masks": masks.numpy().astype(
        np.uint8), "v2_noise": noise.numpy().astype(np.float32),
        "loss_positions": masks.numpy().astype(np.uint8),
        "sample_ids": np.arange(B, dtype=np.int64), "params_before": params.numpy()}
    return d


def slow_v2_loss(model, dump):
    """The v2 loss written row by row and position by position, with the instance norm from its
    formula: an independent check of the vectorised forward_loss's gather, scatter, clone repeat
    and target maths."""
    bt = torch.from_numpy(dump["batch_tokens"].astype(np.int64))
    masks = dump["v2_masks"].astype(bool)
    noise = torch.from_numpy(dump["v2_noise"]).to(model.dtype)
    B, T = bt.shape
    M, C, K = model.clones, model.C, model.top_k
    local = model.fe(bt)["out"]
    pad = bt.eq(model.pad_id)
    ys = []
    for b in range(B):
        _, ffn, _ = model.enc_t(local[b:b + 1].detach(), pad[b:b + 1], None)
        acc = torch.zeros(T, C, dtype=model.dtype)
        for a in ffn[model.L - K:]:
            a = a[0]
            mu = a.mean(0, keepdim=True)
            var = ((a - mu) ** 2).mean(0, keepdim=True)
            acc = acc + (a - mu) / torch.sqrt(var + V2_TARGET_EPS)
        ys.append(acc / K)
    total, preds, targets = 0.0, [], []
    for r in range(B * M):
        b = r // M
        kept = [t for t in range(T) if not masks[r, t]]
        xs = torch.stack([local[b, t] for t in kept])[None]
        h, _, _ = model.enc(xs, pad[b, kept][None], None)
        rows = [None] * T
        for j, t in enumerate(kept):
            rows[t] = h[0, j]
        for t in range(T):
            if rows[t] is None:
                rows[t] = noise[r, t]
        p = model.dec(torch.stack(rows)[None], None, None, 0.0)[0]
        for t in range(T):
            if masks[r, t]:
                total = total + model.scale * ((p[t] - ys[b][t]) ** 2).sum()
                preds.append(p[t])
                targets.append(ys[b][t])
    return total, torch.stack(preds), torch.stack(targets)


def synthetic_v2_image_dump(seed, B=2, M=3, gh=3, gw=5, P=2, Cin=1, n_masked=9, C=8, L=2, D=8,
                            K=3, groups=2, layers=2, residual=True, cls=True, cls_loss=0.25,
                            noise_std=0.3):
    """An image v2 dump object as Dump would read it (a non-square patch grid, random parameters,
    images, masks with n_masked of gh x gw patches per row, and noise), and a teacher arena
    that differs from the student's: for the self-test only."""
    g = torch.Generator().manual_seed(seed)
    T = gh * gw
    text = f"""modality = "image";
model: {{ mode = "v2"; layers = {L}; width = {C}; heads = 2; ffn = 16; pre_ln = false;
         k_bias = true; ln_eps = 1e-6; layer_scale = 0.0; dropout = 0.0; attn_dropout = 0.0;
         act_dropout = 0.0; drop_path = 0.0; layerdrop = 0.0; }};
image: {{ height = {gh * P}; width = {gw * P}; channels = {Cin}; patch = {P};
         cls = {str(cls).lower()}; pos = "sincos"; }};
target: {{ top_k = 2; tensor = "ffn"; layer_norm = "instance"; final_norm = true; eps = 1e-5; }};
loss: {{ beta = 0.0; scale = -1.0; }};
ema: {{ frontend = true; }};
v2: {{ clones = {M}; mask_prob = {n_masked / T!r}; mask_length = 3; noise_std = {noise_std!r};
      cls_loss = {cls_loss!r}; }};
decoder: {{ dim = {D}; kernel = {K}; groups = {groups}; layers = {layers};
           residual = {str(residual).lower()}; proj_hidden = 0; input_dropout = 0.0; }};
"""
    F_ = 16
    shapes = [("image.patch_w", (C, Cin, P, P)), ("image.patch_b", (C,))]
    if cls:
        shapes.append(("image.v2_cls", (C,)))
    shapes += [("image.v2_ln_w", (C,)), ("image.v2_ln_b", (C,)),
               ("enc.ln1_w", (L, C)), ("enc.ln1_b", (L, C)),
               ("enc.qkv_w", (L, 3 * C, C)), ("enc.qkv_b", (L, 3 * C)), ("enc.proj_w", (L, C, C)),
               ("enc.proj_b", (L, C)), ("enc.ln2_w", (L, C)), ("enc.ln2_b", (L, C)),
               ("enc.fc1_w", (L, F_, C)), ("enc.fc1_b", (L, F_)), ("enc.fc2_w", (L, C, F_)),
               ("enc.fc2_b", (L, C))]
    for i in range(layers):
        cin = C if i == 0 else D
        shapes += [(f"dec.conv_w.{i}", (D, cin // groups, K, K)), (f"dec.conv_b.{i}", (D,))]
    shapes += [("dec.proj_w", (C, D)), ("dec.proj_b", (C,))]
    d = Dump.__new__(Dump)
    d.path, d.config_text, d.modality, d.mode, d.pad_id, d.n = "<self-test>", text, "image", \
        "v2", None, 0
    d.cfg = parse_libconfig(text)
    d.table, off = [], 0
    for name, shape in shapes:
        count = int(np.prod(shape))
        d.table.append((name, off, shape, count))
        off += count
    d.np = off
    params = 0.4 * torch.randn(off, generator=g)
    for name, o, _, count in d.table:  # layer norm weights near 1
        if re.search(r"ln\d?_w$", name):
            params[o:o + count] += 1
    teacher = params + 0.2 * torch.randn(off, generator=g)
    images = torch.randn(B, gh * P, gw * P, Cin, generator=g)
    masks = torch.zeros(B * M, T, dtype=torch.bool)
    for r in range(B * M):
        masks[r, torch.randperm(T, generator=g)[:n_masked]] = True
    noise = noise_std * torch.randn(B * M, T, C, generator=g) * masks.unsqueeze(-1)
    d.d = {"batch_images": images.numpy().astype(np.float32),
           "v2_masks": masks.numpy().astype(np.uint8), "v2_noise": noise.numpy().astype(
               np.float32), "loss_positions": masks.numpy().astype(np.uint8),
           "sample_ids": np.arange(B, dtype=np.int64), "params_before": params.numpy(),
           "teacher_before": teacher.numpy()}
    return d


def _ln_by_hand(v, eps, w=None, b=None):
    """Layer norm of one vector from its formula (biased variance)."""
    mu = v.mean()
    out = (v - mu) / torch.sqrt(((v - mu) ** 2).mean() + eps)
    return out if w is None else out * w + b


def slow_v2_image_loss(model, dump):
    """The image v2 loss row by row, with the patch convolution, the sin-cos table, the context
    layer norm, the instance norm, the final LN and the cls loss written from their formulas (the
    encoder and decoder modules are the vectorised step's): an independent check of
    forward_loss's image path. Returns (loss sum, predictions, targets, cls predictions, cls
    targets)."""
    c = model.cfg
    img = torch.from_numpy(dump["batch_images"]).to(model.dtype)
    masks = dump["v2_masks"].astype(bool)
    noise = torch.from_numpy(dump["v2_noise"]).to(model.dtype)
    P = c["image.patch"]
    gh, gw = c["image.height"] // P, c["image.width"] // P
    B, T, M, C, K = img.shape[0], gh * gw, model.clones, model.C, model.top_k
    eps = c["model.ln_eps"]

    def local(fe, b):  # (T, C): W . patch pixels + bias + sincos, patch t = row * gw + col
        rows = []
        for t in range(T):
            gy, gx = divmod(t, gw)
            patch = img[b, gy * P:(gy + 1) * P, gx * P:(gx + 1) * P, :]  # (P, P, Cin)
            v = torch.einsum("oipq,pqi->o", fe.proj.weight, patch) + fe.proj.bias
            pos = torch.zeros(C, dtype=torch.float32)  # the table is float32 (as d2v's)
            q = C // 4
            for k in range(q):
                w = 10000.0 ** (-k / q)
                pos[k], pos[q + k] = math.sin(gx * w), math.cos(gx * w)
                pos[2 * q + k], pos[3 * q + k] = math.sin(gy * w), math.cos(gy * w)
            rows.append(v + pos.to(model.dtype))
        return torch.stack(rows)

    def context(fe, rows):  # cls first, then the affine layer norm, row by row
        seq = ([fe.cls] if model.ncls else []) + list(rows)
        return torch.stack([_ln_by_hand(v, eps, fe.ln.weight, fe.ln.bias) for v in seq])

    ys = []
    with torch.no_grad():
        for b in range(B):
            _, ffn, _ = model.enc_t(context(model.fe_t, local(model.fe_t, b))[None], None, None)
            acc = torch.zeros(T, C, dtype=model.dtype)
            for a in ffn[model.L - K:]:
                a = a[0, model.ncls:]  # the cls row never enters the statistics
                mu = a.mean(0, keepdim=True)
                var = ((a - mu) ** 2).mean(0, keepdim=True)
                acc = acc + (a - mu) / torch.sqrt(var + V2_TARGET_EPS)
            acc = acc / K
            ys.append(torch.stack([_ln_by_hand(acc[t], V2_TARGET_EPS) for t in range(T)]))
    total, preds, targets, cls_p, cls_t = 0.0, [], [], [], []
    for r in range(B * M):
        b = r // M
        lb = local(model.fe, b)
        kept = [t for t in range(T) if not masks[r, t]]
        h, _, _ = model.enc(context(model.fe, [lb[t] for t in kept])[None], None, None)
        rows = [None] * T
        for j, t in enumerate(kept):
            rows[t] = h[0, model.ncls + j]
        for t in range(T):
            if rows[t] is None:
                rows[t] = noise[r, t]
        p = model.dec(torch.stack(rows)[None], None, None, 0.0)[0]
        for t in range(T):
            if masks[r, t]:
                total = total + model.scale * ((p[t] - ys[b][t]) ** 2).sum()
                preds.append(p[t])
                targets.append(ys[b][t])
        if model.ncls and model.cls_weight > 0:
            ybar = sum(ys[b][t] for t in range(T)) / T
            n_row = int(masks[r].sum())  # the cls weight: v2.cls_loss x masked tokens per row
            total = total + model.cls_weight * n_row * model.scale * ((h[0, 0] - ybar) ** 2).sum()
            cls_p.append(h[0, 0])
            cls_t.append(ybar)
    return total, torch.stack(preds), torch.stack(targets), cls_p, cls_t


def fd_check(rep, model, dump, flat, teacher, label):
    """Autograd against central differences (float64) on two elements of every tensor (its
    largest gradient and a random one), then a 1%-wrong gradient rejected. The teacher side
    holds still (stop-gradient): the differences keep the targets at their unperturbed values."""
    res = model.step(dump, flat, teacher)
    grads = res["grads"]
    y_fixed = torch.from_numpy(res["targets"]).to(torch.float64)

    def loss_at(vec):
        model.load(model.student, vec, dump.table)
        with torch.no_grad():
            return float(model.forward_loss(dict(model.inputs(dump), y_fixed=y_fixed))["mean"])

    gen = np.random.default_rng(0)
    worst, picks = (0.0, ""), []
    for name, off, _, count in dump.table:
        seg = np.abs(grads[off:off + count])
        picks.append((name, off + int(seg.argmax())))
        picks.append((name, off + int(gen.integers(count))))
    fd = {}
    base = flat.astype(np.float64)
    for name, i in picks:
        h_ = 1e-5
        up, dn = base.copy(), base.copy()
        up[i] += h_
        dn[i] -= h_
        fd[i] = (loss_at(up) - loss_at(dn)) / (2 * h_)
        err = abs(fd[i] - grads[i]) / max(abs(fd[i]), 1e-3)
        worst = max(worst, (err, f"{name}[{i}]"))
    rep.check(worst[0] <= 1e-5, f"self-test {label} autograd = central differences on "
                                f"{len(picks)} elements over {len(dump.table)} tensors: worst "
                                f"{worst[1]} rel {worst[0]:.1e}")
    name, i = next(p for p in picks if p[0] == "dec.proj_w")  # its largest element
    wrong = grads[i] * 1.01
    err = abs(fd[i] - wrong) / max(abs(fd[i]), 1e-3)
    rep.check(err > 1e-5, f"self-test {label} negative control: {name}[{i}] gradient 1% off is "
                          f"rejected (rel {err:.1e})")
    rep.check(all(abs(grads[o:o + c]).max() > 0 for _, o, _, c in dump.table),
              f"self-test {label}: every tensor gets a gradient (front-end, encoder, decoder)")
    return res


def fault_checks(rep, model, dump, teacher, faults, label):
    """Every fault changes what its negative control looks at (targets, predictions or loss)."""
    global V2_FAULT
    model.load(model.student, dump["params_before"], dump.table)
    model.load(model.teacher, teacher, dump.table)
    with torch.no_grad():
        r = model.forward_loss(model.inputs(dump))
    for fault in faults:
        V2_FAULT = fault
        try:
            with torch.no_grad():
                f = model.forward_loss(model.inputs(dump))
        finally:
            V2_FAULT = None
        diff = max(rel_to_max(f["y"], r["y"])[1], rel_to_max(f["pred"], r["pred"])[1],
                   abs(float(f["sum"]) - float(r["sum"])) / abs(float(r["sum"])))
        rep.check(diff > 1e-3, f"self-test {label} --v2-fault {fault} changes targets / "
                               f"predictions / loss (rel {diff:.1e})")


def decoder_fixture_check(rep, fx, case, make_dump):
    """decoder_ref's fixture case loaded through a synthetic v2 dump's dec.* table entries: the
    output, input and parameter gradients must match (the names, layouts and the 1-D / 2-D
    structure map onto decoder_ref's module)."""
    g = fx[case]
    a = {k: int(g.attrs[k]) for k in ("C", "D", "K", "layers", "proj_hidden", "groups",
                                       "residual", "seed", "step", "site", "H", "W")}
    p_drop = float(g.attrs["input_dropout"])
    arr = {k: g[k][()] for k in g.keys()}
    dump = make_dump(a)
    model = make_model(dump, torch.float32)
    if model.layout_problems:
        rep.check(False, f"self-test decoder fixture {case}: {'; '.join(model.layout_problems)}")
        return
    flat = dump["params_before"].copy()
    fixture_names = {}
    for name, off, _, count in dump.table:
        if name.startswith("dec."):
            key = re.sub(r"\.(\d+)$", r"\1", name[4:])  # dec.conv_w.0 -> conv_w0
            flat[off:off + count] = arr[key].reshape(-1)
            fixture_names[name] = key
    model.load(model.student, flat, dump.table)
    keep = keep_mask(a["seed"], a["step"], a["site"], arr["sample_ids"],
                     arr["x"].shape[1] * a["C"], p_drop).reshape(arr["x"].shape)
    xin = torch.from_numpy(arr["x"]).requires_grad_(True)
    for q in model.dec.parameters():
        q.grad = None
    y = model.dec(xin, keep, torch.from_numpy(arr["masked"].astype(bool)), p_drop)
    (y * torch.from_numpy(arr["R"])).sum().backward()
    worst = (rel_to_max(y.detach(), arr["y"])[1], "y")
    worst = max(worst, (rel_to_max(xin.grad, arr["dx"])[1], "dx"))
    got = model.flat_grads(dump.table, dump.np).numpy()
    for name, off, _, count in dump.table:
        if name in fixture_names:
            e = rel_to_max(got[off:off + count], arr["grad_" + fixture_names[name]].reshape(-1))
            worst = max(worst, (e[1], "grad " + name))
    rep.check(worst[0] <= 1e-5, f"self-test dec.* tensors loaded through the parameter table "
                                f"reproduce the decoder fixture's {case} case ({model.dec_desc}"
                                f": output, input and parameter gradients): worst "
                                f"{worst[1]} rel {worst[0]:.1e}")


def self_test_image(rep, decoder_fixture):
    """The image pieces: the context (cls + LN) and the cls loss by hand on tiny tensors, the
    vectorised step against slow_v2_image_loss, central differences, the teacher's own front-end
    against the student's, every fault, and the 2-D decoder against decoder_ref's fixture."""
    # (1) context on tiny tensors: cls prepended, then LN with its affine, by hand
    fe = ImageEmbedV2(4, 4, 1, 2, 4, 1, True, 1e-6).double()
    with torch.no_grad():
        fe.cls.copy_(torch.tensor([1.0, 2.0, 3.0, 6.0]))
        fe.ln.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
        fe.ln.bias.copy_(torch.tensor([0.0, 1.0, 0.0, -1.0]))
    xs = torch.tensor([[[2.0, 2.0, 2.0, 2.0], [0.0, 4.0, 0.0, 4.0]]], dtype=torch.float64)
    got = fe.context(xs)
    # cls row: mean 3, var (4 + 1 + 0 + 9) / 4 = 3.5; constant row: normalised 0 -> the bias;
    # [0, 4, 0, 4]: mean 2, var 4 -> [-1, 1, -1, 1] (eps 1e-6 aside)
    s = 1.0 / math.sqrt(3.5 + 1e-6)
    t = 2.0 / math.sqrt(4.0 + 1e-6)
    want = torch.tensor([[[-2 * s, -1 * s * 2 + 1, 0.0, 3 * s - 1], [0.0, 1.0, 0.0, -1.0],
                          [-t, t * 2 + 1, -t * 0.5, t - 1]]], dtype=torch.float64)
    rep.check(got.shape == (1, 3, 4) and torch.allclose(got, want, atol=1e-12, rtol=0),
              f"self-test image context by hand: cls prepended, then LN with affine "
              f"(max err {float((got - want).abs().max()):.1e})")
    loc = fe.local(torch.zeros(1, 4, 4, 1, dtype=torch.float64))
    rep.check(torch.allclose(loc[0] - fe.proj.bias, torch.from_numpy(sincos_2d(2, 2, 4)),
                             atol=1e-7, rtol=0)
              and abs(float(loc[0, 1, 0] - fe.proj.bias[0]) - math.sin(1.0)) < 1e-7,
              "self-test image local features of a black image = bias + sin-cos table (patch 1: "
              "column 1, sin(1) first)")
    # (2) the cls loss by hand: B 1, M 2, C 2, T 2
    y = torch.tensor([[[1.0, 3.0], [3.0, 5.0]]], dtype=torch.float64)  # mean over patches [2, 4]
    cp = torch.tensor([[2.0, 4.0], [0.0, 0.0]], dtype=torch.float64)  # errors 0 and 4 + 16
    cs, ct = cls_loss_sum(cp, y, torch.tensor([0, 0]), 0.5)
    rep.check(abs(float(cs) - 10.0) < 1e-12 and ct.tolist() == [[2.0, 4.0], [2.0, 4.0]],
              f"self-test cls loss by hand: 0.5 x (0 + 20) = {float(cs):g}, targets the patch mean "
              f"repeated per clone")

    # (3) vectorised step against the slow loop, float64
    dump = synthetic_v2_image_dump(3)
    model = make_model(dump, torch.float64)
    rep.check(not model.layout_problems, f"self-test synthetic image parameter table: "
                                         f"{'; '.join(model.layout_problems) or 'ok'}")
    flat, teacher = dump["params_before"], dump["teacher_before"]
    model.load(model.student, flat, dump.table)
    model.load(model.teacher, teacher, dump.table)
    model.load_shared(flat, dump.table)
    with torch.no_grad():
        r = model.forward_loss(model.inputs(dump))
        s_sum, s_pred, s_y, s_cp, s_ct = slow_v2_image_loss(model, dump)
    e = max(abs(float(r["sum"]) - float(s_sum)) / abs(float(s_sum)),
            rel_to_max(r["pred"], s_pred)[1], rel_to_max(r["y"], s_y)[1],
            rel_to_max(r["cls_predictions"], torch.stack(s_cp))[1],
            rel_to_max(r["cls_targets"], torch.stack(s_ct))[1])
    share = float(r["cls_sum"]) / float(r["sum"])
    rep.check(e <= 1e-10 and r["M"] == int(dump["v2_masks"].sum()) and 0.05 < share < 0.95,
              f"self-test image v2 step = row-by-row loop (loss {float(s_sum):.6f}, cls share "
              f"{share:.2f}, {r['M']} masked rows): worst rel {e:.1e}")

    # (4) central differences; the teacher's front-end is its own
    fd_check(rep, model, dump, flat, teacher, "image")
    shared = make_model(dump, torch.float64, "share-all")
    shared.load(shared.student, flat, dump.table)
    shared.load(shared.teacher, teacher, dump.table)
    shared.load_shared(flat, dump.table)
    model.load(model.student, flat, dump.table)
    model.load(model.teacher, teacher, dump.table)
    with torch.no_grad():
        a = model.forward_loss(model.inputs(dump))["y"]
        b = shared.forward_loss(shared.inputs(dump))["y"]
    names = sorted(model.ema_names - shared.ema_names)
    rep.check(rel_to_max(b, a)[1] > 1e-3 and names and all(n.startswith("image.") for n in names),
              f"self-test image teacher on its own EMA front-end ({', '.join(names)}): the "
              f"student's instead changes the targets (rel {rel_to_max(b, a)[1]:.1e})")
    rep.check(not any(n.startswith("dec.") for n in model.ema_names),
              "self-test image teacher never averages the decoder")

    # (5) every fault changes the step
    fault_checks(rep, model, dump, teacher, V2_FAULTS_IMAGE, "image")

    # (6) the 2-D decoder through the table against decoder_ref's fixture
    if decoder_fixture is None:
        return
    try:
        fx = h5py.File(decoder_fixture, "r")
    except OSError as e:
        rep.check(False, f"self-test decoder fixture {decoder_fixture}: cannot open ({e})")
        return
    with fx:
        for case in ("image", "image_k5"):
            decoder_fixture_check(rep, fx, case, lambda a: synthetic_v2_image_dump(
                4, gh=a["H"], gw=a["W"], n_masked=a["H"] * a["W"] // 2, C=a["C"], D=a["D"],
                K=a["K"], groups=a["groups"], layers=a["layers"], residual=bool(a["residual"])))


def self_test(rep, decoder_fixture):
    """The v2 pieces on synthetic data: gather / scatter by hand, the vectorised step against
    slow_v2_loss / slow_v2_image_loss, autograd against central differences (with a wrong
    gradient rejected), every --v2-fault changing the step, and the dec.* table mapping against
    decoder_ref's fixture (1-D and 2-D cases)."""
    # (1) kept positions, gather and scatter by hand on a 3 x 5 example
    masks = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)
    ids = kept_indices(masks)
    rep.check(ids.tolist() == [[1, 2, 4], [0, 3, 4], [0, 1, 4]],
              f"self-test kept positions ascending: {ids.tolist()}")
    x = torch.arange(2 * 5 * 2, dtype=torch.float64).reshape(2, 5, 2)  # x[b, t, c] = 10b + 2t + c
    row_sample = torch.tensor([0, 0, 1])
    xs = gather_kept(x, ids, row_sample)
    ok = all(xs[r, j, c] == 10 * row_sample[r] + 2 * ids[r, j] + c
             for r in range(3) for j in range(3) for c in range(2))
    h = -xs
    noise = torch.full((3, 5, 2), 0.5, dtype=torch.float64) * masks.unsqueeze(-1)
    dm = scatter_decoder_input(h, ids, noise)
    for r in range(3):
        kept = [t for t in range(5) if not masks[r, t]]
        for t in range(5):
            want = h[r, kept.index(t)] if t in kept else noise[r, t]
            ok = ok and torch.equal(dm[r, t], want)
    rep.check(ok, "self-test gather of kept tokens per clone and scatter with noise, by hand")
    sh = shift_one_kept(ids, masks)
    rep.check(sh.tolist() == [[1, 3, 4], [0, 3, 4], [0, 1, 4]],
              f"self-test kept-shift moves row 0's kept 2 to the masked 3: {sh.tolist()}")
    try:
        kept_indices(torch.tensor([[1, 0, 0], [1, 1, 0]], dtype=torch.bool))
        rep.check(False, "self-test unequal kept counts refused")
    except InputError:
        rep.check(True, "self-test unequal kept counts refused")

    # (2) text: vectorised step against the slow loop, float64
    dump = synthetic_v2_dump(1)
    model = make_model(dump, torch.float64)
    rep.check(not model.layout_problems, f"self-test synthetic parameter table: "
                                         f"{'; '.join(model.layout_problems) or 'ok'}")
    flat = dump["params_before"]
    model.load(model.student, flat, dump.table)
    model.load(model.teacher, flat, dump.table)
    with torch.no_grad():
        r = model.forward_loss(model.inputs(dump))
        s_sum, s_pred, s_y = slow_v2_loss(model, dump)
    e = max(abs(float(r["sum"]) - float(s_sum)) / abs(float(s_sum)),
            rel_to_max(r["pred"], s_pred)[1], rel_to_max(r["y"], s_y)[1])
    rep.check(e <= 1e-10 and r["M"] == int(dump["v2_masks"].sum()),
              f"self-test vectorised v2 step = row-by-row loop (loss {float(s_sum):.6f}, "
              f"{r['M']} masked rows): worst rel {e:.1e}")

    # (3) text: autograd against central differences, (4) every text fault changes the step
    fd_check(rep, model, dump, flat, flat, "text")
    fault_checks(rep, model, dump, flat, V2_FAULTS_TEXT, "text")

    # (5) the dec.* table names map onto decoder_ref's module: its fixture's text case
    if decoder_fixture is not None:
        try:
            fx = h5py.File(decoder_fixture, "r")
        except OSError as e:
            rep.check(False, f"self-test decoder fixture {decoder_fixture}: cannot open ({e})")
            fx = None
        if fx is not None:
            with fx:
                g = fx["text"]
                if int(g.attrs["groups"]) != 1 or int(g.attrs["residual"]):
                    rep.check(False, "self-test decoder fixture: its text case is no longer "
                                     "ungrouped and residual-free")
                else:
                    decoder_fixture_check(rep, fx, "text", lambda a: synthetic_v2_dump(
                        2, C=a["C"], D=a["D"], K=a["K"], layers=a["layers"],
                        hidden=a["proj_hidden"]))

    # images
    self_test_image(rep, decoder_fixture)


EPS_MODE = None  # --eps-mode: overrides the dump's optim.eps_mode (negative controls)


class FairseqAdam:
    """fairseq's Adam (fairseq/optim/adam.py) from its formulas: m, v moments; eps added to
    sqrt(v) before the bias correction, which goes into the step size lr*sqrt(bc2)/bc1; decoupled
    weight decay p -= lr*wd*p on the pre-update value."""

    def __init__(self, groups, betas, eps):
        self.param_groups = groups
        self.b1, self.b2 = betas
        self.eps, self.t = eps, 0
        self.m = {id(p): torch.zeros_like(p) for g in groups for p in g["params"]}
        self.v = {id(p): torch.zeros_like(p) for g in groups for p in g["params"]}

    @torch.no_grad()
    def step(self):
        self.t += 1
        bc1, bc2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for g in self.param_groups:
            step_size = g["lr"] * math.sqrt(bc2) / bc1
            for p in g["params"]:
                m, v = self.m[id(p)], self.v[id(p)]
                m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
                v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
                if g["weight_decay"]:
                    p.mul_(1 - g["lr"] * g["weight_decay"])
                p.addcdiv_(m, v.sqrt().add_(self.eps), value=-step_size)


class RefOptimizer:
    """AdamW over the arena's tensors, two groups (decayed / exempt): torch.optim.AdamW, or
    fairseq's Adam for optim.eps_mode = "fairseq"."""

    def __init__(self, dump, flat):
        c = dump.cfg
        self.table, self.np = dump.table, dump.np
        self.tensors = [nn.Parameter(torch.from_numpy(flat[off:off + count].copy()))
                        for _, off, _, count in self.table]
        exempt = c["optim.exempt_1d"]
        decay = [p for p, (n, _, s, _) in zip(self.tensors, self.table)
                 if not (exempt and decay_exempt(n, s))]
        rest = [p for p, (n, _, s, _) in zip(self.tensors, self.table)
                if exempt and decay_exempt(n, s)]
        groups = [{"params": decay, "weight_decay": c["optim.weight_decay"]}]
        if rest:
            groups.append({"params": rest, "weight_decay": 0.0})
        betas = (c["optim.beta1"], c["optim.beta2"])
        self.mode = EPS_MODE or c.get("optim.eps_mode", "torch")
        if self.mode == "fairseq":
            for g in groups:
                g["lr"] = c["optim.lr"]
            self.opt = FairseqAdam(groups, betas, c["optim.eps"])
        elif self.mode == "torch":
            self.opt = torch.optim.AdamW(groups, lr=c["optim.lr"], betas=betas,
                                         eps=c["optim.eps"])
        else:
            raise InputError(f"optim.eps_mode {self.mode!r}: torch or fairseq expected")

    def step(self, grads, lr):
        for p, (_, off, _, count) in zip(self.tensors, self.table):
            p.grad = torch.from_numpy(np.ascontiguousarray(grads[off:off + count],
                                                           dtype=np.float32))
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        return self.flat()

    def flat(self):
        out = np.zeros(self.np, dtype=np.float32)
        for p, (_, off, _, count) in zip(self.tensors, self.table):
            out[off:off + count] = p.detach().numpy()
        return out


def clip_text(cfg, norm):
    clip = cfg["optim.clip"]
    if clip <= 0:
        return f"unclipped (norm {norm:.3f}, no clip)"
    return f"{'clipped' if norm > clip else 'unclipped'} (norm {norm:.3f}, clip {clip:g})"


def clip_grads(cfg, grads):
    """torch.nn.utils.clip_grad_norm_ to optim.clip (0: none) over the whole arena. Returns the
    clipped float32 gradients and the norm before clipping."""
    p = nn.Parameter(torch.zeros(grads.size))
    p.grad = torch.from_numpy(np.asarray(grads, dtype=np.float32)).clone()
    clip = cfg["optim.clip"]
    norm = float(nn.utils.clip_grad_norm_([p], clip if clip > 0 else float("inf")))
    return p.grad.numpy(), norm


def ema(model, table, teacher, student, tau):
    """teacher <- tau teacher + (1 - tau) student on the averaged tensors (fairseq EMAModule:
    ema.mul_(tau).add_(theta, alpha=1 - tau)); the rest of the arena is left as it is."""
    out = teacher.copy()
    if tau >= 1:
        return out
    for name, off, _, count in table:
        if name in model.ema_names:
            t = torch.from_numpy(out[off:off + count])
            t.mul_(tau).add_(torch.from_numpy(student[off:off + count]), alpha=1 - tau)
    return out


# ---- comparison and reporting --------------------------------------------------------------------

class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, label):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'ok  ' if ok else 'FAIL'} {label}", flush=True)
        return ok


def rel_to_max(got, want):
    """max |got - want| / max |want| (absolute error when want is all zero)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf"), float("inf")
    if got.size == 0:
        return 0.0, 0.0
    err = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    if not np.all(np.isfinite(got)):
        return float("inf"), float("inf")
    return err, err / scale if scale > 0 else err


def tensor_errors(table, got, want, names=None):
    """[(name, max_abs, rel_to_max)] per table tensor."""
    out = []
    for name, off, _, count in table:
        if names is None or name in names:
            a, r = rel_to_max(got[off:off + count], want[off:off + count])
            out.append((name, a, r))
    return out


def check_batch_v2(rep, dump, tag):
    """v2 masks and noise consistent with docs/algorithm.md §3.4 and §7.2."""
    c = dump.cfg
    masks, noise = dump["v2_masks"].astype(bool), dump["v2_noise"]
    if dump.modality == "image":  # T = the patch grid (the cls token is never masked)
        B = dump["batch_images"].shape[0]
        T = (c["image.height"] // c["image.patch"]) * (c["image.width"] // c["image.patch"])
    elif dump.modality == "speech":  # T = the conv extractor's frames of the crop
        B, T = dump["batch_audio"].shape
        for _, k, st in c["speech.conv"]:
            T = conv_out_len(T, k, st)
    else:
        bt = dump["batch_tokens"]
        B, T = bt.shape
    M = c["v2.clones"]
    ok = masks.shape == (B * M, T) and dump["sample_ids"].shape == (B,)
    rep.check(ok, f"{tag} v2_masks {masks.shape} = (B {B} x clones {M}, T {T})")
    if not ok:
        return
    kept = (~masks).sum(1)
    # text, images: exactly int(T (1 - R)) kept, fairseq's Python arithmetic on the decimal R
    # (§3.4; images: int(L p) cells with p = 1 - R)
    want = int(T * (1 - c["v2.mask_prob"]))
    if dump.modality == "speech":  # 1-D blocks: exactly int(T R) masked (§3.4)
        want = T - int(T * c["v2.mask_prob"])
    unit = {"image": "patches", "speech": "frames"}.get(dump.modality, "tokens")
    rep.check(np.all(kept == want), f"{tag} every clone keeps the exact count "
                                    f"(R {c['v2.mask_prob']}) = "
                                    f"{want} of {T} {unit}: "
                                    f"kept counts {sorted(set(kept.tolist()))}")
    sel = dump["loss_positions"].astype(bool)
    rep.check(sel.shape == masks.shape and np.array_equal(sel, masks),
              f"{tag} loss_positions = v2_masks: {int(masks.sum())} of {masks.size}")
    if dump.modality == "text" and "student_tokens" in dump.d:
        rep.check(np.array_equal(dump["student_tokens"], bt),
                  f"{tag} student_tokens = batch_tokens (v2 has no <mask> token)")
    # clones are drawn independently, so two may coincide by chance (a 4 x 4 grid keeping 4
    # has few block patterns); clones sharing one draw would make all of a sample's equal
    per = masks.reshape(B, M, T)
    counts = [len({r.tobytes() for r in per[b]}) for b in range(B)]
    rep.check(M == 1 or min(counts) > 1,
              f"{tag} the {M} clones of each sample have independent masks: all distinct in "
              f"{sum(n == M for n in counts)} of {B} samples, fewest distinct {min(counts)}")
    z = noise[~masks]
    nz = noise[masks]
    std = float(nz.std()) if nz.size else 0.0
    s = c["v2.noise_std"]
    ok = noise.shape == masks.shape + (c["model.width"],) and not np.any(z) and (
        abs(std - s) <= 0.2 * s if s > 0 else not np.any(nz))
    rep.check(ok, f"{tag} v2_noise {noise.shape}: zero at kept slots, std {std:.4g} at masked "
                  f"ones (v2.noise_std {s:g})")


def check_batch(rep, dump, tag):
    """The masks the trainer used are consistent with docs/algorithm.md (§3, §1.4)."""
    if dump.mode == "v2":
        return check_batch_v2(rep, dump, tag)
    sel = dump["loss_positions"].astype(bool)
    if dump.modality == "image":
        pm = dump["patch_mask"].astype(bool)
        off = sel.shape[1] - pm.shape[1]
        ok = off in (0, 1) and np.array_equal(sel[:, off:], pm) and not sel[:, :off].any()
        rep.check(ok, f"{tag} loss positions = masked patches (cls never a target): "
                      f"{int(pm.sum())} of {pm.size}")
    elif dump.modality == "speech":
        fm = dump["frame_mask"].astype(bool)
        rep.check(np.array_equal(sel, fm), f"{tag} loss positions = masked frames: "
                                           f"{int(fm.sum())} of {fm.size}")
    else:
        st, bt = dump["student_tokens"], dump["batch_tokens"]
        c = dump.cfg
        ok = np.array_equal(st[~sel], bt[~sel])
        if c["mask.text_leave_unmasked"] == 0 and c["mask.text_random_token"] == 0:
            ok = ok and len(np.unique(st[sel])) <= 1
        ok = ok and not np.any(sel & (bt == dump.pad_id))
        rep.check(ok, f"{tag} student tokens differ from the batch only at loss positions, which "
                      f"hold one <mask> id and no padding: {int(sel.sum())} of {sel.size}")


def check_step(rep, model, dump, res, verbose):
    """Compare one reference step (res) with the dump; returns nothing, records checks."""
    n, tag = dump.n, f"{dump.modality} u{dump.n:04d}"
    c = dump.cfg
    rep.check(res["M"] == dump["predictions"].shape[0],
              f"{tag} masked count: reference {res['M']}, dump {dump['predictions'].shape[0]}")
    want_loss = dump.scalar("loss")
    r = abs(res["loss"] - want_loss) / abs(want_loss)
    split = (f" (cls term {res['loss_cls']:.6f})" if "loss_cls" in res else "")
    rep.check(r <= TOL_LOSS, f"{tag} loss: dump {want_loss:.8f} reference {res['loss']:.8f}"
                             f"{split} rel {r:.2e} (tol {TOL_LOSS:.0e})")
    K = model.top_k
    worst, rows = (0.0, ""), ""
    for k in range(K):
        name = f"teacher_layer_{model.L - K + k}"
        want = res["layers"][k]
        if "layers_patches" in res and dump[name].shape == res["layers_patches"][k].shape \
                and dump[name].shape != want.shape:  # a v2 image dump without the cls row
            want, rows = res["layers_patches"][k], ", patch rows only"
        _, e = rel_to_max(dump[name], want)
        worst = max(worst, (e, name))
    why = ""
    if worst[0] > TOL_FWD and rows:  # a diagnosis: the (B, cls + T, C) buffer cut at B T rows?
        full = res["layers"][K - 1]
        got = dump[f"teacher_layer_{model.L - 1}"]
        if rel_to_max(got, full.reshape(-1, full.shape[-1])[:got.shape[0] * got.shape[1]]
                      .reshape(got.shape))[1] <= TOL_FWD:
            why = (f"; the dump holds the first {got.shape[0]} x {got.shape[1]} rows of the "
                   f"{full.shape} layer with its cls rows, written as {got.shape}")
    rep.check(worst[0] <= TOL_FWD, f"{tag} teacher layers ({K}, tensor "
                                   f"'{c['target.tensor']}'{rows}): worst {worst[1]} rel "
                                   f"{worst[0]:.2e}{why}")
    if "cls_predictions" in res or "cls_predictions" in dump.d:
        for key in ("cls_predictions", "cls_targets"):
            if key not in res or key not in dump.d:
                rep.check(False, f"{tag} {key}: in the {'dump' if key in dump.d else 'reference'}"
                                 f" only (v2.cls_loss {c.get('v2.cls_loss', 0)}, image.cls "
                                 f"{c.get('image.cls')})")
                continue
            a, e = rel_to_max(dump[key], res[key])
            how = "rel_to_max"
            if key == "cls_targets" and np.isfinite(a):
                # means over patches of the targets, far smaller than they are: their rounding
                # error is on the targets' scale
                e, how = a / float(np.abs(res["targets"]).max()), "rel to the targets' max"
            rep.check(e <= TOL_FWD, f"{tag} {key} {tuple(res[key].shape)}: max_abs {a:.2e} "
                                    f"{how} {e:.2e} (tol {TOL_FWD:.0e})")
    for key in ("targets", "predictions"):
        a, e = rel_to_max(dump[key], res[key])
        rep.check(e <= TOL_FWD, f"{tag} {key} {tuple(res[key].shape)}: max_abs {a:.2e} "
                                f"rel_to_max {e:.2e} (tol {TOL_FWD:.0e})")
    errs = tensor_errors(dump.table, dump["grads"], res["grads"])
    if verbose:
        for name, a, e in errs:
            rep.check(e <= TOL_GRAD, f"{tag} grad {name:<20s} max_abs {a:.2e} rel_to_max {e:.2e}")
    else:
        bad = [x for x in errs if not x[2] <= TOL_GRAD]
        w = max(errs, key=lambda x: x[2])
        rep.check(not bad, f"{tag} grads: {len(errs)} tensors, worst {w[0]} rel_to_max "
                           f"{w[2]:.2e} (tol {TOL_GRAD:.0e})"
                           + (f"; failing: {', '.join(x[0] for x in bad)}" if bad else ""))
    # EMA of the teacher that update n+1 will use, from the dumped params_after
    t_ref = ema(model, dump.table, dump["teacher_before"], dump["params_after"],
                ema_tau(c, n + 1))
    errs = tensor_errors(dump.table, dump["teacher_after"], t_ref)
    w = max(errs, key=lambda x: x[1])
    rep.check(w[1] <= TOL_TEACHER, f"{tag} teacher_after = EMA(tau({n + 1}) = "
                                   f"{ema_tau(c, n + 1):.6f}) over {len(model.ema_names)} "
                                   f"tensors: worst {w[0]} max_abs {w[1]:.2e}")
    if n == 0:  # AdamW moments are zero before the first update
        opt = RefOptimizer(dump, dump["params_before"])
        g, norm = clip_grads(c, dump["grads"])
        p_ref = opt.step(g, lr_at(c, 0))
        errs = tensor_errors(dump.table, dump["params_after"], p_ref)
        w = max(errs, key=lambda x: x[1])
        rep.check(w[1] <= TOL_PARAM, f"{tag} params_after = AdamW(params_before, "
                                     f"{clip_text(c, norm)} grads, lr {lr_at(c, 0):.3e}): worst "
                                     f"{w[0]} max_abs {w[1]:.2e}")


def check_schedule(rep, dump):
    c, n, tag = dump.cfg, dump.n, f"{dump.modality} u{dump.n:04d}"
    tau, lr = ema_tau(c, n), lr_at(c, n)
    ok = abs(dump.scalar("tau") - tau) <= 1e-12 and abs(dump.scalar("lr") - lr) <= 1e-12 * (
        1 + abs(lr))
    rep.check(ok, f"{tag} tau {dump.scalar('tau'):.8f} (ref {tau:.8f}), lr "
                  f"{dump.scalar('lr'):.6e} (ref {lr:.6e}, {c['optim.schedule']})")


def float64_cross_check(rep, dump, res32, sharing):
    m64 = make_model(dump, torch.float64, sharing)
    res = m64.step(dump, dump["params_before"], dump["teacher_before"])
    worst = (abs(res["loss"] - res32["loss"]) / abs(res["loss"]), "loss")
    for key in ("targets", "predictions", "cls_predictions"):
        if key in res:
            worst = max(worst, (rel_to_max(res32[key], res[key])[1], key))
    if "cls_targets" in res:  # patch means, near zero without the final LN: the targets' scale
        e = np.abs(res32["cls_targets"] - res["cls_targets"]).max() / np.abs(res["targets"]).max()
        worst = max(worst, (float(e), "cls_targets"))
    for name, _, e in tensor_errors(dump.table, res32["grads"], res["grads"]):
        worst = max(worst, (e, "grad " + name))
    return rep.check(worst[0] <= TOL_F64, f"{dump.modality} reference float32 vs float64: worst "
                                          f"{worst[1]} rel {worst[0]:.2e} (tol {TOL_F64:.0e})")


def describe(model):
    """One line on what a v2 model is, and the notes on its configuration."""
    if isinstance(model, RefModelV2):
        cls = (f", cls loss {model.cls_weight:g} x masked per row" if model.cls_weight > 0
               else "")
        print(f"{model.modality} v2: {model.clones} clones, {model.dec_desc}{cls}"
              + (f"; fault {V2_FAULT}" if V2_FAULT else ""))
        for note in model.notes:
            print(f"note: {note}")


def run_steps(rep, dumps, dtype, verbose, sharing):
    model = None
    for i, dump in enumerate(dumps):
        if model is None or dump.config_text != dumps[0].config_text:
            model = make_model(dump, dtype, sharing)
            describe(model)
            rep.check(not model.layout_problems,
                      f"{dump.modality} parameter table: {len(dump.table)} tensors, {dump.np} "
                      f"floats, layout {'; '.join(model.layout_problems) or 'as the reference'}")
            if model.layout_problems:
                return
        check_schedule(rep, dump)
        check_batch(rep, dump, f"{dump.modality} u{dump.n:04d}")
        res = model.step(dump, dump["params_before"], dump["teacher_before"])
        if i == 0 and dtype == torch.float32 and not float64_cross_check(rep, dump, res, sharing):
            return
        check_step(rep, model, dump, res, verbose or i == 0)


def run_trajectory(rep, dumps, dtype, traj_rtol, sharing):
    d0 = dumps[0]
    ns = [d.n for d in dumps]
    if ns != list(range(len(dumps))):
        raise InputError(f"trajectory needs updates 0..{len(dumps) - 1} in order, got {ns}")
    if any(d.config_text != d0.config_text for d in dumps):
        raise InputError("trajectory dumps come from different configurations")
    model = make_model(d0, dtype, sharing)
    describe(model)
    if model.layout_problems:
        rep.check(False, f"{d0.modality} parameter table: {'; '.join(model.layout_problems)}")
        return
    c, mod = d0.cfg, d0.modality
    # (a) optimiser chain driven by the dumped gradients
    p = d0["params_before"].copy()
    t = d0["teacher_before"].copy()
    opt = RefOptimizer(d0, p)
    worst = {"params_before": (0, ""), "teacher_before": (0, ""), "params_after": (0, ""),
             "teacher_after": (0, "")}
    n_clipped = 0
    for d in dumps:
        for key, ref in (("params_before", p), ("teacher_before", t)):
            e = max(tensor_errors(d.table, d[key], ref), key=lambda x: x[1])
            worst[key] = max(worst[key], (e[1], f"{e[0]} at u{d.n}"))
        g, norm = clip_grads(c, d["grads"])
        n_clipped += c["optim.clip"] > 0 and norm > c["optim.clip"]
        p = opt.step(g, lr_at(c, d.n))
        t = ema(model, d.table, t, p, ema_tau(c, d.n + 1))
        for key, ref in (("params_after", p), ("teacher_after", t)):
            e = max(tensor_errors(d.table, d[key], ref), key=lambda x: x[1])
            worst[key] = max(worst[key], (e[1], f"{e[0]} at u{d.n}"))
    for key, tol in (("params_before", TOL_PARAM), ("params_after", TOL_PARAM),
                     ("teacher_before", TOL_TEACHER), ("teacher_after", TOL_TEACHER)):
        rep.check(worst[key][0] <= tol,
                  f"{mod} chain of {len(dumps)} updates (clip + AdamW + EMA on the dumped grads, "
                  f"{n_clipped} clipped): "
                  f"{key:<14s} worst max_abs {worst[key][0]:.2e} ({worst[key][1]}) "
                  f"(tol {tol:.0e})")
    # (b) free run on the reference's own gradients
    p = d0["params_before"].copy()
    t = d0["teacher_before"].copy()
    opt = RefOptimizer(d0, p)
    print(f"{mod} free trajectory: update, dump loss, reference loss, relative difference")
    worst_r, curve = 0.0, []
    for d in dumps:
        if d.n > 0:
            t = ema(model, d.table, t, p, ema_tau(c, d.n))
        res = model.step(d, p, t)
        want = d.scalar("loss")
        r = abs(res["loss"] - want) / abs(want)
        worst_r = max(worst_r, r)
        curve.append(r)
        print(f"    {d.n:4d}  {want:.7f}  {res['loss']:.7f}  {r:.2e}")
        p = opt.step(clip_grads(c, res["grads"])[0], lr_at(c, d.n))
    drift = max(tensor_errors(d0.table, dumps[-1]["params_after"], p), key=lambda x: x[1])
    rep.check(worst_r <= traj_rtol,
              f"{mod} free trajectory of {len(dumps)} updates: loss follows the dump, worst "
              f"rel {worst_r:.2e} (last {curve[-1]:.2e}, tol {traj_rtol:.0e}); params drift "
              f"max_abs {drift[1]:.2e} ({drift[0]})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dumps", nargs="*")
    ap.add_argument("--self-test", action="store_true", help="check the v2 reference's pieces "
                    "on synthetic data (no dump)")
    ap.add_argument("--decoder-fixture", help="with --self-test: decoder_ref.py's HDF5 output, "
                    "to check the dec.* table mapping against")
    ap.add_argument("--v2-fault", choices=V2_FAULTS, default=None,
                    help="a deliberate error in the v2 step (negative controls): clones-1 treats "
                    "v2.clones as one less, repeat-tile repeats the targets sample-major, "
                    "kept-shift moves one kept position, teacher-masked feeds the teacher clone "
                    "0's masked view instead of the unmasked input; images: cls-weight weighs "
                    "the cls loss v2.cls_loss without the masked count per row, cls-sample-size "
                    "by the micro-batch's whole masked count (fairseq), cls-in-norm keeps the cls "
                    "row in the targets' instance norm, no-final-ln leaves out their final LN")
    ap.add_argument("--target-tensor", choices=("end", "ffn", "attn"), default=None,
                    help="v1: build the targets from this tensor instead of the configuration's "
                    "target.tensor (a wrong one on purpose, for negative controls)")
    ap.add_argument("--trajectory", action="store_true")
    ap.add_argument("--traj-rtol", type=float, default=1e-4)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--sharing", choices=("spec", "ema-all", "share-all"), default="spec",
                    help="teacher sharing rule; ema-all (the teacher averages its whole "
                    "front-end) and share-all (it takes the student's whole front-end) are wrong "
                    "on purpose, for negative controls")
    ap.add_argument("--eps-mode", choices=("torch", "fairseq"), default=None,
                    help="replace the configuration's optim.eps_mode (a wrong one on purpose, "
                    "for negative controls)")
    ap.add_argument("--verbose", action="store_true", help="per-tensor gradient lines for every "
                    "dump (default: the first one)")
    a = ap.parse_args()
    global EPS_MODE, V2_FAULT, TARGET_TENSOR
    EPS_MODE, V2_FAULT, TARGET_TENSOR = a.eps_mode, a.v2_fault, a.target_tensor
    if not a.dumps and not a.self_test:
        ap.error("no dump files")
    torch.set_num_threads(1)
    dtype = torch.float32 if a.dtype == "float32" else torch.float64
    rep = Report()
    try:
        if a.self_test:
            self_test(rep, a.decoder_fixture)
        dumps = sorted((Dump(p) for p in a.dumps), key=lambda d: d.n)
        if not dumps:
            pass
        elif a.trajectory:
            run_trajectory(rep, dumps, dtype, a.traj_rtol, a.sharing)
        else:
            run_steps(rep, dumps, dtype, a.verbose, a.sharing)
    except InputError as e:
        print(f"step_ref.py: {e}", file=sys.stderr)
        print(f"{rep.passed} passed, {rep.failed + 1} failed")
        return 2
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
