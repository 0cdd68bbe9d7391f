# encoder_ref.py: PyTorch reference for the d2v encoder stack (post-LN and pre-LN + layer scale): outputs and gradients to HDF5.
"""Writes one HDF5 file with two groups, "post_ln" and "pre_ln". Each holds the inputs, the
parameters (stacked over layers, named as in EncoderParams), per-block outputs (the block, its
FFN branch and its self-attention branch before the residual: target.tensor "end", "ffn" and
"attn"), and the
gradients of loss = sum(out * R) with respect to x, the attention bias and every parameter.

The model (tests/ref/d2vref.py: Linear / LayerNorm / softmax / exact GELU) is written out
explicitly, block by block. Gradients computed in float32 are checked once against a
float64 run of the same model (guards against torch 1.13's oneDNN GELU backward bug).

Usage: /usr/bin/python3 tests/ref/encoder_ref.py OUT.h5
"""
import sys

import h5py
import numpy as np
import torch

from d2vref import ENCODER_PARAM_NAMES, Encoder

PARAM_NAMES = ENCODER_PARAM_NAMES


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
    return (out.detach(), ffn_out.detach(), block_out.detach(), model.attn_outs.detach(), x.grad,
            bias.grad)


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

    out, ffn_out, block_out, attn_out, dx, dbias = run(model, x, key_pad, bias, R)
    grads = {n: model.named_tensor(n, grad=True).clone() for n in names}
    params = {n: model.named_tensor(n).clone() for n in names}

    # Float64 cross-check of the float32 gradients (and outputs).
    m64 = Encoder(L, C, NH, Fw, eps, pre_ln, layer_scale).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    o64, f64, b64, a64, dx64, db64 = run(m64, x.double(), key_pad, bias.double(), R.double())
    checks = [("out", out, o64), ("ffn_out", ffn_out, f64), ("block_out", block_out, b64),
              ("attn_out", attn_out, a64),
              ("dx", dx, dx64), ("d_attn_bias", dbias, db64)]
    checks += [("grad_" + n, grads[n], m64.named_tensor(n, grad=True)) for n in names]
    tag = "pre_ln" if pre_ln else "post_ln"
    for label, t32, t64 in checks:
        err = (t32.double() - t64).abs().max().item() / max(t64.abs().max().item(), 1e-30)
        if not err <= 1e-4:
            sys.exit(f"encoder_ref.py: {tag} {label}: float32 vs float64 relative error "
                     f"{err:.3e} > 1e-4 (torch GELU backward bug?)")

    ds = {"x": x, "key_pad": key_pad.to(torch.uint8), "attn_bias": bias, "R": R, "out": out,
          "ffn_out": ffn_out, "block_out": block_out, "attn_out": attn_out, "dx": dx,
          "d_attn_bias": dbias}
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
