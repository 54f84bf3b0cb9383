"""The pack's one attention-patch engine (cross-attention ``attn2`` *replace* slot).

ComfyUI has exactly one ``attn2`` replace callable per block key. This engine keeps, per key, an
:class:`AttnChain`: an optional *base* (a foreign occupant such as IPAdapter's ``Attn2Replace``,
which we wrap instead of evicting) plus an ordered tuple of :class:`Entry` (our methods' residuals,
and foreign callbacks that a pack installing after us ``.add()``-ed).

The rule for residual methods (W+ Adapter RCA, PIDiff SCA, any future one): a residual is always
computed from the **plain text cross-attention** ``h_text = optimized_attention(q, k, v)`` (before
``to_out``), never from another method's output, and is *added* to the slot's output. With no
foreign base, ``h_text`` is also the slot's starting output. With a foreign base, the base's own
output is kept as the starting output and ``h_text`` is computed once more per layer (only when one
of our entries is active), so that stacking is order-independent: IPAdapter then RCA gives
``(h_text + ip) + rca(h_text)`` and RCA then IPAdapter gives ``(h_text + rca(h_text)) + ip``, equal to
float tolerance. This is what the official W+ Adapter processor does (its residual query is the
text-attention output).

Rules (see ``shared/reference/style.md``):

* copy-on-add: :func:`add_entry` builds a new chain and a new ``transformer_options`` dict path on
  a ``model.clone()``; a chain that another MODEL shares is never mutated;
* keys are enumerated from the loaded UNet (:func:`cross_attention_layers`), never from tables;
* the step window is resolved from ``transformer_options['sigmas']`` once per model call
  (memoised on the sigmas tensor object, so there is one host sync per step, not per layer); an
  entry may carry a ``step_rule(i, steps)`` instead, decided on the step index of this call within
  the sampler's run (``transformer_options['sample_sigmas']``, which ComfyUI's sampler publishes,
  samplers.py:972), for methods whose official switch-on rule counts steps; calls without
  ``sample_sigmas`` fall back to the entry's sigma window;
* an entry that is inactive (outside its window, strength 0) leaves the output untouched: with no
  active entry the result is bit-identical to the unpatched model (or to the foreign base alone);
* ``__deepcopy__`` (ModelPatcher.clone) shares the weights, ``to()``/``models()`` forward to the
  entries' params and to the wrapped base.

Packs that install after us call ``.add(callback, **kwargs)`` on whatever occupies a key
(IPAdapter's ``set_model_patch_replace``, IPAdapterPlus.py:210-226). A chain honours that call the
way IPAdapter's own ``Attn2Replace`` does (CrossAttentionPatch.py:16-34): the callback is called as
``callback(out, q, k, v, extra_options, **kwargs)`` with the running output, when
``sigma_end <= sigma <= sigma_start`` (sigma 999999999.9 when the call carries no sigmas), and
whatever it returns is added with ``out + result`` semantics (a tensor of any dtype, a 0-dim or
broadcastable tensor, or a Python scalar such as the int ``0`` IPAdapter returns for skipped
layers; ``None`` is taken as nothing to add); the slot's output keeps the dtype of its base
output. Such a pack clones the MODEL first, and a clone owns a fresh chain object, so this never
reaches a chain another MODEL uses.

Checked against IPAdapter_plus 9d076a3 (tests/composition/test_ipadapter_peer.py):

* keys: for SD1.5 and SDXL we install on exactly IPAdapter's input/output keys (IPAdapterPlus.py:509-536,
  2-tuples on SD1.5, 3-tuples on SDXL); IPAdapter keys the middle block ``("middle", 1)`` (:520, :536)
  while core runs it as ``("middle", 0)``, so IPAdapter's middle-block patch never runs and ours there
  is alone;
* attention override: IPAdapter passes no attention function through ``.add()`` (its kwargs,
  IPAdapterPlus.py:495-507) and calls the module-level ``optimized_attention`` without
  ``transformer_options`` (CrossAttentionPatch.py:4, :25, :192-206). Core's
  ``transformer_options["optimized_attention_override"]`` is the one override there is; the chain's
  plain attention and our residual attentions pass ``transformer_options``, so it applies to them;
* per-GPU kwargs: ``Attn2Replace.to(device)`` keeps per-device copies of its kwargs for multi-GPU runs
  (CrossAttentionPatch.py:11-14, :36-64); callbacks ``.add()``-ed onto our chain keep the kwargs they
  were added with (one device), which is all a single-device run uses.
"""
import copy
import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

SLOT = "attn2"


# --------------------------------------------------------------------------------------------
# keys
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrossAttnLayer:
    block: tuple          # ("input", id) / ("middle", 0) / ("output", id): what the UNet sets
    index: int            # transformer index inside the SpatialTransformer (block_index)
    depth: int            # number of transformer blocks in that SpatialTransformer
    heads: int
    inner_dim: int        # width of q (= attn2.to_q out features)
    context_dim: int      # width of the text context (attn2.to_k in features)

    @property
    def key(self):
        return (self.block[0], self.block[1], self.index)


def _spatial_transformers(module):
    from comfy.ldm.modules.attention import SpatialTransformer

    return [m for m in module.modules() if isinstance(m, SpatialTransformer)]


def cross_attention_layers(model):
    """Every cross-attention layer of a ComfyUI UNet, walking the loaded model.

    ``model``: a ModelPatcher, a BaseModel or the diffusion_model itself. Order: input blocks,
    output blocks, then the middle block (= diffusers' ``attn_processors`` order: down, up, mid),
    and inside a block by transformer index.
    """
    dm = model
    if hasattr(dm, "get_model_object"):
        dm = dm.get_model_object("diffusion_model")
    elif hasattr(dm, "diffusion_model"):
        dm = dm.diffusion_model
    if not hasattr(dm, "input_blocks"):
        raise TypeError(f"{type(dm).__name__} is not a UNet (input_blocks/middle_block/output_blocks); "
                        "this patch supports SD1.x/SD2.x/SDXL-style UNets only")
    groups = [(("input", i), b) for i, b in enumerate(dm.input_blocks)]
    groups += [(("output", i), b) for i, b in enumerate(dm.output_blocks)]
    if getattr(dm, "middle_block", None) is not None:
        groups.append((("middle", 0), dm.middle_block))
    layers = []
    for block, mod in groups:
        for st in _spatial_transformers(mod):
            tbs = list(st.transformer_blocks)
            for j, tb in enumerate(tbs):
                attn2 = getattr(tb, "attn2", None)
                if attn2 is None:
                    continue
                layers.append(CrossAttnLayer(block=block, index=j, depth=len(tbs), heads=int(attn2.heads),
                                             inner_dim=int(attn2.to_q.weight.shape[0]),
                                             context_dim=int(attn2.to_k.weight.shape[1])))
    return layers


# --------------------------------------------------------------------------------------------
# step window
# --------------------------------------------------------------------------------------------
_memo = threading.local()


def current_sigma(extra_options) -> Optional[float]:
    """sigma of this model call as a float; one host sync per distinct ``sigmas`` tensor
    (ComfyUI passes the same tensor object to every layer of one call)."""
    sigmas = extra_options.get("sigmas")
    if sigmas is None:
        return None
    cached = getattr(_memo, "item", None)
    if cached is not None and cached[0] is sigmas:
        return cached[1]
    value = float(sigmas.detach().reshape(-1)[0].item()) if torch.is_tensor(sigmas) else float(sigmas)
    _memo.item = (sigmas, value)  # strong ref: the id can't be reused while cached
    return value


def current_step(extra_options, sigma) -> Optional[tuple]:
    """(i, steps): the step of the sampler's run this call belongs to, from ``sample_sigmas`` (the run's
    schedule, published by ComfyUI's sampler); a sampler's intermediate sigma between two steps counts
    as the earlier step. None when the call carries no schedule."""
    schedule = extra_options.get("sample_sigmas")
    if schedule is None or sigma is None:
        return None
    cached = getattr(_memo, "schedule", None)
    if cached is not None and cached[0] is schedule:
        values = cached[1]
    else:
        values = [float(x) for x in torch.as_tensor(schedule).detach().reshape(-1).tolist()]
        _memo.schedule = (schedule, values)
    steps = len(values) - 1
    if steps < 1:
        return None
    reached = sum(1 for s in values[:-1] if s >= sigma * (1 - 1e-4))
    return max(reached - 1, 0), steps


def sigma_window(model, start_percent, end_percent):
    """(sigma_start, sigma_end) from percents of the denoising run, through the model's own
    ``model_sampling.percent_to_sigma`` (resolved once, at apply time)."""
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"need 0 <= start_percent <= end_percent <= 1, got {start_percent}, {end_percent}")
    ms = model.get_model_object("model_sampling")
    return float(ms.percent_to_sigma(start_percent)), float(ms.percent_to_sigma(end_percent))


# --------------------------------------------------------------------------------------------
# chain
# --------------------------------------------------------------------------------------------
# sigma IPAdapter's Attn2Replace assumes when a call carries no sigmas (CrossAttentionPatch.py:26)
NO_SIGMA = 999999999.9


@dataclass(frozen=True, eq=False)
class Entry:
    """One residual on one key. Our methods: ``callback(h_text, q, k, v, extra_options, entry)``
    returns the residual (same shape as ``h_text``) or None for 'nothing to add'. Foreign entries
    (``foreign_kwargs`` set, from :meth:`AttnChain.add`) use IPAdapter's convention instead.
    ``strength`` 0 makes the entry inactive whatever the method does."""
    method: str
    callback: Callable
    params: Any = None
    sigma_start: float = float("inf")
    sigma_end: float = 0.0
    strength: float = 1.0
    foreign_kwargs: dict = field(default=None)
    step_rule: Optional[Callable] = None  # (i, steps) -> bool; replaces the sigma window inside a sampler run

    @property
    def foreign(self):
        return self.foreign_kwargs is not None

    def active(self, sigma, step=None):
        if self.strength == 0:
            return False
        if self.step_rule is not None and step is not None:
            return bool(self.step_rule(*step))
        if sigma is None:
            if not self.foreign:
                return True
            sigma = NO_SIGMA
        return self.sigma_end <= sigma <= self.sigma_start


def add_output(out, res):
    """``out + res`` the way IPAdapter's Attn2Replace adds a callback's return (CrossAttentionPatch.py:32):
    Python scalars and tensors of any dtype broadcast and promote; a tensor on another device is moved
    to ``out``'s; ``None`` and an exact scalar 0 add nothing (so the output stays bit-identical)."""
    if res is None:
        return out
    if torch.is_tensor(res):
        if res.device != out.device:
            res = res.to(out.device)
        return out + res
    if isinstance(res, numbers.Number):
        return out if res == 0 else out + res
    raise TypeError(f"an attn2 callback added to this chain returned {type(res).__name__}; "
                    "expected a tensor, a number or None")


def base_attention(q, k, v, extra_options):
    """Core's cross-attention, exactly as ``CrossAttention.forward`` calls it (looked up at call
    time so ComfyUI's attention-backend choice and overrides apply)."""
    import comfy.ldm.modules.attention as attention

    return attention.optimized_attention(q, k, v, extra_options["n_heads"],
                                         attn_precision=extra_options.get("attn_precision"),
                                         transformer_options=extra_options)


class AttnChain:
    """Callable installed in ``patches_replace['attn2'][key]``; immutable for our own adds."""

    def __init__(self, key, base=None, entries=()):
        self.key = key
        self.base = base
        self.entries = tuple(entries)

    # ---- construction (copy-on-add) ----
    def _copy_extras(self, new):
        for name, value in self.__dict__.items():  # attributes a foreign .add() set
            if name not in ("key", "base", "entries"):
                setattr(new, name, value)
        return new

    def with_entry(self, entry):
        return self._copy_extras(AttnChain(self.key, self.base, self.entries + (entry,)))

    def add(self, callback, **kwargs):
        """IPAdapter-compatible in-place add (see module docstring): like ``Attn2Replace.add``
        (CrossAttentionPatch.py:16-21) it keeps the kwargs and sets each one as an attribute."""
        entry = Entry(method=getattr(callback, "__name__", "foreign"), callback=callback,
                      sigma_start=float(kwargs.get("sigma_start", float("inf"))),
                      sigma_end=float(kwargs.get("sigma_end", 0.0)), foreign_kwargs=dict(kwargs))
        self.entries = self.entries + (entry,)
        for name, value in kwargs.items():
            if not hasattr(type(self), name) and name not in ("key", "base", "entries"):
                setattr(self, name, value)

    def methods(self):
        return [e.method for e in self.entries]

    # ---- ModelPatcher hooks ----
    def __deepcopy__(self, memo):
        # weights and callbacks are shared; a foreign base is copied through the same memo so a
        # clone keeps pointing at the same object as the clone's own dict entry for it.
        base = copy.deepcopy(self.base, memo) if self.base is not None else None
        new = self._copy_extras(AttnChain(self.key, base, self.entries))
        memo[id(self)] = new
        return new

    def to(self, device):
        if self.base is not None and hasattr(self.base, "to"):
            self.base = self.base.to(device)
        seen = set()
        for e in self.entries:
            p = e.params
            if p is not None and hasattr(p, "to") and id(p) not in seen:
                seen.add(id(p))
                p.to(device)
        return self

    def models(self):
        out = []
        if self.base is not None and hasattr(self.base, "models"):
            out += list(self.base.models())
        for e in self.entries:
            if e.params is not None and hasattr(e.params, "models"):
                out += list(e.params.models())
        return out

    # ---- forward ----
    def __call__(self, q, k, v, extra_options):
        if self.base is None:
            out = h_text = base_attention(q, k, v, extra_options)
        else:
            out, h_text = self.base(q, k, v, extra_options), None
        if not self.entries:
            return out
        sigma = current_sigma(extra_options)
        step = current_step(extra_options, sigma) if any(e.step_rule for e in self.entries) else None
        result = out
        for e in self.entries:
            if not e.active(sigma, step):
                continue
            if e.foreign:  # IPAdapter's convention: the running output, its own kwargs
                res = e.callback(result, q, k, v, extra_options, **e.foreign_kwargs)
            else:  # our residuals always query the plain text attention (module docstring)
                if h_text is None:
                    h_text = base_attention(q, k, v, extra_options)
                res = e.callback(h_text, q, k, v, extra_options, e)
            result = add_output(result, res)
        return result if result.dtype == out.dtype else result.to(out.dtype)


# --------------------------------------------------------------------------------------------
# installation
# --------------------------------------------------------------------------------------------
def _attn2_dict(model_options):
    return model_options.get("transformer_options", {}).get("patches_replace", {}).get(SLOT, {})


def _install_key(layer, occupied):
    """Key to install on: the 3-tuple if something is there (it wins in core's lookup) or the block
    has several transformers; else the 2-tuple ``(block, id)`` that SD1.5 packs (IPAdapter) use, so
    a pack installing after us finds our chain and chains onto it."""
    k3 = layer.key
    if k3 in occupied or layer.depth > 1:
        return k3
    return tuple(layer.block)


def add_entry(model, layers, make_entry):
    """Clone ``model`` and add one entry per layer. ``make_entry(layer) -> Entry``.

    Returns the patched clone; ``model`` itself is untouched (its model_options dicts and chains
    are never written).
    """
    m = model.clone()
    to = m.model_options["transformer_options"].copy()
    pr = dict(to.get("patches_replace", {}))
    slot = dict(pr.get(SLOT, {}))
    for layer in layers:
        key = _install_key(layer, slot)
        current = slot.get(key)
        if current is None and len(key) == 3:
            current = slot.get(tuple(layer.block))  # core falls back to the 2-tuple: it is the occupant
        entry = make_entry(layer)
        if isinstance(current, AttnChain):
            chain = current.with_entry(entry) if current.key == key else AttnChain(key, current, (entry,))
        else:
            chain = AttnChain(key, current, (entry,))  # None, or a foreign callable wrapped as base
        slot[key] = chain
    pr[SLOT] = slot
    to["patches_replace"] = pr
    m.model_options["transformer_options"] = to
    return m


def installed_chains(model):
    """{key: AttnChain} of the engine's chains on a ModelPatcher (or model_options dict)."""
    mo = model if isinstance(model, dict) else model.model_options
    return {k: v for k, v in _attn2_dict(mo).items() if isinstance(v, AttnChain)}


# --------------------------------------------------------------------------------------------
# helpers for residual methods
# --------------------------------------------------------------------------------------------
def chunk_layout(batch, extra_options):
    """(cond_or_uncond list, chunk size): ComfyUI stacks one chunk per entry of
    ``cond_or_uncond`` (0 = cond, 1 = uncond), in an order that varies."""
    cou = list(extra_options.get("cond_or_uncond") or [0])
    if batch % len(cou) != 0:
        cou = [0]
    return cou, batch // len(cou)


def frame_indices(extra_options):
    """Indices into the full frame batch of the frames this call sees, or None for the whole batch.

    * AnimateDiff-Evolved publishes ``transformer_options["ad_params"] = {"full_length",
      "context_length", "sub_idxs"}`` on every model call (ADE animatediff/sampling.py:176-184, 620)
      and sets ``sub_idxs`` to the window's frame list for each context window (:903); outside
      sliding-context sampling ``sub_idxs`` is None. Windows of the looped/strided schedules wrap
      around or skip frames (ADE animatediff/context.py:244-261), so the list is used as given.
    * Core ComfyUI's context windows (``ContextWindowsManual``) set ``context_window`` (an
      ``IndexListContextWindow``: an index list over ``dim``; dim 0 = the batch).
    """
    ad = extra_options.get("ad_params")
    if isinstance(ad, dict) and ad.get("sub_idxs") is not None:
        return [int(i) for i in ad["sub_idxs"]]
    window = extra_options.get("context_window")
    if window is not None and getattr(window, "dim", 0) == 0 and getattr(window, "index_list", None) is not None:
        return list(window.index_list)
    return None


def mask_for_layer(mask, q, extra_options, cache):
    """Spatial mask [Bm,H,W] resized to this layer's token grid -> [Bm, tokens, 1] (cached per grid)."""
    import torch.nn.functional as F

    tokens = q.shape[1]
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) == 4 and shape[2] * shape[3] == tokens:
        h, w = int(shape[2]), int(shape[3])
    else:
        oh, ow = extra_options["original_shape"][-2:]
        import math

        f = math.sqrt(oh * ow / tokens)
        h = int(math.ceil(oh / f))
        w = tokens // h
    ck = (h, w, q.device, q.dtype)
    got = cache.get(ck)
    if got is None:
        m = mask
        if m.dim() == 2:
            m = m.unsqueeze(0)
        m = F.interpolate(m.unsqueeze(1).float(), size=(h, w), mode="bilinear", align_corners=False)
        got = m.reshape(m.shape[0], h * w, 1).to(device=q.device, dtype=q.dtype)
        cache[ck] = got
    return got
