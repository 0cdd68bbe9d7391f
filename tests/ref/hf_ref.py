# hf_ref.py: HF transformers' Data2Vec{Text,Vision,Audio}Model as PyTorch module trees with HF's
# module and parameter names, loading d2v-export's safetensors, checked against d2v's features.
"""Written from modeling_data2vec_{text,vision,audio}.py and configuration_data2vec_*.py (RoBERTa's,
BEiT's and wav2vec2's modules under data2vec's names; the transformers versions read are in
docs/export.md) without the transformers package (Debian 12 has none), run by
tests/script_export.sh:

    hf_ref.py HF_DIR FEATURES.h5 DATA.h5

- reads HF_DIR/model.safetensors with a small reader (struct + json + numpy) and config.json,
  a field config.json leaves out taking the configuration class's default as from_pretrained
  does, the activations by name as ACT2FN maps them;
- checks every tensor name against tests/ref/hf_names.txt (derived from HF's source) with its
  shape, and loads the state dict into the module tree (strict but for HF-only tensors);
- rebuilds d2v-extract's inputs from DATA.h5 (text rows <s> + tokens + </s> + pads, normalised
  images, normalised speech) and computes the variants d2v-extract wrote (mean_final, mean_norm,
  cls, mean_lastk) in float64; each must match FEATURES.h5 to 1e-5;
- negative control: the same with layer 0's query and value weights swapped must not match.
Prints ok/FAIL lines and "N passed, N failed"; exits non-zero on a failure.
"""
import json
import math
import os
import re
import struct
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TOL = 1e-5


# configuration_data2vec_*.py's defaults of the fields read here: what from_pretrained uses for a
# field config.json does not set
DEFAULTS = {
    "data2vec-text": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, hidden_act="gelu", max_position_embeddings=512,
                          type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=1,
                          position_embedding_type="absolute"),
    "data2vec-vision": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                            hidden_act="gelu", layer_norm_eps=1e-12, image_size=224, patch_size=16,
                            num_channels=3, use_mask_token=False, use_absolute_position_embeddings=False,
                            use_relative_position_bias=False, use_shared_relative_position_bias=False,
                            layer_scale_init_value=0.1, use_mean_pooling=True),
    "data2vec-audio": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                           hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_activation="gelu",
                           conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2],
                           conv_bias=False, num_conv_pos_embedding_groups=16, conv_pos_kernel_size=19,
                           num_conv_pos_embeddings=5, mask_time_prob=0.05, mask_feature_prob=0.0),
}


class Cfg:
    def __init__(self, d):
        self.__dict__.update(DEFAULTS.get(d.get("model_type"), {}))
        self.__dict__.update(d)


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


# transformers' ACT2FN for the names a config may hold ("gelu" is the erf GELU)
ACT2FN = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu, "gelu_new": _gelu_tanh,
          "gelu_pytorch_tanh": _gelu_tanh, "gelu_fast": _gelu_tanh, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


def read_safetensors(path):
    """{name: float32 array} from a safetensors file (F32 only: what d2v-export writes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, t = e["data_offsets"]
        out[name] = np.frombuffer(raw[base + b:base + t], dtype="<f4").reshape(e["shape"]).copy()
    return out, header.get("__metadata__", {})


# ---- the module trees (HF names) -----------------------------------------------------------------

def linear(i, o, bias=True):
    return nn.Linear(i, o, bias=bias)


class TextSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        C = c.hidden_size
        self.h = c.num_attention_heads
        self.query, self.key, self.value = linear(C, C), linear(C, C), linear(C, C)

    def forward(self, x, bias):
        B, T, C = x.shape
        sh = lambda y: y.view(B, T, self.h, C // self.h).transpose(1, 2)
        q, k, v = sh(self.query(x)), sh(self.key(x)), sh(self.value(x))
        a = q @ k.transpose(-1, -2) / math.sqrt(C // self.h)
        if bias is not None:
            a = a + bias
        return (a.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)


class DenseLN(nn.Module):
    def __init__(self, i, o, eps):
        super().__init__()
        self.dense = linear(i, o)
        self.LayerNorm = nn.LayerNorm(o, eps=eps)


class Dense(nn.Module):
    def __init__(self, i, o):
        super().__init__()
        self.dense = linear(i, o)


class TextAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        setattr(self, "self", TextSelfAttention(c))
        self.output = DenseLN(c.hidden_size, c.hidden_size, c.layer_norm_eps)


class TextLayer(nn.Module):  # RobertaLayer: post-LN
    def __init__(self, c):
        super().__init__()
        self.act = ACT2FN[c.hidden_act]
        self.attention = TextAttention(c)
        self.intermediate = Dense(c.hidden_size, c.intermediate_size)
        self.output = DenseLN(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x, bias):
        a = self.attention.output.dense(getattr(self.attention, "self")(x, bias))
        x = self.attention.output.LayerNorm(a + x)
        f = self.output.dense(self.act(self.intermediate.dense(x)))
        return self.output.LayerNorm(f + x)


class TextEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        C = c.hidden_size
        self.word_embeddings = nn.Embedding(c.vocab_size, C)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, C)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, C)
        self.LayerNorm = nn.LayerNorm(C, eps=c.layer_norm_eps)
        self.pad = c.pad_token_id
        # relative_key(_query) would add distance_embedding tensors and change the attention
        assert c.position_embedding_type == "absolute", c.position_embedding_type

    def forward(self, ids):
        # create_position_ids_from_input_ids: cumsum of non-pad tokens, offset by padding_idx
        m = (ids != self.pad).long()
        pos = torch.cumsum(m, 1) * m + self.pad
        x = self.word_embeddings(ids) + self.token_type_embeddings(torch.zeros_like(ids))
        return self.LayerNorm(x + self.position_embeddings(pos))


class TextEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer = nn.ModuleList([TextLayer(c) for _ in range(c.num_hidden_layers)])


class Data2VecTextModel(nn.Module):
    hf_only = ("pooler.",)

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embeddings = TextEmbeddings(c)
        self.encoder = TextEncoder(c)

    def forward(self, ids):
        mask = (ids != self.c.pad_token_id).to(torch.float64)
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(torch.float64).min
        hs = [self.embeddings(ids)]
        for lay in self.encoder.layer:
            hs.append(lay(hs[-1], bias))
        return hs


class VisionSelfAttention(nn.Module):
    def __init__(self, c, window):
        super().__init__()
        C = c.hidden_size
        self.h = c.num_attention_heads
        self.query, self.key, self.value = linear(C, C), linear(C, C, bias=False), linear(C, C)
        if window is not None:  # use_relative_position_bias: one table per block
            self.relative_position_bias = RelativePositionBias(c, *window)

    def forward(self, x, bias, window):
        if hasattr(self, "relative_position_bias"):
            own = self.relative_position_bias(window)
            bias = own if bias is None else own + bias
        return TextSelfAttention.forward(self, x, bias)


class VisionAttention(nn.Module):
    def __init__(self, c, window):
        super().__init__()
        self.attention = VisionSelfAttention(c, window)
        self.output = Dense(c.hidden_size, c.hidden_size)


class VisionLayer(nn.Module):  # BEiT block: pre-LN with layer scale
    def __init__(self, c, window):
        super().__init__()
        C = c.hidden_size
        self.act = ACT2FN[c.hidden_act]
        self.attention = VisionAttention(c, window)
        self.intermediate = Dense(C, c.intermediate_size)
        self.output = Dense(c.intermediate_size, C)
        self.layernorm_before = nn.LayerNorm(C, eps=c.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(C, eps=c.layer_norm_eps)
        if c.layer_scale_init_value > 0:
            self.lambda_1 = nn.Parameter(torch.ones(C))
            self.lambda_2 = nn.Parameter(torch.ones(C))
        else:
            self.lambda_1 = self.lambda_2 = None

    def forward(self, x, bias, window):
        a = self.attention.output.dense(self.attention.attention(self.layernorm_before(x), bias, window))
        if self.lambda_1 is not None:
            a = self.lambda_1 * a
        x = x + a
        f = self.output.dense(self.act(self.intermediate.dense(self.layernorm_after(x))))
        if self.lambda_2 is not None:
            f = self.lambda_2 * f
        return x + f


class PatchEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.projection = nn.Conv2d(c.num_channels, c.hidden_size, c.patch_size, c.patch_size)


class VisionEmbeddings(nn.Module):
    def __init__(self, c, n_patches):
        super().__init__()
        C = c.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, C)) if c.use_mask_token else None
        self.patch_embeddings = PatchEmbeddings(c)
        self.position_embeddings = (nn.Parameter(torch.zeros(1, n_patches + 1, C))
                                    if c.use_absolute_position_embeddings else None)
        self.patch_size = c.patch_size

    def interpolate_pos_encoding(self, x, height, width):
        # HF's (ViT's) interpolate_pos_encoding, called on every forward: the table itself when the
        # grid is the trained one and square, else a bicubic resampling of a sqrt x sqrt grid
        n, npos = x.shape[1] - 1, self.position_embeddings.shape[1] - 1
        if n == npos and height == width:
            return self.position_embeddings
        P, dim, s = self.patch_size, x.shape[-1], int(npos ** 0.5)
        g = self.position_embeddings[:, 1:].reshape(1, s, s, dim).permute(0, 3, 1, 2)
        g = F.interpolate(g, size=(height // P, width // P), mode="bicubic", align_corners=False)
        return torch.cat([self.position_embeddings[:, :1], g.permute(0, 2, 3, 1).reshape(1, -1, dim)], 1)

    def forward(self, px):
        x = self.patch_embeddings.projection(px).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        if self.position_embeddings is not None:
            x = x + self.interpolate_pos_encoding(x, px.shape[2], px.shape[3])
        return x


class RelativePositionBias(nn.Module):
    def __init__(self, c, gh, gw):
        super().__init__()
        self.gh, self.gw = gh, gw
        R = (2 * gh - 1) * (2 * gw - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(R, c.num_attention_heads))

    def forward(self, window):
        # HF's forward first resamples the patch part of the table from the trained window to
        # this input's (bilinear; the identity at the trained square size) viewing it as
        # (2 gw - 1, 2 gh - 1), then indexes it with BEiT's relative_position_index:
        # (dy + gh - 1) * (2 gw - 1) + dx + gw - 1 between patches; row 0 (cls query) R - 3,
        # column 0 R - 2, (0, 0) R - 1
        T = self.relative_position_bias_table
        old_h, old_w = 2 * self.gh - 1, 2 * self.gw - 1
        gh, gw = window
        new_h, new_w = 2 * gh - 1, 2 * gw - 1
        sub = T[:T.shape[0] - 3].reshape(1, old_w, old_h, -1).permute(0, 3, 1, 2)
        sub = F.interpolate(sub, size=(new_h, new_w), mode="bilinear")
        table = torch.cat([sub.permute(0, 2, 3, 1).reshape(new_h * new_w, -1), T[T.shape[0] - 3:]])
        R = table.shape[0]
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        rel = (ys[:, None] - ys[None, :] + gh - 1) * (2 * gw - 1) + (xs[:, None] - xs[None, :] + gw - 1)
        N = gh * gw
        idx = torch.zeros(N + 1, N + 1, dtype=torch.long)
        idx[1:, 1:] = rel
        idx[0, :] = R - 3
        idx[:, 0] = R - 2
        idx[0, 0] = R - 1
        b = table[idx.view(-1)].view(N + 1, N + 1, -1)
        return b.permute(2, 0, 1)[None]


class VisionEncoder(nn.Module):
    def __init__(self, c, gh, gw):
        super().__init__()
        if c.use_shared_relative_position_bias:
            self.relative_position_bias = RelativePositionBias(c, gh, gw)
        window = (gh, gw) if c.use_relative_position_bias else None
        self.layer = nn.ModuleList([VisionLayer(c, window) for _ in range(c.num_hidden_layers)])


class Data2VecVisionModel(nn.Module):
    hf_only = ()

    def __init__(self, c):
        super().__init__()
        self.c = c
        hw = c.image_size if isinstance(c.image_size, list) else [c.image_size, c.image_size]
        self.gh, self.gw = hw[0] // c.patch_size, hw[1] // c.patch_size
        self.embeddings = VisionEmbeddings(c, self.gh * self.gw)
        self.encoder = VisionEncoder(c, self.gh, self.gw)
        self.layernorm = (nn.Identity() if c.use_mean_pooling
                          else nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps))

    def forward(self, px):
        hs = [self.embeddings(px)]
        window = (px.shape[2] // self.c.patch_size, px.shape[3] // self.c.patch_size)
        bias = (self.encoder.relative_position_bias(window)
                if hasattr(self.encoder, "relative_position_bias") else None)
        for lay in self.encoder.layer:
            hs.append(lay(hs[-1], bias, window))
        return hs


class ConvLayer(nn.Module):
    def __init__(self, c, i):
        super().__init__()
        cin = c.conv_dim[i - 1] if i else 1
        self.conv = nn.Conv1d(cin, c.conv_dim[i], c.conv_kernel[i], c.conv_stride[i], bias=c.conv_bias)
        self.layer_norm = nn.LayerNorm(c.conv_dim[i], elementwise_affine=True)  # eps: torch's 1e-5
        self.act = ACT2FN[c.feat_extract_activation]

    def forward(self, x):
        return self.act(self.layer_norm(self.conv(x).transpose(-2, -1)).transpose(-2, -1))


class FeatureEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv_layers = nn.ModuleList([ConvLayer(c, i) for i in range(len(c.conv_dim))])


class FeatureProjection(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer_norm = nn.LayerNorm(c.conv_dim[-1], eps=c.layer_norm_eps)
        self.projection = nn.Linear(c.conv_dim[-1], c.hidden_size)


class PosConvLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        k = c.conv_pos_kernel_size
        self.k = k
        self.conv = nn.Conv1d(c.hidden_size, c.hidden_size, k, padding=k // 2,
                              groups=c.num_conv_pos_embedding_groups)
        self.layer_norm = nn.LayerNorm(c.hidden_size, elementwise_affine=False)  # eps: torch's 1e-5
        self.act = ACT2FN[c.feat_extract_activation]

    def forward(self, x):
        x = self.conv(x)
        if self.k % 2 == 0:  # SamePad
            x = x[:, :, :-1]
        return self.act(self.layer_norm(x.transpose(1, 2)).transpose(1, 2))


class PosConvEmbed(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList([PosConvLayer(c) for _ in range(c.num_conv_pos_embeddings)])


class AudioAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        C = c.hidden_size
        self.h = c.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj = linear(C, C), linear(C, C), linear(C, C)
        self.out_proj = linear(C, C)

    def forward(self, x):
        B, T, C = x.shape
        sh = lambda y: y.view(B, T, self.h, C // self.h).transpose(1, 2)
        q, k, v = sh(self.q_proj(x)), sh(self.k_proj(x)), sh(self.v_proj(x))
        a = (q * (C // self.h) ** -0.5) @ k.transpose(-1, -2)
        return self.out_proj((a.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.intermediate_dense = linear(c.hidden_size, c.intermediate_size)
        self.output_dense = linear(c.intermediate_size, c.hidden_size)


class AudioLayer(nn.Module):  # Wav2Vec2EncoderLayer: post-LN
    def __init__(self, c):
        super().__init__()
        self.attention = AudioAttention(c)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.feed_forward = FeedForward(c)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.act = ACT2FN[c.hidden_act]

    def forward(self, x):
        x = self.layer_norm(x + self.attention(x))
        f = self.feed_forward
        return self.final_layer_norm(x + f.output_dense(self.act(f.intermediate_dense(x))))


class AudioEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pos_conv_embed = PosConvEmbed(c)
        self.layer_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = nn.ModuleList([AudioLayer(c) for _ in range(c.num_hidden_layers)])


class Data2VecAudioModel(nn.Module):
    hf_only = ()

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.feature_extractor = FeatureEncoder(c)
        self.feature_projection = FeatureProjection(c)
        if c.mask_time_prob > 0 or c.mask_feature_prob > 0:
            self.masked_spec_embed = nn.Parameter(torch.zeros(c.hidden_size))
        self.encoder = AudioEncoder(c)

    def forward(self, wav):
        x = wav[:, None]
        for lay in self.feature_extractor.conv_layers:
            x = lay(x)
        x = self.feature_projection.projection(self.feature_projection.layer_norm(x.transpose(1, 2)))
        p = x.transpose(1, 2)
        for lay in self.encoder.pos_conv_embed.layers:
            p = lay(p)
        hs = [self.encoder.layer_norm(x + p.transpose(1, 2))]
        for lay in self.encoder.layers:
            hs.append(lay(hs[-1]))
        return hs


MODELS = {"data2vec-text": Data2VecTextModel, "data2vec-vision": Data2VecVisionModel,
          "data2vec-audio": Data2VecAudioModel}


# ---- checks ----------------------------------------------------------------------------------------

passed = failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
        print("ok   " + what)
    else:
        failed += 1
        print("FAIL " + what)


def name_list(model_type, c, gh=0, gw=0):
    """{name: (shape, optional)} from hf_names.txt for this config."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    env = {"c": c, "num_patches": gh * gw, "gh": gh, "gw": gw}
    for line in open(os.path.join(here, "hf_names.txt")):
        if line.startswith("#") or not line.strip():
            continue
        mt, name, shape = line.rstrip("\n").split("\t")
        if mt != model_type:
            continue
        opt = name.endswith("?")
        name = name.rstrip("?")
        rng = {"l": range(c.num_hidden_layers)}
        if model_type == "data2vec-audio":
            rng["i"] = range(len(c.conv_dim))
            rng["j"] = range(c.num_conv_pos_embeddings)
        var = re.findall(r"\{(\w)\}", name)
        if not var:
            out[name] = (tuple(eval(shape, {}, env)), opt)
            continue
        for v in rng[var[0]]:
            out[name.replace("{%s}" % var[0], str(v))] = (tuple(eval(shape, {}, dict(env, **{var[0]: v}))), opt)
    return out


def config_values(text):
    """key -> value text of d2v's resolved configuration (the features file's config)."""
    vals, group = {}, ""
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"(\w+): \{$", line)
        if m:
            group = m.group(1) + "."
            continue
        if line == "};":
            group = ""
            continue
        m = re.match(r"(\w+) = (.*);$", line)
        if m:
            vals[group + m.group(1)] = m.group(2)
    return vals


def inputs(model_type, data, cv):
    """d2v-extract's batches (src/eval/extract.c fill_batch), one list entry per sample."""
    with h5py.File(data, "r") as f:
        if model_type == "data2vec-text":
            T = int(cv["data.text_block"])
            tok, off = f["tokens"][()], f["doc_offsets"][()]
            bos, eos, pad = (int(f.attrs[k]) for k in ("bos_id", "eos_id", "pad_id"))
            rows = []
            for d in range(len(off) - 1):
                doc = list(tok[off[d]:off[d + 1]][:T - 1])
                r = [bos] + doc
                if len(r) < T:
                    r.append(eos)
                rows.append(r + [pad] * (T - len(r)))
            return [torch.tensor(rows, dtype=torch.long)]
        if model_type == "data2vec-vision":
            img = f["images"][()].astype(np.float64) / 255.0  # (N, H, W, C)
            mean = [float(x) for x in cv["data.mean"].strip("[]").split(",")]
            std = [float(x) for x in cv["data.std"].strip("[]").split(",")]
            Cn = img.shape[-1]
            x = (img.astype(np.float32) - np.float32(mean[:Cn])) / np.float32(std[:Cn])
            return [torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).to(torch.float64)]
        audio, off = f["audio"][()], f["offsets"][()]
        scale = 1.0 if audio.dtype.kind == "f" else 1.0 / 32768.0
        smax, norm = int(cv["data.speech_max_samples"]), cv["data.speech_normalize"] == "true"
        out = []
        for u in range(len(off) - 1):
            x = (audio[off[u]:off[u + 1]][:smax].astype(np.float32) * np.float32(scale))
            if norm:
                m = x.astype(np.float64).mean()
                v = ((x.astype(np.float64) - m) ** 2).mean()
                x = ((x - np.float32(m)) * np.float32(1.0 / math.sqrt(v + 1e-5))).astype(np.float32)
            out.append(torch.from_numpy(x)[None].to(torch.float64))
        return out


def features(model, model_type, xs, pad, last_k):
    """The d2v-extract variants from the HF module tree's hidden states."""
    out = {"mean_final": [], "mean_norm": [], "cls": [], "mean_lastk": []}
    with torch.no_grad():
        for x in xs:
            hs = model(x)
            last, lastk = hs[-1], torch.stack(hs[-last_k:]).mean(0)
            if model_type == "data2vec-text":
                w = (x != pad).to(torch.float64)[..., None]
                pool = lambda y: (y * w).sum(1) / w.sum(1)
            elif model_type == "data2vec-vision":
                pool = lambda y: y[:, 1:].mean(1)
            else:
                pool = lambda y: y.mean(1)
            out["mean_final"].append(pool(last))
            out["mean_lastk"].append(pool(lastk))
            if model_type != "data2vec-audio":
                out["cls"].append(last[:, 0])
            if model_type == "data2vec-vision" and not model.c.use_mean_pooling:
                out["mean_norm"].append(pool(model.layernorm(last)))
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


def main():
    hf_dir, feat_path, data = sys.argv[1:4]
    c = Cfg(json.load(open(os.path.join(hf_dir, "config.json"))))
    sd, meta = read_safetensors(os.path.join(hf_dir, "model.safetensors"))
    check(meta.get("format") == "pt", "%s: __metadata__ format is pt (transformers requires it)" % hf_dir)
    mt = c.model_type
    model = MODELS[mt](c).to(torch.float64)
    gh, gw = (model.gh, model.gw) if mt == "data2vec-vision" else (0, 0)
    names = name_list(mt, c, gh, gw)
    unknown = [n for n in sd if n not in names]
    wrong = [n for n in sd if n in names and tuple(sd[n].shape) != names[n][0]]
    missing = [n for n, (s, opt) in names.items() if not opt and n not in sd]
    check(not unknown and not wrong and not missing,
          "%s: all %d exported names in HF's name list with their shapes%s" %
          (mt, len(sd), "" if not (unknown or wrong or missing) else
           " (unknown %s, wrong shape %s, missing %s)" % (unknown[:3], wrong[:3], missing[:3])))
    own = model.state_dict()
    res = model.load_state_dict({k: torch.from_numpy(v).to(torch.float64) for k, v in sd.items()},
                                strict=False)
    hf_only = [k for k in res.missing_keys if not k.startswith(model.hf_only)]
    check(not res.unexpected_keys and not hf_only and len(own) == len(sd),
          "%s: the state dict loads into the HF-named module tree (missing %s, unexpected %s)" %
          (mt, hf_only[:3], res.unexpected_keys[:3]))
    with h5py.File(feat_path, "r") as f:
        cv = config_values(f.attrs["config"].decode() if isinstance(f.attrs["config"], bytes) else f.attrs["config"])
        last_k = int(f.attrs["last_k"])
        want = {k: f[k][()] for k in ("mean_final", "mean_norm", "cls", "mean_lastk") if k in f}
    pad = getattr(c, "pad_token_id", 1)
    xs = inputs(mt, data, cv)
    got = features(model, mt, xs, pad, last_k)
    for k in want:
        d = float(np.abs(got[k] - want[k]).max()) if k in got else float("inf")
        check(d <= TOL, "%s %s: HF-named forward against d2v-extract, max |diff| %.3g (%d samples)" %
              (mt, k, d, want[k].shape[0]))
    # negative control: layer 0's query and value weights swapped (a mapping mistake)
    lay = (model.encoder.layer[0].attention.self if mt == "data2vec-text" else
           model.encoder.layer[0].attention.attention if mt == "data2vec-vision" else
           model.encoder.layers[0].attention)
    qn, kn = ("q_proj", "v_proj") if mt == "data2vec-audio" else ("query", "value")
    with torch.no_grad():
        q = getattr(lay, qn).weight.clone()
        getattr(lay, qn).weight.copy_(getattr(lay, kn).weight)
        getattr(lay, kn).weight.copy_(q)
    bad = features(model, mt, xs, pad, last_k)["mean_final"]
    d = float(np.abs(bad - want["mean_final"]).max())
    check(d > 100 * TOL, "%s negative control: query and value of block 0 swapped differ by %.3g" % (mt, d))
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
