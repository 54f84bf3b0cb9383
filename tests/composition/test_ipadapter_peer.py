"""Our attn2 chain next to IPAdapter (stand-in from its source: peers.py): what a callback ``.add()``-ed
onto our chain may return, its sigma window, the optimized_attention override, and order independence
(IPAdapter then RCA/SCA == RCA/SCA then IPAdapter), each checked against an explicit float64 sum
``plain + ip + residual`` per layer."""
import pytest
import torch

import refs
from harness.unet import comfy_eps
from peers import IPAdapterAttn2Replace, apply_ipadapter, ipadapter_attention

HW = 8  # latent side; layer ("input", 1) runs at full resolution: 64 tokens


def _slot(model):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def _tokens_of(layer):
    """Tiny UNet: the 320-wide layers run at the latent's resolution, the 640-wide ones at half."""
    return HW * HW if layer.inner_dim == 320 else (HW // 2) ** 2


def _layer_call(layer, b=1, cou=(1, 0), seed=0, sigma=1.0, **extra):
    g = torch.Generator().manual_seed(seed)
    nb = b * len(cou)
    q = torch.randn(nb, _tokens_of(layer), layer.inner_dim, generator=g)
    k = torch.randn(nb, 77, layer.inner_dim, generator=g)
    v = torch.randn(nb, 77, layer.inner_dim, generator=g)
    eo = {"n_heads": layer.heads, "dim_head": layer.inner_dim // layer.heads, "attn_precision": None,
          "cond_or_uncond": list(cou), "block": layer.block, "block_index": layer.index,
          "transformer_index": layer.index, "original_shape": [nb, 4, HW, HW]}
    if sigma is not None:
        eo["sigmas"] = torch.full((nb,), float(sigma))
    eo.update(extra)
    return q, k, v, eo


def _apply(model, weights, w, lam, **kw):
    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention

    kw.setdefault("start_percent", 0.0)
    return apply_residual_cross_attention(model, weights, w, lam, **kw)


def _idle_chain(model, layers):
    """Our chain on every key with one entry that never acts (strength 0): what a foreign pack finds."""
    from comfyui_face_personalization.models_loader import patch_engine

    def never(*a):
        raise AssertionError("an inactive entry was called")

    return patch_engine.add_entry(model, layers, lambda l: patch_engine.Entry("idle", never, strength=0.0))


def _tokens(seed, n=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 768, generator=g)


# --------------------------------------------------------------------------------------------
# what an .add()-ed callback may return
# --------------------------------------------------------------------------------------------
def _returns(kind):
    def cb(out, q, k, v, extra_options, **kw):
        return {"int0": 0, "float0": 0.0, "scalar": 0.25, "none": None,
                "fp64": torch.tanh(q).double() * 0.3, "bf16": (torch.tanh(q) * 0.3).bfloat16(),
                "0dim": torch.tensor(0.5)}[kind]
    return cb


@pytest.mark.parametrize("kind", ["int0", "float0", "scalar", "none", "fp64", "bf16", "0dim"])
def test_added_callback_returns_what_attn2replace_accepts(tiny_unet, layers, kind):
    layer = layers[0]
    chain = _slot(_idle_chain(tiny_unet, layers))[tuple(layer.block)]
    kwargs = {"sigma_start": 999999999.9, "sigma_end": 0.0, "weight": 1.0}
    chain.add(_returns(kind), **kwargs)
    q, k, v, eo = _layer_call(layer)
    got = chain(q, k, v, eo)
    from comfyui_face_personalization.models_loader.patch_engine import base_attention

    plain = base_attention(q, k, v, eo)
    assert got.dtype == q.dtype
    if kind == "none":  # IPAdapter's own replace would raise here; we add nothing
        assert torch.equal(got, plain)
        return
    theirs = IPAdapterAttn2Replace(_returns(kind), **kwargs)(q, k, v, eo)
    assert torch.equal(got, theirs)
    if kind in ("int0", "float0"):
        assert torch.equal(got, plain)  # bit-identical: IPAdapter's "skip this layer"


@pytest.mark.parametrize("weight", [0, 0.0, {99: 1.0}], ids=["int0", "float0", "dict_skips_layer"])
def test_ipadapter_weight_zero_after_rca_is_rca_alone(tiny_unet, ip_layers, residual_methods, weight):
    """The crash of the issue: IPAdapter weight 0 / dict layer weights (keyed by core's global transformer_index) return the int 0 onto our chain."""
    weights, _ = residual_methods["rca"]
    w = torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(1))
    rca = _apply(tiny_unet, weights, w, 1.0)
    both = apply_ipadapter(rca, ip_layers, _tokens(2), weight=weight)
    x, t, ctx = _inputs()
    assert torch.equal(comfy_eps(both, x, t, ctx, [1, 0]), comfy_eps(rca, x, t, ctx, [1, 0]))


def _inputs(b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2 * b, 4, HW, HW, generator=g), torch.full((2 * b,), 500.0),
            torch.randn(2 * b, 77, 768, generator=g))


# --------------------------------------------------------------------------------------------
# sigma window, override, kwargs
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("start_at,sigma", [(0.0, None), (0.3, None), (0.5, "early"), (0.5, "late")])
def test_added_callback_sigma_window_as_attn2replace(tiny_unet, layers, ip_layers, start_at, sigma):
    ms = tiny_unet.get_model_object("model_sampling")
    value = {None: None, "early": float(ms.percent_to_sigma(0.2)), "late": float(ms.percent_to_sigma(0.8))}[sigma]
    theirs = apply_ipadapter(tiny_unet, ip_layers, _tokens(3), weight=0.7, start_at=start_at)
    ours = apply_ipadapter(_idle_chain(tiny_unet, layers), ip_layers, _tokens(3), weight=0.7, start_at=start_at)
    layer = layers[0]
    q, k, v, eo = _layer_call(layer, sigma=value)
    a, b = _slot(theirs)[tuple(layer.block)](q, k, v, eo), _slot(ours)[tuple(layer.block)](q, k, v, eo)
    assert torch.equal(a, b)
    from comfyui_face_personalization.models_loader.patch_engine import base_attention

    acts = not torch.equal(b, base_attention(q, k, v, eo))
    assert acts == (start_at == 0.0 or sigma == "late")  # no sigmas: IPAdapter's 999999999.9 rule


def test_add_keeps_kwargs_as_attributes_and_through_clones(tiny_unet, layers, ip_layers):
    from comfyui_face_personalization.models_loader.patch_engine import AttnChain

    m = apply_ipadapter(_idle_chain(tiny_unet, layers), ip_layers, _tokens(4), weight=0.4)
    chain = _slot(m)[tuple(layers[0].block)]
    assert isinstance(chain, AttnChain) and chain.weight == 0.4 and chain.module_key == "1"  # per key: its own module_key
    entry = chain.entries[-1]
    assert entry.foreign and entry.foreign_kwargs["module_key"] == "1" and entry.callback is ipadapter_attention
    clone = m.clone()
    c2 = _slot(clone)[tuple(layers[0].block)]
    assert c2 is not chain and c2.entries == chain.entries and c2.weight == 0.4
    assert _slot(_idle_chain(tiny_unet, layers))[tuple(layers[0].block)].entries[0].method == "idle"  # source untouched


def test_chain_honours_optimized_attention_override(tiny_unet, layers):
    """Core's CrossAttention passes transformer_options, so an ``optimized_attention_override`` applies to
    the plain attention; our chain's h_text goes through it the same way (IPAdapter's replace does not)."""
    calls = []

    def override(func, *args, **kwargs):
        calls.append(func.__name__)
        return func(*args, **kwargs) * 2.0

    layer = layers[0]
    q, k, v, eo = _layer_call(layer, optimized_attention_override=override)
    got = _slot(_idle_chain(tiny_unet, layers))[tuple(layer.block)](q, k, v, eo)
    assert calls and torch.allclose(got, 2.0 * refs.attention(q, k, v, layer.heads).float(), atol=1e-5)


@pytest.mark.parametrize("method", ["rca", "sca"])
def test_optimized_attention_override_reaches_our_residual(tiny_unet, layers, residual_methods, method):
    """Core's ``optimized_attention_override`` (transformer_options, core attention.py ``wrap_attn``) applies to
    every attention our chain runs: the plain one and the residual's. IPAdapter passes no override of its own
    through ``.add()`` (its kwargs: IPAdapterPlus.py:495-507; its attention is the module-level
    ``optimized_attention`` imported at CrossAttentionPatch.py:4 and called without transformer_options, :25,
    :192-206), so the override is the only one there is. Here it zeroes the residual's attention (keys that
    are not the 77 text tokens): the slot output must then be exactly the plain attention."""
    weights, raw = residual_methods[method]
    w = torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(11))
    layer = layers[0]
    chain = _slot(_apply(tiny_unet, weights, w, 1.0))[tuple(layer.block)]
    seen = []

    def override(func, q, k, v, *args, **kwargs):
        seen.append(k.shape[1])
        out = func(q, k, v, *args, **kwargs)
        return out if k.shape[1] == 77 else out * 0

    q, k, v, eo = _layer_call(layer, sigma=1.0)
    with_residual = chain(q, k, v, eo)
    plain = refs.attention(q, k, v, layer.heads)
    assert (with_residual.double() - plain).abs().max() > 1e-3  # the residual is there without the override
    eo["optimized_attention_override"] = override
    got = chain(q, k, v, eo)
    assert 77 in seen and any(n != 77 for n in seen), seen  # both attentions went through the override
    assert (got.double() - plain).abs().max() <= 1e-5 * plain.abs().max()


SDXL_FULL_UNET = {  # core's SDXL detection (comfy/model_detection.py, "SDXL" config), meta device: no weights
    "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048, "num_head_channels": 64,
    "use_linear_in_transformer": True, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816}


def _ipadapter_keys(is_sdxl):
    """The keys IPAdapter patches, in its order, with its module_key numbering (IPAdapterPlus.py:509-536)."""
    keys = []
    if not is_sdxl:
        keys += [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("output", i) for i in range(3, 12)] + [("middle", 1)]
    else:
        for i in (4, 5, 7, 8):
            keys += [("input", i, j) for j in range(2 if i in (4, 5) else 10)]
        for i in range(6):
            keys += [("output", i, j) for j in range(2 if i in (3, 4, 5) else 10)]
        keys += [("middle", 1, j) for j in range(10)]
    return {key: str(2 * n + 1) for n, key in enumerate(keys)}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_keys_match_ipadapter_source_except_its_middle_block(comfy, arch):
    """On the full SD1.5 / SDXL UNets (meta device) the keys our engine installs on are exactly IPAdapter's for
    every input and output block, with the same module_key numbering (our down, up, mid enumeration = its
    2n+1 order), so a pack installing after us ``.add()``s onto our chain. The one mismatch is IPAdapter's:
    it keys the middle block ``("middle", 1)`` (IPAdapterPlus.py:520, :536) while core 0.3.75 runs it as
    ``("middle", 0)`` (openaimodel.py:886; lookup attention.py:834-839), so IPAdapter's middle-block patch
    never runs (with or without our pack) and ours on ``("middle", 0)`` is unaffected by it."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfyui_face_personalization.models_loader.patch_engine import _install_key, cross_attention_layers
    from fixtures.tiny.sd import SD15_FULL_UNET

    cfg = dict(SD15_FULL_UNET) if arch == "sd15" else dict(SDXL_FULL_UNET)
    unet = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    ours = {_install_key(layer, {}): str(2 * n + 1) for n, layer in enumerate(cross_attention_layers(unet))}
    theirs = _ipadapter_keys(arch == "sdxl")
    mid_ours = {k: v for k, v in ours.items() if k[0] == "middle"}
    mid_theirs = {k: v for k, v in theirs.items() if k[0] == "middle"}
    assert {k: v for k, v in ours.items() if k[0] != "middle"} == {k: v for k, v in theirs.items() if k[0] != "middle"}
    assert {(k[0], 1) + k[2:]: v for k, v in mid_ours.items()} == mid_theirs  # same slots, index 0 vs IPAdapter's 1
    assert all(k[1] == 0 for k in mid_ours)


def test_ipadapter_middle_key_never_runs_in_core(tiny_unet, layers, ip_layers):
    """Through the real UNet forward: IPAdapter's ("middle", 1) occupant is never called, ours on
    ("middle", 0) is; so the middle block gets our residual and no IP term in either order."""
    from comfyui_face_personalization.models_loader import patch_engine

    calls = []

    def spy(name):
        def cb(h_text, q, k, v, extra_options, entry):
            calls.append((name, tuple(extra_options["block"])))
            return None
        return cb

    ours = patch_engine.add_entry(tiny_unet, layers, lambda l: patch_engine.Entry("spy", spy("ours")))
    both = apply_ipadapter(ours, ip_layers, _tokens(12), weight=0.5)
    slot = _slot(both)
    assert ("middle", 1) in slot and not isinstance(slot[("middle", 1)], patch_engine.AttnChain)
    slot[("middle", 1)].callback = [lambda *a, **kw: calls.append(("ipadapter_middle",)) or 0]
    x, t, ctx = _inputs()
    comfy_eps(both, x, t, ctx, [1, 0])
    assert ("ours", ("middle", 0)) in calls and ("ipadapter_middle",) not in calls


# --------------------------------------------------------------------------------------------
# order independence, explicit sums
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cou", [(1, 0), (0, 1)])
@pytest.mark.parametrize("method", ["rca", "sca"])
def test_both_orders_equal_explicit_sum_per_layer(tiny_unet, layers, ip_layers, residual_methods, method, cou):
    """Per layer, with 2 images (own W+ code and own region mask each): IPA->ours and ours->IPA both give
    plain + ip + lam * h_w(plain) [* mask], computed here by hand in float64."""
    weights, raw = residual_methods[method]
    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 18, 512, generator=g)
    mask = torch.zeros(2, 16, 16)
    mask[0, :, :10] = 1.0
    mask[1, 4:, 6:] = 0.5
    lam, ip_w = 0.8, 0.6
    cond, uncond = _tokens(6), _tokens(7)
    ip_first = _apply(apply_ipadapter(tiny_unet, ip_layers, cond, uncond, weight=ip_w), weights, w, lam, mask=mask)
    ours_first = apply_ipadapter(_apply(tiny_unet, weights, w, lam, mask=mask), ip_layers, cond, uncond, weight=ip_w)
    checked = 0
    for n, layer in enumerate(layers):
        if layer.block[0] == "middle":
            continue
        key = tuple(layer.block)
        side = int(_tokens_of(layer) ** 0.5)
        q, k, v, eo = _layer_call(layer, b=2, cou=cou, seed=10 + n)
        plain = refs.attention(q, k, v, layer.heads)
        want = (plain + refs.ip_residual(q, ip_layers, str(2 * n + 1), cond, uncond, ip_w, cou, layer.heads)
                + refs.residual(plain, raw, n, w, lam, cou, layer.heads, mask=mask, hw=(side, side)))
        for model in (ip_first, ours_first):
            got = _slot(model)[key](q, k, v, eo).double()
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (method, key)
        checked += 1
    assert checked == len(layers) - 1  # every layer but the middle one, which IPAdapter keys ("middle", 1)


@pytest.mark.parametrize("method", ["rca", "sca"])
def test_both_orders_equal_whole_unet(tiny_unet, ip_layers, residual_methods, method):
    weights, _ = residual_methods[method]
    w = torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(8))
    cond = _tokens(9)
    x, t, ctx = _inputs(seed=2)

    def eps(m):
        return comfy_eps(m, x, t, ctx, [1, 0])

    a = eps(_apply(apply_ipadapter(tiny_unet, ip_layers, cond, weight=0.8), weights, w, 1.0))
    b = eps(apply_ipadapter(_apply(tiny_unet, weights, w, 1.0), ip_layers, cond, weight=0.8))
    ip_only, ours_only = eps(apply_ipadapter(tiny_unet, ip_layers, cond, weight=0.8)), eps(_apply(tiny_unet, weights, w, 1.0))
    scale = a.abs().max()
    assert (a - b).abs().max() <= 1e-5 * scale
    assert (a - ip_only).abs().max() > 1e-2 * scale and (a - ours_only).abs().max() > 1e-2 * scale
