"""Fixtures for the W+ Adapter / PIDiff attention tests: a tiny SD1.5 UNet (ComfyUI, random
weights), the same weights in a diffusers UNet2DConditionModel (the oracle), tiny adapter files."""
import glob
from pathlib import Path

import pytest
import torch

SHARED_WCODES = Path(__file__).resolve().parents[3] / "shared" / "data" / "wplus" / "wcodes"


def load_wcode(name):
    return torch.load(str(SHARED_WCODES / name), weights_only=True, map_location="cpu").float().detach()


@pytest.fixture(scope="module")
def wcodes(shared_data):
    files = sorted(glob.glob(str(shared_data / "wplus" / "wcodes" / "*.pth")))
    assert len(files) >= 2
    return [torch.load(f, weights_only=True, map_location="cpu").float().detach() for f in files]


@pytest.fixture(scope="module")
def tiny_unet(comfy):
    """ModelPatcher around a tiny SD1.5 BaseModel (random weights, fp32, CPU)."""
    import comfy.model_patcher
    from fixtures.tiny.sd import build_model

    model = build_model("sd15")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


@pytest.fixture(scope="module")
def diffusers_unet(tiny_unet):
    """diffusers UNet2DConditionModel with the tiny UNet's weights (converted via comfy.utils.unet_to_diffusers)."""
    import comfy.utils
    from diffusers import UNet2DConditionModel
    from fixtures.tiny.sd import UNET_CONFIGS

    cfg = UNET_CONFIGS["sd15"]
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640), cross_attention_dim=768, attention_head_dim=cfg["num_heads"])
    comfy_sd = tiny_unet.model.diffusion_model.state_dict()
    mapping = comfy.utils.unet_to_diffusers(dict(cfg))
    target = unet.state_dict()
    new = {d: comfy_sd[c].clone() for d, c in mapping.items() if d in target}
    missing = set(target) - set(new)
    assert not missing, sorted(missing)[:10]
    unet.load_state_dict(new, strict=True)
    return unet.eval().float()


@pytest.fixture(scope="module")
def tiny_adapter_path(comfy):
    from fixtures import tiny

    return tiny.ensure("wplus_adapter_sd15")


@pytest.fixture(scope="module")
def tiny_pidiff_path(comfy):
    from fixtures import tiny

    return tiny.ensure("pidiff_sd15")
