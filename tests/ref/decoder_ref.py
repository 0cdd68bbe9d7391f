# decoder_ref.py: PyTorch reference for the data2vec 2.0 convolutional decoder (1-D and 2-D): outputs and gradients to HDF5.
"""Writes one HDF5 file with a group per decoder case ("audio", "text", "image", "image_k5").
Each holds the configuration (attributes, named as DecoderConfig's fields), the input x
(B, T, C), the rows that bypass input dropout ("masked"), the dropout key (attributes seed, step,
site; dataset sample_ids), the parameters (named and laid out as DecoderParams: conv_w<i>,
conv_b<i>, proj_w, proj_b, proj2_w, proj2_b in PyTorch layouts), the output y (B, T, C), a
random R and the gradients of loss = sum(y * R) with respect to x ("dx") and every parameter
("grad_<name>").

The module is written from docs/algorithm.md §7.1 and fairseq's Decoder1d / Decoder2d semantics
(nn.Conv1d / nn.Conv2d with groups and padding k // 2, layer norm over channels without affine,
exact-erf GELU, the block input added when the channel counts match, then the projection),
independently of the C code. Input dropout uses d2v's keyed mask, recomputed here from its
definition (src/core/rng.c: splitmix64 finaliser; element t * C + c of sample b is kept when
uniform(key(seed, step, sample_ids[b], site), index) >= p), except on the masked rows, which
fairseq's decoder_input fills with noise only after the dropout. Every case's float32 results
are checked against a float64 run of the same module.

Usage: /usr/bin/python3 tests/ref/decoder_ref.py OUT.h5
"""
import copy
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from d2vref import ContiguousGrad

LN_EPS = 1e-5  # fairseq LayerNorm's default; the decoder never passes norm_eps
SITE_DEC_INPUT = 9  # RNG_SITE_DEC_INPUT in include/d2v/rng.h
M64 = (1 << 64) - 1


def fail(msg):
    sys.exit(f"decoder_ref.py: {msg}")


# ---- d2v's counter-based dropout mask ----------------------------------------------------------

def mix64(z):
    """splitmix64's finaliser on Python ints (mod 2^64)."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def row_key(seed, step, sample, site):
    h = mix64(seed)
    h = mix64(h ^ step)
    h = mix64(h ^ sample)
    return mix64(h ^ site)


def keep_mask(seed, step, site, sample_ids, n_per_sample, p):
    """(B, n) bool: element i of sample b survives dropout p."""
    rows = []
    for s in sample_ids:
        k = row_key(seed, step, int(s), site)
        rows.append([(mix64(k ^ mix64(i)) >> 40) / 16777216.0 >= p for i in range(n_per_sample)])
    return torch.tensor(rows, dtype=torch.bool)


# ---- the decoder ---------------------------------------------------------------------------------

class ConvDecoder(nn.Module):
    def __init__(self, dims, C, D, K, groups, layers, residual, proj_hidden, H=0, W=0):
        super().__init__()
        self.dims, self.C, self.D, self.residual, self.H, self.W = dims, C, D, residual, H, W
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.convs = nn.ModuleList(
            conv(C if i == 0 else D, D, K, padding=K // 2, groups=groups) for i in range(layers))
        if proj_hidden:
            self.proj = nn.Linear(D, proj_hidden)
            self.proj2 = nn.Linear(proj_hidden, C)
        else:
            self.proj, self.proj2 = nn.Linear(D, C), None

    def named_c(self):
        d = {}
        for i, conv in enumerate(self.convs):
            d[f"conv_w{i}"], d[f"conv_b{i}"] = conv.weight, conv.bias
        d["proj_w"], d["proj_b"] = self.proj.weight, self.proj.bias
        if self.proj2 is not None:
            d["proj2_w"], d["proj2_b"] = self.proj2.weight, self.proj2.bias
        return d

    def to_grid(self, h):
        """(B, T, C) channels last -> the conv's (B, C, T) or (B, C, H, W)."""
        B, T, C = h.shape
        h = h.transpose(1, 2)
        return h if self.dims == 1 else h.reshape(B, C, self.H, self.W)

    def forward(self, x, keep, masked, p):
        """x (B, T, C); keep (B, T, C) bool dropout mask or None; masked (B, T) bool rows that
        bypass the dropout."""
        if keep is not None:
            dropped = x * keep.to(x.dtype) * (1.0 / (1.0 - p))
            x = torch.where(masked.unsqueeze(-1), x, dropped)
        h = x
        B, T, _ = x.shape
        for conv in self.convs:
            c = conv(self.to_grid(h)).reshape(B, self.D, T).transpose(1, 2).contiguous()
            g = ContiguousGrad.apply(F.gelu(F.layer_norm(c, (self.D,), eps=LN_EPS)))
            # fairseq add_residual: only when the block input has the output's channels
            h = g + h if self.residual and h.shape[-1] == self.D else g
        if self.proj2 is not None:
            return self.proj2(ContiguousGrad.apply(F.gelu(self.proj(h))))
        return self.proj(h)


# ---- driver ---------------------------------------------------------------------------------------

def randomise(model, gen):
    """Weights 1.5/sqrt(fan_in) N(0, 1), biases 0.2 N(0, 1): every path contributes."""
    with torch.no_grad():
        for name, p in model.named_c().items():
            if "_w" in name:
                p.copy_(1.5 / math.sqrt(p[0].numel()) * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def run(model, x, keep, masked, p, R):
    for q in model.parameters():
        q.grad = None
    x = x.clone().requires_grad_(True)
    y = model(x, keep, masked, p)
    (y * R).sum().backward()
    res = {"y": y.detach().clone(), "dx": x.grad.clone()}
    for name, q in model.named_c().items():
        res["grad_" + name] = q.grad.clone()
    return res


def make_case(tag, seed, dims, C, D, K, groups, layers, residual, proj_hidden, input_dropout, B,
              T=0, H=0, W=0):
    gen = torch.Generator().manual_seed(seed)
    if dims == 2:
        T = H * W
    model = ConvDecoder(dims, C, D, K, groups, layers, residual, proj_hidden, H, W)
    randomise(model, gen)
    x = torch.randn(B, T, C, generator=gen)
    masked = torch.rand(B, T, generator=gen) < 0.4
    masked[0, 0], masked[0, -1] = True, False
    R = torch.randn(B, T, C, generator=gen)
    sample_ids = [1000 + 7 * b for b in range(B)]
    dseed, dstep = 1234 + seed, 17
    keep = None
    if input_dropout > 0:
        keep = keep_mask(dseed, dstep, SITE_DEC_INPUT, sample_ids, T * C, input_dropout)
        keep = keep.reshape(B, T, C)
        frac = 1 - keep.float().mean().item()
        if not 0.3 * input_dropout < frac < 2 * input_dropout:
            fail(f"{tag}: dropped fraction {frac:.3f} for p = {input_dropout}")
    res = run(model, x, keep, masked, input_dropout, R)
    m64 = copy.deepcopy(model).double()
    res64 = run(m64, x.double(), keep, masked, input_dropout, R.double())
    for k, t64 in res64.items():
        err = (res[k].double() - t64).abs().max().item() / max(t64.abs().max().item(), 1e-30)
        if not err <= 1e-4:
            fail(f"{tag} {k}: float32 vs float64 relative error {err:.3e} > 1e-4")
        if not t64.abs().max() > 0:
            fail(f"{tag} {k}: identically zero (path not exercised)")
    ds = {"x": x, "masked": masked.to(torch.uint8), "R": R,
          "sample_ids": torch.tensor(sample_ids, dtype=torch.int32)}
    ds.update({n: q.detach().clone() for n, q in model.named_c().items()})
    ds.update(res)
    attrs = {"dims": dims, "C": C, "D": D, "K": K, "groups": groups, "layers": layers,
             "residual": residual, "proj_hidden": proj_hidden, "input_dropout": input_dropout,
             "H": H, "W": W, "B": B, "T": T, "seed": dseed, "step": dstep,
             "site": SITE_DEC_INPUT}
    return ds, attrs


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: decoder_ref.py OUT.h5")
    torch.set_num_threads(1)
    cases = {
        # speech v2 in small: C != D (no residual into block 0), grouped, k = 7, input dropout
        "audio": make_case("audio", 21, dims=1, C=16, D=8, K=7, groups=4, layers=3, residual=1,
                           proj_hidden=0, input_dropout=0.1, B=2, T=11),
        # text v2: ungrouped k = 9 (64 channels: conv1d's per-tap path), no residual, two-layer
        # projection
        "text": make_case("text", 22, dims=1, C=64, D=64, K=9, groups=1, layers=2, residual=0,
                          proj_hidden=128, input_dropout=0.1, B=2, T=10),
        # image v2: 3 x 3 over a non-square grid, residual from block 0 on (C == D)
        "image": make_case("image", 23, dims=2, C=16, D=16, K=3, groups=4, layers=2, residual=1,
                           proj_hidden=0, input_dropout=0.0, B=2, H=3, W=5),
        # image large's 5 x 5 (windows wider than the grid), C != D
        "image_k5": make_case("image_k5", 24, dims=2, C=8, D=12, K=5, groups=2, layers=2,
                              residual=1, proj_hidden=0, input_dropout=0.2, B=2, H=4, W=3),
    }
    with h5py.File(sys.argv[1], "w") as f:
        for gname, (ds, attrs) in cases.items():
            g = f.create_group(gname)
            for k, v in attrs.items():
                g.attrs[k] = np.float64(v) if isinstance(v, float) else np.int64(v)
            for k, v in ds.items():
                arr = v.numpy()
                if arr.dtype not in (np.uint8, np.int32):
                    arr = arr.astype(np.float32)
                g.create_dataset(k, data=arr)
    print(f"wrote {sys.argv[1]}")


if __name__ == "__main__":
    main()
