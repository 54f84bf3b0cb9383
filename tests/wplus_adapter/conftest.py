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
    from fixtures.tiny.sd import diffusers_unet

    return diffusers_unet(tiny_unet)


@pytest.fixture(scope="module")
def tiny_adapter_path(comfy):
    from fixtures import tiny

    return tiny.ensure("wplus_adapter_sd15")


@pytest.fixture(scope="module")
def tiny_pidiff_path(comfy):
    from fixtures import tiny

    return tiny.ensure("pidiff_sd15")
