"""Helpers shared by the face tests (importable: tests/face is on sys.path)."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def blob_image(h=256, w=320, cx=170, cy=120, r=60):
    """A white disk on black: what the tiny SCRFD detects as a 'face'. IMAGE [1, H, W, 3]."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disk = (((xx - cx) ** 2 + (yy - cy) ** 2) < r ** 2).float()
    return disk[None, :, :, None].expand(1, h, w, 3).contiguous()


def load_image(path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


def shared_photos(shared_data):
    faces = Path(shared_data) / "faces"
    return (sorted(faces.glob("celebahq_*.jpg")) + [faces / "wplus_in_the_wild_1.jpg"]
            + sorted((faces / "identity_set_a").glob("*.jpg")))
