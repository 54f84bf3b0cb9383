"""Stand-in for a foreign ``attn2`` occupant: cubiq/ComfyUI_IPAdapter_plus's real convention (mirrored from
its source at commit 9d076a3, not copied):

* ``CrossAttentionPatch.py:7-34`` ``Attn2Replace``: the shared stand-in ``tests/composition/peers.py``
  ``IPAdapterAttn2Replace`` (imported here; its docstring cites the lines).
* ``IPAdapterPlus.py:210-226`` ``set_model_patch_replace``: copies ``transformer_options`` / ``patches_replace``
  / ``attn2`` one level each; an empty key gets a new ``Attn2Replace`` (and the copied dicts are stored), an
  occupied key gets ``.add(...)`` called on whatever object is there (ours: the engine's ``AttnChain``).
* ``IPAdapterPlus.py:511-517``: SD1.5 keys are the 2-tuples ``("input", id)`` / ``("output", id)``; the pack
  clones the MODEL before patching.

The callback here is a fixed random "image prompt" attention (4 tokens) with a weight, standing in for
``ipadapter_attention`` (``CrossAttentionPatch.py:65``).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "composition"))
from peers import IPAdapterAttn2Replace as Attn2Replace  # noqa: E402  the one stand-in, cited there


def image_prompt_attention(out, q, k, v, extra_options, weight=1.0, tokens=None, **kwargs):
    from comfy.ldm.modules.attention import optimized_attention

    inner = q.shape[-1]
    g = torch.Generator().manual_seed(inner)
    wk = torch.randn(inner, tokens.shape[-1], generator=g) * 0.05
    wv = torch.randn(inner, tokens.shape[-1], generator=g) * 0.05
    t = tokens.to(q.dtype).expand(q.shape[0], -1, -1)
    kk = torch.nn.functional.linear(t, wk.to(q.dtype))
    vv = torch.nn.functional.linear(t, wv.to(q.dtype))
    return optimized_attention(q, kk, vv, extra_options["n_heads"]) * weight


def set_model_patch_replace(model, patch_kwargs, key):
    to = model.model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
    if key not in to["patches_replace"]["attn2"]:
        to["patches_replace"]["attn2"][key] = Attn2Replace(image_prompt_attention, **patch_kwargs)
        model.model_options["transformer_options"] = to
    else:
        to["patches_replace"]["attn2"][key].add(image_prompt_attention, **patch_kwargs)


def apply_foreign(model, weight=1.0):
    """Clone + install on every cross-attention block key (2-tuples), IPAdapter style."""
    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers

    m = model.clone()
    tokens = torch.randn(1, 4, 768, generator=torch.Generator().manual_seed(5))
    kw = dict(weight=weight, tokens=tokens, sigma_start=float("inf"), sigma_end=0.0)
    for block in dict.fromkeys(l.block for l in cross_attention_layers(m)):
        set_model_patch_replace(m, kw, tuple(block))
    return m
