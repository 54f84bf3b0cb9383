"""Fixtures for the W+ codes / e4e / edit tests: the full-size random e4e (cached by the tiny
factory), and the shared official codes and directions copied into ComfyUI's model folders."""
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def e4e_name(comfy, comfy_home, install_model):
    """File name of the generated full-size e4e in models/e4e (official key layout, random weights)."""
    (Path(comfy_home) / "models" / "e4e").mkdir(parents=True, exist_ok=True)
    return install_model("e4e", "e4e")


@pytest.fixture(scope="module")
def e4e_path(e4e_name, comfy_home):
    return Path(comfy_home) / "models" / "e4e" / e4e_name


@pytest.fixture(scope="module")
def e4e_encoder(e4e_path):
    from comfyui_face_personalization.models_loader.methods.wplus import e4e

    return e4e.load_e4e(str(e4e_path))


@pytest.fixture(scope="module")
def wplus_dirs(comfy, comfy_home, shared_data):
    """Copies the shared W+ data: codes -> models/wplus/codes/, InterFaceGAN .pt, latent-direction .npy
    -> models/wplus/directions/, GANSpace -> models/wplus/directions/ganspace/. Returns the two dirs."""
    models = Path(comfy_home) / "models" / "wplus"
    codes, dirs = models / "codes", models / "directions"
    (dirs / "ganspace").mkdir(parents=True, exist_ok=True)
    codes.mkdir(parents=True, exist_ok=True)
    src = shared_data / "wplus"
    for f in sorted((src / "wcodes").glob("*.pth")):
        shutil.copyfile(f, codes / f.name)
    for f in sorted((src / "interfacegan").glob("*.pt")) + sorted((src / "latent_directions").glob("*.npy")):
        shutil.copyfile(f, dirs / f.name)
    for f in ("ffhq_pca.pt", "ganspace_configs.csv"):
        shutil.copyfile(src / "ganspace" / f, dirs / "ganspace" / f)
    return codes, dirs
