"""Fixtures for the face pipeline tests: tiny insightface packs in ComfyUI's models/insightface,
synthetic 'blob face' images for the tiny SCRFD, the shared real photos."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def insightface_root(comfy, comfy_home):
    return Path(comfy_home) / "models" / "insightface"


@pytest.fixture(scope="module")
def tiny_packs(insightface_root):
    """antelopev2 (zip-style nested folder) and buffalo_l (flat) built from the tiny ONNX models."""
    from fixtures.tiny import face as tiny_face

    return {"antelopev2": tiny_face.make_pack(insightface_root, "antelopev2", nested=True),
            "buffalo_l": tiny_face.make_pack(insightface_root, "buffalo_l")}


@pytest.fixture(scope="module")
def offline_detector(comfy):
    pytest.importorskip("mediapipe")
    from comfyui_face_personalization.models_loader.face.offline import load_offline_detector

    return load_offline_detector()




@pytest.fixture(autouse=True, scope="session")
def _pack_loaded(comfy):
    """Pack modules are importable as comfyui_face_personalization.* once ComfyUI has loaded it."""
    return comfy
