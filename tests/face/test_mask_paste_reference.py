"""Face masks (bbox, ellipse, convex hull), grow, feather and paste-back feathering against numpy /
scipy / OpenCV references written here from the documented rules (not from the product code):

* bbox: the box scaled by ``grow`` about its centre, pixel ``[floor(x1), ceil(x2))`` ranges;
* ellipse: semi-axes ``grow * w / 2`` and ``grow * 1.1 * h / 2`` of the box, rotated to the eye line;
* feather: a Gaussian of sigma ``feather / 2`` truncated at 3 sigma, edge pixels replicated
  (``scipy.ndimage.gaussian_filter(mode='nearest')``);
* paste-back: the opaque crop rectangle inset by ``f = feather`` px, blurred with sigma ``f / 2``
  over a ``2f + 1`` kernel (mirror edges), warped into the image with the inverse transform
  (``cv2.warpAffine``) and used as alpha: ``out = img * (1 - a) + warped_crop * a``.
"""
import math

import numpy as np
import pytest
import torch

ndimage = pytest.importorskip("scipy.ndimage")
cv2 = pytest.importorskip("cv2")


def _bundle(faces, h=160, w=200):
    from comfyui_face_personalization.models_loader.face.types import DetectedFace, FaceBundle

    return FaceBundle([DetectedFace(i, torch.tensor(b, dtype=torch.float32), torch.tensor(k, dtype=torch.float32), 0.9)
                       for i, b, k in faces], 1 + max(f[0] for f in faces), (h, w), "test")


# a tilted face: eyes rotated by ~14 degrees
KPS = [[80.0, 70.0], [120.0, 80.0], [98.0, 95.0], [82.0, 112.0], [112.0, 120.0]]
BOX = [62.3, 44.6, 141.7, 139.2]


def _np_bbox(box, grow, h, w):
    (x1, y1), (x2, y2) = np.asarray(box[:2]), np.asarray(box[2:])
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2 * grow, (y2 - y1) / 2 * grow
    m = np.zeros((h, w), np.float32)
    xs, ys = np.arange(w), np.arange(h)
    inside_x = (xs >= max(math.floor(cx - hw), 0)) & (xs < math.ceil(cx + hw))
    inside_y = (ys >= max(math.floor(cy - hh), 0)) & (ys < math.ceil(cy + hh))
    m[np.ix_(inside_y, inside_x)] = 1
    return m


def _np_feather(m, feather):
    return np.clip(ndimage.gaussian_filter(m, feather / 2.0, mode="nearest", truncate=3.0), 0, 1)


@pytest.mark.parametrize("grow", [1.0, 1.3, 0.7])
def test_bbox_mask_and_grow(grow):
    from comfyui_face_personalization.models_loader.face.mask import face_mask

    got = face_mask(_bundle([(0, BOX, KPS)]), "bbox", grow, feather=0)[0].numpy()
    np.testing.assert_array_equal(got, _np_bbox(BOX, grow, 160, 200))


@pytest.mark.parametrize("feather", [4.0, 8.0, 13.0])
def test_feather_is_the_documented_gaussian(feather):
    from comfyui_face_personalization.models_loader.face.mask import face_mask

    got = face_mask(_bundle([(0, BOX, KPS)]), "bbox", 1.0, feather)[0].numpy()
    ref = _np_feather(_np_bbox(BOX, 1.0, 160, 200), feather)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert 0.05 < got[100, int(BOX[0])] < 0.95        # the edge really is soft


def test_ellipse_mask_axes_rotation_and_grow():
    from comfyui_face_personalization.models_loader.face import mask as mask_mod

    bundle = _bundle([(0, BOX, KPS)])
    kps, box = np.asarray(KPS), np.asarray(BOX)
    # centre: between the box centre and the centre of the landmark-derived outline (its definition)
    centre = (box.reshape(2, 2).mean(0) + mask_mod._outline(torch.tensor(KPS)).mean(0).numpy()) / 2
    angle = math.atan2(kps[1, 1] - kps[0, 1], kps[1, 0] - kps[0, 0])
    for grow in (1.0, 1.25):
        a, b = (box[2] - box[0]) / 2 * grow, (box[3] - box[1]) / 2 * 1.1 * grow
        ys, xs = np.mgrid[0:160, 0:200].astype(np.float64)
        d = np.stack([xs - centre[0], ys - centre[1]], -1)
        u = d @ np.array([math.cos(angle), math.sin(angle)])
        v = d @ np.array([-math.sin(angle), math.cos(angle)])
        ref = ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.float32)
        got = mask_mod.face_mask(bundle, "ellipse", grow, feather=0)[0].numpy()
        assert (got != ref).mean() < 1e-3, (grow, (got != ref).sum())     # float rounding on the rim only
        np.testing.assert_allclose(mask_mod.face_mask(bundle, "ellipse", grow, feather=6)[0].numpy(),
                                   _np_feather(ref, 6), atol=2e-3)


def test_convex_hull_contains_landmarks_and_grows():
    from comfyui_face_personalization.models_loader.face.mask import face_mask

    bundle = _bundle([(0, BOX, KPS)])
    m1 = face_mask(bundle, "convex_hull", 1.0, 0)[0].numpy()
    m2 = face_mask(bundle, "convex_hull", 1.4, 0)[0].numpy()
    for x, y in np.round(KPS).astype(int):
        assert m1[y, x] == 1
    assert (m2 >= m1).all() and 1.4 ** 2 * 0.9 < m2.sum() / m1.sum() < 1.4 ** 2 * 1.1   # area ~ grow^2
    np.testing.assert_allclose(face_mask(bundle, "convex_hull", 1.0, 8)[0].numpy(), _np_feather(m1, 8), atol=1e-5)


def test_masks_of_two_faces_are_a_union_per_image():
    from comfyui_face_personalization.models_loader.face.mask import face_mask

    shifted = [[x + 30, y] for x, y in KPS]
    box2 = [BOX[0] + 30, BOX[1], BOX[2] + 30, BOX[3]]
    got = face_mask(_bundle([(0, BOX, KPS), (0, box2, shifted), (1, box2, shifted)]), "bbox", 1.0, 0).numpy()
    np.testing.assert_array_equal(got[0], np.maximum(_np_bbox(BOX, 1, 160, 200), _np_bbox(box2, 1, 160, 200)))
    np.testing.assert_array_equal(got[1], _np_bbox(box2, 1, 160, 200))


@pytest.mark.parametrize("feather", [0, 6, 16])
def test_paste_back_feathering_matches_reference(feather):
    from comfyui_face_personalization.models_loader.face import align

    g = torch.Generator().manual_seed(3)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 10, 12, generator=g), size=(160, 200), mode="bilinear",
                                          align_corners=False).permute(0, 2, 3, 1).contiguous()
    bundle = _bundle([(0, BOX, KPS)])
    crops, tr = align.align_faces(img, bundle, "ffhq", 128, "reflect")
    edited = torch.zeros_like(crops) + torch.tensor([1.0, 0.2, 0.0])   # a flat colour: alpha shows directly
    out = align.paste_back(img, edited, tr, feather=feather)[0].numpy().astype(np.float64)

    s = 128
    alpha = np.ones((s, s), np.float32)
    if feather:
        f = min(feather, s // 4)
        inner = np.zeros((s, s), np.float32)
        inner[f:s - f, f:s - f] = 1
        alpha = ndimage.gaussian_filter(inner, f / 2.0, mode="mirror", truncate=2.0)
    inv = tr.inverse[0].double().numpy()
    a = cv2.warpAffine(alpha, inv, (200, 160), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    back = cv2.warpAffine(edited[0].numpy(), inv, (200, 160), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ref = img[0].numpy() * (1 - a[..., None]) + back * a[..., None]
    err = np.abs(out - ref)
    assert err.max() < 0.02 and err.mean() < 1e-3, (err.max(), err.mean())
    assert not torch.isnan(torch.from_numpy(out)).any()
