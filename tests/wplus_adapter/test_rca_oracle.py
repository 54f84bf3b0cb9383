"""Oracle: ComfyUI tiny SD1.5 patched by the pack == diffusers UNet with processors that implement the
official WPlusAttnProcessor2_0 / PIDiff SCA formula, written here independently (plain torch)."""
import pytest
import torch
import torch.nn.functional as F

from harness.unet import comfy_eps
from training_methods.reference import _mh, _unmh  # noqa: F401  (multi-head split / merge; test_engine imports them here)

TOL = 1e-4


# ---------------- independent reference ----------------
def ref_w_proj(wp, w):
    """Official WProjModel from the raw state dict."""
    b = w.shape[0]
    toks = [w[:, a:e].reshape(b, -1) @ wp[f"proj_{i}.weight"].T
            for i, (a, e) in enumerate(((0, 4), (4, 8), (8, 12), (12, 18)))]
    x = torch.stack(toks, 1)
    return F.layer_norm(x, (x.shape[-1],), wp["norm.weight"], wp["norm.bias"], eps=1e-5)


class RefRCAProcessor:
    """to_out(h_text + lam * Attn(to_q_wplus(h_text), to_k_wplus(e), to_v_wplus(e)) [* mask])."""

    def __init__(self, wq, wk, wv, e, lam, mask=None, latent_hw=None):
        self.wq, self.wk, self.wv, self.e, self.lam, self.mask, self.latent_hw = wq, wk, wv, e, lam, mask, latent_hw

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        h = attn.heads
        q = attn.to_q(hidden_states)
        k = attn.to_k(encoder_hidden_states)
        v = attn.to_v(encoder_hidden_states)
        h_text = _unmh(F.scaled_dot_product_attention(_mh(q, h), _mh(k, h), _mh(v, h)))
        qw, kw, vw = h_text @ self.wq.T, self.e @ self.wk.T, self.e @ self.wv.T
        h_w = _unmh(F.scaled_dot_product_attention(_mh(qw, h), _mh(kw, h), _mh(vw, h)))
        if self.mask is not None:
            n = hidden_states.shape[1]
            H, W = self.latent_hw
            f = int(round((H * W / n) ** 0.5))
            m = F.interpolate(self.mask[:, None], size=(H // f, W // f), mode="bilinear", align_corners=False)
            m = m.reshape(m.shape[0], -1, 1)
            if m.shape[0] > 1:
                m = m.repeat(hidden_states.shape[0] // m.shape[0], 1, 1)
            h_w = h_w * m
        out = h_text + self.lam * h_w
        return attn.to_out[1](attn.to_out[0](out))


def set_ref_processors(unet, raw, e, lam, mask=None, latent_hw=None):
    """Official index order: attn_processors order, attn2 = odd indices 1, 3, ..."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs = {}
    for i, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            assert i % 2 == 1
            a = raw["wplus_adapter"]
            procs[name] = RefRCAProcessor(a[f"{i}.to_q_wplus.weight"].float(), a[f"{i}.to_k_wplus.weight"].float(),
                                          a[f"{i}.to_v_wplus.weight"].float(), e, lam, mask, latent_hw)
        else:
            procs[name] = AttnProcessor2_0()
    unet.set_attn_processor(procs)


def _inputs(b=1, hw=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * b, 4, hw, hw, generator=g)
    t = torch.full((2 * b,), 500.0)
    ctx = torch.randn(2 * b, 77, 768, generator=g)
    return x, t, ctx


@pytest.fixture(scope="module")
def raw_adapter(tiny_adapter_path):
    return torch.load(str(tiny_adapter_path), weights_only=True, map_location="cpu")


@pytest.fixture(scope="module")
def adapter(tiny_adapter_path):
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    return load_wplus_adapter(tiny_adapter_path)


def _apply(mp, weights, w, lam, **kw):
    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention

    kw.setdefault("start_percent", 0.0)
    return apply_residual_cross_attention(mp, weights, w, lam, **kw)


@pytest.mark.parametrize("order", [[1, 0], [0, 1]])
def test_rca_matches_diffusers_oracle(tiny_unet, diffusers_unet, raw_adapter, adapter, wcodes, order):
    w = wcodes[0]
    lam = 0.9
    x, t, ctx = _inputs()
    patched = _apply(tiny_unet, adapter, w, lam)
    got = comfy_eps(patched, x, t, ctx, order)
    e_c = ref_w_proj(raw_adapter["w_proj"], w)
    e_u = ref_w_proj(raw_adapter["w_proj"], torch.zeros_like(w))
    e = torch.cat([e_u if c == 1 else e_c for c in order])
    set_ref_processors(diffusers_unet, raw_adapter, e, lam)
    with torch.no_grad():
        ref = diffusers_unet(x, t, encoder_hidden_states=ctx).sample
        unpatched = comfy_eps(tiny_unet, x, t, ctx, order)
    assert (got - ref).abs().max().item() <= TOL
    # the patch matters far more than the tolerance, and uncond tokens w_proj(0) are not zero
    assert (got - unpatched).abs().max().item() > 100 * TOL
    assert e_u.abs().max() > 0.1


def test_rca_uncond_uses_wproj_zero_not_batch_position(tiny_unet, adapter, wcodes):
    """Swapping the chunk order (with the inputs) swaps the outputs: W+ follows cond_or_uncond."""
    x, t, ctx = _inputs()
    patched = _apply(tiny_unet, adapter, wcodes[0], 1.0)
    a = comfy_eps(patched, x, t, ctx, [1, 0])
    b = comfy_eps(patched, x.flip(0), t, ctx.flip(0), [0, 1])
    assert torch.allclose(a, b.flip(0), atol=1e-5)


def test_rca_per_item_wplus_and_mask(tiny_unet, diffusers_unet, raw_adapter, adapter, wcodes):
    w = torch.cat([wcodes[1], wcodes[2]])  # a different identity per batch item
    lam = 1.2
    x, t, ctx = _inputs(b=2, hw=16, seed=1)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :40] = 1.0
    mask[:, 10:20, 40:] = 0.5
    patched = _apply(tiny_unet, adapter, w, lam, mask=mask)
    order = [0, 1]
    got = comfy_eps(patched, x, t, ctx, order)
    e_c = ref_w_proj(raw_adapter["w_proj"], w)
    e_u = ref_w_proj(raw_adapter["w_proj"], torch.zeros_like(w[:1])).expand(2, -1, -1)
    set_ref_processors(diffusers_unet, raw_adapter, torch.cat([e_c, e_u]), lam, mask=mask, latent_hw=(16, 16))
    with torch.no_grad():
        ref = diffusers_unet(x, t, encoder_hidden_states=ctx).sample
    assert (got - ref).abs().max().item() <= TOL


def test_pidiff_sca_matches_oracle(tiny_unet, diffusers_unet, tiny_pidiff_path, wcodes):
    """PIDiff file (pack format, dense layer numbers n) == the official formula with W' of layer n."""
    from safetensors.torch import load_file
    from comfyui_face_personalization.models_loader.methods.pidiff import load_pidiff

    sd = load_file(str(tiny_pidiff_path))
    n_layers = len({k.split(".")[1] for k in sd if k.startswith("sca.")})
    raw = {"w_proj": {k[len("mapping."):]: v for k, v in sd.items() if k.startswith("mapping.")},
           "wplus_adapter": {}}
    for n in range(n_layers):  # pack format layer n <-> official index 2n+1
        for p in ("q", "k", "v"):
            raw["wplus_adapter"][f"{2 * n + 1}.to_{p}_wplus.weight"] = sd[f"sca.{n}.to_{p}.weight"]
    weights = load_pidiff(tiny_pidiff_path)
    assert weights.kind == "pidiff"
    w = wcodes[3]
    x, t, ctx = _inputs(seed=2)
    patched = _apply(tiny_unet, weights, w, 0.4)
    got = comfy_eps(patched, x, t, ctx, [1, 0])
    e = torch.cat([ref_w_proj(raw["w_proj"], torch.zeros_like(w)), ref_w_proj(raw["w_proj"], w)])
    set_ref_processors(diffusers_unet, raw, e, 0.4)
    with torch.no_grad():
        ref = diffusers_unet(x, t, encoder_hidden_states=ctx).sample
    assert (got - ref).abs().max().item() <= TOL


def test_strength_zero_and_outside_window_bit_identical(tiny_unet, adapter, wcodes):
    x, t, ctx = _inputs(seed=3)
    base = comfy_eps(tiny_unet, x, t, ctx, [1, 0], sigma=5.0)
    zero = _apply(tiny_unet, adapter, wcodes[0], 0.0)
    assert torch.equal(comfy_eps(zero, x, t, ctx, [1, 0], sigma=5.0), base)
    # installed, but sigma outside [end, start]: the chain returns core attention untouched
    ms = tiny_unet.get_model_object("model_sampling")
    late = _apply(tiny_unet, adapter, wcodes[0], 1.0, start_percent=0.5, end_percent=1.0)
    sigma_hi = float(ms.percent_to_sigma(0.2))  # early step: before start
    assert torch.equal(comfy_eps(late, x, t, ctx, [1, 0], sigma=sigma_hi),
                       comfy_eps(tiny_unet, x, t, ctx, [1, 0], sigma=sigma_hi))
    sigma_lo = float(ms.percent_to_sigma(0.8))  # inside the window: it acts
    assert not torch.equal(comfy_eps(late, x, t, ctx, [1, 0], sigma=sigma_lo),
                           comfy_eps(tiny_unet, x, t, ctx, [1, 0], sigma=sigma_lo))


def test_animatediff_sub_idxs_pick_wplus_rows(tiny_unet, adapter, wcodes):
    """A context window of AnimateDiff-Evolved (frame indices at transformer_options["ad_params"]["sub_idxs"],
    ADE animatediff/sampling.py:176-184, 903) gives its frames their own W+ rows."""
    w = torch.cat(wcodes[:4])  # 4 'frames'
    patched = _apply(tiny_unet, adapter, w, 1.0)
    x, t, ctx = _inputs(b=2, seed=4)
    ad = {"full_length": 4, "context_length": 2, "sub_idxs": [1, 3]}
    win = comfy_eps(patched, x, t, ctx, [0, 1], ad_params=ad)
    direct = _apply(tiny_unet, adapter, torch.cat([wcodes[1], wcodes[3]]), 1.0)
    assert torch.allclose(win, comfy_eps(direct, x, t, ctx, [0, 1]), atol=1e-5)
    # the rows really differ: frames [0, 2] would give another output
    other = _apply(tiny_unet, adapter, torch.cat([wcodes[0], wcodes[2]]), 1.0)
    assert not torch.allclose(win, comfy_eps(other, x, t, ctx, [0, 1]), atol=1e-3)


def test_rca_per_image_masks_match_oracle(tiny_unet, diffusers_unet, raw_adapter, adapter, wcodes):
    """One region mask per image (two different masks, two identities) == the diffusers oracle; the masks
    swapped between the images would not be."""
    w = torch.cat([wcodes[1], wcodes[2]])
    lam = 1.1
    x, t, ctx = _inputs(b=2, hw=16, seed=6)
    mask = torch.zeros(2, 64, 64)
    mask[0, :, :24] = 1.0
    mask[1, 30:, 20:] = 1.0
    mask[1, :10, :] = 0.5
    order = [1, 0]
    got = comfy_eps(_apply(tiny_unet, adapter, w, lam, mask=mask), x, t, ctx, order)
    e_c = ref_w_proj(raw_adapter["w_proj"], w)
    e_u = ref_w_proj(raw_adapter["w_proj"], torch.zeros_like(w[:1])).expand(2, -1, -1)
    with torch.no_grad():
        set_ref_processors(diffusers_unet, raw_adapter, torch.cat([e_u, e_c]), lam, mask=mask, latent_hw=(16, 16))
        ref = diffusers_unet(x, t, encoder_hidden_states=ctx).sample
        set_ref_processors(diffusers_unet, raw_adapter, torch.cat([e_u, e_c]), lam, mask=mask.flip(0),
                           latent_hw=(16, 16))
        swapped = diffusers_unet(x, t, encoder_hidden_states=ctx).sample
    assert (got - ref).abs().max().item() <= TOL
    assert (got - swapped).abs().max().item() > 100 * TOL
