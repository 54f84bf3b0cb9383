"""Fixtures for the training tests: tiny checkpoints loaded by ComfyUI's loader, training photos."""
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def base_models(comfy):
    """base_models(kind) -> protocol.BaseModels of a tiny checkpoint (cached, frozen, CPU)."""
    cache = {}

    def load(kind):
        if kind not in cache:
            from fixtures import tiny

            from comfyui_face_personalization.models_loader.training import run
            from comfyui_face_personalization.models_loader.training.spec import JobSpec

            path = str(tiny.ensure(kind))
            cache[kind] = run.load_base(JobSpec(job_id="t", method="crossinit", name="t", base_model=path))
        return cache[kind]

    return load


@pytest.fixture(scope="module")
def face_photos(shared_data, tmp_path_factory):
    """Two real face photos (the official CrossInit example identities), copied to a temp folder."""
    d = tmp_path_factory.mktemp("photos")
    out = []
    for name in ("celebahq_28017.jpg", "celebahq_28021.jpg"):
        shutil.copyfile(shared_data / "faces" / name, d / name)
        out.append(d / name)
    return out
