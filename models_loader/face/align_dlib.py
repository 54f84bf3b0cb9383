"""The official FFHQ face alignment from dlib's 68 landmarks, offline.

This is the preprocessing the FFHQ dataset, e4e and the W+ Adapter (``script/utils.py: align_face``,
``script/ProcessWildImage.py``) run before the encoder: dlib's HOG face detector (upsampled once) and its
68-point shape predictor, then an oriented square from the eye centres and the outer mouth corners,
and the image is shrunk, cropped, reflect-padded with a blurred, median-filled border and resampled
(PIL quad transform at 4096 px, then an antialiased resize to the output size).

Needs the optional packages ``dlib-bin`` (prebuilt dlib) and ``face-recognition-models`` (ships
``shape_predictor_68_face_landmarks.dat``); nothing is downloaded.

Large photos: the official ``detector(img, 1)`` doubles the photo and scans every level of a 5/6 image
pyramid built from it, which takes seconds on a big photo (5-10 s on the 3840 px shared photo on 2 loaded CPU
cores), nearly all of it on the fine levels, where only small faces fit the 80 px window. Above
``DETECT_MAX_SIDE`` the pack builds that same pyramid (dlib's own ``pyramid_up`` and ``pyramid_down(6)``
steps) down to the first level whose longer side is at most ``2 * DETECT_MAX_SIDE`` and runs the detector
from there: dlib builds its pyramid one level from the previous, so these are the official detector's own
coarse levels, and a face large enough to be found on them gets the official box (to the rounding of one
mapping). Faces smaller than about 1/25 of the photo's longer side are not searched for. The 68 points are
then fitted on the full-resolution photo, as the official code does. (An earlier version searched a
Lanczos-downscaled copy: the start box moved and the points landed 3.55 px off at 1024 px.)
"""
import logging

import numpy as np
import torch

from .types import AlignTransform

log = logging.getLogger(__name__)

DETECT_MAX_SIDE = 1024
TRANSFORM_SIZE = 4096
INSTALL_HINT = ("the official (dlib-68) alignment needs dlib and its landmark model: pip install dlib-bin "
                "face-recognition-models (or the pack's [dlib-alignment] extra), then restart ComfyUI")

_MODELS = {}


def available() -> bool:
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except Exception:
        return False
    return True


def _models():
    if not _MODELS:
        try:
            import dlib
            import face_recognition_models
        except ImportError as exc:
            raise RuntimeError(f"{INSTALL_HINT} ({exc})") from exc
        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["predictor"] = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    return _MODELS["detector"], _MODELS["predictor"]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [H, W, 3] (0..1) -> contiguous uint8 RGB, as the official code reads a photo file."""
    arr = (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(arr[..., :3])


def _pyramid_up(img: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_up(img)`` (what ``detector(img, 1)`` runs first): bilinear resize to the size of
    ``pyramid_down(2).rect_up`` of the image."""
    import dlib

    r = dlib.pyramid_down(2).rect_up(dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1))
    return dlib.resize_image(np.ascontiguousarray(img), r.bottom() + 1, r.right() + 1)


def detect_rects(img: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> np.ndarray:
    """dlib HOG face boxes [K, 4] (left, top, right, bottom) in ``img`` pixels, as the official
    ``detector(img, 1)`` finds them. Photos larger than ``max_side`` are scanned on the official pyramid's
    levels of at most ``2 * max_side`` px only (see the module note): same boxes for the faces found there."""
    import dlib

    detector, _ = _models()
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        rects = detector(np.ascontiguousarray(img), 1)
        out = [[r.left(), r.top(), r.right(), r.bottom()] for r in rects]
        return np.asarray(out, np.float64).reshape(-1, 4)
    pd2, pd6 = dlib.pyramid_down(2), dlib.pyramid_down(6)
    level, levels = _pyramid_up(img), 0
    while max(level.shape[:2]) > 2 * max_side:
        level, levels = pd6(level), levels + 1
    out = []
    for r in detector(np.ascontiguousarray(level), 0):
        d = pd2.rect_down(_official_rect(r, levels, pd6))
        out.append([d.left(), d.top(), d.right(), d.bottom()])
    return np.asarray(out, np.float64).reshape(-1, 4)


def _official_rect(r, levels, pd6):
    """The box ``r`` (found on a level ``levels`` steps down the doubled photo) in the doubled photo, rounded as
    the official detector rounds it. dlib maps a detection from its own pyramid level j to the image it was
    given with one rounding (``rect_up(rect, j)``); mapping ``r``, already rounded on the level, up ``levels``
    more steps would round twice and move the box by a pixel or two, which moves the 68 points (3.9 px at
    1024 px on the 3840 px shared photo). So find the window on level j (HOG windows are ~86 px wide there)
    whose ``rect_up(., j)`` is ``r`` and map it up ``j + levels`` steps at once."""
    import itertools
    import math

    import dlib

    width = r.right() - r.left() + 1
    j0 = max(0, int(round(math.log(max(width, 1) / 86.0) / math.log(1.2))))
    box = (r.left(), r.top(), r.right(), r.bottom())
    for j in (j0, j0 - 1, j0 + 1, j0 - 2, j0 + 2):
        if j < 0:
            continue
        tl = pd6.point_down(dlib.dpoint(r.left(), r.top()), j)
        br = pd6.point_down(dlib.dpoint(r.right(), r.bottom()), j)
        near = [[int(math.floor(v)) + k for k in (0, 1, -1, 2)] for v in (tl.x, tl.y, br.x, br.y)]
        for cand in itertools.product(*near):
            back = pd6.rect_up(dlib.rectangle(*cand), j)
            if (back.left(), back.top(), back.right(), back.bottom()) == box:
                return pd6.rect_up(dlib.rectangle(*cand), j + levels)
    d = pd6.rect_up(dlib.drectangle(*box), levels)
    return dlib.rectangle(*(int(round(v)) for v in (d.left(), d.top(), d.right(), d.bottom())))


def landmarks68(img: np.ndarray, rect) -> np.ndarray:
    """dlib's 68 points [68, 2] (pixels, float64) of the face in box ``rect`` (left, top, right, bottom)."""
    import dlib

    _, predictor = _models()
    left, top, right, bottom = (int(round(float(v))) for v in rect)
    shape = predictor(img, dlib.rectangle(left, top, right, bottom))
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


def ffhq_quad(lm: np.ndarray):
    """The oriented crop square of the FFHQ recipe: corners [4, 2] (top-left, bottom-left, bottom-right,
    top-right) and its side length, from the eye centres and the outer mouth corners."""
    lm = np.asarray(lm, np.float64)
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eyes = (eye_l + eye_r) / 2
    mouth = (lm[48] + lm[54]) / 2
    across, down = eye_r - eye_l, mouth - eyes
    x = across - np.array([-down[1], down[0]])        # across minus the eye-to-mouth vector turned by -90 deg
    x = x / np.hypot(*x) * max(np.hypot(*across) * 2.0, np.hypot(*down) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eyes + down * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def _box(quad):
    return (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))


def _soft_pad(arr: np.ndarray, pad, qsize: float) -> np.ndarray:
    """Reflect-pad, then blur and fade the padding towards the median colour (the FFHQ recipe)."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = pad
    arr = np.pad(arr.astype(np.float32), ((top, bottom), (left, right), (0, 0)), "reflect")
    h, w = arr.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    xx, yy = xx.astype(np.float32)[..., None], yy.astype(np.float32)[..., None]
    edge = np.maximum(1.0 - np.minimum(xx / left, (w - 1 - xx) / right),
                      1.0 - np.minimum(yy / top, (h - 1 - yy) / bottom))
    sigma = qsize * 0.02
    arr = arr + (gaussian_filter(arr, [sigma, sigma, 0]) - arr) * np.clip(edge * 3.0 + 1.0, 0.0, 1.0)
    arr = arr + (np.median(arr, axis=(0, 1)) - arr) * np.clip(edge, 0.0, 1.0)
    return np.uint8(np.clip(np.rint(arr), 0, 255))


def align_quad(img: np.ndarray, quad: np.ndarray, qsize: float, size: int, padding: bool = True,
               transform_size: int = TRANSFORM_SIZE) -> np.ndarray:
    """Resample the square ``quad`` of ``img`` (uint8 RGB) to ``size`` x ``size`` with the FFHQ steps:
    shrink a much larger photo first, crop around the square, soft-pad where it leaves the photo
    (``padding``; without it the outside stays black, as the W+ Adapter script's ``enable_padding=False``),
    quad-transform at ``transform_size`` and resize down with antialiasing."""
    from PIL import Image

    pil = Image.fromarray(img)
    quad = np.array(quad, np.float64)
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        pil = pil.resize((int(np.rint(pil.width / shrink)), int(np.rint(pil.height / shrink))), Image.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    x0, y0, x1, y1 = _box(quad)
    crop = (max(x0 - border, 0), max(y0 - border, 0), min(x1 + border, pil.width), min(y1 + border, pil.height))
    if crop[2] - crop[0] < pil.width or crop[3] - crop[1] < pil.height:
        pil = pil.crop(crop)
        quad = quad - crop[:2]
    x0, y0, x1, y1 = _box(quad)
    pad = (max(border - x0, 0), max(border - y0, 0), max(x1 - pil.width + border, 0), max(y1 - pil.height + border, 0))
    if padding and max(pad) > border - 4:
        pad = tuple(max(p, int(np.rint(qsize * 0.3))) for p in pad)
        pil = Image.fromarray(_soft_pad(np.asarray(pil.convert("RGB")), pad, qsize), "RGB")
        quad = quad + pad[:2]
    out_size = max(transform_size, size)
    pil = pil.transform((out_size, out_size), Image.QUAD, tuple((quad + 0.5).flatten()), Image.BILINEAR)
    if size < out_size:
        pil = pil.resize((size, size), Image.LANCZOS)
    return np.asarray(pil.convert("RGB"))


def quad_matrices(quad: np.ndarray, size: int):
    """(forward, inverse) [2, 3] float64 for the crop of ``quad`` at ``size``: image pixels <-> crop pixels
    (pixel centres at integer coordinates, the convention of ``AlignTransform``)."""
    q = np.asarray(quad, np.float64)
    ax_u, ax_v = (q[3] - q[0]) / size, (q[1] - q[0]) / size   # one crop pixel along x and along y
    a = np.stack([ax_u, ax_v], axis=1)
    inverse = np.concatenate([a, (q[0] + 0.5 * (ax_u + ax_v))[:, None]], axis=1)
    a_inv = np.linalg.inv(a)
    forward = np.concatenate([a_inv, -(a_inv @ inverse[:, 2:])], axis=1)
    return forward, inverse


def _pick_rect(rects: np.ndarray, bbox) -> np.ndarray:
    """The HOG box of the face the 5-point detector found in ``bbox``: centre inside it, nearest centre."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    best, best_d = None, None
    for r in rects:
        rx, ry = (r[0] + r[2]) / 2, (r[1] + r[3]) / 2
        if x1 <= rx <= x2 and y1 <= ry <= y2:
            d = (rx - cx) ** 2 + (ry - cy) ** 2
            if best is None or d < best_d:
                best, best_d = r, d
    if best is None:  # HOG misses some faces (strong profile, small): start the predictor from the box
        side = 0.8 * max(x2 - x1, y2 - y1)
        best = np.array([cx - side / 2, cy - side / 2 + 0.1 * side, cx + side / 2, cy + side / 2 + 0.1 * side])
        log.warning("dlib found no face at box %s; fitting the 68 points from the detector's box instead",
                    [round(v) for v in (x1, y1, x2, y2)])
    return best


def face_landmarks(images: torch.Tensor, bundle, max_side: int = DETECT_MAX_SIDE):
    """dlib 68 points [68, 2] for every face of a FaceBundle (matched to dlib's own detections)."""
    from ..progress import progress

    idx = bundle.image_indices.tolist()
    bar = progress(len(set(idx)) + len(idx))
    arrays, rects = {}, {}
    for i in sorted(set(idx)):
        arrays[i] = to_uint8(images[i])
        rects[i] = detect_rects(arrays[i], max_side)
        bar.update(1)
    out = []
    for face, i in zip(bundle.faces, idx):
        out.append(landmarks68(arrays[i], _pick_rect(rects[i], face.bbox)))
        bar.update(1)
    return out, arrays


def align_faces_official(images: torch.Tensor, bundle, size: int = 1024, padding: str = "reflect"):
    """Official FFHQ alignment of every face of a FaceBundle: (crops [N, size, size, 3], AlignTransform).
    ``padding`` 'reflect' is the FFHQ / e4e soft padding; any other value leaves the outside black."""
    lms, arrays = face_landmarks(images, bundle)
    crops, fwd, inv = [], [], []
    for lm, i in zip(lms, bundle.image_indices.tolist()):
        quad, qsize = ffhq_quad(lm)
        crops.append(torch.from_numpy(align_quad(arrays[i], quad, qsize, int(size), padding == "reflect").copy()))
        f, b = quad_matrices(quad, int(size))
        fwd.append(torch.from_numpy(f))
        inv.append(torch.from_numpy(b))
    out = torch.stack(crops).to(images.device, torch.float32) / 255.0
    transform = AlignTransform(torch.stack(fwd).float(), torch.stack(inv).float(), bundle.image_indices,
                               int(size), tuple(images.shape[1:3]), "ffhq_dlib68")
    return out.to(images.dtype), transform
