"""SCRFD face detection (antelopev2 ``scrfd_10g_bnkps.onnx``, buffalo_l ``det_10g.onnx``) on ONNX Runtime.

Same pre- and post-processing as insightface's ``model_zoo/scrfd.py`` (so boxes, landmarks and scores
equal insightface's on the same file and image): the image is scaled to fit ``input_size`` keeping
its aspect ratio and pasted top-left on black; RGB ``(x - 127.5) / 128``; per stride (8/16/32, or
8..128 for 5-level models) anchors at ``(col, row) * stride``, repeated per anchor; boxes and 5
landmarks decoded as distances (x stride) from the anchor; candidates ``score >= det_thresh``,
sorted by score, greedy NMS at IoU 0.4 with the ``+1`` pixel area convention; ``max_num`` keeps
the largest, most central faces.

The detector holds no per-call settings: size and threshold are ``detect`` arguments. ``input_size``
and ``det_thresh`` attributes exist only as the defaults other packs set (IPAdapter writes
``det_model.input_size``), read when no argument is given.
"""
import numpy as np

from .image_ops import resize_bilinear, to_blob

NMS_THRESH = 0.4
INPUT_MEAN, INPUT_STD = 127.5, 128.0
# number of outputs -> (strides, anchors per location, has landmarks)
LAYOUTS = {6: ((8, 16, 32), 2, False), 9: ((8, 16, 32), 2, True),
           10: ((8, 16, 32, 64, 128), 1, False), 15: ((8, 16, 32, 64, 128), 1, True)}


def is_scrfd(session) -> bool:
    """insightface's routing rule: a detector has at least 5 outputs."""
    return len(session.get_outputs()) in LAYOUTS


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """[(height * width * num_anchors), 2] (x, y) pixel positions, row-major, each repeated per anchor."""
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.repeat(centers, num_anchors, axis=0) if num_anchors > 1 else centers


def distance_to_boxes(points, dist):
    return np.stack([points[:, 0] - dist[:, 0], points[:, 1] - dist[:, 1],
                     points[:, 0] + dist[:, 2], points[:, 1] + dist[:, 3]], axis=-1)


def distance_to_points(points, dist):
    """[n, 2k] offsets -> [n, k, 2] points."""
    k = dist.shape[1] // 2
    return points[:, None, :] + dist.reshape(-1, k, 2)


def nms(dets: np.ndarray, thresh: float = NMS_THRESH):
    """Greedy NMS over [n, 5] (x1, y1, x2, y2, score); indices kept, best first."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= thresh]
    return keep


def letterbox(img: np.ndarray, size):
    """Scale ``img`` to fit ``size`` = (width, height), paste top-left on black -> (canvas, scale)."""
    width, height = size
    im_ratio = img.shape[0] / img.shape[1]
    if im_ratio > height / width:
        new_h, new_w = height, int(height / im_ratio)
    else:
        new_w, new_h = width, int(width * im_ratio)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[:new_h, :new_w] = resize_bilinear(img, new_w, new_h)
    return canvas, new_h / img.shape[0]


class SCRFD:
    taskname = "detection"

    def __init__(self, session, model_file=None, input_size=(640, 640), det_thresh=0.5):
        self.session = session
        self.model_file = model_file
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.output_names = [o.name for o in session.get_outputs()]
        if len(self.output_names) not in LAYOUTS:
            raise ValueError(f"{model_file}: {len(self.output_names)} outputs is not an SCRFD layout")
        self.strides, self.num_anchors, self.use_kps = LAYOUTS[len(self.output_names)]
        self.fmc = len(self.strides)
        self.batched = len(session.get_outputs()[0].shape) == 3
        h, w = inp.shape[2:4]
        self.static_input_size = (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
        self.input_size = self.static_input_size or tuple(input_size)
        self.det_thresh = det_thresh
        self.nms_thresh = NMS_THRESH
        self._centers = {}

    def prepare(self, ctx_id=0, input_size=None, det_thresh=None, nms_thresh=None, **kwargs):
        """insightface's API for code that owns this object; our own nodes pass settings per call."""
        if input_size is not None and self.static_input_size is None:
            self.input_size = tuple(input_size)
        if det_thresh is not None:
            self.det_thresh = det_thresh
        if nms_thresh is not None:
            self.nms_thresh = nms_thresh

    def _centers_for(self, h, w, stride):
        key = (h, w, stride)
        if key not in self._centers:
            self._centers[key] = anchor_centers(h, w, stride, self.num_anchors)
        return self._centers[key]

    def forward(self, canvas: np.ndarray, threshold: float):
        """Candidates of one letterboxed BGR canvas: lists (per stride) of scores, boxes, landmarks."""
        blob = to_blob(canvas, INPUT_MEAN, INPUT_STD)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        in_h, in_w = blob.shape[2:]
        scores_l, boxes_l, kps_l = [], [], []
        for i, stride in enumerate(self.strides):
            pick = (lambda o: o[0]) if self.batched else (lambda o: o)
            scores = pick(outs[i])
            centers = self._centers_for(in_h // stride, in_w // stride, stride)
            keep = np.where(scores >= threshold)[0]
            scores_l.append(scores[keep])
            boxes_l.append(distance_to_boxes(centers, pick(outs[i + self.fmc]) * stride)[keep])
            if self.use_kps:
                kps_l.append(distance_to_points(centers, pick(outs[i + 2 * self.fmc]) * stride)[keep])
        return scores_l, boxes_l, kps_l

    def detect(self, img, input_size=None, max_num=0, metric="default", det_thresh=None):
        """BGR uint8 [H, W, 3] -> (det [n, 5] float32 x1, y1, x2, y2, score; kps [n, 5, 2] or None)."""
        size = self.static_input_size or tuple(input_size or self.input_size)
        threshold = self.det_thresh if det_thresh is None else float(det_thresh)
        canvas, scale = letterbox(img, size)
        scores_l, boxes_l, kps_l = self.forward(canvas, threshold)
        scores = np.vstack(scores_l).ravel()
        if scores.size == 0:
            return np.zeros((0, 5), np.float32), (np.zeros((0, 5, 2), np.float32) if self.use_kps else None)
        order = np.argsort(-scores, kind="stable")
        dets = np.hstack([np.vstack(boxes_l) / scale, scores[:, None]]).astype(np.float32)[order]
        kpss = (np.vstack(kps_l) / scale)[order] if self.use_kps else None
        keep = nms(dets, self.nms_thresh)
        dets = dets[keep]
        kpss = kpss[keep] if kpss is not None else None
        if 0 < max_num < dets.shape[0]:
            area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
            cy, cx = img.shape[0] // 2, img.shape[1] // 2
            off2 = ((dets[:, 0] + dets[:, 2]) / 2 - cx) ** 2 + ((dets[:, 1] + dets[:, 3]) / 2 - cy) ** 2
            values = area if metric == "max" else area - off2 * 2.0
            best = np.argsort(values)[::-1][:max_num]
            dets = dets[best]
            kpss = kpss[best] if kpss is not None else None
        return dets, kpss
