"""Fixtures for the text-space identity tests (CrossInit, AdaFace)."""
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def load_ckpt(comfy):
    """load_ckpt(name) -> (MODEL, CLIP, VAE) through core CheckpointLoaderSimple (cached per name)."""
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(name)[:3]
        return cache[name]

    return load


@pytest.fixture(scope="module")
def adaface_files(comfy, comfy_home, install_model, shared_data):
    """Tiny AdaFace files in models/adaface and the official mean ArcFace embeddings in models/face_embeds."""
    for sub in ("adaface", "face_embeds", "crossinit"):
        (Path(comfy_home) / "models" / sub).mkdir(parents=True, exist_ok=True)
    files = {k: install_model(k, "adaface") for k in ("adaface_pt", "adaface_safetensors", "adaface_arc2face")}
    for f in (shared_data / "adaface").glob("mean_emb_*.pt"):
        dst = Path(comfy_home) / "models" / "face_embeds" / f.name
        if not dst.exists():
            shutil.copyfile(f, dst)
    return files


@pytest.fixture(scope="module")
def crossinit_files(comfy, comfy_home, shared_data):
    d = Path(comfy_home) / "models" / "crossinit"
    d.mkdir(parents=True, exist_ok=True)
    for f in (shared_data / "crossinit" / "learned_embeddings").glob("*.bin"):
        if not (d / f.name).exists():
            shutil.copyfile(f, d / f.name)
    return sorted(p.name for p in d.glob("*.bin"))


@pytest.fixture(scope="module")
def face_embed(shared_data):
    import torch

    return torch.load(shared_data / "adaface" / "mean_emb_keanureeves.pt", map_location="cpu", weights_only=True).float()
