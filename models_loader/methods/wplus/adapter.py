"""W+ Adapter weights (csxmli2016/w-plus-adapter): ``WProjModel`` and the per-layer residual
cross-attention projections, loaded from the official ``wplus_adapter.bin`` or safetensors.

Official layout (torch pickle of plain tensor dicts, loads with ``weights_only=True``)::

    {"w_proj": {"proj_0.weight": [768, 2048], "proj_1.weight": [768, 2048],
                "proj_2.weight": [768, 2048], "proj_3.weight": [768, 3072],
                "norm.weight": [768], "norm.bias": [768]},
     "wplus_adapter": {"{i}.to_q_wplus.weight": [h, h], "{i}.to_k_wplus.weight": [h, 768],
                       "{i}.to_v_wplus.weight": [h, 768]   for odd i = 1, 3, ..., 31}}

``i`` is the index in diffusers' ``unet.attn_processors`` (attn1 even, attn2 odd), whose order is
down blocks, up blocks, then the mid block. :func:`map_to_model` maps it onto ComfyUI keys by
enumerating the model's cross-attention layers in that same order (so the same code serves the
full SD1.5 UNet, where it reproduces the official table input 1,2,4,5,7,8 / output 3..11 /
middle 0, and any smaller SD1.5-style UNet). Safetensors: the same keys flattened with the
prefixes ``w_proj.`` and ``wplus_adapter.``.
"""
import os
import re

import torch
import torch.nn as nn

from .rca import official_index  # noqa: F401  (re-exported: the index rule lives in rca)

# W+ rows per token group, as in the official WProjModel
ROW_GROUPS = ((0, 4), (4, 8), (8, 12), (12, 18))
W_DIM = 512
N_ROWS = 18


class WProjModel(nn.Module):
    """W+ [B,18,512] -> 4 tokens [B,4,C]: rows 0:4, 4:8, 8:12, 12:18 flattened row by row,
    one bias-free Linear each, then a shared LayerNorm."""

    def __init__(self, cross_dim=768):
        super().__init__()
        for i, (a, b) in enumerate(ROW_GROUPS):
            setattr(self, f"proj_{i}", nn.Linear((b - a) * W_DIM, cross_dim, bias=False))
        self.norm = nn.LayerNorm(cross_dim)

    @property
    def cross_dim(self):
        return self.norm.weight.shape[0]

    def forward(self, w):
        b = w.shape[0]
        toks = [getattr(self, f"proj_{i}")(w[:, a:e].reshape(b, -1)) for i, (a, e) in enumerate(ROW_GROUPS)]
        return self.norm(torch.stack(toks, dim=1))


class ResidualAttnWeights:
    """The loaded weights of one residual cross-attention method (W+ Adapter RCA or PIDiff SCA).

    ``mapping``: :class:`WProjModel` (W+ -> tokens); ``adapter``: :class:`.rca.ResidualAdapter` (one
    :class:`.rca.ResidualCrossAttention` per cross-attention layer, down, up, mid order). Both are the
    trainable modules themselves (training imports them); this inference value only freezes them.
    ``kind``: "wplus_adapter" / "pidiff".
    """

    def __init__(self, mapping, layers, kind, source=""):
        from .rca import ResidualAdapter

        self.mapping = mapping.eval().requires_grad_(False)
        adapter = layers if isinstance(layers, ResidualAdapter) else ResidualAdapter.from_weights(layers)
        self.adapter = adapter.eval().requires_grad_(False)
        self.kind = kind
        self.source = source

    @property
    def cross_dim(self):
        return self.mapping.cross_dim

    @property
    def layers(self):
        """[(to_q, to_k, to_v) weight tensors] per layer (views of the adapter's parameters)."""
        return [(l.to_q_wplus.weight, l.to_k_wplus.weight, l.to_v_wplus.weight) for l in self.adapter]

    def widths(self):
        return self.adapter.widths()

    def embed(self, wplus):
        """(cond tokens [B,4,C], uncond tokens [1,4,C]) in fp32 on CPU; uncond = mapping(zeros)."""
        w = check_wplus(wplus).detach().to("cpu", torch.float32)
        with torch.no_grad():
            m = self.mapping.to("cpu", torch.float32)
            return m(w.clone()), m(torch.zeros_like(w[:1]))

    def __repr__(self):
        return f"ResidualAttnWeights({self.kind}, {len(self.adapter)} layers, widths {sorted(set(self.widths()))}, " \
               f"tokens {self.cross_dim}, from {os.path.basename(self.source) or '?'})"


def check_wplus(wplus):
    if not torch.is_tensor(wplus):
        raise TypeError(f"WPLUS must be a torch tensor [B,18,512], got {type(wplus).__name__}")
    if wplus.dim() == 2 and tuple(wplus.shape) == (N_ROWS, W_DIM):
        wplus = wplus.unsqueeze(0)
    if wplus.dim() != 3 or tuple(wplus.shape[1:]) != (N_ROWS, W_DIM):
        raise ValueError(f"WPLUS must have shape [B,18,512] (StyleGAN2-FFHQ W+ codes, e.g. from WPlusEncode "
                         f"or a [1,18,512] .pth code), got {list(wplus.shape)}")
    if not wplus.is_floating_point():
        raise ValueError(f"WPLUS must be floating point, got {wplus.dtype}")
    return wplus


# --------------------------------------------------------------------------------------------
# state dicts
# --------------------------------------------------------------------------------------------
_LAYER_RE = re.compile(r"^(\d+)\.(to_q_wplus|to_k_wplus|to_v_wplus)\.weight$")


def mapping_from_state_dict(sd, what, source):
    need = [f"proj_{i}.weight" for i in range(4)] + ["norm.weight", "norm.bias"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"{source}: {what} is missing {missing}; expected keys {need}")
    cross = int(sd["norm.weight"].shape[0])
    m = WProjModel(cross)
    for i, (a, b) in enumerate(ROW_GROUPS):
        shp = tuple(sd[f"proj_{i}.weight"].shape)
        if shp != (cross, (b - a) * W_DIM):
            raise ValueError(f"{source}: {what} proj_{i}.weight has shape {list(shp)}, expected "
                             f"[{cross}, {(b - a) * W_DIM}] (W+ rows {a}:{b} x 512)")
    m.load_state_dict({k: sd[k].float() for k in need})
    return m


def from_official_dicts(w_proj, adapter, source="", kind="wplus_adapter"):
    mapping = mapping_from_state_dict(w_proj, "w_proj", source)
    by_index = {}
    for k, t in adapter.items():
        mt = _LAYER_RE.match(k)
        if not mt:
            raise ValueError(f"{source}: unexpected key 'wplus_adapter.{k}'; expected '{{i}}.to_q_wplus.weight' etc.")
        by_index.setdefault(int(mt.group(1)), {})[mt.group(2)] = t
    idx = sorted(by_index)
    expect = list(range(1, 2 * len(idx), 2))
    if idx != expect:
        raise ValueError(f"{source}: adapter attention indices {idx} are not the odd attn2 indices {expect} "
                         "of diffusers' attn_processors order")
    layers = []
    for i in idx:
        d = by_index[i]
        if set(d) != {"to_q_wplus", "to_k_wplus", "to_v_wplus"}:
            raise ValueError(f"{source}: layer {i} has {sorted(d)}, expected to_q_wplus/to_k_wplus/to_v_wplus")
        layers.append((d["to_q_wplus"].float(), d["to_k_wplus"].float(), d["to_v_wplus"].float()))
    weights = ResidualAttnWeights(mapping, layers, kind, source)
    check_layer_shapes(weights)
    return weights


def check_layer_shapes(weights):
    c = weights.cross_dim
    for n, (q, k, v) in enumerate(weights.layers):
        h = q.shape[0]
        if tuple(q.shape) != (h, h) or tuple(k.shape) != (h, c) or tuple(v.shape) != (h, c):
            raise ValueError(f"{weights.source}: layer {n} q/k/v shapes {list(q.shape)}/{list(k.shape)}/"
                             f"{list(v.shape)}; expected [h,h]/[h,{c}]/[h,{c}]")


def to_official_dicts(weights):
    w_proj = {k: v.detach().clone() for k, v in weights.mapping.state_dict().items()}
    adapter = {}
    for n, (q, k, v) in enumerate(weights.layers):
        i = 2 * n + 1
        adapter[f"{i}.to_q_wplus.weight"] = q.detach().clone()
        adapter[f"{i}.to_k_wplus.weight"] = k.detach().clone()
        adapter[f"{i}.to_v_wplus.weight"] = v.detach().clone()
    return {"w_proj": w_proj, "wplus_adapter": adapter}


def load_wplus_adapter(path):
    """Official ``wplus_adapter.bin`` (nested dicts) or safetensors (``w_proj.*`` / ``wplus_adapter.*``)."""
    from ...safe_load import load_file

    sd = load_file(str(path))
    name = os.path.basename(str(path))
    if isinstance(sd, dict) and "w_proj" in sd and "wplus_adapter" in sd and isinstance(sd["w_proj"], dict):
        return from_official_dicts(sd["w_proj"], sd["wplus_adapter"], name)
    if isinstance(sd, dict) and any(isinstance(k, str) and k.startswith("w_proj.") for k in sd):
        w_proj = {k[len("w_proj."):]: v for k, v in sd.items() if k.startswith("w_proj.")}
        adapter = {k[len("wplus_adapter."):]: v for k, v in sd.items() if k.startswith("wplus_adapter.")}
        other = [k for k in sd if not (k.startswith("w_proj.") or k.startswith("wplus_adapter."))]
        if other:
            raise ValueError(f"{name}: unexpected keys {other[:5]} in a W+ Adapter safetensors file")
        return from_official_dicts(w_proj, adapter, name)
    keys = list(sd)[:8] if isinstance(sd, dict) else type(sd).__name__
    raise ValueError(f"{name} is not a W+ Adapter checkpoint: expected {{'w_proj': ..., 'wplus_adapter': ...}} "
                     f"(official wplus_adapter.bin) or safetensors with 'w_proj.*'/'wplus_adapter.*' keys; "
                     f"found {keys}")


# --------------------------------------------------------------------------------------------
# mapping onto a model
# --------------------------------------------------------------------------------------------
def map_to_model(weights, model):
    """[(CrossAttnLayer, n)] pairing each model cross-attention layer with adapter layer n;
    raises a clear error when the adapter does not fit the model."""
    from ...patch_engine import cross_attention_layers

    layers = cross_attention_layers(model)
    what = "W+ Adapter" if weights.kind == "wplus_adapter" else "PIDiff"
    ctx = sorted({l.context_dim for l in layers})
    fam = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}.get(ctx[0] if len(ctx) == 1 else -1, f"context {ctx}")
    if len(layers) != len(weights.layers) or any(l.inner_dim != w for l, w in zip(layers, weights.widths())):
        raise ValueError(
            f"{what} '{os.path.basename(weights.source)}' does not fit this model: it has {len(weights.layers)} "
            f"cross-attention layers of widths {weights.widths()}, the model has {len(layers)} of widths "
            f"{[l.inner_dim for l in layers]} (text context {ctx}: {fam}). The official W+ Adapter weights are "
            "for Stable Diffusion 1.5; use an SD1.5 checkpoint (or weights trained for this model).")
    return list(zip(layers, range(len(layers))))
