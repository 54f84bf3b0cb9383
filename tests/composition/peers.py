"""Stand-ins for the two packs our attention patch meets most, written from their real source
(read at cubiq/ComfyUI_IPAdapter_plus 9d076a3 and Kosinkadink/ComfyUI-AnimateDiff-Evolved d8d163c;
no code copied). Each mirrors the calling convention and return values, not the models."""
import math

import torch
import torch.nn.functional as F

IPA_NO_SIGMA = 999999999.9  # CrossAttentionPatch.py:26


class IPAdapterAttn2Replace:
    """IPAdapter's ``Attn2Replace`` (CrossAttentionPatch.py:7-34): a callback list with kwargs,
    ``.add`` appends and sets every kwarg as an attribute (:16-21); the call runs core's
    ``optimized_attention(q, k, v, n_heads)`` without attn_precision or transformer_options (:25),
    reads sigma from ``sigmas[0]`` or 999999999.9 (:26), takes the kwargs of q's device
    (``get_multigpu_kwargs``, :11-14, :28: the plain kwargs unless ``.to`` made per-GPU copies, :36-64,
    which it never does for the CPU), calls each callback inside its ``sigma_end <= sigma <= sigma_start``
    window as ``callback(out, q, k, v, extra_options, **kwargs)`` with the running ``out`` and adds
    whatever it returns (``out + ...``, :30-32), then casts to q's dtype (:34).

    The one shared stand-in: tests/contracts/foreign.py and tests/wplus_adapter/test_engine.py import it."""

    def __init__(self, callback=None, **kwargs):
        self.callback = [callback]
        self.kwargs = [kwargs]
        self.multigpu_kwargs = {}

    def get_multigpu_kwargs(self, device):
        return self.multigpu_kwargs.get(device, self.kwargs)

    def add(self, callback, **kwargs):
        self.callback.append(callback)
        self.kwargs.append(kwargs)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        dtype = q.dtype
        out = optimized_attention(q, k, v, extra_options["n_heads"])
        sigma = extra_options["sigmas"].detach().cpu()[0].item() if "sigmas" in extra_options else IPA_NO_SIGMA
        device_kwargs = self.get_multigpu_kwargs(q.device)
        for i, cb in enumerate(self.callback):
            if self.kwargs[i]["sigma_end"] <= sigma <= self.kwargs[i]["sigma_start"]:
                out = out + cb(out, q, k, v, extra_options, **device_kwargs[i])
        return out.to(dtype=dtype)


class ToyIPLayers(torch.nn.Module):
    """What ``ipadapter.ip_layers.to_kvs`` holds: per cross-attention layer (``module_key``) a k and v
    projection of the image tokens to the layer's width (IPAdapterPlus.py:195-208, keys "<n>_to_k_ip")."""

    def __init__(self, layers, token_dim=768, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.to_kvs = torch.nn.ModuleDict()
        for n, layer in enumerate(layers):
            for kind in ("k", "v"):
                lin = torch.nn.Linear(token_dim, layer.inner_dim, bias=False)
                lin.weight.data = torch.randn(layer.inner_dim, token_dim, generator=g) / math.sqrt(token_dim)
                self.to_kvs[f"{2 * n + 1}_to_{kind}_ip"] = lin


def _to_size(t, n):
    """utils.py:315-326 ``tensor_to_size``: pad with the last row or cut to n rows."""
    if t.shape[0] < n:
        return torch.cat([t, t[-1:].repeat([n - t.shape[0]] + [1] * (t.dim() - 1))], dim=0)
    return t[:n]


def ipadapter_attention(out, q, k, v, extra_options, module_key="", ipadapter=None, weight=1.0, cond=None,
                        uncond=None, mask=None, sigma_start=0.0, sigma_end=1.0, unfold_batch=False, **kwargs):
    """IPAdapter's callback (CrossAttentionPatch.py:65-246) for the default ``embeds_scaling`` "V only":
    ``weight`` as a dict returns the int 0 for layers not in it (:101-103, keyed by
    ``transformer_index``), a weight of 0 returns the int 0 (:155, :171); tokens chosen per chunk from
    ``cond_or_uncond`` (:183-184), per frame from ``ad_params["sub_idxs"]`` when ``unfold_batch``
    (:126-147); the residual is ``weight * optimized_attention(q, k_ip, v_ip)`` (:206-207), times a
    mask resized to the layer's grid, per frame through ``ad_params`` (:209-242); returned in q's dtype."""
    from comfy.ldm.modules.attention import optimized_attention

    dtype = q.dtype
    cou = extra_options["cond_or_uncond"]
    ad_params = extra_options.get("ad_params")
    t_idx = extra_options["transformer_index"]
    b, seq_len = q.shape[0], q.shape[1]
    batch_prompt = b // len(cou)
    _, _, oh, ow = extra_options["original_shape"]
    if isinstance(weight, dict):
        if t_idx not in weight:
            return 0
        weight = weight[t_idx]
    if weight == 0:
        return 0
    kk, vk = ipadapter.to_kvs[module_key + "_to_k_ip"], ipadapter.to_kvs[module_key + "_to_v_ip"]
    window = ad_params is not None and ad_params["sub_idxs"] is not None
    if unfold_batch:
        if window:
            cond = _to_size(cond, ad_params["full_length"])[ad_params["sub_idxs"]]
            uncond = _to_size(uncond, ad_params["full_length"])[ad_params["sub_idxs"]]
        else:
            cond, uncond = _to_size(cond, batch_prompt), _to_size(uncond, batch_prompt)
        k_c, k_u, v_c, v_u = kk(cond), kk(uncond), vk(cond), vk(uncond)
    else:
        k_c, k_u = kk(cond).repeat(batch_prompt, 1, 1), kk(uncond).repeat(batch_prompt, 1, 1)
        v_c, v_u = vk(cond).repeat(batch_prompt, 1, 1), vk(uncond).repeat(batch_prompt, 1, 1)
    ip_k = torch.cat([(k_c, k_u)[i] for i in cou], dim=0)
    ip_v = torch.cat([(v_c, v_u)[i] for i in cou], dim=0)
    out_ip = optimized_attention(q, ip_k.to(dtype), ip_v.to(dtype), extra_options["n_heads"]) * weight
    if mask is not None:
        mask_h = oh / math.sqrt(oh * ow / seq_len)
        mask_h = int(mask_h) + int((seq_len % int(mask_h)) != 0)
        mask_w = seq_len // mask_h
        m = F.interpolate(mask.unsqueeze(1), size=(mask_h, mask_w), mode="bilinear").squeeze(1)
        if mask.shape[0] > 1 and window:
            m = _to_size(m, ad_params["full_length"])[ad_params["sub_idxs"]]
        else:
            m = _to_size(m, batch_prompt)
        m = m.repeat(len(cou), 1, 1).view(b, -1, 1)
        out_ip = out_ip * m.to(dtype)
    return out_ip.to(dtype=dtype)


def set_model_patch_replace(model, patch_kwargs, key):
    """IPAdapterPlus.py:210-226: copy the transformer_options/patches_replace/attn2 dicts; an empty key
    gets a new Attn2Replace (and the copied dicts are stored), an occupied one gets ``.add`` in place."""
    to = model.model_options["transformer_options"].copy()
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
    slot = to["patches_replace"]["attn2"]
    if key not in slot:
        slot[key] = IPAdapterAttn2Replace(ipadapter_attention, **patch_kwargs)
        model.model_options["transformer_options"] = to
    else:
        slot[key].add(ipadapter_attention, **patch_kwargs)


def apply_ipadapter(model, ip_layers, cond, uncond=None, weight=1.0, start_at=0.0, end_at=1.0, mask=None,
                    unfold_batch=False):
    """IPAdapterPlus.py:492-520 for an SD1.5-style UNet: clone, sigma window from the model's
    ``percent_to_sigma``, one ``set_model_patch_replace`` per cross-attention block on the 2-tuple key
    ``(block, id)`` with ``module_key`` 1, 3, 5, ... Deviation: IPAdapter hard-codes the full SD1.5 block
    ids; here the tiny UNet's blocks are enumerated, and the middle block keeps IPAdapter's
    ``("middle", 1)`` key (core 0.3.75 names the middle block ``("middle", 0)``, so this one never runs,
    as with the real pack)."""
    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers

    m = model.clone()
    ms = m.get_model_object("model_sampling")
    kwargs = {"ipadapter": ip_layers, "weight": weight, "cond": cond,
              "uncond": torch.zeros_like(cond) if uncond is None else uncond, "mask": mask,
              "sigma_start": ms.percent_to_sigma(start_at), "sigma_end": ms.percent_to_sigma(end_at),
              "unfold_batch": unfold_batch, "embeds_scaling": "V only", "weight_type": "linear"}
    for n, layer in enumerate(cross_attention_layers(m)):
        kwargs["module_key"] = str(2 * n + 1)
        key = ("middle", 1) if layer.block[0] == "middle" else tuple(layer.block)
        set_model_patch_replace(m, kwargs, key)
    return m


# ---------------- AnimateDiff-Evolved ----------------
# Windows as ADE's schedules produce them for 6 frames, context_length 4, overlap 2, step 0
# (animatediff/context.py): standard_static (:312-329); looped_uniform with closed_loop, whose last
# window wraps around (:244-261); the context_stride 2 pass of looped_uniform, which picks every
# second frame modulo the length and so repeats frame 0 (:253-260); batched, whose last window is
# shorter (:331-341).
ADE_WINDOWS = {
    "standard_static": [[0, 1, 2, 3], [2, 3, 4, 5]],
    "looped_uniform_closed": [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 0, 1]],
    "looped_uniform_stride2": [[0, 2, 4, 0]],
    "batched": [[0, 1, 2, 3], [4, 5]],
}


def ade_transformer_options(full_length, window):
    """``transformer_options["ad_params"]`` as ADE writes it: created per model call with the three
    keys full_length / context_length / sub_idxs (animatediff/sampling.py:176-184, 620), sub_idxs and
    context_length set per context window (:903-904), sub_idxs None without sliding context."""
    return {"ad_params": {"full_length": full_length,
                          "context_length": len(window) if window is not None else None,
                          "sub_idxs": list(window) if window is not None else None}}


def ade_window_batch(x, ctx_cond, ctx_uncond, window, cond_or_uncond):
    """The batch one window's model call gets: ADE slices x by the window (sampling.py:906) and core's
    calc_cond_batch stacks one chunk of len(window) frames per cond_or_uncond entry."""
    xs, cs = [], []
    for c in cond_or_uncond:
        xs.append(x[window])
        cs.append((ctx_cond if c == 0 else ctx_uncond)[window])
    return torch.cat(xs), torch.cat(cs)
