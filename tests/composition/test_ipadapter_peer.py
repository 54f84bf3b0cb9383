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
