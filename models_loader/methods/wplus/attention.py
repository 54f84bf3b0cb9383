"""Residual cross-attention on W+ tokens: the W+ Adapter's RCA and PIDiff's SCA (one computation).

Official ``WPlusAttnProcessor2_0`` (and PIDiff Eq. 3-4), per cross-attention layer::

    h_text = Attn(to_q(x), to_k(c), to_v(c))                     # before to_out
    h_w    = Attn(to_q_wplus(h_text), to_k_wplus(e), to_v_wplus(e))  # layer's heads, SDPA scale
    out    = to_out(h_text + lambda * h_w)

``e = mapping(w+)`` (4 tokens) for cond chunks and ``mapping(zeros)`` for uncond chunks. In
ComfyUI this is an entry of the shared attn2 engine (:mod:`...patch_engine`): the engine computes
``h_text`` (or calls a foreign occupant), this module's callback runs the same
:class:`.rca.ResidualCrossAttention` module training uses (a frozen copy cast to the activations'
device/dtype) and returns ``lambda * h_w`` (times an optional region mask); ComfyUI applies ``to_out``.
"""
import copy
from dataclasses import dataclass

import torch

from ... import patch_engine
from .adapter import check_wplus, map_to_model

# Official switch-on rule (W+ Adapter pipeline): lambda = 0 for steps i <= min(int(0.2 * steps), 30).
# Inside a sampler run the window counts steps the same way (StepWindow): start_percent 0.2 gives the
# official steps for every step count up to 150 (the official cap at step 30 is not reproduced, so a
# user's start_percent means what it says at any length). Outside a sampler run (no schedule
# published) the sigma window from percent_to_sigma applies.
OFFICIAL_START_PERCENT = 0.2


@dataclass(frozen=True)
class StepWindow:
    """Active at step i of `steps` unless i <= int(start * steps) (start > 0) or i >= end * steps (end < 1)."""
    start: float
    end: float = 1.0

    def __call__(self, i, steps):
        if self.start > 0 and i <= int(self.start * steps):
            return False
        return self.end >= 1.0 or i < self.end * steps


class ResidualParams:
    """What one Apply node shares between its per-layer entries: weights, W+ tokens, mask."""

    def __init__(self, weights, wplus, strength, mask=None):
        self.weights = weights
        self.strength = float(strength)
        self.e_cond, self.e_uncond = weights.embed(wplus)
        self.mask = None
        if mask is not None:
            m = mask if torch.is_tensor(mask) else torch.as_tensor(mask)
            if m.dim() == 2:
                m = m.unsqueeze(0)
            if m.dim() != 3:
                raise ValueError(f"attention mask must be a MASK [B,H,W] or [H,W], got {list(m.shape)}")
            self.mask = m.detach().float().cpu()
        self._ctx = {}
        self._mask_cache = {}
        self._layers = {}

    def layer(self, n, device, dtype):
        """Frozen copy of adapter layer n on device/dtype (cast once, then cached)."""
        key = (n, str(device), dtype)
        got = self._layers.get(key)
        if got is None:
            got = copy.deepcopy(self.weights.adapter.layer(n)).to(device=device, dtype=dtype)
            self._layers[key] = got.requires_grad_(False)
        return got

    def to(self, device):  # weights are cast lazily to the activations' device/dtype
        return self

    def context(self, batch, extra_options, device, dtype):
        """W+ tokens for every batch row [B,4,C], chosen per chunk from cond_or_uncond."""
        cou, b = patch_engine.chunk_layout(batch, extra_options)
        sub = patch_engine.frame_indices(extra_options)
        key = (tuple(cou), b, tuple(sub) if sub is not None else None, str(device), dtype)
        got = self._ctx.get(key)
        if got is not None:
            return got
        ec = self.e_cond
        n = ec.shape[0]
        if n > 1 and sub is not None:
            if max(sub) >= n:
                raise ValueError(f"WPLUS holds {n} codes but the context window asks for frames {list(sub)}")
            ec = ec[list(sub)]
            n = ec.shape[0]
        if n == 1:
            ec = ec.expand(b, -1, -1)
        elif n != b:
            raise ValueError(f"WPLUS holds {n} codes but each cond chunk of this batch has {b} images: "
                             "give one code (shared) or exactly one per image")
        eu = self.e_uncond.expand(b, -1, -1)
        got = torch.cat([eu if c == 1 else ec for c in cou], dim=0).to(device=device, dtype=dtype)
        if len(self._ctx) > 16:
            self._ctx.clear()
        self._ctx[key] = got
        return got

    def layer_mask(self, q, extra_options):
        m = patch_engine.mask_for_layer(self.mask, q, extra_options, self._mask_cache)  # [Bm, T, 1]
        cou, b = patch_engine.chunk_layout(q.shape[0], extra_options)
        if m.shape[0] == 1:
            return m
        sub = patch_engine.frame_indices(extra_options)
        if sub is not None and m.shape[0] > b:
            m = m[list(sub)]
        if m.shape[0] != b:
            raise ValueError(f"attention mask has {m.shape[0]} frames but each chunk has {b} images: "
                             "give one mask or one per image")
        return m.repeat(len(cou), 1, 1)


class LayerParams:
    __slots__ = ("shared", "n")

    def __init__(self, shared, n):
        self.shared = shared
        self.n = n

    def to(self, device):
        return self


def comfy_attention(extra_options):
    """ComfyUI's attention backend as an ``attention(q, k, v, heads)`` callable for the RCA module; the call
    carries ``transformer_options`` as core's CrossAttention does, so a model's ``optimized_attention_override``
    (core attention.py ``wrap_attn``) applies to the residual attention too."""
    import comfy.ldm.modules.attention as attention

    precision = extra_options.get("attn_precision")
    return lambda q, k, v, heads: attention.optimized_attention(q, k, v, heads, attn_precision=precision,
                                                                transformer_options=extra_options)


def residual_attention(h_text, q, k, v, extra_options, entry):
    """Engine callback: lambda * Attn(to_q'(h_text), to_k'(e), to_v'(e)) [* mask] via the RCA module."""
    p = entry.params
    shared = p.shared
    module = shared.layer(p.n, h_text.device, h_text.dtype)
    e = shared.context(h_text.shape[0], extra_options, h_text.device, h_text.dtype)
    h_w = module(h_text, e, extra_options["n_heads"], scale=shared.strength, attention=comfy_attention(extra_options))
    if shared.mask is not None:
        h_w = h_w * shared.layer_mask(h_text, extra_options)
    return h_w


def apply_residual_cross_attention(model, weights, wplus, strength=1.0, start_percent=OFFICIAL_START_PERCENT,
                                   end_percent=1.0, mask=None, method=None):
    """MODEL (ModelPatcher) -> patched clone. ``strength`` 0 returns an unpatched clone."""
    method = method or ("wplus_rca" if weights.kind == "wplus_adapter" else "pidiff_sca")
    check_wplus(wplus)
    pairs = map_to_model(weights, model)  # validates family / widths before anything is built
    if strength == 0:
        return model.clone()
    sigma_start, sigma_end = patch_engine.sigma_window(model, start_percent, end_percent)
    shared = ResidualParams(weights, wplus, strength, mask)
    by_key = {layer.key: n for layer, n in pairs}

    def make_entry(layer):
        return patch_engine.Entry(method=method, callback=residual_attention, params=LayerParams(shared, by_key[layer.key]),
                                  sigma_start=sigma_start, sigma_end=sigma_end,
                                  step_rule=StepWindow(start_percent, end_percent))

    return patch_engine.add_entry(model, [layer for layer, _ in pairs], make_entry)
