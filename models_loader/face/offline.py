"""Offline face detector whose weights ship inside the ``mediapipe==0.10.14`` wheel
(``modules/face_detection/*.tflite`` + ``modules/face_landmark/*.tflite``): no download.

It behaves like an insightface ``FaceAnalysis`` with only a detection model: ``.get(img_bgr)``
returns faces with ``bbox`` (x1, y1, x2, y2), ``kps`` [5, 2] (insightface order: image-left eye,
image-right eye, nose tip, image-left / image-right mouth corner) and ``det_score``; no embedding.
Boxes and scores come from MediaPipe's face detector (BlazeFace), the 5 points from MediaPipe's
468-point face mesh (eye-corner midpoints, nose tip, mouth corners); when the mesh misses a face the
detector's own 6 keypoints are used (mouth corners estimated from the mouth centre).
mediapipe is an optional extra (it pins protobuf<5 and pulls jax): ``pip install mediapipe==0.10.14``.
"""
import threading

import numpy as np

# face-mesh landmark indices (image-left = subject's right)
_EYE_L = (33, 133)
_EYE_R = (362, 263)
_NOSE = 1
_MOUTH_L, _MOUTH_R = 61, 291


class _Face(dict):
    """insightface ``Face``-like: attribute and item access."""

    def __getattr__(self, k):
        return self.get(k)

    def __setattr__(self, k, v):
        self[k] = v


def _import_mediapipe():
    try:
        import mediapipe as mp
        from mediapipe.python.solutions import face_detection, face_mesh  # noqa: F401
    except Exception as exc:  # ImportError, or protobuf version clashes at import time
        raise RuntimeError(
            "the offline face detector needs mediapipe 0.10.14 (its wheel bundles the face detection "
            "weights; newer wheels do not): pip install mediapipe==0.10.14. Import failed with: "
            f"{type(exc).__name__}: {exc}") from exc
    return mp


class _MediaPipeDetModel:
    """The ``det_model`` part: ``detect(img_bgr, input_size=None, max_num=0, metric, det_thresh)``
    -> (det [N, 5] = x1, y1, x2, y2, score; kpss [N, 5, 2]), like insightface's SCRFD."""

    taskname = "detection"

    def __init__(self, det_thresh=0.5, max_faces=10):
        self.det_thresh = det_thresh
        self.max_faces = max_faces
        self.input_size = None
        self._lock = threading.Lock()
        self._graphs = {}

    def prepare(self, ctx_id=-1, input_size=None, det_thresh=None, **kwargs):
        if det_thresh is not None:
            self.det_thresh = det_thresh

    def _graph(self, kind, thresh):
        mp = _import_mediapipe()
        key = (kind, round(float(thresh), 4))
        g = self._graphs.get(key)
        if g is None:
            if kind == "mesh":
                g = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=self.max_faces,
                                                    refine_landmarks=False, min_detection_confidence=thresh)
            else:
                g = mp.solutions.face_detection.FaceDetection(model_selection=1 if kind == "full" else 0,
                                                              min_detection_confidence=thresh)
            self._graphs[key] = g
        return g

    def detect(self, img, input_size=None, max_num=0, metric="default", det_thresh=None):
        thresh = self.det_thresh if det_thresh is None else float(det_thresh)
        img = np.ascontiguousarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 image [H, W, 3], got {img.shape} {img.dtype}")
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        h, w = rgb.shape[:2]
        with self._lock:
            dets = []
            for kind in ("full", "short"):  # full range finds small faces; short range close-ups
                res = self._graph(kind, thresh).process(rgb)
                dets = list(res.detections or [])
                if dets:
                    break
            mesh = self._graph("mesh", min(thresh, 0.5)).process(rgb) if dets else None
        meshes = []
        for lm in (mesh.multi_face_landmarks or []) if mesh is not None else []:
            pts = np.array([[p.x * w, p.y * h] for p in lm.landmark], dtype=np.float32)
            meshes.append(pts)
        boxes, kpss = [], []
        used = set()
        for d in dets:
            rb = d.location_data.relative_bounding_box
            x1, y1 = rb.xmin * w, rb.ymin * h
            x2, y2 = x1 + rb.width * w, y1 + rb.height * h
            score = float(d.score[0]) if d.score else 0.0
            kps = None
            for j, pts in enumerate(meshes):  # the mesh whose nose tip lies in this box
                nx, ny = pts[_NOSE]
                if j not in used and x1 <= nx <= x2 and y1 <= ny <= y2:
                    used.add(j)
                    kps = np.stack([pts[list(_EYE_L)].mean(0), pts[list(_EYE_R)].mean(0), pts[_NOSE],
                                    pts[_MOUTH_L], pts[_MOUTH_R]])
                    break
            if kps is None:
                rk = d.location_data.relative_keypoints  # right eye, left eye, nose, mouth, ears
                p = np.array([[k.x * w, k.y * h] for k in rk[:4]], dtype=np.float32)
                eyes = p[:2][np.argsort(p[:2, 0])]
                half = (eyes[1] - eyes[0]) * 0.4
                kps = np.stack([eyes[0], eyes[1], p[2], p[3] - half, p[3] + half])
            boxes.append([x1, y1, x2, y2, score])
            kpss.append(kps)
        det = np.array(boxes, dtype=np.float32).reshape(-1, 5)
        kpss = np.array(kpss, dtype=np.float32).reshape(-1, 5, 2)
        order = np.argsort(-det[:, 4], kind="stable")
        det, kpss = det[order], kpss[order]
        if max_num > 0:
            det, kpss = det[:max_num], kpss[:max_num]
        return det, kpss


class MediaPipeFaceAnalysis:
    """FACE_ANALYSIS-compatible offline detector (insightface ``FaceAnalysis`` duck type)."""

    name = "mediapipe"

    def __init__(self, det_thresh=0.5, max_faces=10):
        _import_mediapipe()
        self.det_model = _MediaPipeDetModel(det_thresh, max_faces)
        self.models = {"detection": self.det_model}
        self.det_thresh = det_thresh

    def prepare(self, ctx_id=-1, det_thresh=0.5, det_size=None):
        self.det_thresh = det_thresh
        self.det_model.prepare(ctx_id, det_thresh=det_thresh)

    def get(self, img, max_num=0, det_metric="default"):
        det, kpss = self.det_model.detect(img, max_num=max_num)
        return [_Face(bbox=det[i, :4], kps=kpss[i], det_score=det[i, 4]) for i in range(det.shape[0])]

    def __repr__(self):
        return f"MediaPipeFaceAnalysis(det_thresh={self.det_thresh})"


def load_offline_detector(det_thresh: float = 0.5, max_faces: int = 10) -> MediaPipeFaceAnalysis:
    return MediaPipeFaceAnalysis(det_thresh=det_thresh, max_faces=max_faces)
