"""The pack's own SCRFD / ArcFace runtime (no insightface, no OpenCV) against insightface itself on
the same ONNX files and images: boxes, landmarks, scores and embeddings.

insightface (installed in the test venv as an oracle, an optional extra for users) runs with its own
code: ``model_zoo.scrfd.SCRFD.detect``, ``model_zoo.arcface_onnx.ArcFaceONNX.get`` (``norm_crop`` with
skimage + cv2.warpAffine), ``app.FaceAnalysis``. Models: the tiny fixture pack, a random-head SCRFD
in both output layouts (varying boxes/landmarks, many overlapping candidates for NMS) and an
MXNet-style ArcFace (normalisation inside the graph). Images: the shared photos and synthetic blobs.

Equality: the letterbox resize repeats OpenCV's fixed-point arithmetic, so wherever it matches
cv2 bit for bit (every downscale here) detections are equal to float precision; the ArcFace crop is
a float warp where OpenCV quantises positions to 1/32 px, so embeddings agree to cos > 0.9999.
"""
import os

import numpy as np
import pytest
from PIL import Image

from face_helpers import shared_photos

insightface = pytest.importorskip("insightface")
cv2 = pytest.importorskip("cv2")
CPU = ["CPUExecutionProvider"]
SIZES = (640, 320, 256)


def _bgr(path):
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1])


def _blob(h, w, spots):
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    for cx, cy, r in spots:
        img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = 255
    return img


@pytest.fixture(scope="module")
def images(shared_data):
    out = {p.name: _bgr(p) for p in shared_photos(shared_data)[:4]}
    out["aligned_512"] = _bgr(shared_data / "faces" / "wplus_aligned_1.png")
    out["blobs_2faces"] = _blob(256, 320, [(100, 120, 55), (240, 140, 50)])
    out["blob_tall"] = _blob(700, 300, [(150, 300, 90)])
    return out


def _resize_is_exact(img, size):
    """Whether our letterbox resize equals cv2's bit for bit for this image and size (then the
    detector inputs are identical and results must agree to float precision)."""
    from comfyui_face_personalization.models_loader.face.scrfd import letterbox

    h, w = img.shape[:2]
    nw, nh = (int(size / (h / w)), size) if h / w > 1 else (size, int(size * h / w))
    return np.array_equal(letterbox(img, (size, size))[0][:nh, :nw], cv2.resize(img, (nw, nh)))


def _ours_det(path):
    import onnxruntime

    from comfyui_face_personalization.models_loader.face.scrfd import SCRFD

    return SCRFD(onnxruntime.InferenceSession(path, providers=CPU), path)


def _theirs_det(path):
    import onnxruntime
    from insightface.model_zoo.scrfd import SCRFD

    return SCRFD(path, session=onnxruntime.InferenceSession(path, providers=CPU))


def _compare_detections(ours, theirs, img, size, thresh, exact):
    a_box, a_kps = ours.detect(img, input_size=(size, size), det_thresh=thresh)
    b_box, b_kps = theirs.detect(img, input_size=(size, size), det_thresh=thresh)
    assert a_box.shape == b_box.shape, (a_box.shape, b_box.shape)
    if not len(a_box):
        return 0.0, 0.0, 0.0
    tol = dict(atol=1e-4, rtol=0) if exact else dict(atol=0.05, rtol=0)
    np.testing.assert_allclose(a_box[:, :4], b_box[:, :4], **tol)
    np.testing.assert_allclose(a_kps, b_kps, **tol)
    np.testing.assert_allclose(a_box[:, 4], b_box[:, 4], atol=1e-6 if exact else 5e-3, rtol=0)
    return (float(np.abs(a_box[:, :4] - b_box[:, :4]).max()), float(np.abs(a_kps - b_kps).max()),
            float(np.abs(a_box[:, 4] - b_box[:, 4]).max()))


def test_resize_equals_cv2_bit_for_bit_when_shrinking(images):
    from comfyui_face_personalization.models_loader.face.image_ops import resize_bilinear

    for name, img in images.items():
        for w, h in ((640, 640), (333, 217), (256, 180)):
            if w > img.shape[1] or h > img.shape[0]:
                continue
            assert np.array_equal(resize_bilinear(img, w, h), cv2.resize(img, (w, h))), (name, w, h)


def test_tiny_pack_detection_and_embedding_equal_insightface(tiny_packs, images):
    import onnxruntime
    from insightface.app.common import Face
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    from comfyui_face_personalization.models_loader.face.arcface import ArcFace

    d = tiny_packs["antelopev2"]
    det, rec = os.path.join(d, "scrfd_10g_bnkps.onnx"), os.path.join(d, "glintr100.onnx")
    ours, theirs = _ours_det(det), _theirs_det(det)
    ours_rec = ArcFace(onnxruntime.InferenceSession(rec, providers=CPU), rec)
    theirs_rec = ArcFaceONNX(rec, session=onnxruntime.InferenceSession(rec, providers=CPU))
    assert (ours_rec.input_mean, ours_rec.input_std) == (theirs_rec.input_mean, theirs_rec.input_std)
    found = 0
    for name, img in images.items():
        for size in SIZES:
            _compare_detections(ours, theirs, img, size, 0.5, _resize_is_exact(img, size))
            boxes, kpss = theirs.detect(img, input_size=(size, size), det_thresh=0.5)
            for kps in kpss[:2]:
                found += 1
                want = theirs_rec.get(img, Face(kps=kps))
                got = ours_rec.get(img, {"kps": kps})
                cos = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
                assert cos > 0.9999, (name, size, cos)
                assert np.abs(got - want).max() < 2e-3 * np.abs(want).max(), (name, size)
    assert found >= 8  # the photos and blobs give faces at several sizes


@pytest.mark.parametrize("five_levels,batched", [(False, False), (True, True), (True, False)])
def test_random_scrfd_layouts_equal_insightface(tmp_path, images, five_levels, batched):
    from face_onnx_models import random_scrfd

    path = random_scrfd(tmp_path / "det.onnx", five_levels, batched)
    ours, theirs = _ours_det(path), _theirs_det(path)
    assert (ours.fmc, ours.use_kps, ours.batched) == (theirs.fmc, theirs.use_kps, theirs.batched)
    checked = 0
    for name in ("celebahq_28017.jpg", "aligned_512", "blobs_2faces"):
        img = images[name] if name in images else next(iter(images.values()))
        for size in (320, 256):
            for thresh in (0.5, 0.8):
                _compare_detections(ours, theirs, img, size, thresh, _resize_is_exact(img, size))
                checked += len(ours.detect(img, input_size=(size, size), det_thresh=thresh)[0])
    assert checked > 20  # many candidates survive: NMS and sorting are exercised


def test_max_num_and_static_input_size_like_insightface(tmp_path, images):
    from face_onnx_models import random_scrfd

    path = random_scrfd(tmp_path / "det.onnx")
    ours, theirs = _ours_det(path), _theirs_det(path)
    img = images["blobs_2faces"]
    for metric in ("default", "max"):
        a = ours.detect(img, input_size=(320, 320), max_num=3, metric=metric, det_thresh=0.5)
        b = theirs.detect(img, input_size=(320, 320), max_num=3, metric=metric, det_thresh=0.5)
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)
        np.testing.assert_allclose(a[1], b[1], atol=1e-5)


def test_mxnet_style_arcface_normalisation_equals_insightface(tmp_path, images, tiny_packs):
    import onnxruntime
    from insightface.app.common import Face
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    from comfyui_face_personalization.models_loader.face.arcface import ArcFace
    from face_onnx_models import mxnet_style_arcface

    path = mxnet_style_arcface(tmp_path / "rec.onnx")
    ours = ArcFace(onnxruntime.InferenceSession(path, providers=CPU), path)
    theirs = ArcFaceONNX(path, session=onnxruntime.InferenceSession(path, providers=CPU))
    assert (ours.input_mean, ours.input_std) == (theirs.input_mean, theirs.input_std) == (0.0, 1.0)
    img = images["celebahq_28017.jpg"]
    kps = np.array([[380, 480], [640, 478], [512, 620], [400, 760], [625, 757]], np.float32)
    got, want = ours.get(img, {"kps": kps}), theirs.get(img, Face(kps=kps))
    assert float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)) > 0.9999


def test_norm_crop_matches_insightface(images):
    from insightface.utils import face_align

    from comfyui_face_personalization.models_loader.face import arcface

    img = images["celebahq_28017.jpg"]
    kps = np.array([[380, 480], [640, 478], [512, 620], [400, 760], [625, 757]], np.float32)
    for size in (112, 128, 224):
        np.testing.assert_allclose(arcface.estimate_norm(kps, size), face_align.estimate_norm(kps, size), atol=1e-4)
        ours, theirs = arcface.norm_crop(img, kps, size), face_align.norm_crop(img, kps, size)
        diff = np.abs(ours.astype(int) - theirs)
        assert diff.max() <= 2 and (diff > 0).mean() < 0.02, (size, diff.max(), (diff > 0).mean())


def test_detect_faces_same_with_insightface_object(tiny_packs, images):
    """FP_FaceDetect on another pack's insightface FaceAnalysis == on ours (same pack files)."""
    import torch
    from insightface.app import FaceAnalysis

    from comfyui_face_personalization.models_loader.face import analysis, detect

    d = tiny_packs["buffalo_l"]
    theirs = FaceAnalysis(name=d, root=os.path.dirname(d), providers=CPU, allowed_modules=["detection", "recognition"])
    theirs.prepare(ctx_id=-1, det_size=(640, 640))
    ours = analysis.load_face_analysis("buffalo_l", "CPU")
    batch = torch.from_numpy(np.stack([images["blobs_2faces"][:, :, ::-1]]).astype(np.float32) / 255.0)
    a, b = detect.detect_faces(batch, ours, "all"), detect.detect_faces(batch, theirs, "all")
    assert len(a) == len(b) >= 2
    torch.testing.assert_close(a.kps, b.kps, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.stack([f.bbox for f in a.faces]), torch.stack([f.bbox for f in b.faces]))
    cos = torch.nn.functional.cosine_similarity(a.embeddings(), b.embeddings())
    assert cos.min() > 0.9999
    # insightface's own .get on both objects: the same faces
    img = images["blobs_2faces"]
    fa, fb = ours.get(img), theirs.get(img)
    assert len(fa) == len(fb) == len(a)
    for x, y in zip(fa, fb):
        np.testing.assert_allclose(x.bbox, y.bbox, atol=1e-4)
        assert float(x.normed_embedding @ y.normed_embedding) > 0.9999
