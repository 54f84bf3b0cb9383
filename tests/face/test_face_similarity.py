"""FP_FaceSimilarity: ArcFace cosine of each image's largest face to a reference identity."""
import os

import numpy as np
import pytest
import torch
from face_helpers import blob_image


def _ort_embedding(pack_dir, image, kps):
    """Independent ArcFace: kornia crop + onnxruntime on the recognition model, L2-normalised."""
    import onnxruntime

    from comfyui_face_personalization.models_loader.face.align import arcface_align

    crop = arcface_align(image, kps[None])
    x = ((crop * 255.0 - 127.5) / 127.5).movedim(-1, 1).numpy().astype(np.float32)
    sess = onnxruntime.InferenceSession(os.path.join(pack_dir, "glintr100.onnx"), providers=["CPUExecutionProvider"])
    e = torch.from_numpy(sess.run(None, {"input.1": x})[0])[0]
    return e / e.norm()


def test_scores_match_independent_arcface(comfy, tiny_packs):
    from comfyui_face_personalization.models_loader.face import analysis, detect

    fa = analysis.load_face_analysis("antelopev2", "CPU")
    a, b = blob_image(cx=170, cy=120), blob_image(cx=120, cy=140, r=70)
    blank = torch.zeros_like(a)
    node = comfy.node_classes["FP_FaceSimilarity"]()
    ref_bundle = detect.detect_faces(a, fa)
    reference = torch.stack([f.embedding for f in ref_bundle.faces])
    out = node.execute(torch.cat([a, blank, b]), reference, fa, 0.5)
    mean, report = out["result"]
    lines = report.splitlines()
    assert lines[1] == "image 2: no face" and "2 of 3 images" in lines[-1]
    s1, s3 = (float(lines[i].split(": ")[1]) for i in (0, 2))
    assert s1 == pytest.approx(1.0, abs=1e-4)  # the reference photo itself
    kps_a = ref_bundle.faces[0].kps
    kps_b = detect.detect_faces(b, fa).faces[0].kps
    want = float(torch.dot(_ort_embedding(tiny_packs["antelopev2"], b, kps_b),
                           _ort_embedding(tiny_packs["antelopev2"], a, kps_a)))
    assert s3 == pytest.approx(want, abs=1e-2)  # cv2 (insightface) vs kornia warps of a uint8 image
    assert mean == pytest.approx((s1 + s3) / 2, abs=1e-4)
    assert out["ui"]["text"] == [report]


def test_no_face_anywhere_and_no_recogniser(comfy, tiny_packs, offline_detector):
    from comfyui_face_personalization.models_loader.face import analysis

    node = comfy.node_classes["FP_FaceSimilarity"]()
    ref = torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    mean, report = node.execute(torch.zeros(2, 64, 64, 3), ref, analysis.load_face_analysis("antelopev2", "CPU"),
                                0.5)["result"]
    assert mean == 0.0 and report.count("no face") == 2
    with pytest.raises(ValueError, match="no recognition"):
        node.execute(blob_image(), ref, offline_detector, 0.5)
    with pytest.raises(ValueError, match="512"):
        node.execute(blob_image(), torch.randn(1, 128), analysis.load_face_analysis("antelopev2", "CPU"), 0.5)
