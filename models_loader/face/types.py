"""Data passed between the face nodes.

``FACES`` socket  -> :class:`FaceBundle` (per-image detected faces).
``FACE_EMBEDS``   -> a plain ``torch.float32`` tensor ``[N, 512]``, L2-normalised ArcFace embeddings.
``FACE_ALIGN_TRANSFORM`` -> :class:`AlignTransform` (forward/inverse affine matrices of an alignment).
"""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

FACES = "FACES"
FACE_EMBEDS = "FACE_EMBEDS"
FACE_ALIGN_TRANSFORM = "FACE_ALIGN_TRANSFORM"
EMBED_DIM = 512

# 5-point order used everywhere (insightface's): image-left eye, image-right eye, nose tip,
# image-left mouth corner, image-right mouth corner; pixel coordinates (x, y).
KPS_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass
class DetectedFace:
    """One face: ``bbox`` [4] (x1, y1, x2, y2), ``kps`` [5, 2] in pixels of image ``image_index``."""

    image_index: int
    bbox: torch.Tensor
    kps: torch.Tensor
    score: float
    embedding: Optional[torch.Tensor] = None  # [512], L2-normalised

    def __post_init__(self):
        self.bbox = torch.as_tensor(self.bbox, dtype=torch.float32).reshape(4)
        self.kps = torch.as_tensor(self.kps, dtype=torch.float32).reshape(5, 2)
        self.score = float(self.score)
        if self.embedding is not None:
            self.embedding = normalise(torch.as_tensor(self.embedding, dtype=torch.float32).reshape(-1))

    @property
    def area(self) -> float:
        w, h = (self.bbox[2] - self.bbox[0]).item(), (self.bbox[3] - self.bbox[1]).item()
        return max(w, 0.0) * max(h, 0.0)


@dataclass
class FaceBundle:
    """What the ``FACES`` socket carries: the faces found in an image batch.

    ``faces`` is ordered by image index; images listed in ``skipped`` had no face (only when the
    detect node was told to skip them). ``image_sizes`` is (H, W) of the source batch.
    """

    faces: List[DetectedFace]
    num_images: int
    image_sizes: Tuple[int, int]
    detector: str = ""
    skipped: List[int] = field(default_factory=list)

    def __len__(self):
        return len(self.faces)

    @property
    def image_indices(self) -> torch.Tensor:
        return torch.tensor([f.image_index for f in self.faces], dtype=torch.long)

    @property
    def kps(self) -> torch.Tensor:
        if not self.faces:
            return torch.zeros(0, 5, 2)
        return torch.stack([f.kps for f in self.faces])

    @property
    def bboxes(self) -> torch.Tensor:
        if not self.faces:
            return torch.zeros(0, 4)
        return torch.stack([f.bbox for f in self.faces])

    @property
    def has_embeddings(self) -> bool:
        return bool(self.faces) and all(f.embedding is not None for f in self.faces)

    def embeddings(self) -> torch.Tensor:
        """[N, 512] float32, L2-normalised; a clear error when the detector had no recogniser."""
        if not self.faces:
            raise ValueError("FACES is empty: no face was detected, so there is nothing to embed")
        if not self.has_embeddings:
            raise ValueError(
                f"these FACES (from detector '{self.detector}') carry no ArcFace embedding: the face "
                "analysis that detected them has no recognition model (the offline mediapipe detector "
                "never has one). Use FP_FaceAnalysisLoader with antelopev2 or buffalo_l, or connect "
                "one to FP_FaceEmbed's 'face_analysis' input together with the image.")
        return torch.stack([f.embedding for f in self.faces])

    def __repr__(self):
        return (f"FaceBundle({len(self.faces)} faces in {self.num_images} images {self.image_sizes}, "
                f"detector={self.detector!r}, skipped={self.skipped})")


@dataclass
class AlignTransform:
    """Alignment of each face: ``forward`` maps source-image pixels to crop pixels, ``inverse`` back.

    Both [N, 2, 3] float32 (cv2/kornia ``align_corners=True`` pixel convention). ``image_indices``
    [N] says which source image each crop came from; ``size`` is the crop size, ``image_size`` (H, W).
    """

    forward: torch.Tensor
    inverse: torch.Tensor
    image_indices: torch.Tensor
    size: int
    image_size: Tuple[int, int]
    template: str = "ffhq"


def normalise(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)
