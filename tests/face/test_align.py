"""Alignment oracles: Umeyama recovers a known similarity transform; kornia warp == cv2.warpAffine;
aligning the in-the-wild photo puts the eyes on the FFHQ template; paste-back inverts the warp."""
import math

import numpy as np
import pytest
import torch

from face_helpers import load_image


def _align():
    from comfyui_face_personalization.models_loader.face import align

    return align


def _similarity(scale, angle, tx, ty):
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]], dtype=torch.float64)


@pytest.mark.parametrize("name,size", [("ffhq", 256), ("ffhq", 512), ("ffhq", 1024), ("arcface", 112)])
def test_umeyama_recovers_known_transform(name, size):
    align = _align()
    tpl = align.template(name, size)
    # known image->template transforms; the landmarks are the template mapped by their inverses
    truths = torch.stack([_similarity(0.37, 0.3, 12.0, -40.0), _similarity(2.5, -1.1, 300.0, 80.5),
                          _similarity(1.0, math.pi * 0.9, -5.0, 7.0)])
    inv = align.invert_affine(truths)
    kps = tpl[None] @ inv[:, :, :2].transpose(1, 2) + inv[:, None, :, 2]
    est = align.umeyama(kps, tpl)
    assert (est - truths).abs().max() < 1e-4
    # and the independent closed form for 2 points (complex numbers) agrees on exact data
    z_src = torch.complex(kps[..., 0], kps[..., 1])
    z_dst = torch.complex(tpl[:, 0], tpl[:, 1])
    a = (z_dst[1] - z_dst[0]) / (z_src[:, 1] - z_src[:, 0])
    assert torch.allclose(torch.stack([a.real, a.imag], 1), torch.stack([est[:, 0, 0], est[:, 1, 0]], 1), atol=1e-6)


def test_umeyama_noisy_matches_normal_equations():
    """Least squares: compare with the linear least-squares solution over (a, b, tx, ty)."""
    align = _align()
    g = torch.Generator().manual_seed(0)
    src = torch.rand(4, 5, 2, generator=g, dtype=torch.float64) * 300
    dst = align.template("ffhq", 512)
    est = align.umeyama(src, dst)
    for i in range(4):
        x, y = src[i, :, 0], src[i, :, 1]
        A = torch.zeros(10, 4, dtype=torch.float64)
        A[0::2] = torch.stack([x, -y, torch.ones(5), torch.zeros(5)], 1)
        A[1::2] = torch.stack([y, x, torch.zeros(5), torch.ones(5)], 1)
        sol = torch.linalg.lstsq(A, dst.reshape(-1, 1)).solution[:, 0]
        ref = torch.tensor([[sol[0], -sol[1], sol[2]], [sol[1], sol[0], sol[3]]], dtype=torch.float64)
        assert (est[i] - ref).abs().max() < 1e-6


def test_kornia_warp_matches_cv2():
    import cv2

    align = _align()
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 80, 96, 3, generator=g)
    m = _similarity(1.3, 0.4, -10.0, 5.0)[None]
    ours = align.warp(img, m, (64, 64), padding="zeros")[0].numpy()
    ref = cv2.warpAffine(img[0].numpy(), m[0].numpy(), (64, 64), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inner = np.s_[4:-4, 4:-4]
    assert np.abs(ours[inner] - ref[inner]).max() < 2e-3


def test_align_in_the_wild_eyes_on_template(shared_data, offline_detector):
    from comfyui_face_personalization.models_loader.face.detect import detect_faces

    align = _align()
    img = load_image(shared_data / "faces" / "wplus_in_the_wild_1.jpg")
    bundle = detect_faces(img, offline_detector, "largest")
    crops, fwd, inv = align.ffhq_align(img[bundle.image_indices], bundle.kps, 512)
    assert crops.shape == (1, 512, 512, 3)
    # the transformed landmarks land near the template (fit residual), and re-detecting on the
    # crop finds the eyes at the template's eye positions
    mapped = bundle.kps[0] @ fwd[0, :, :2].T + fwd[0, :, 2]
    tpl = align.template("ffhq", 512).float()
    assert (mapped[:2] - tpl[:2]).norm(dim=1).max() < 6.0
    again = detect_faces(crops, offline_detector, "largest")
    eye_err = (again.kps[0, :2] - tpl[:2]).norm(dim=1)
    assert eye_err.max() < 8.0, eye_err  # 5.3 px measured: re-detection noise of mesh eye points
    # inverse really is the inverse
    eye3 = torch.cat([torch.eye(2), torch.zeros(2, 1)], 1)
    comp = inv[0, :, :2] @ fwd[0]
    comp[:, 2] += inv[0, :, 2]
    assert torch.allclose(comp, eye3, atol=1e-4)


def test_ffhq_crop_close_to_official_aligned_example(shared_data, offline_detector):
    """wplus_aligned_1.png is an official FFHQ (dlib) aligned face: its 5 points sit near our template."""
    from comfyui_face_personalization.models_loader.face.detect import detect_faces

    align = _align()
    img = load_image(shared_data / "faces" / "wplus_aligned_1.png")
    b = detect_faces(img, offline_detector, "largest")
    tpl = align.template("ffhq", img.shape[1]).float()
    err = (b.kps[0] - tpl).norm(dim=1)
    # the 5-point fit approximates the dlib-68 alignment: 15.2 px mean offset measured on this 512 px
    # example (3% of the crop width, ~30 px at 1024), as the README says
    assert img.shape[1] == 512
    assert err.mean() < 16.5, err


def test_arcface_align_shapes_and_batch():
    align = _align()
    img = torch.rand(3, 100, 120, 3)
    tpl = align.template("arcface", 112)
    kps = (tpl.float() * 0.8 + 10)[None].repeat(3, 1, 1)
    out = align.arcface_align(img, kps)
    assert out.shape == (3, 112, 112, 3)
    with pytest.raises(ValueError, match=r"\[B, 5, 2\]"):
        align.arcface_align(img, kps[:2])
    with pytest.raises(ValueError, match="empty"):
        align.ffhq_align(img[:0], kps[:0], 256)


def test_paste_back_roundtrip():
    """Aligning then pasting the unmodified crop back reproduces the face region of the photo."""
    from comfyui_face_personalization.models_loader.face.types import DetectedFace, FaceBundle

    align = _align()
    g = torch.Generator().manual_seed(2)
    # smooth image so bilinear resampling twice stays close
    base = torch.rand(1, 3, 12, 16, generator=g)
    img = torch.nn.functional.interpolate(base, size=(192, 256), mode="bicubic", align_corners=False).clamp(0, 1)
    img = img.permute(0, 2, 3, 1).contiguous()
    kps = align.template("ffhq", 512).float() * 0.25 + torch.tensor([60.0, 30.0])
    bundle = FaceBundle([DetectedFace(0, [60, 30, 188, 158], kps, 0.9)], 1, (192, 256), "test")
    crops, tr = align.align_faces(img, bundle, "ffhq", 512, "reflect")
    edited = crops * 0 + torch.tensor([1.0, 0.0, 0.0])           # paint the crop red
    out = align.paste_back(img, edited, tr, feather=0)
    centre = out[0, 80:110, 110:140]
    assert torch.allclose(centre, torch.tensor([1.0, 0.0, 0.0]).expand_as(centre), atol=1e-4)
    assert torch.equal(out[0, :, :20], img[0, :, :20])             # far from the face: untouched
    same = align.paste_back(img, crops, tr, feather=0)
    assert (same - img)[0, 60:130, 90:170].abs().max() < 0.03
