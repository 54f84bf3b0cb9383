"""Detect faces in an IMAGE batch with any FACE_ANALYSIS-like object -> FaceBundle.

Works with insightface ``FaceAnalysis`` (ours or another pack's INSIGHTFACE / FACEANALYSIS), the
offline mediapipe detector, or anything with ``.get(img_bgr)`` returning objects with ``bbox``,
``kps``, ``det_score`` (and optionally ``embedding``). Detector settings (size, threshold) are passed
as arguments to ``det_model.detect`` and never written onto the shared object.
"""
import logging

import numpy as np
import torch

from ..progress import progress
from .types import DetectedFace, FaceBundle

log = logging.getLogger(__name__)

DET_SIZES = (640, 320, 256)
SELECT_MODES = ["largest", "index", "all"]


class NoFaceError(ValueError):
    pass


class _Face(dict):
    def __getattr__(self, k):
        return self.get(k)

    def __setattr__(self, k, v):
        self[k] = v


def check_images(images, what="face detection"):
    """Validate a ComfyUI IMAGE batch; clear errors for empty, grayscale, RGBA, wrong rank."""
    if not torch.is_tensor(images):
        raise ValueError(f"{what} needs an IMAGE tensor [B, H, W, 3], got {type(images).__name__}")
    if images.dim() == 3 and images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} got a tensor of shape {tuple(images.shape)}: that looks like a MASK or "
                         "a grayscale image [B, H, W]; convert it to an RGB IMAGE [B, H, W, 3] first")
    if images.dim() != 4:
        raise ValueError(f"{what} needs an IMAGE tensor [B, H, W, 3], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} got an empty image batch (0 images)")
    c = images.shape[-1]
    if c == 1:
        raise ValueError(f"{what} got a grayscale image batch [B, H, W, 1] {tuple(images.shape)}; it needs RGB "
                         "[B, H, W, 3]: repeat the channel to RGB (a gray photo detects fine as RGB)")
    if c == 4:
        raise ValueError(f"{what} got an RGBA image batch {tuple(images.shape)}; it needs RGB [B, H, W, 3]: "
                         "drop the alpha channel first (e.g. core 'Split Image with Alpha')")
    if c != 3:
        raise ValueError(f"{what} needs 3 colour channels (RGB), got {c}: shape {tuple(images.shape)}")
    if min(images.shape[1:3]) < 8:
        raise ValueError(f"{what}: images of {images.shape[2]}x{images.shape[1]} px are too small")


def to_bgr_uint8(image: torch.Tensor) -> np.ndarray:
    """One IMAGE [H, W, 3] in 0..1 -> BGR uint8 (what insightface's .get expects)."""
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(arr[:, :, ::-1])


def _det_model(analysis):
    det = getattr(analysis, "det_model", None)
    if det is None:
        models = getattr(analysis, "models", None)
        if isinstance(models, dict):
            det = models.get("detection")
    return det if det is not None and hasattr(det, "detect") else None


def recognition_model(analysis):
    models = getattr(analysis, "models", None)
    if isinstance(models, dict):
        rec = models.get("recognition")
        if rec is not None and hasattr(rec, "get"):
            return rec
    return None


def describe(analysis) -> str:
    d = getattr(analysis, "model_dir", None)
    return f"{type(analysis).__name__}({d})" if d else type(analysis).__name__


def _call_detect(det, img, size, thresh):
    try:
        return det.detect(img, input_size=(size, size), max_num=0, det_thresh=thresh)
    except TypeError:  # insightface < 2.1: no det_thresh argument; it applies its own prepared threshold,
        boxes, kpss = det.detect(img, input_size=(size, size), max_num=0)  # so only a higher one can apply
        if boxes is not None and len(boxes):
            keep = boxes[:, 4] >= thresh
            boxes, kpss = boxes[keep], (None if kpss is None else kpss[keep])
        return boxes, kpss


def _attr(face, key):
    v = getattr(face, key, None)
    if v is None and isinstance(face, dict):
        v = face.get(key)
    return v


def detect_image(analysis, img_bgr, det_sizes=DET_SIZES, det_thresh=0.5):
    """All faces in one BGR image: list of (bbox[4], kps[5,2], score, embedding|None).

    Tries each detection size in turn (640 -> 320 -> 256 by default) until one finds a face.
    """
    det = _det_model(analysis)
    if det is not None:
        boxes, kpss = np.zeros((0, 5), np.float32), None
        for size in det_sizes:
            boxes, kpss = _call_detect(det, img_bgr, int(size), det_thresh)
            if boxes is not None and len(boxes):
                break
        if boxes is None or not len(boxes):
            return []
        if kpss is None:
            raise ValueError(f"the detection model of {describe(analysis)} gives no 5-point landmarks (a SCRFD "
                             "without keypoints); use a *_bnkps / det_10g detector (antelopev2, buffalo_l)")
        return [(boxes[i, :4], kpss[i], float(boxes[i, 4]), None) for i in range(len(boxes))]
    if hasattr(analysis, "get"):
        out = []
        for f in analysis.get(img_bgr) or []:
            bbox, kps, score = _attr(f, "bbox"), _attr(f, "kps"), _attr(f, "det_score")
            if kps is None:
                raise ValueError(f"{describe(analysis)} returned a face without 5-point landmarks ('kps')")
            emb = _attr(f, "normed_embedding")
            emb = _attr(f, "embedding") if emb is None else emb
            if score is not None and float(score) < det_thresh:
                continue
            out.append((np.asarray(bbox, np.float32), np.asarray(kps, np.float32),
                        float(score if score is not None else 1.0), emb))
        return out
    raise TypeError(f"{type(analysis).__name__} is not a face analysis object: expected an insightface "
                    "FaceAnalysis (FP_FaceAnalysisLoader, IPAdapter/InstantID/PuLID loaders) or "
                    "FP_OfflineFaceDetector (something with .get(img) or .det_model.detect)")


def _embed(rec, img_bgr, kps):
    face = _Face(kps=np.asarray(kps, np.float32))
    emb = rec.get(img_bgr, face)
    emb = face.get("embedding") if emb is None else emb
    return torch.as_tensor(np.asarray(emb, np.float32)).reshape(-1)


def detect_faces(images, analysis, select="largest", index=0, if_no_face="error", det_sizes=DET_SIZES,
                 det_thresh=0.5, embed=True) -> FaceBundle:
    """Detect faces in ``images`` [B, H, W, 3]; keep the largest / the ``index``-th / all per image.

    ``index`` counts faces left to right. ``if_no_face``: 'error' raises "no face found in image 3 of 5",
    'skip' leaves the image out (listed in ``bundle.skipped``). Embeddings are computed when the
    analysis has a recognition model and ``embed`` is true.
    """
    check_images(images)
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
    rec = recognition_model(analysis) if embed else None
    b = images.shape[0]
    faces, skipped = [], []
    bar = progress(b)
    for i in range(b):
        img = to_bgr_uint8(images[i])
        found = detect_image(analysis, img, det_sizes, det_thresh)
        bar.update(1)
        if select == "index":
            found.sort(key=lambda f: float(f[0][0] + f[0][2]))
            if index >= len(found):
                found = []
                if if_no_face == "error":
                    raise NoFaceError(f"face index {index} requested but image {i + 1} of {b} has only "
                                      f"{len(detect_image(analysis, img, det_sizes, det_thresh))} face(s) "
                                      "(index counts from 0, left to right)")
            else:
                found = [found[index]]
        elif select == "largest" and found:
            found = [max(found, key=lambda f: float((f[0][2] - f[0][0]) * (f[0][3] - f[0][1])))]
        if not found:
            if if_no_face == "skip":
                skipped.append(i)
                log.info("face detect: no face in image %d of %d, skipped", i + 1, b)
                continue
            raise NoFaceError(
                f"no face found in image {i + 1} of {b} ({images.shape[2]}x{images.shape[1]} px; detector "
                f"{describe(analysis)}, sizes {list(det_sizes)}, threshold {det_thresh}). Use a photo with a "
                "clearly visible face, lower det_thresh, or set if_no_face to 'skip'.")
        for bbox, kps, score, emb in found:
            if emb is None and rec is not None:
                emb = _embed(rec, img, kps)
            faces.append(DetectedFace(i, torch.as_tensor(bbox), torch.as_tensor(kps), score,
                                      None if emb is None else torch.as_tensor(np.asarray(emb, np.float32))))
    return FaceBundle(faces, b, tuple(images.shape[1:3]), describe(analysis), skipped)
