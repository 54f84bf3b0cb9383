"""Fixtures for the method-trainer tests: the tiny SD1.5 checkpoint through ComfyUI's loader, and the same
weights in independent reference implementations (diffusers UNet/VAE/DDPM scheduler, transformers CLIP)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def sd15(comfy, tiny_sd15):
    """(MODEL, CLIP, VAE) of the tiny SD1.5 checkpoint via core CheckpointLoaderSimple, loaded by ComfyUI's model
    manager up front: its first load materialises weights the checkpoint lacks (SD1's unused text_projection),
    which must not happen between a test's frozen-weight snapshot and its check."""
    from comfy import model_management  # (a plain `import comfy.x` would shadow the `comfy` fixture)

    mp, clip, vae = comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(tiny_sd15)[:3]
    clip.load_model()
    model_management.load_models_gpu([mp])
    return mp, clip, vae


@pytest.fixture(scope="module")
def ref(sd15):
    """Independent reference models holding the same weights (diffusers + transformers)."""
    import reference

    mp, clip, vae = sd15
    return reference.References(mp, clip, vae)


@pytest.fixture(scope="module")
def photos(shared_data):
    """identity_set_a: six photos of one person + their face masks, as [-1,1] pixels at 64 px (tiny)."""
    import numpy as np
    from PIL import Image

    folder = shared_data / "faces" / "identity_set_a"
    imgs, masks, names = [], [], []
    for p in sorted(folder.glob("*.jpg")):
        im = Image.open(p).convert("RGB").resize((64, 64), Image.BICUBIC)
        imgs.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
        m = Image.open(p.with_name(p.stem + "_mask.png")).convert("L").resize((64, 64), Image.BILINEAR)
        masks.append(torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0))
        names.append(p.name)
    assert len(imgs) == 6
    return torch.stack(imgs), torch.stack(masks), names


@pytest.fixture(scope="module")
def wcodes(shared_data):
    files = sorted((shared_data / "wplus" / "wcodes").glob("*.pth"))
    return torch.stack([torch.load(str(f), weights_only=True, map_location="cpu").float().reshape(18, 512) for f in files])
