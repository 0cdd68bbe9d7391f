# d2vref.py: PyTorch modules shared by the reference scripts: encoder blocks and input encoders.
"""Written from docs/algorithm.md (§2) and fairseq / BEiT / MAE / wav2vec 2.0 semantics, independently
of the C code. Used by encoder_ref.py, frontends_ref.py (fixture generators) and step_ref.py (the
trainer-step check).

- Encoder: post-LN (fairseq TransformerSentenceEncoderLayer) or pre-LN + layer scale (BEiT)
  blocks, each returning (block output, FFN branch before the last residual).
- TextEmbed: fairseq TransformerEncoder.forward_embedding (data2vec text), positions numbered
  with padding_idx 1 whatever the token pad id.
- ImageEmbed: BEiT / MAE patch embedding with mask token, cls and positions.
- SpeechEmbed: wav2vec 2.0 conv feature extractor (layer_norm mode), feature LN + projection,
  mask embedding, deep convolutional positional encoder and the encoder's input LN.

torch 1.13 pitfall: oneDNN GELU backward is wrong when its incoming gradient is non-contiguous;
every GELU here sees contiguous tensors (ContiguousGrad for the speech conv stacks).
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_POS_NONE, IMAGE_POS_LEARNED, IMAGE_POS_SINCOS, IMAGE_POS_RELATIVE = 0, 1, 2, 3

ENCODER_PARAM_NAMES = ["ln1_w", "ln1_b", "qkv_w", "qkv_b", "proj_w", "proj_b", "ln2_w", "ln2_b",
                       "fc1_w", "fc1_b", "fc2_w", "fc2_b", "gamma1", "gamma2"]


# ---- transformer encoder -----------------------------------------------------------------------

class SelfAttention(nn.Module):
    """qkv Linear(C, 3C) split q | k | v; heads are contiguous C/NH chunks of each. k_bias=False:
    BEiT's q and v biases only (the key third of the bias is held at zero, so it gets no
    gradient)."""

    def __init__(self, C, NH, k_bias=True):
        super().__init__()
        self.C, self.NH, self.hs = C, NH, C // NH
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.k_bias = k_bias
        if not k_bias:
            keep = torch.ones(3 * C)
            keep[C:2 * C] = 0
            self.register_buffer("bias_keep", keep)

    def forward(self, x, key_pad, bias):
        B, T, C = x.shape
        if self.k_bias:
            qkv = self.qkv(x)
        else:
            qkv = F.linear(x, self.qkv.weight, self.qkv.bias * self.bias_keep)
        q, k, v = qkv.split(C, dim=-1)

        def heads(t):  # (B, T, C) -> (B, NH, T, hs)
            return t.reshape(B, T, self.NH, self.hs).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.hs)  # (B, NH, T, T)
        if bias is not None:
            scores = scores + bias
        if key_pad is not None:
            scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
        probs = F.softmax(scores, dim=-1)
        y = (probs @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, C, NH, Fw, eps, pre_ln, layer_scale, k_bias=True):
        super().__init__()
        self.pre_ln, self.layer_scale = pre_ln, layer_scale
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.attn = SelfAttention(C, NH, k_bias)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.fc1 = nn.Linear(C, Fw)
        self.fc2 = nn.Linear(Fw, C)
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.ones(C))
            self.gamma2 = nn.Parameter(torch.ones(C))

    def ffn(self, h):
        return self.fc2(F.gelu(self.fc1(h)))  # exact (erf) GELU; fc1 output is contiguous

    def forward(self, x, key_pad, bias):
        """Returns (block output, FFN branch before the last residual); the self-attention
        branch before its residual (target.tensor = "attn") is left in self.attn_branch."""
        if self.pre_ln:  # BEiT
            a = self.attn(self.ln1(x), key_pad, bias)
            if self.layer_scale:
                a = self.gamma1 * a
            self.attn_branch = a
            x = x + a
            f = self.ffn(self.ln2(x))
            if self.layer_scale:
                f = self.gamma2 * f
            return x + f, f
        # post-LN, fairseq TransformerSentenceEncoderLayer
        a = self.attn(x, key_pad, bias)
        self.attn_branch = a
        x = self.ln1(x + a)
        f = self.ffn(x)
        return self.ln2(x + f), f


ENCODER_MODULE_ATTR = {"ln1_w": ("ln1", "weight"), "ln1_b": ("ln1", "bias"),
                       "qkv_w": ("attn.qkv", "weight"), "qkv_b": ("attn.qkv", "bias"),
                       "proj_w": ("attn.proj", "weight"), "proj_b": ("attn.proj", "bias"),
                       "ln2_w": ("ln2", "weight"), "ln2_b": ("ln2", "bias"),
                       "fc1_w": ("fc1", "weight"), "fc1_b": ("fc1", "bias"),
                       "fc2_w": ("fc2", "weight"), "fc2_b": ("fc2", "bias"),
                       "gamma1": ("", "gamma1"), "gamma2": ("", "gamma2")}


class Encoder(nn.Module):
    def __init__(self, L, C, NH, Fw, eps, pre_ln, layer_scale, k_bias=True):
        super().__init__()
        self.blocks = nn.ModuleList(
            [Block(C, NH, Fw, eps, pre_ln, layer_scale, k_bias) for _ in range(L)])

    def forward(self, x, key_pad, bias):
        """Returns (output, FFN branches, block outputs), each stacked over blocks; the
        attention branches (target.tensor = "attn") are left in self.attn_outs."""
        ffn_outs, block_outs = [], []
        for blk in self.blocks:
            x, f = blk(x, key_pad, bias)
            ffn_outs.append(f)
            block_outs.append(x)
        self.attn_outs = torch.stack([blk.attn_branch for blk in self.blocks])
        return x, torch.stack(ffn_outs), torch.stack(block_outs)

    def layer_params(self, name):
        """The per-layer Parameters behind `name` (EncoderParams naming), layer 0 first."""
        mod_name, attr = ENCODER_MODULE_ATTR[name]
        return [getattr(blk.get_submodule(mod_name) if mod_name else blk, attr)
                for blk in self.blocks]

    def named_tensor(self, name, grad=False):
        """Parameter `name` (or its gradient) stacked over layers, in EncoderParams layout."""
        return torch.stack([p.grad if grad else p.detach() for p in self.layer_params(name)])


# ---- text: fairseq TransformerEncoder.forward_embedding (data2vec text) -----------------------

POS_PAD_ROW = 1  # RoBERTa's padding_idx, used for the positions whatever the token pad id is


class TextEmbed(nn.Module):
    def __init__(self, V, C, max_positions, pad_id, eps):
        super().__init__()
        self.pad_id = pad_id
        self.tok = nn.Embedding(V, C, padding_idx=pad_id)
        # fairseq LearnedPositionalEmbedding with padding_idx 1: max_positions + 2 rows
        self.pos = nn.Embedding(max_positions + POS_PAD_ROW + 1, C, padding_idx=POS_PAD_ROW)
        self.ln = nn.LayerNorm(C, eps=eps)

    def named_c(self):
        return {"tok": self.tok.weight, "pos": self.pos.weight, "ln_w": self.ln.weight,
                "ln_b": self.ln.bias}

    def forward(self, tokens):
        # fairseq.utils.make_positions, offset by padding_idx 1 (not the token pad id)
        nonpad = tokens.ne(self.pad_id).int()
        positions = (torch.cumsum(nonpad, dim=1).type_as(nonpad) * nonpad).long() + POS_PAD_ROW
        x = self.tok(tokens) + self.pos(positions)  # no_scale_embedding: scale 1
        x = self.ln(x)  # layernorm_embedding; dropout 0
        pad = tokens.eq(self.pad_id)
        x = x * (1 - pad.unsqueeze(-1).type_as(x))  # zeroed at padding
        return {"out": x}


# ---- image: BEiT / MAE patch embedding ----------------------------------------------------------

def sincos_2d(gh, gw, C):
    """MAE get_2d_sincos_pos_embed without cls, written from the MAE formula: (gh*gw, C) float64,
    row p = row*gw + col; first C/2 dims encode the column, second C/2 the row; each half is
    [sin(pos*w_k) for k] + [cos(pos*w_k) for k], w_k = 1/10000^(k/(C/4))."""
    assert C % 4 == 0
    q = C // 4
    omega = 1.0 / 10000.0 ** (np.arange(q, dtype=np.float64) / q)

    def one_axis(pos):  # pos (M,) -> (M, C/2)
        out = np.einsum("m,d->md", pos.astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_col, grid_row = np.meshgrid(np.arange(gw), np.arange(gh))  # each (gh, gw), w first
    return np.concatenate([one_axis(grid_col.reshape(-1)), one_axis(grid_row.reshape(-1))], axis=1)


def beit_relative_index(gh, gw, cls):
    """BEiT relative_position_index: patch pairs by their (dy, dx) offset, then the three extra
    entries for cls->patch, patch->cls and cls->cls."""
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"))
    coords = coords.flatten(1)  # (2, Np)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, Np, Np)
    idx = (rel[0] + gh - 1) * (2 * gw - 1) + (rel[1] + gw - 1)
    if not cls:
        return idx
    rows = (2 * gh - 1) * (2 * gw - 1) + 3
    full = torch.zeros(idx.shape[0] + 1, idx.shape[1] + 1, dtype=torch.long)
    full[1:, 1:] = idx
    full[0, :] = rows - 3
    full[:, 0] = rows - 2
    full[0, 0] = rows - 1
    return full


class ImageEmbed(nn.Module):
    def __init__(self, H, W, Cin, P, C, cls, pos, heads=0):
        super().__init__()
        self.gh, self.gw, self.C = H // P, W // P, C
        self.cls_on, self.pos_kind = cls, pos
        self.proj = nn.Conv2d(Cin, C, kernel_size=P, stride=P)
        self.mask_token = nn.Parameter(torch.zeros(C))
        if cls:
            self.cls = nn.Parameter(torch.zeros(C))
        if pos == IMAGE_POS_LEARNED:
            self.pos = nn.Parameter(torch.zeros(self.gh * self.gw + cls, C))
        if pos == IMAGE_POS_RELATIVE:  # BEiT's shared relative position bias table
            rows = (2 * self.gh - 1) * (2 * self.gw - 1) + 3
            self.rel_pos_table = nn.Parameter(torch.zeros(rows, heads))
            self.register_buffer("rel_index", beit_relative_index(self.gh, self.gw, cls))
        if pos == IMAGE_POS_SINCOS:  # fixed, computed in float64 then rounded once
            self.register_buffer("sincos",
                                 torch.from_numpy(sincos_2d(self.gh, self.gw, C)).float())

    def named_c(self):
        d = {"patch_w": self.proj.weight, "patch_b": self.proj.bias}
        if self.cls_on:
            d["cls"] = self.cls
        d["mask_token"] = self.mask_token
        if self.pos_kind == IMAGE_POS_LEARNED:
            d["pos"] = self.pos
        if self.pos_kind == IMAGE_POS_RELATIVE:
            d["rel_pos_table"] = self.rel_pos_table
        return d

    def forward(self, img, mask):
        """img (B, H, W, Cin) channels last; mask (B, Np) bool, or None (nothing masked)."""
        B = img.shape[0]
        x = self.proj(img.permute(0, 3, 1, 2).contiguous())  # (B, C, gh, gw)
        x = x.flatten(2).transpose(1, 2)  # (B, Np, C), p = row*gw + col (timm PatchEmbed)
        if mask is not None:
            w = mask.unsqueeze(-1).type_as(x)
            x = x * (1 - w) + self.mask_token * w  # BEiT: replace before cls and positions
        if self.pos_kind == IMAGE_POS_SINCOS:
            x = x + self.sincos  # patches only
        if self.cls_on:
            x = torch.cat([self.cls.expand(B, 1, self.C), x], dim=1)
        if self.pos_kind == IMAGE_POS_LEARNED:
            x = x + self.pos  # BEiT abs_pos_emb over cls + patches
        res = {"out": x}
        if self.pos_kind == IMAGE_POS_RELATIVE:  # (NH, T, T), added to every block's logits
            T = self.rel_index.shape[0]
            bias = self.rel_pos_table[self.rel_index.reshape(-1)].reshape(T, T, -1)
            res["bias"] = bias.permute(2, 0, 1).contiguous()
        return res


# ---- speech: wav2vec 2.0 / data2vec audio --------------------------------------------------------

class ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous: placed right after F.gelu, GELU's
    backward never receives the strided gradient a following transpose would hand it."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


class SpeechEmbed(nn.Module):
    def __init__(self, conv_layers, C, pos_layers, pos_k, pos_groups, eps):
        super().__init__()
        self.pos_k = pos_k
        self.convs, self.conv_lns = nn.ModuleList(), nn.ModuleList()
        cin = 1
        for dim, k, s in conv_layers:  # ConvFeatureExtractionModel, extractor_mode layer_norm
            self.convs.append(nn.Conv1d(cin, dim, k, stride=s, bias=False))
            self.conv_lns.append(nn.LayerNorm(dim, eps=eps, elementwise_affine=True))
            cin = dim
        D = cin
        self.feat_ln = nn.LayerNorm(D, eps=eps)
        self.proj = nn.Linear(D, C)  # post_extract_proj
        self.mask_emb = nn.Parameter(torch.zeros(C))
        self.pos_convs, self.pos_lns = nn.ModuleList(), nn.ModuleList()
        for _ in range(pos_layers):  # wav2vec2 make_conv_block (deep pos_conv, no weight norm)
            self.pos_convs.append(nn.Conv1d(C, C, pos_k, padding=pos_k // 2, groups=pos_groups))
            self.pos_lns.append(nn.LayerNorm(C, eps=eps, elementwise_affine=False))
        self.enc_ln = nn.LayerNorm(C, eps=eps)

    def named_c(self):
        d = {}
        for i, (conv, ln) in enumerate(zip(self.convs, self.conv_lns)):
            d[f"conv_w{i}"] = conv.weight
            d[f"conv_ln_w{i}"], d[f"conv_ln_b{i}"] = ln.weight, ln.bias
        d.update({"feat_ln_w": self.feat_ln.weight, "feat_ln_b": self.feat_ln.bias,
                  "proj_w": self.proj.weight, "proj_b": self.proj.bias, "mask_emb": self.mask_emb})
        for j, conv in enumerate(self.pos_convs):
            d[f"pos_w{j}"], d[f"pos_b{j}"] = conv.weight, conv.bias
        d.update({"enc_ln_w": self.enc_ln.weight, "enc_ln_b": self.enc_ln.bias})
        return d

    @staticmethod
    def ln_gelu(ln, x):
        """fairseq TransposeLast -> LayerNorm -> TransposeLast -> GELU on (B, C, L). GELU's input
        and incoming gradient are kept contiguous (torch 1.13 oneDNN GELU backward bug)."""
        return ContiguousGrad.apply(F.gelu(ln(x.transpose(-2, -1)).transpose(-2, -1).contiguous()))

    def features(self, wav):
        """wav (B, S) -> projected features (B, T, C): conv stack, feature LN, projection."""
        x = wav.unsqueeze(1)  # (B, 1, S)
        for conv, ln in zip(self.convs, self.conv_lns):
            x = self.ln_gelu(ln, conv(x))  # Dropout(0) omitted
        x = x.transpose(1, 2)  # (B, T, D)
        return self.proj(self.feat_ln(x))

    def context(self, features, mask, enc_ln=None):
        """features (B, T, C); mask (B, T) bool or None -> the encoder input (B, T, C): mask
        embedding, x + pos_conv(x), encoder LN (`enc_ln` overrides this module's, for a teacher
        that averages only the LN)."""
        x = features
        if mask is not None:  # wav2vec2 apply_mask: x[mask_indices] = mask_emb (replaced)
            x = torch.where(mask.unsqueeze(-1), self.mask_emb.expand_as(features), features)
        h = x.transpose(1, 2)  # (B, C, T)
        for conv, ln in zip(self.pos_convs, self.pos_lns):
            h = conv(h)
            if self.pos_k % 2 == 0:  # SamePad
                h = h[:, :, :-1]
            h = self.ln_gelu(ln, h)
        x = x + h.transpose(1, 2)
        # post-LN encoder's input layer norm; wav2vec2's dropout after it is 0 here
        return (enc_ln or self.enc_ln)(x)

    def forward(self, wav, mask):
        """wav (B, S); mask (B, T) bool. Returns features (B, T, C) and out (B, T, C)."""
        features = self.features(wav)
        if features.requires_grad:
            features.retain_grad()
        return {"features": features, "out": self.context(features, mask)}


def conv_out_len(L, k, s):
    """data2vec _get_feat_extract_output_lengths per layer: floor((L - k)/s + 1), 0 if too short."""
    return max(0, math.floor((L - k) / s + 1)) if L > 0 else 0
