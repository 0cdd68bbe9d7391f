# frontends_ref.py: PyTorch reference for the d2v input encoders (text, image patches, speech conv stacks): outputs and gradients to HDF5.
"""Writes one HDF5 file with the groups "text", "image_learned", "image_sincos",
"image_sincos_rect" and "speech". Each holds the inputs, the parameters (named and laid out as in
TextEmbedParams / ImageEmbedParams / SpeechEmbedParams: PyTorch weight layouts, activations
channels last), the forward outputs, a random R and the gradients of loss = sum(out * R) with
respect to every parameter ("grad_<name>").

The modules (tests/ref/d2vref.py) are written from docs/algorithm.md (§2) and fairseq / BEiT / MAE
semantics, independently of the C code. Every group's float32 outputs and gradients are checked
once against a float64 run of the same module (guards against torch 1.13's oneDNN GELU backward
bug).

The speech group also holds frame counts of the default wav2vec 2.0 extractor
[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2 for a list of input lengths (0 = too short), from
the length formula and confirmed against real Conv1d stacks.

Usage: /usr/bin/python3 tests/ref/frontends_ref.py OUT.h5
"""
import copy
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn

from d2vref import (IMAGE_POS_LEARNED, IMAGE_POS_SINCOS, POS_PAD_ROW, ImageEmbed, SpeechEmbed,
                    TextEmbed, conv_out_len)


def fail(msg):
    sys.exit(f"frontends_ref.py: {msg}")


def frame_counts(lengths, spec):
    counts = []
    for L in lengths:
        for _, k, s in spec:
            L = conv_out_len(L, k, s)
        counts.append(L)
    # Confirm with real convolutions (2 channels each, for speed).
    convs, cin = [], 1
    for _, k, s in spec:
        convs.append(nn.Conv1d(cin, 2, k, stride=s, bias=False))
        cin = 2
    stack = nn.Sequential(*convs)
    with torch.no_grad():
        for L, want in zip(lengths, counts):
            try:
                got = stack(torch.zeros(1, 1, L)).shape[-1]
            except RuntimeError:
                got = 0  # input shorter than some kernel: torch refuses
            if got != want:
                fail(f"frame count for {L} samples: formula {want}, torch convs {got}")
    return counts


# ---- shared driver -----------------------------------------------------------------------------

def randomise(model, gen):
    """Non-trivial parameters so every path contributes (LN weights not 1, biases not 0)."""
    with torch.no_grad():
        for name, p in model.named_c().items():
            if "ln_w" in name:  # LayerNorm weights
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))  # [0.5, 1.5)
            elif "ln_b" in name or name in ("patch_b", "proj_b") or name.startswith("pos_b"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))  # biases
            elif name in ("patch_w", "proj_w") or name.startswith(("conv_w", "pos_w")):
                fan_in = p[0].numel()  # conv / linear weights
                p.copy_(1.5 / math.sqrt(fan_in) * torch.randn(p.shape, generator=gen))
            elif name == "mask_emb":
                p.copy_(torch.rand(p.shape, generator=gen))  # wav2vec2 uniform_()
            else:  # token / position tables, cls, mask token
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def run(model, inputs, R):
    """Forward + backward of loss = sum(out * R): forward tensors, dfeatures, parameter grads."""
    for p in model.parameters():
        p.grad = None
    acts = model(*inputs)
    (acts["out"] * R).sum().backward()
    res = {k: v.detach().clone() for k, v in acts.items()}
    if "features" in acts:
        res["dfeatures"] = acts["features"].grad.clone()
    for name, p in model.named_c().items():
        res["grad_" + name] = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
    return res


def cross_check(tag, model, inputs, R, res):
    """Float64 run of the same module: the float32 results must agree to 1e-4 (relative to the
    tensor's max) or the reference is not trustworthy."""
    m64 = copy.deepcopy(model).double()
    in64 = [x.double() if x.is_floating_point() else x for x in inputs]
    res64 = run(m64, in64, R.double())
    for k, t64 in res64.items():
        err = (res[k].double() - t64).abs().max().item() / max(t64.abs().max().item(), 1e-30)
        if not err <= 1e-4:
            fail(f"{tag} {k}: float32 vs float64 relative error {err:.3e} > 1e-4 "
                 "(torch GELU backward bug?)")


def finish(tag, model, inputs, R, ds, attrs):
    res = run(model, inputs, R)
    cross_check(tag, model, inputs, R, res)
    for k, v in res.items():
        if k.startswith("grad_") and not v.abs().max() > 0:
            fail(f"{tag} {k}: gradient is identically zero (path not exercised)")
    ds = dict(ds)
    ds["R"] = R
    ds.update({n: p.detach().clone() for n, p in model.named_c().items()})
    ds.update(res)
    return ds, attrs


def make_text(seed):
    # pad 6, not RoBERTa's 1: the position table must still have maxp + 2 rows, numbered from 1
    V, C, maxp, pad, eps, B, T = 50, 16, 12, 6, 1e-5, 3, 9
    gen = torch.Generator().manual_seed(seed)
    model = TextEmbed(V, C, maxp, pad, eps)
    randomise(model, gen)
    with torch.no_grad():  # init_bert_params: padding rows zero
        model.tok.weight[pad].zero_()
        model.pos.weight[POS_PAD_ROW].zero_()
    tokens = torch.randint(0, V - 1, (B, T), generator=gen)
    tokens = tokens + (tokens >= pad).long()  # never pad
    tokens[:, 0] = 0  # <s> in every sample: one row used three times
    tokens[0, 5] = tokens[0, 3]  # a repeat inside a sample (different positions)
    tokens[1, T - 3:] = pad  # sample 1: three padding tokens at the end
    tokens[2, T - 5:] = pad  # sample 2: five
    R = torch.randn(B, T, C, generator=gen)
    nonpad = tokens.ne(pad).long()  # expected TextEmbed.pos_ids (make_positions, padding_idx 1)
    positions = torch.cumsum(nonpad, dim=1) * nonpad + POS_PAD_ROW
    if model.pos.weight.shape[0] != maxp + 2:
        fail(f"text: position table of {model.pos.weight.shape[0]} rows, want {maxp + 2}")
    ds = {"tokens": tokens.to(torch.int32), "positions": positions.to(torch.int32)}
    attrs = {"V": V, "C": C, "max_positions": maxp, "pad_id": pad, "eps": eps, "dropout": 0.0,
             "B": B, "T": T}
    return finish("text", model, [tokens], R, ds, attrs)


def make_image(tag, H, W, Cin, P, C, cls, pos, B, seed):
    gen = torch.Generator().manual_seed(seed)
    model = ImageEmbed(H, W, Cin, P, C, cls, pos)
    randomise(model, gen)
    Np = (H // P) * (W // P)
    img = torch.randn(B, H, W, Cin, generator=gen)
    mask = torch.rand(B, Np, generator=gen) < 0.4
    mask[0, 0] = True  # the first patch (next to cls) masked, the last one not
    mask[0, -1] = False
    if not mask.any() or mask.all():
        fail(f"{tag}: degenerate mask")
    R = torch.randn(B, Np + cls, C, generator=gen)
    ds = {"img": img, "mask": mask.to(torch.uint8)}
    if pos == IMAGE_POS_SINCOS:
        ds["sincos"] = model.sincos.clone()
    attrs = {"H": H, "W": W, "Cin": Cin, "P": P, "C": C, "cls": cls, "pos": pos, "B": B}
    return finish(tag, model, [img, mask], R, ds, attrs)


def make_speech(seed):
    conv_layers = [(6, 10, 5), (8, 3, 2), (10, 2, 2)]  # distinct widths catch layout mix-ups
    C, pos_layers, pos_k, pos_groups, eps, B, S = 16, 2, 5, 4, 1e-5, 2, 300
    gen = torch.Generator().manual_seed(seed)
    model = SpeechEmbed(conv_layers, C, pos_layers, pos_k, pos_groups, eps)
    randomise(model, gen)
    T = S
    for _, k, s in conv_layers:
        T = conv_out_len(T, k, s)
    wav = torch.randn(B, S, generator=gen)
    wav = (wav - wav.mean(dim=1, keepdim=True)) / wav.std(dim=1, keepdim=True)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 3:7] = True  # a span inside
    mask[1, 0:2] = True  # spans touching both edges (interplay with the pos conv padding)
    mask[1, T - 3:] = True
    R = torch.randn(B, T, C, generator=gen)
    default_spec = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    lengths = [300, 301, 400, 16000, 5, 9, 10, 399, 719, 720, 32000]
    counts = frame_counts(lengths, default_spec)
    ds = {"wav": wav, "mask": mask.to(torch.uint8),
          "conv_dim": torch.tensor([d for d, _, _ in conv_layers], dtype=torch.int32),
          "conv_k": torch.tensor([k for _, k, _ in conv_layers], dtype=torch.int32),
          "conv_s": torch.tensor([s for _, _, s in conv_layers], dtype=torch.int32),
          "frame_lengths": torch.tensor(lengths, dtype=torch.int32),
          "frame_counts": torch.tensor(counts, dtype=torch.int32),
          "frame_conv_k": torch.tensor([k for _, k, _ in default_spec], dtype=torch.int32),
          "frame_conv_s": torch.tensor([s for _, _, s in default_spec], dtype=torch.int32)}
    attrs = {"n_conv": len(conv_layers), "C": C, "pos_layers": pos_layers, "pos_k": pos_k,
             "pos_groups": pos_groups, "eps": eps, "B": B, "S": S, "T": T}
    return finish("speech", model, [wav, mask], R, ds, attrs)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: frontends_ref.py OUT.h5")
    torch.set_num_threads(1)
    cases = {
        "text": make_text(seed=11),
        "image_learned": make_image("image_learned", H=16, W=16, Cin=3, P=4, C=16, cls=1,
                                    pos=IMAGE_POS_LEARNED, B=2, seed=12),
        "image_sincos": make_image("image_sincos", H=28, W=28, Cin=1, P=7, C=16, cls=1,
                                   pos=IMAGE_POS_SINCOS, B=2, seed=13),
        # non-square grid (rows != columns) without cls: catches row/column mix-ups
        "image_sincos_rect": make_image("image_sincos_rect", H=8, W=16, Cin=3, P=4, C=12, cls=0,
                                        pos=IMAGE_POS_SINCOS, B=2, seed=14),
        "speech": make_speech(seed=15),
    }
    with h5py.File(sys.argv[1], "w") as f:
        for gname, (ds, attrs) in cases.items():
            g = f.create_group(gname)
            for k, v in attrs.items():
                g.attrs[k] = np.float64(v) if isinstance(v, float) else np.int32(v)
            for k, v in ds.items():
                arr = v.numpy()
                if arr.dtype not in (np.uint8, np.int32):
                    arr = arr.astype(np.float32)
                g.create_dataset(k, data=arr)
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
