# encoder_ref.py: PyTorch reference for the d2v encoder stack (post-LN and pre-LN + layer scale): outputs and gradients to HDF5.
"""Writes one HDF5 file with two groups, "post_ln" and "pre_ln". Each holds the inputs, the
parameters (stacked over layers, named as in EncoderParams), per-block outputs, and the
gradients of loss = sum(out * R) with respect to x, the attention bias and every parameter.

The model is written out explicitly (Linear / LayerNorm / softmax / exact GELU) so it mirrors
src/model/encoder.c block by block. Gradients computed in float32 are checked once against a
float64 run of the same model (guards against torch 1.13's oneDNN GELU backward bug).

Usage: /usr/bin/python3 tests/ref/encoder_ref.py OUT.h5
"""
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PARAM_NAMES = ["ln1_w", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b", "ln2_w", "ln2_b",
               "fc1_w", "fc1_b", "fc2_w", "fc2_b", "gamma1", "gamma2"]


class SelfAttention(nn.Module):
    """qkv Linear(C, 3C) split q | k | v; heads are contiguous C/NH chunks of each."""

    def __init__(self, C, NH):
        super().__init__()
        self.C, self.NH, self.hs = C, NH, C // NH
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)

    def forward(self, x, key_pad, bias):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)

        def heads(t):  # (B, T, C) -> (B, NH, T, hs)
            return t.reshape(B, T, self.NH, self.hs).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.hs) + bias  # (B, NH, T, T)
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
        probs = F.softmax(scores, dim=-1)
        y = (probs @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, C, NH, Fw, eps, pre_ln, layer_scale):
        super().__init__()
        self.pre_ln, self.layer_scale = pre_ln, layer_scale
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.attn = SelfAttention(C, NH)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.fc1 = nn.Linear(C, Fw)
        self.fc2 = nn.Linear(Fw, C)
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.ones(C))
            self.gamma2 = nn.Parameter(torch.ones(C))

    def ffn(self, h):
        return self.fc2(F.gelu(self.fc1(h)))  # exact (erf) GELU; fc1 output is contiguous

    def forward(self, x, key_pad, bias):
        """Returns (block output, FFN branch before the last residual)."""
        if self.pre_ln:  # BEiT
            a = self.attn(self.ln1(x), key_pad, bias)
            x = x + (self.gamma1 * a if self.layer_scale else a)
            f = self.ffn(self.ln2(x))
            if self.layer_scale:
                f = self.gamma2 * f
            return x + f, f
        # post-LN, fairseq TransformerSentenceEncoderLayer
        x = self.ln1(x + self.attn(x, key_pad, bias))
        f = self.ffn(x)
        return self.ln2(x + f), f


class Encoder(nn.Module):
    def __init__(self, L, C, NH, Fw, eps, pre_ln, layer_scale):
        super().__init__()
        self.blocks = nn.ModuleList(
            [Block(C, NH, Fw, eps, pre_ln, layer_scale) for _ in range(L)])

    def forward(self, x, key_pad, bias):
        ffn_outs, block_outs = [], []
        for blk in self.blocks:
            x, f = blk(x, key_pad, bias)
            ffn_outs.append(f)
            block_outs.append(x)
        return x, torch.stack(ffn_outs), torch.stack(block_outs)

    def named_tensor(self, name, grad=False):
        """Parameter `name` (or its gradient) stacked over layers, in EncoderParams layout."""
        module_attr = {"ln1_w": ("ln1", "weight"), "ln1_b": ("ln1", "bias"),
                       "qkv_w": ("attn.qkv", "weight"), "qkv_b": ("attn.qkv", "bias"),
                       "proj_w": ("attn.proj", "weight"), "proj_b": ("attn.proj", "bias"),
                       "ln2_w": ("ln2", "weight"), "ln2_b": ("ln2", "bias"),
                       "fc1_w": ("fc1", "weight"), "fc1_b": ("fc1", "bias"),
                       "fc2_w": ("fc2", "weight"), "fc2_b": ("fc2", "bias"),
                       "gamma1": ("", "gamma1"), "gamma2": ("", "gamma2")}[name]
        out = []
        for blk in self.blocks:
            mod = blk.get_submodule(module_attr[0]) if module_attr[0] else blk
            p = getattr(mod, module_attr[1])
            out.append(p.grad if grad else p.detach())
        return torch.stack(out)


def randomise(model, gen):
    """Non-trivial parameters so every path contributes (not the BERT init)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 2:  # Linear weights
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif "ln" in name and name.endswith("weight") or "gamma" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))  # in [0.5, 1.5)
            else:  # Linear and LayerNorm biases
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def run(model, x, key_pad, bias, R):
    """Forward + backward of loss = sum(out * R); returns forward tensors and gradients."""
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    bias = bias.clone().requires_grad_(True)
    out, ffn_out, block_out = model(x, key_pad, bias)
    (out * R).sum().backward()
    return out.detach(), ffn_out.detach(), block_out.detach(), x.grad, bias.grad


def make_case(L, C, NH, Fw, B, T, eps, pre_ln, layer_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    model = Encoder(L, C, NH, Fw, eps, pre_ln, layer_scale)
    randomise(model, gen)
    names = PARAM_NAMES if layer_scale else PARAM_NAMES[:12]
    x = torch.randn(B, T, C, generator=gen)
    bias = 0.5 * torch.randn(NH, T, T, generator=gen)
    R = torch.randn(B, T, C, generator=gen)
    key_pad = torch.zeros(B, T, dtype=torch.bool)
    key_pad[1, T - 2:] = True  # sample 1: last two positions are padding keys

    out, ffn_out, block_out, dx, dbias = run(model, x, key_pad, bias, R)
    grads = {n: model.named_tensor(n, grad=True).clone() for n in names}
    params = {n: model.named_tensor(n).clone() for n in names}

    # Float64 cross-check of the float32 gradients (and outputs).
    m64 = Encoder(L, C, NH, Fw, eps, pre_ln, layer_scale).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    o64, f64, b64, dx64, db64 = run(m64, x.double(), key_pad, bias.double(), R.double())
    checks = [("out", out, o64), ("ffn_out", ffn_out, f64), ("block_out", block_out, b64),
              ("dx", dx, dx64), ("d_attn_bias", dbias, db64)]
    checks += [("grad_" + n, grads[n], m64.named_tensor(n, grad=True)) for n in names]
    tag = "pre_ln" if pre_ln else "post_ln"
    for label, t32, t64 in checks:
        err = (t32.double() - t64).abs().max().item() / max(t64.abs().max().item(), 1e-30)
        if not err <= 1e-4:
            sys.exit(f"encoder_ref.py: {tag} {label}: float32 vs float64 relative error "
                     f"{err:.3e} > 1e-4 (torch GELU backward bug?)")

    ds = {"x": x, "key_pad": key_pad.to(torch.uint8), "attn_bias": bias, "R": R, "out": out,
          "ffn_out": ffn_out, "block_out": block_out, "dx": dx, "d_attn_bias": dbias}
    ds.update(params)
    ds.update({"grad_" + n: g for n, g in grads.items()})
    attrs = {"L": L, "C": C, "NH": NH, "F": Fw, "B": B, "T": T, "eps": eps,
             "pre_ln": int(pre_ln), "layer_scale": int(layer_scale)}
    return ds, attrs


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: encoder_ref.py OUT.h5")
    torch.set_num_threads(1)
    cases = {
        "post_ln": make_case(L=2, C=16, NH=2, Fw=40, B=2, T=7, eps=1e-5, pre_ln=False,
                             layer_scale=False, seed=1234),
        "pre_ln": make_case(L=2, C=16, NH=2, Fw=40, B=2, T=7, eps=1e-6, pre_ln=True,
                            layer_scale=True, seed=5678),
    }
    with h5py.File(sys.argv[1], "w") as f:
        for gname, (ds, attrs) in cases.items():
            g = f.create_group(gname)
            for k, v in attrs.items():
                g.attrs[k] = np.float64(v) if k == "eps" else np.int32(v)
            for k, v in ds.items():
                arr = v.numpy()
                g.create_dataset(k, data=arr if arr.dtype == np.uint8 else arr.astype(np.float32))
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
