"""ArcFace recognition (antelopev2 ``glintr100.onnx``, buffalo_l ``w600k_r50.onnx``) on ONNX Runtime.

As insightface's ``model_zoo/arcface_onnx.py`` + ``utils/face_align.norm_crop``: the 5 landmarks are
mapped onto the ArcFace 112 template (x ``size / 112``; the 128-multiple sizes add an 8-px x shift)
by a least-squares similarity transform (Umeyama, as skimage's ``SimilarityTransform.estimate``),
the image is warped to the crop (bilinear, black outside), converted to RGB ``(x - mean) / std`` and
run. ``mean, std`` are ``0, 1`` for the converted MXNet models (a ``Sub`` and a ``Mul`` node among
the first 8 graph nodes: they normalise inside the graph) and ``127.5, 127.5`` otherwise. The raw
(unnormalised) output is the embedding.
"""
import numpy as np

from .image_ops import to_blob, warp_affine

ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def is_arcface(session) -> bool:
    """insightface's routing rule: one square input of >= 112 px, a multiple of 16, one output."""
    shape = session.get_inputs()[0].shape
    h, w = shape[2:4] if len(shape) == 4 else (None, None)
    return (len(session.get_outputs()) == 1 and isinstance(h, int) and h == w and h >= 112 and h % 16 == 0)


def graph_normalises_input(model_file: str) -> bool:
    """True for MXNet-converted models whose first nodes subtract and scale the input themselves."""
    import onnx

    nodes = onnx.load(model_file, load_external_data=False).graph.node[:8]
    names = [n.name for n in nodes]
    return (any(n.startswith(("Sub", "_minus")) for n in names)
            and any(n.startswith(("Mul", "_mul")) for n in names))


def template(image_size: int = 112) -> np.ndarray:
    if image_size % 112 == 0:
        return ARCFACE_DST * (image_size / 112.0)
    if image_size % 128 == 0:
        ratio = image_size / 128.0
        return ARCFACE_DST * ratio + np.array([8.0 * ratio, 0.0], np.float32)
    raise ValueError(f"ArcFace crop size must be a multiple of 112 or 128, got {image_size}")


def estimate_norm(kps, image_size: int = 112) -> np.ndarray:
    """2x3 similarity transform taking the 5 landmarks onto the ArcFace template."""
    import torch

    from .align import umeyama

    src = torch.as_tensor(np.asarray(kps, np.float32).reshape(1, 5, 2), dtype=torch.float64)
    return umeyama(src, torch.as_tensor(template(image_size), dtype=torch.float64))[0].numpy()


def norm_crop(img: np.ndarray, kps, image_size: int = 112) -> np.ndarray:
    """The ArcFace crop (BGR uint8 [size, size, 3]) of the face with landmarks ``kps``."""
    return warp_affine(img, estimate_norm(kps, image_size), image_size, image_size)


class ArcFace:
    taskname = "recognition"

    def __init__(self, session, model_file=None, mean_std=None):
        self.session = session
        self.model_file = model_file
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = (inp.shape[3], inp.shape[2])
        self.output_names = [o.name for o in session.get_outputs()]
        if mean_std is None:
            in_graph = model_file is not None and graph_normalises_input(model_file)
            mean_std = (0.0, 1.0) if in_graph else (127.5, 127.5)
        self.input_mean, self.input_std = mean_std

    def prepare(self, ctx_id=0, **kwargs):
        pass

    def get_feat(self, crops) -> np.ndarray:
        """BGR uint8 crop(s) [size, size, 3] -> raw embeddings [n, d]."""
        blob = to_blob(crops, self.input_mean, self.input_std)
        return self.session.run(self.output_names, {self.input_name: blob})[0]

    def get(self, img, face):
        """insightface's API: embed ``face`` (needs ``face.kps``) of BGR ``img``, set ``face.embedding``."""
        emb = self.get_feat(norm_crop(img, face["kps"], self.input_size[0])).reshape(-1)
        face["embedding"] = emb
        return emb
