"""The RCA in reduced precision (what GPUs run: fp16/bf16 UNet weights and activations). CPU has bf16
kernels, so bf16 stands in here: the patch follows the activations' dtype, keeps its effect, and
λ = 0 is still bit-identical."""
import pytest
import torch
import torch.nn.functional as F

from harness.unet import comfy_eps
from test_rca_oracle import _apply, _inputs


@pytest.fixture(scope="module")
def bf16_unet(comfy):
    import comfy.model_patcher

    from fixtures.tiny.sd import build_model

    model = build_model("sd15", dtype=torch.bfloat16)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.fixture(scope="module")
def adapter(tiny_adapter_path):
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    return load_wplus_adapter(tiny_adapter_path)


def _eps(mp, dtype, order=(1, 0), b=1):
    x, t, ctx = _inputs(b=b, hw=8, seed=3)
    return comfy_eps(mp, x.to(dtype), t, ctx.to(dtype), order)


def test_bf16_patch_effect_matches_fp32(bf16_unet, tiny_unet, adapter, wcodes):
    assert next(bf16_unet.model.diffusion_model.parameters()).dtype == torch.bfloat16
    d16 = _eps(_apply(bf16_unet, adapter, wcodes[0], 1.0), torch.bfloat16) - _eps(bf16_unet, torch.bfloat16)
    d32 = _eps(_apply(tiny_unet, adapter, wcodes[0], 1.0), torch.float32) - _eps(tiny_unet, torch.float32)
    assert d16.dtype == torch.bfloat16 and torch.isfinite(d16).all()
    assert d16.abs().max() > 0
    # same weights rounded to bf16: the patch's effect points the same way as in fp32
    cos = F.cosine_similarity(d16.float().flatten(), d32.flatten(), dim=0)
    assert cos > 0.98


def test_bf16_strength_zero_is_bit_identical(bf16_unet, adapter, wcodes):
    assert torch.equal(_eps(_apply(bf16_unet, adapter, wcodes[0], 0.0), torch.bfloat16),
                       _eps(bf16_unet, torch.bfloat16))


def test_bf16_installed_patch_outside_its_window_is_bit_identical(bf16_unet, adapter, wcodes):
    """Patch installed (strength 1), step before start_percent: the chain must return core attention untouched."""
    ms = bf16_unet.get_model_object("model_sampling")
    late = _apply(bf16_unet, adapter, wcodes[0], 1.0, start_percent=0.5)
    x, t, ctx = _inputs(hw=8, seed=3)
    x, ctx = x.to(torch.bfloat16), ctx.to(torch.bfloat16)
    early, inside = float(ms.percent_to_sigma(0.2)), float(ms.percent_to_sigma(0.8))
    assert torch.equal(comfy_eps(late, x, t, ctx, [1, 0], sigma=early),
                       comfy_eps(bf16_unet, x, t, ctx, [1, 0], sigma=early))
    assert not torch.equal(comfy_eps(late, x, t, ctx, [1, 0], sigma=inside),
                           comfy_eps(bf16_unet, x, t, ctx, [1, 0], sigma=inside))


def test_bf16_mask_and_per_item_codes_match_fp32(bf16_unet, tiny_unet, adapter, wcodes):
    """Per-image masks and codes in bf16: the patch's effect is the fp32 one (fp32 == the diffusers oracle,
    test_rca_oracle) within bf16 rounding, and far from the effect with the masks swapped between images."""
    mask = torch.zeros(2, 64, 64)
    mask[0, :, :32] = 1.0
    mask[1, 16:, 32:] = 1.0
    w = torch.cat([wcodes[0], wcodes[1]])
    order = (0, 1)

    def effect(unet, dtype, m):
        return (_eps(_apply(unet, adapter, w, 1.0, mask=m), dtype, order=order, b=2).float()
                - _eps(unet, dtype, order=order, b=2).float())

    d16, d32 = effect(bf16_unet, torch.bfloat16, mask), effect(tiny_unet, torch.float32, mask)
    swapped = effect(tiny_unet, torch.float32, mask.flip(0))
    err = (d16 - d32).abs().max()
    assert torch.isfinite(d16).all() and d32.abs().max() > 0
    assert err <= 0.1 * d32.abs().max()
    assert (swapped - d32).abs().max() > 3 * err
