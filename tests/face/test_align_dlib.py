"""The official FFHQ alignment (dlib 68 landmarks, ``align_dlib.py``) against an independent re-implementation
of the official recipe written here from the FFHQ / e4e / W+ Adapter ``align_face`` steps (numpy + PIL +
scipy, nothing shared with the pack): on every shared photo, the 3840 px one included (which the pack scans on
the official detector's coarse pyramid levels only, while the reference runs ``detector(img, 1)`` on the full
photo as the official code does), the landmark positions in the 1024 px crop are within 1 px of the reference's,
and the crop pixels equal the reference's for photos up to the detection size (1024 px)."""
from pathlib import Path

import numpy as np
import pytest
import torch

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")

SIZE = 1024
LARGE = set()  # photos larger than the detection size (searched on a downscaled copy)


def _photos(shared_data):
    faces = Path(shared_data) / "faces"
    return sorted(p for p in list(faces.glob("*.jpg")) + list(faces.glob("*.png")) + list(faces.glob("*/*.jpg")))


# ---- independent reference: the official recipe, step by step ----------------------------------------

def _ref_landmarks(img):
    """Official get_landmark: detector(img, 1) on the full photo, then the 68-point predictor per face."""
    det = dlib.get_frontal_face_detector()
    pred = dlib.shape_predictor(frm.pose_predictor_model_location())
    out = []
    for r in det(img, 1):
        out.append((r, np.array([[p.x, p.y] for p in pred(img, r).parts()], np.float64)))
    return out


def _ref_quad(lm):
    eye_left, eye_right = np.mean(lm[36:42], axis=0), np.mean(lm[42:48], axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48:60][0] + lm[48:60][6]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y]), np.hypot(*x) * 2


def _ref_align(img, lm, output_size=SIZE, transform_size=4096):
    """FFHQ align_face with enable_padding=True (PIL image in, PIL image out)."""
    import scipy.ndimage
    from PIL import Image

    quad, qsize = _ref_quad(lm)
    img = Image.fromarray(img)
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        img = img.resize((int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink))),
                         Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
           int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = img.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
                          1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]))
        blur = qsize * 0.02
        img += (scipy.ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")
        quad += pad[:2]
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return np.asarray(img)


def _ref_to_crop(quad, points, size=SIZE):
    """Where photo points land in the crop: PIL's QUAD maps crop corners (0,0), (0,S), (S,S), (S,0) (continuous
    coordinates, pixel centres at +0.5) to quad + 0.5; fit that affine map and apply its inverse."""
    corners = np.array([[0, 0], [0, size], [size, size], [size, 0]], np.float64)
    src = np.concatenate([quad + 0.5, np.ones((4, 1))], axis=1)
    m, *_ = np.linalg.lstsq(src, corners, rcond=None)             # photo (continuous) -> crop (continuous)
    return np.concatenate([points + 0.5, np.ones((len(points), 1))], axis=1) @ m - 0.5


# ---- the pack ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cases(shared_data):
    from PIL import Image

    out = []
    for path in _photos(shared_data):
        img = np.asarray(Image.open(path).convert("RGB"))
        for rect, lm in _ref_landmarks(img):
            out.append((path.name, img, rect, lm))
    assert len(out) >= 10, [c[0] for c in out]
    return out


def _bundle(img, rect):
    from comfyui_face_personalization.models_loader.face.types import DetectedFace, FaceBundle

    box = [rect.left(), rect.top(), rect.right(), rect.bottom()]
    face = DetectedFace(0, box, torch.zeros(5, 2), 1.0)
    return FaceBundle([face], 1, tuple(img.shape[:2]), "dlib box", [])


def test_official_alignment_lands_landmarks_within_1px_of_the_reference(cases):
    from comfyui_face_personalization.models_loader.face import align

    worst = {}
    for name, img, rect, lm in cases:
        images = torch.from_numpy(img.copy()).float()[None] / 255.0
        crops, transform = align.align_faces(images, _bundle(img, rect), align.OFFICIAL, SIZE, "reflect")
        assert crops.shape == (1, SIZE, SIZE, 3)
        fwd = transform.forward[0].double().numpy()
        ours = lm @ fwd[:, :2].T + fwd[:, 2]
        ref = _ref_to_crop(_ref_quad(lm)[0], lm)
        err = float(np.abs(ours - ref).max())
        worst[f"{name}@{rect.left()},{rect.top()}"] = round(err, 3)
        if max(img.shape[:2]) > 1024:
            LARGE.add(name)
        if max(img.shape[:2]) <= 1024:  # same photo size as the detector sees: same landmarks, same pixels
            pixels = _ref_align(img, lm)
            diff = np.abs(crops[0].numpy() * 255.0 - pixels.astype(np.float64))
            assert diff.mean() < 0.05 and diff.max() <= 1.0, (name, diff.mean(), diff.max())
    assert LARGE, "no shared photo larger than the detection size"
    assert max(worst.values()) <= 1.0, worst  # the 3840 px photo too (3.55 px when it was searched on a downscaled copy)


def test_large_photo_gets_the_official_detector_box(cases):
    """Above the detection size the pack scans only the official pyramid's coarse levels: the same face box
    as dlib's full ``detector(img, 1)``, to the rounding of one level mapping (a couple of pixels)."""
    from comfyui_face_personalization.models_loader.face import align_dlib

    big = [c for c in cases if max(c[1].shape[:2]) > align_dlib.DETECT_MAX_SIDE]
    assert big, "no shared photo larger than the detection size"
    for name, img, rect, _lm in big:
        rects = align_dlib.detect_rects(img)
        ref = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float64)
        off = np.abs(rects - ref).max(1)
        assert len(rects) and off.min() <= 3.0, (name, rects, ref)


def test_padding_zeros_leaves_the_outside_black_like_the_wplus_script(cases):
    from comfyui_face_personalization.models_loader.face import align_dlib

    name, img, rect, lm = next(c for c in cases if c[0] == "wplus_in_the_wild_1.jpg" and c[2].top() < 0)
    quad, qsize = align_dlib.ffhq_quad(lm)
    black = align_dlib.align_quad(img, quad, qsize, 256, padding=False)
    soft = align_dlib.align_quad(img, quad, qsize, 256, padding=True)
    assert black[:4].max() == 0 and soft[:4].mean() > 20, name  # that face's square leaves the photo at the top


def test_missing_dlib_is_a_clear_error(monkeypatch):
    from comfyui_face_personalization.models_loader.face import align_dlib

    monkeypatch.setattr(align_dlib, "_MODELS", {})
    monkeypatch.setitem(__import__("sys").modules, "dlib", None)
    with pytest.raises(RuntimeError, match="pip install dlib-bin face-recognition-models"):
        align_dlib._models()
    assert not align_dlib.available()
