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


def test_bf16_mask_and_per_item_codes(bf16_unet, adapter, wcodes):
    mask = torch.zeros(2, 64, 64)
    mask[0, :, :32] = 1.0
    mask[1, :, 32:] = 1.0
    w = torch.cat([wcodes[0], wcodes[1]])
    out = _eps(_apply(bf16_unet, adapter, w, 1.0, mask=mask), torch.bfloat16, order=(0, 1), b=2)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert not torch.equal(out, _eps(bf16_unet, torch.bfloat16, order=(0, 1), b=2))
