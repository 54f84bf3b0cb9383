"""PIDiff weights: this pack's documented safetensors format (PIDiff has no public code).

File ``*.safetensors`` with metadata ``{"format": "pidiff_sca", "format_version": "1"}`` (optional
``"base_model"``, ``"lambda"``) and tensors (fp16/fp32), ``C`` = token width (768 for SD1.5)::

    mapping.proj_0.weight  [C, 2048]   # mapping network F = the W+ Adapter's WProjModel shape:
    mapping.proj_1.weight  [C, 2048]   #   W+ rows 0:4, 4:8, 8:12 (flattened) -> Linear (no bias)
    mapping.proj_2.weight  [C, 2048]
    mapping.proj_3.weight  [C, 3072]   #   rows 12:18 -> Linear (no bias)
    mapping.norm.weight    [C]         #   LayerNorm over the 4 tokens
    mapping.norm.bias      [C]
    sca.{n}.to_q.weight    [h, h]      # W_q' of cross-attention layer n (n = 0..L-1)
    sca.{n}.to_k.weight    [h, C]      # W_k'
    sca.{n}.to_v.weight    [h, C]      # W_v'

Layers are numbered densely in diffusers' ``attn_processors`` order of the cross-attention
layers (down blocks, up blocks, then mid), the order :func:`patch_engine.cross_attention_layers`
enumerates; for SD1.5 n = 0..15, i.e. W+ Adapter index ``2n+1``. Only the WProjModel-shaped F is
defined in version 1 (the paper gives F's output shape [4,768], not its architecture).

An official W+ Adapter ``wplus_adapter.bin`` (or its safetensors form) also loads as PIDiff
weights: a sensible initialisation (the paper's SCA and the W+ Adapter's RCA compute the same).
"""
import os

import torch

from ..wplus.adapter import (ResidualAttnWeights, WProjModel, check_layer_shapes, load_wplus_adapter,
                             mapping_from_state_dict)

FORMAT = "pidiff_sca"
FORMAT_VERSION = "1"


def _is_pidiff(sd):
    return any(k.startswith("mapping.") for k in sd) and any(k.startswith("sca.") for k in sd)


def from_state_dict(sd, source=""):
    mapping = mapping_from_state_dict({k[len("mapping."):]: v for k, v in sd.items() if k.startswith("mapping.")},
                                      "mapping", source)
    layers = {}
    for k, t in sd.items():
        if k.startswith("mapping."):
            continue
        parts = k.split(".")
        if len(parts) != 4 or parts[0] != "sca" or not parts[1].isdigit() or parts[2] not in ("to_q", "to_k", "to_v") \
                or parts[3] != "weight":
            raise ValueError(f"{source}: unexpected key {k!r} in a PIDiff file (expected sca.<n>.to_q|to_k|to_v.weight)")
        layers.setdefault(int(parts[1]), {})[parts[2]] = t.float()
    idx = sorted(layers)
    if idx != list(range(len(idx))):
        raise ValueError(f"{source}: PIDiff layer numbers {idx} are not 0..{len(idx) - 1}")
    out = []
    for n in idx:
        d = layers[n]
        if set(d) != {"to_q", "to_k", "to_v"}:
            raise ValueError(f"{source}: PIDiff layer {n} has {sorted(d)}, expected to_q/to_k/to_v")
        out.append((d["to_q"], d["to_k"], d["to_v"]))
    w = ResidualAttnWeights(mapping, out, "pidiff", source)
    check_layer_shapes(w)
    return w


def to_state_dict(weights):
    sd = {f"mapping.{k}": v.detach().float().contiguous() for k, v in weights.mapping.state_dict().items()}
    for n, (q, k, v) in enumerate(weights.layers):
        sd[f"sca.{n}.to_q.weight"] = q.float().contiguous()
        sd[f"sca.{n}.to_k.weight"] = k.float().contiguous()
        sd[f"sca.{n}.to_v.weight"] = v.float().contiguous()
    return sd


def save_pidiff(weights, path, base_model="sd15", lam=0.4):
    from safetensors.torch import save_file

    save_file(to_state_dict(weights), str(path), metadata={"format": FORMAT, "format_version": FORMAT_VERSION,
                                                            "base_model": base_model, "lambda": str(lam)})


def load_pidiff(path):
    """PIDiff safetensors (format above), or an official W+ Adapter file used as PIDiff weights."""
    from ...safe_load import load_file

    name = os.path.basename(str(path))
    sd = load_file(str(path))
    if isinstance(sd, dict) and all(isinstance(k, str) for k in sd) and _is_pidiff(sd):
        return from_state_dict(sd, name)
    try:
        w = load_wplus_adapter(path)
    except ValueError:
        keys = list(sd)[:8] if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{name} is not a PIDiff weights file: expected safetensors with 'mapping.*' and "
                         f"'sca.<n>.to_q|to_k|to_v.weight' keys (format '{FORMAT}'), or an official W+ Adapter "
                         f"wplus_adapter.bin; found {keys}") from None
    return ResidualAttnWeights(w.mapping, w.layers, "pidiff", name)


__all__ = ["FORMAT", "FORMAT_VERSION", "WProjModel", "from_state_dict", "to_state_dict", "load_pidiff",
           "save_pidiff", "torch"]
