"""A face-analysis object built from an insightface model pack's ONNX files, without insightface.

``OnnxFaceAnalysis`` has the part of insightface's ``FaceAnalysis`` API that face packs call
(``models``, ``det_model``, ``prepare(ctx_id, det_thresh, det_size)``, ``get(img)`` -> faces with
``bbox``, ``kps``, ``det_score``, ``embedding``, ``normed_embedding``), so IPAdapter / InstantID /
PuLID inputs accept it like insightface's own. Files are routed by signature as insightface's
``model_zoo`` does (>= 5 outputs: SCRFD detection; one square >= 112 px input and one output:
ArcFace recognition); the landmark / gender-age models of a pack are not loaded (nothing here
uses them).
"""
import os

import numpy as np

from .arcface import ArcFace, is_arcface
from .scrfd import SCRFD, is_scrfd

# files of the official packs that this pack never uses (3D/2D landmarks, gender-age)
UNUSED_FILES = {"1k3d68.onnx", "2d106det.onnx", "genderage.onnx"}


class Face(dict):
    """insightface ``Face``-like: item and attribute access; missing attributes read as None."""

    def __getattr__(self, key):
        return self.get(key)

    def __setattr__(self, key, value):
        self[key] = value

    @property
    def embedding_norm(self):
        emb = self.get("embedding")
        return None if emb is None else float(np.linalg.norm(emb))

    @property
    def normed_embedding(self):
        emb = self.get("embedding")
        return None if emb is None else emb / np.linalg.norm(emb)


def open_sessions(model_dir, files, providers, with_recognition=True):
    """{task: (session, path)} for the usable files of ``model_dir`` (first file of each task wins)."""
    import onnxruntime

    found = {}
    for name in files:
        if name in UNUSED_FILES:
            continue
        path = os.path.join(model_dir, name)
        session = onnxruntime.InferenceSession(path, providers=providers)
        if is_scrfd(session):
            task = "detection"
        elif is_arcface(session):
            task = "recognition"
        else:
            continue
        if task == "recognition" and not with_recognition:
            continue
        found.setdefault(task, (session, path))
    return found


def build_models(sessions, det_size=640, rec_mean_std=None):
    """Fresh detector/recogniser objects over (shared, stateless) ORT sessions."""
    models = {}
    if "detection" in sessions:
        session, path = sessions["detection"]
        models["detection"] = SCRFD(session, path, input_size=(det_size, det_size))
    if "recognition" in sessions:
        session, path = sessions["recognition"]
        models["recognition"] = ArcFace(session, path, rec_mean_std)
    return models


class OnnxFaceAnalysis:
    def __init__(self, models, model_dir=None, providers=None, det_thresh=0.5):
        self.models = models
        self.model_dir = model_dir
        self.providers = list(providers or [])
        self.det_thresh = det_thresh

    @property
    def det_model(self):
        return self.models.get("detection")

    def prepare(self, ctx_id=0, det_thresh=0.5, det_size=(640, 640)):
        """insightface's API, for a graph that owns this object; the pack's own nodes never call it."""
        self.det_thresh = det_thresh
        if self.det_model is not None:
            self.det_model.prepare(ctx_id, input_size=det_size, det_thresh=det_thresh)

    def get(self, img, max_num=0, det_metric="default"):
        """All faces of a BGR uint8 image, with embeddings when a recognition model is loaded."""
        # size: the detector's input_size (set by prepare, or written by another pack as IPAdapter does)
        boxes, kpss = self.det_model.detect(img, max_num=max_num, metric=det_metric, det_thresh=self.det_thresh)
        faces = []
        for i in range(boxes.shape[0]):
            face = Face(bbox=boxes[i, :4], kps=None if kpss is None else kpss[i], det_score=boxes[i, 4])
            rec = self.models.get("recognition")
            if rec is not None and face.kps is not None:
                rec.get(img, face)
            faces.append(face)
        return faces

    def __repr__(self):
        return f"OnnxFaceAnalysis({self.model_dir}, {sorted(self.models)}, {self.providers})"
