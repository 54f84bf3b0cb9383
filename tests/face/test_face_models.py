"""Face-pack loading on ONNX Runtime (no insightface): tiny SCRFD/ArcFace-signature ONNX files in
antelopev2/buffalo_l folders, provider choice, shared-object safety, and the folder/file error paths."""
import os
import shutil

import numpy as np
import pytest
import torch

from face_helpers import blob_image


def _mods():
    from comfyui_face_personalization.models_loader.face import analysis, detect, embed

    return analysis, detect, embed


@pytest.mark.parametrize("pack_name", ["antelopev2", "buffalo_l"])
def test_tiny_pack_loads_on_onnxruntime(tiny_packs, pack_name):
    analysis, _, _ = _mods()
    from comfyui_face_personalization.models_loader.face.arcface import ArcFace
    from comfyui_face_personalization.models_loader.face.scrfd import SCRFD

    fa = analysis.load_face_analysis(pack_name, "CPU")
    assert isinstance(fa.models["detection"], SCRFD) and isinstance(fa.models["recognition"], ArcFace)
    assert fa.det_model is fa.models["detection"]
    assert fa.models["detection"].use_kps and fa.models["detection"].fmc == 3
    assert os.path.realpath(fa.model_dir) == os.path.realpath(tiny_packs[pack_name])
    if pack_name == "antelopev2":  # the zip's nested antelopev2/antelopev2/ layout is found
        assert fa.model_dir.endswith(os.path.join("antelopev2", "antelopev2"))
    # insightface's FaceAnalysis API works on the object we return (other packs call exactly this)
    img = (blob_image()[0].numpy()[:, :, ::-1] * 255).astype(np.uint8)
    fa.prepare(ctx_id=-1, det_size=(640, 640))
    faces = fa.get(img)
    assert faces and faces[0].embedding.shape == (512,) and faces[0]["kps"].shape == (5, 2)
    np.testing.assert_allclose(np.linalg.norm(faces[0].normed_embedding), 1.0, rtol=1e-6)
    assert fa.get(np.zeros((256, 256, 3), np.uint8)) == []


def test_loader_never_mutates_a_returned_object(tiny_packs):
    """Two loads share the ORT sessions but not their settings: each call gets its own objects."""
    analysis, detect, _ = _mods()

    a = analysis.load_face_analysis("buffalo_l", "CPU", det_size=640)
    before = (a.det_model.input_size, a.det_thresh, dict(vars(a.det_model)).keys())
    b = analysis.load_face_analysis("buffalo_l", "CPU", det_size=320, det_thresh=0.7)
    assert a is not b and a.det_model is not b.det_model
    assert a.det_model.session is b.det_model.session            # one ORT session per file
    assert (a.det_model.input_size, a.det_thresh, dict(vars(a.det_model)).keys()) == before
    assert b.det_model.input_size == (320, 320) and b.det_thresh == 0.7
    snapshot = {k: v for k, v in vars(a.det_model).items() if k != "_centers"}
    detect.detect_faces(blob_image(), a, det_thresh=0.3)        # settings are arguments, never written
    assert {k: v for k, v in vars(a.det_model).items() if k != "_centers"} == snapshot
    assert a.det_thresh == 0.5


def test_face_path_runs_without_insightface_or_cv2(tiny_packs):
    """In a process where importing insightface or cv2 fails, load + detect + embed still work."""
    import subprocess
    import sys

    analysis, _, _ = _mods()
    root = os.path.dirname(os.path.dirname(os.path.abspath(analysis.__file__)))   # .../models_loader
    code = f"""
import os, sys, types
sys.modules["insightface"] = None; sys.modules["cv2"] = None   # any import of them raises ImportError
for name, path in (("fp", os.path.dirname({root!r})), ("fp.models_loader", {root!r})):
    mod = types.ModuleType(name); mod.__path__ = [path]; sys.modules[name] = mod   # skip the package inits
import numpy as np
from fp.models_loader.face.onnx_analysis import OnnxFaceAnalysis, build_models, open_sessions
d = {tiny_packs["buffalo_l"]!r}
fa = OnnxFaceAnalysis(build_models(open_sessions(d, sorted(os.listdir(d)), ["CPUExecutionProvider"])), d)
img = np.zeros((256, 320, 3), np.uint8)
yy, xx = np.mgrid[:256, :320]
img[((xx - 170) ** 2 + (yy - 120) ** 2) < 3600] = 255
faces = fa.get(img)
assert len(faces) >= 1 and faces[0].embedding.shape == (512,), faces
print("ok", sys.modules["cv2"] is not None, sys.modules["insightface"] is not None)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok", "False", "False"]


def test_provider_choice():
    analysis, _, _ = _mods()
    cpu_only = ["CPUExecutionProvider"]
    assert analysis.choose_providers("auto", cpu_only) == ["CPUExecutionProvider"]
    assert analysis.choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert analysis.choose_providers("auto", ["CoreMLExecutionProvider", "CPUExecutionProvider"]) == \
        ["CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert analysis.choose_providers("CPU", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == cpu_only
    with pytest.raises(analysis.FaceModelError, match="onnxruntime-gpu"):
        analysis.choose_providers("CUDA", cpu_only)
    with pytest.raises(analysis.FaceModelError, match="unknown provider"):
        analysis.choose_providers("TPU", cpu_only)


def test_loaded_sessions_use_chosen_provider(tiny_packs):
    """The providers ORT reports for the loaded sessions: CPU when forced; with 'auto', CUDA exactly
    when this onnxruntime build offers it (onnxruntime-gpu) and a GPU is present, else CPU."""
    analysis, _, _ = _mods()
    import onnxruntime

    fa = analysis.load_face_analysis("buffalo_l", "auto")
    used = {task: m.session.get_providers() for task, m in fa.models.items()}
    assert set(used) == {"detection", "recognition"}
    import torch

    offered = onnxruntime.get_available_providers()
    # onnxruntime-gpu offers CUDA even without a GPU; its session then falls back to CPU
    gpu = "CUDAExecutionProvider" in offered and torch.cuda.is_available()
    want = "CUDAExecutionProvider" if gpu else "CPUExecutionProvider"
    if not gpu and any(p in offered for p in ("ROCMExecutionProvider", "CoreMLExecutionProvider",
                                                                       "DmlExecutionProvider")):
        want = None  # another accelerator build: only check it is not plain CPU
    for task, provs in used.items():
        assert provs[-1] == "CPUExecutionProvider", (task, provs)     # CPU stays as the fallback
        assert provs[0] == want if want else provs[0] != "CPUExecutionProvider", (task, provs)
    assert analysis.session_providers(fa) == used
    fa_cpu = analysis.load_face_analysis("buffalo_l", "CPU")
    assert {t: m.session.get_providers() for t, m in fa_cpu.models.items()} == \
        {"detection": ["CPUExecutionProvider"], "recognition": ["CPUExecutionProvider"]}


def test_missing_folder_names_path_and_files(tmp_path):
    analysis, _, _ = _mods()
    with pytest.raises(analysis.FaceModelError) as err:
        analysis.find_model_dir("antelopev2", roots=[str(tmp_path)])
    msg = str(err.value)
    assert str(tmp_path / "models" / "antelopev2") in msg
    assert "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg
    (tmp_path / "models" / "antelopev2").mkdir(parents=True)
    (tmp_path / "models" / "antelopev2.zip").write_bytes(b"PK")
    msg = str(pytest.raises(analysis.FaceModelError, analysis.find_model_dir, "antelopev2", [str(tmp_path)]).value)
    assert "holds no .onnx" in msg and "unzip" in msg


@pytest.mark.parametrize("content,needle", [(b"", "empty"), (b"version https://git-lfs.github.com/spec/v1\n", "git-lfs"),
                                            (b"<html>not found</html>", "does not start like an ONNX")])
def test_corrupt_onnx_detected_before_ort(tmp_path, content, needle):
    analysis, _, _ = _mods()
    from fixtures import tiny

    d = tmp_path / "models" / "buffalo_l"
    d.mkdir(parents=True)
    shutil.copyfile(tiny.ensure("face_arcface"), d / "w600k_r50.onnx")
    (d / "det_10g.onnx").write_bytes(content)
    with pytest.raises(analysis.FaceModelError, match=needle) as err:
        analysis.load_face_analysis("buffalo_l", "CPU", roots=[str(tmp_path)])
    assert str(d / "det_10g.onnx") in str(err.value)


def test_truncated_onnx_clear_error(tmp_path):
    """A truncated download passes the cheap header check; ORT's failure is reported with the folder."""
    analysis, _, _ = _mods()
    from fixtures import tiny

    d = tmp_path / "models" / "buffalo_l"
    d.mkdir(parents=True)
    data = tiny.ensure("face_scrfd").read_bytes()
    (d / "det_10g.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(analysis.FaceModelError, match="corrupt or incomplete") as err:
        analysis.load_face_analysis("buffalo_l", "CPU", roots=[str(tmp_path)])
    assert str(d) in str(err.value)


def test_pack_without_detector(tmp_path):
    analysis, _, _ = _mods()
    from fixtures.tiny import face as tiny_face

    tiny_face.make_pack(tmp_path, "buffalo_l", detection=False)
    with pytest.raises(analysis.FaceModelError, match="no face detection model"):
        analysis.load_face_analysis("buffalo_l", "CPU", roots=[str(tmp_path)])


def test_detect_and_embed_match_independent_reference(tiny_packs):
    """Embeddings from FP_FaceDetect == ORT run on our own kornia ArcFace crop."""
    analysis, detect, embed = _mods()
    import onnxruntime
    from comfyui_face_personalization.models_loader.face.align import arcface_align

    fa = analysis.load_face_analysis("antelopev2", "CPU")
    images = torch.cat([blob_image(cx=170, cy=120), blob_image(cx=120, cy=140, r=70)])
    bundle = detect.detect_faces(images, fa)
    assert len(bundle) == 2 and bundle.has_embeddings
    crops = arcface_align(images[bundle.image_indices], bundle.kps)             # [2,112,112,3] RGB 0..1
    x = ((crops * 255.0 - 127.5) / 127.5).movedim(-1, 1).numpy().astype(np.float32)
    sess = onnxruntime.InferenceSession(os.path.join(tiny_packs["antelopev2"], "glintr100.onnx"),
                                        providers=["CPUExecutionProvider"])
    ref = torch.from_numpy(sess.run(None, {"input.1": x})[0])
    ref = ref / ref.norm(dim=1, keepdim=True)
    got = embed.face_embeds(bundle, "per_face")
    assert got.shape == (2, 512) and got.dtype == torch.float32
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))
    cos = (got * ref).sum(1)
    assert cos.min() > 0.995, cos          # cv2 vs kornia bilinear warps of a uint8 image
    mean = embed.face_embeds(bundle, "mean")
    ref_mean = ref.mean(0, keepdim=True)
    torch.testing.assert_close(mean, ref_mean / ref_mean.norm(), atol=5e-3, rtol=0)
