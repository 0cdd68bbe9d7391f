# features_ref.py: PyTorch reference for the frozen-feature variants of model_features_multi (d2v-extract): mean_final, mean_norm, cls, mean_lastk, to HDF5.
"""Writes one HDF5 file with the groups "image" and "text". Each holds the model's shape as
attributes, the inputs, every parameter under "params/" named as in d2v's parameter table
(include/d2v/params.h: "image.patch_w", "enc.qkv_w" stacked over blocks, "head.ln_w", ...) in
PyTorch layouts, and the features (B, C) of one unmasked forward without dropout:

- mean_final: the final block output averaged over the pooled tokens (the patches, not cls,
  for images; the tokens that are not <pad> for text: <s> and </s> included);
- mean_norm (images): BEiT's final LayerNorm (head.ln_*) on every token, then that average;
- cls: the final block output at token 0 (the image cls token; text <s>);
- mean_lastk: the average of the last `last_k` block outputs, then that average.

Shapes are configs/image-tiny.cfg's and configs/text-tiny.cfg's with model.layers = 3 (the C
test loads those files and checks the attributes). Inputs are real: the first four
Fashion-MNIST test images of tests/fixtures (normalised with image-tiny's mean and std), and
the bytes of Moby-Dick's first chapter as token ids 4 + byte. The modules are tests/ref/d2vref.py
(written from docs/algorithm.md, independently of the C code); each group is computed in
float32 and checked against a float64 run.

Usage: /usr/bin/python3 tests/ref/features_ref.py OUT.h5
"""
import copy
import gzip
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn

from d2vref import ENCODER_PARAM_NAMES, IMAGE_POS_LEARNED, Encoder, ImageEmbed, TextEmbed

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
LAST_K = 2


def fail(msg):
    sys.exit(f"features_ref.py: {msg}")


def randomise(mods, gen):
    """Non-trivial parameters so every path contributes (LN weights not 1, biases not 0)."""
    with torch.no_grad():
        for mod in mods:
            for name, p in mod.named_parameters():
                leaf = name.split(".")[-1]
                if "ln" in name and leaf == "weight" or "gamma" in leaf:
                    p.copy_(0.5 + torch.rand(p.shape, generator=gen))
                elif leaf == "bias":
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))
                elif p.dim() >= 2 and "pos" not in name and "tok" not in name:
                    fan_in = p[0].numel()
                    p.copy_(1.2 / np.sqrt(fan_in) * torch.randn(p.shape, generator=gen))
                else:  # token and position tables, cls, mask token
                    p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def pooled_mean(h, keep):
    """h (B, T, C), keep (B, T) bool: the mean over kept tokens."""
    w = keep.unsqueeze(-1).type_as(h)
    return (h * w).sum(1) / w.sum(1)


def variants(enc, norm, x, key_pad, bias, keep):
    _, _, block_out = enc(x, key_pad, bias)  # (L, B, T, C)
    h = block_out[-1]
    out = {"mean_final": pooled_mean(h, keep), "cls": h[:, 0],
           "mean_lastk": pooled_mean(block_out[-LAST_K:].mean(0), keep)}
    if norm is not None:
        out["mean_norm"] = pooled_mean(norm(h), keep)
    return out


def encoder_params(enc, names):
    return {"enc." + n: enc.named_tensor(n).clone() for n in names}


def cross_check(tag, f32, f64):
    for k, v in f32.items():
        t64 = f64[k]
        err = (v.double() - t64).abs().max().item() / max(t64.abs().max().item(), 1e-30)
        if not err <= 1e-4:
            fail(f"{tag} {k}: float32 vs float64 relative error {err:.3e} > 1e-4")


def make_image():
    H = W = 28
    Cin, P, C, NH, Fw, L, eps, B = 1, 7, 64, 2, 128, 3, 1e-6, 4
    with gzip.open(os.path.join(FIXTURES, "fmnist-t500-images-idx3.gz")) as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8)[16:16 + B * H * W]
    img = torch.from_numpy(((raw.reshape(B, H, W, 1) / 255.0 - 0.2860) / 0.3530).astype(np.float32))
    gen = torch.Generator().manual_seed(2024)
    embed = ImageEmbed(H, W, Cin, P, C, True, IMAGE_POS_LEARNED)
    enc = Encoder(L, C, NH, Fw, eps, pre_ln=True, layer_scale=True, k_bias=False)
    norm = nn.LayerNorm(C, eps=eps)
    head = nn.Linear(C, C)  # the regression head: unused by features, but in the table
    randomise([embed, enc, norm, head], gen)
    with torch.no_grad():
        for blk in enc.blocks:  # BEiT has no key bias: held at zero, as the C model does
            blk.attn.qkv.bias[C:2 * C] = 0

    def run(dtype):
        e, n, m = (copy.deepcopy(mod).to(dtype) for mod in (embed, enc, norm))
        with torch.no_grad():
            x = e(img.to(dtype), None)["out"]
            T = x.shape[1]
            keep = torch.ones(B, T, dtype=torch.bool)
            keep[:, 0] = False  # the cls token is not pooled
            return variants(n, m, x, None, None, keep)

    f32, f64 = run(torch.float32), run(torch.float64)
    cross_check("image", f32, f64)
    params = {"image.patch_w": embed.proj.weight, "image.patch_b": embed.proj.bias,
              "image.cls": embed.cls, "image.mask_token": embed.mask_token,
              "image.pos": embed.pos, "head.ln_w": norm.weight, "head.ln_b": norm.bias,
              "head.w1": head.weight, "head.b1": head.bias}
    params = {k: v.detach().clone() for k, v in params.items()}
    params.update(encoder_params(enc, ENCODER_PARAM_NAMES))
    attrs = {"L": L, "C": C, "NH": NH, "F": Fw, "B": B, "eps": eps, "last_k": LAST_K}
    return {"images": img}, params, f32, attrs


def make_text():
    V, C, NH, Fw, L, maxp, T, eps = 261, 32, 2, 64, 3, 32, 32, 1e-5
    bos, pad, eos = 0, 1, 2
    with open(os.path.join(FIXTURES, "text", "moby-dick", "chapter_1.txt"), "rb") as f:
        data = f.read()
    lens = [T - 1, 18, 7]  # text tokens per row: truncated (no </s>), and two padded rows
    rows, at = [], 0
    for n in lens:
        ids = [4 + b for b in data[at:at + n]]
        at += n
        row = [bos] + ids + ([eos] if 1 + n < T else [])
        rows.append(row + [pad] * (T - len(row)))
    tokens = torch.tensor(rows, dtype=torch.long)
    gen = torch.Generator().manual_seed(77)
    embed = TextEmbed(V, C, maxp, pad, eps)
    enc = Encoder(L, C, NH, Fw, eps, pre_ln=False, layer_scale=False, k_bias=True)
    head1, head2 = nn.Linear(C, 2 * C), nn.Linear(2 * C, C)
    randomise([embed, enc, head1, head2], gen)
    with torch.no_grad():  # nn.Embedding padding rows
        embed.tok.weight[pad].zero_()
        embed.pos.weight[1].zero_()
    key_pad = tokens.eq(pad)

    def run(dtype):
        e, n = (copy.deepcopy(mod).to(dtype) for mod in (embed, enc))
        with torch.no_grad():
            x = e(tokens)["out"]
            return variants(n, None, x, key_pad, None, ~key_pad)

    f32, f64 = run(torch.float32), run(torch.float64)
    cross_check("text", f32, f64)
    params = {"text.tok": embed.tok.weight, "text.pos": embed.pos.weight,
              "text.ln_w": embed.ln.weight, "text.ln_b": embed.ln.bias,
              "head.w1": head1.weight, "head.b1": head1.bias, "head.w2": head2.weight,
              "head.b2": head2.bias}
    params = {k: v.detach().clone() for k, v in params.items()}
    params.update(encoder_params(enc, ENCODER_PARAM_NAMES[:12]))
    attrs = {"L": L, "C": C, "NH": NH, "F": Fw, "B": len(lens), "T": T, "V": V, "eps": eps,
             "last_k": LAST_K}
    return {"tokens": tokens.to(torch.int32)}, params, f32, attrs


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: features_ref.py OUT.h5")
    torch.set_num_threads(1)
    with h5py.File(sys.argv[1], "w") as f:
        for name, (inputs, params, feats, attrs) in (("image", make_image()),
                                                     ("text", make_text())):
            g = f.create_group(name)
            for k, v in attrs.items():
                g.attrs[k] = np.float64(v) if k == "eps" else np.int32(v)
            for k, v in inputs.items():
                g.create_dataset(k, data=v.numpy())
            p = g.create_group("params")
            for k, v in params.items():
                p.create_dataset(k, data=v.float().numpy())
            for k, v in feats.items():
                g.create_dataset(k, data=v.float().numpy())
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
