"""The face nodes inside real ComfyUI graphs (LoadImage -> ... -> SaveImage), bad input through the
executor (clear errors, and the next prompt still runs), embeddings save/load, masks."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from face_build_workflows import WORKFLOW, faces_detect_align_prompt
from face_helpers import blob_image, load_image


def _saved(comfy, outputs, node):
    files = comfy.output_files({node: outputs[node]})
    return [np.asarray(Image.open(f), dtype=np.float32) / 255.0 for f in files]


def _put_image(comfy_home, name, tensor):
    arr = (tensor[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(os.path.join(comfy_home, "input", name))
    return name


@pytest.fixture
def wild(input_image, shared_data):
    return input_image(shared_data / "faces" / "wplus_in_the_wild_1.jpg")


def test_detect_align_mask_graph_matches_reference(comfy, wild, shared_data, offline_detector):
    from comfyui_face_personalization.models_loader.face.align import FFHQ_TEMPLATE_512
    from comfyui_face_personalization.models_loader.face.detect import detect_faces

    outputs = comfy.run(faces_detect_align_prompt(wild, prefix="face_graph"))
    aligned = _saved(comfy, outputs, "save")
    assert len(aligned) == 1 and aligned[0].shape == (512, 512, 3)
    # independent reference: least squares via numpy normal equations + cv2.warpAffine
    img = load_image(shared_data / "faces" / "wplus_in_the_wild_1.jpg")
    kps = detect_faces(img, offline_detector).kps[0].double().numpy()
    dst = FFHQ_TEMPLATE_512.numpy()
    A = np.zeros((10, 4))
    A[0::2] = np.stack([kps[:, 0], -kps[:, 1], np.ones(5), np.zeros(5)], 1)
    A[1::2] = np.stack([kps[:, 1], kps[:, 0], np.zeros(5), np.ones(5)], 1)
    a, b, tx, ty = np.linalg.lstsq(A, dst.reshape(-1), rcond=None)[0]
    M = np.array([[a, -b, tx], [b, a, ty]])
    ref = cv2.warpAffine(img[0].numpy(), M, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    inner = np.s_[64:448, 64:448]
    diff = np.abs(aligned[0][inner] - ref[inner])
    assert diff.mean() < 2.0 / 255 and diff.max() < 0.05, (diff.mean(), diff.max())
    # the mask preview: a face-shaped region covering the eyes/mouth, not the whole photo
    mask = _saved(comfy, outputs, "preview")[0][..., 0]
    assert mask.shape == img.shape[1:3]
    for x, y in np.round(kps).astype(int):
        assert mask[y, x] > 0.99
    assert 0.02 < mask.mean() < 0.3


def test_insightface_graph_embed_save_load(comfy, comfy_home, tiny_packs, shared_data):
    """Loader (tiny antelopev2) -> detect -> embed(mean) -> save; load it back -> save again: equal."""
    from comfyui_face_personalization.models_loader import paths
    from comfyui_face_personalization.models_loader.face import analysis, detect, embed

    imgs = torch.cat([blob_image(cx=170, cy=120), blob_image(cx=120, cy=140, r=70)])
    names = [_put_image(comfy_home, f"face_blob_{i}.png", imgs[i:i + 1]) for i in range(2)]
    prompt = {
        "l0": {"class_type": "LoadImage", "inputs": {"image": names[0]}},
        "l1": {"class_type": "LoadImage", "inputs": {"image": names[1]}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["l0", 0], "image2": ["l1", 0]}},
        "fa": {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": "antelopev2", "provider": "CPU", "det_size": 640}},
        "detect": {"class_type": "FP_FaceDetect", "inputs": {"image": ["batch", 0], "face_analysis": ["fa", 0],
                   "select": "largest", "index": 0, "if_no_face": "error", "det_thresh": 0.5}},
        "embed": {"class_type": "FP_FaceEmbed", "inputs": {"faces": ["detect", 0], "mode": "mean"}},
        "save": {"class_type": "FP_SaveFaceEmbeds", "inputs": {"face_embeds": ["embed", 0], "filename": "graph_mean.safetensors",
                                                          "overwrite": True}},
    }
    comfy.run(prompt)
    saved = embed.load_embeds(os.path.join(paths.model_dir("face_embeds"), "graph_mean.safetensors"))
    fa = analysis.load_face_analysis("antelopev2", "CPU")
    direct = embed.face_embeds(detect.detect_faces(imgs, fa), "per_face")
    ref = direct.mean(0, keepdim=True)
    torch.testing.assert_close(saved, ref / ref.norm(), atol=1e-5, rtol=0)
    # the shared AdaFace mean embedding loads by absolute path (inside ComfyUI's folders) and round-trips through .pt
    shared = str(shared_data / "adaface" / "mean_emb_keanureeves.pt")
    if os.path.exists(shared):
        inside = os.path.join(paths.model_dir("face_embeds"), "keanu_src.pt")
        shutil.copyfile(shared, inside)
        p2 = {"load": {"class_type": "FP_LoadFaceEmbeds", "inputs": {"embeds_file": "graph_mean.safetensors", "path": inside}},
              "save": {"class_type": "FP_SaveFaceEmbeds", "inputs": {"face_embeds": ["load", 0], "filename": "keanu_copy.pt",
                                                                      "overwrite": True}}}
        comfy.run(p2)
        got = torch.load(os.path.join(paths.model_dir("face_embeds"), "keanu_copy.pt"), weights_only=True)
        want = torch.load(shared, weights_only=True, map_location="cpu")
        torch.testing.assert_close(got, want / want.norm(dim=-1, keepdim=True))


def _error_text(result):
    if "execution_error" in result:
        return result["execution_error"].get("exception_message", str(result["execution_error"]))
    return str(result)


def test_bad_inputs_through_the_executor(comfy, comfy_home, wild, insightface_root, tiny_packs):
    gray = _put_image(comfy_home, "face_gray.png", torch.full((1, 64, 64, 3), 0.5))
    base = faces_detect_align_prompt(gray, prefix="bad")
    # 1. no face
    msg = _error_text(comfy.run(base, expect_error=True))
    assert "no face found in image 1 of 1" in msg
    # 2. skip -> empty FACES -> align explains
    p = faces_detect_align_prompt(gray, prefix="bad")
    p["detect"]["inputs"]["if_no_face"] = "skip"
    assert "FACES is empty" in _error_text(comfy.run(p, expect_error=True))
    # 3. RGBA input (core JoinImageWithAlpha)
    p = faces_detect_align_prompt(wild, prefix="bad")
    p["rgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["load", 0], "alpha": ["load", 1]}}
    p["detect"]["inputs"]["image"] = ["rgba", 0]
    assert "RGBA" in _error_text(comfy.run(p, expect_error=True))
    # 4. corrupt ONNX / 5. folder without models: visible in the loader's list, clear errors
    broken = insightface_root / "models" / "broken_pack"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "det_10g.onnx").write_bytes(b"<html>404</html>")
    (insightface_root / "models" / "empty_pack").mkdir(parents=True, exist_ok=True)
    for pack, needle in (("broken_pack", "corrupt ONNX file"), ("empty_pack", "holds no .onnx")):
        prompt = {"fa": {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": pack, "provider": "CPU", "det_size": 640}},
                  "load": {"class_type": "LoadImage", "inputs": {"image": wild}},
                  "detect": {"class_type": "FP_FaceDetect", "inputs": {"image": ["load", 0], "face_analysis": ["fa", 0],
                             "select": "largest", "index": 0, "if_no_face": "error", "det_thresh": 0.5}},
                  "embed": {"class_type": "FP_FaceEmbed", "inputs": {"faces": ["detect", 0], "mode": "mean"}},
                  "save": {"class_type": "FP_SaveFaceEmbeds", "inputs": {"face_embeds": ["embed", 0], "filename": "x.pt"}}}
        msg = _error_text(comfy.run(prompt, expect_error=True))
        assert needle in msg and pack in msg, msg
    # 6. offline detector faces have no embedding -> FP_FaceEmbed says so
    p = faces_detect_align_prompt(wild, prefix="bad")
    p["embed"] = {"class_type": "FP_FaceEmbed", "inputs": {"faces": ["detect", 0], "mode": "mean"}}
    p["save_e"] = {"class_type": "FP_SaveFaceEmbeds", "inputs": {"face_embeds": ["embed", 0], "filename": "x.pt"}}
    assert "no ArcFace embedding" in _error_text(comfy.run(p, expect_error=True))
    # ... and the same executor keeps serving good prompts afterwards
    shutil.rmtree(broken)
    outputs = comfy.run(faces_detect_align_prompt(wild, prefix="after_errors"))
    assert comfy.output_files({"save": outputs["save"]})[0].exists()


def test_empty_and_grayscale_batches_direct(comfy):
    node = comfy.node_classes["FP_FaceDetect"]()
    from comfyui_face_personalization.models_loader.face.offline import load_offline_detector

    det = load_offline_detector()
    with pytest.raises(ValueError, match="empty image batch"):
        node.execute(torch.zeros(0, 64, 64, 3), det, "largest", 0, "error", 0.5)
    with pytest.raises(ValueError, match="grayscale"):
        node.execute(torch.zeros(1, 64, 64, 1), det, "largest", 0, "error", 0.5)
    with pytest.raises(ValueError, match="MASK or a grayscale"):
        node.execute(torch.zeros(1, 64, 64), det, "largest", 0, "error", 0.5)


def test_mask_whiten_and_paste_back_graph(comfy, wild, shared_data, offline_detector):
    """FaceAlign -> PasteBack (unchanged crop) ~ original; WhitenBackground == img*m + (1-m)."""
    p = faces_detect_align_prompt(wild, prefix="paste")
    p["paste"] = {"class_type": "FP_FacePasteBack", "inputs": {"image": ["load", 0], "aligned": ["align", 0],
                  "transform": ["align", 1], "feather": 16}}
    p["save_paste"] = {"class_type": "SaveImage", "inputs": {"images": ["paste", 0], "filename_prefix": "paste"}}
    p["white"] = {"class_type": "FP_WhitenBackground", "inputs": {"image": ["load", 0], "mask": ["mask", 0], "blur": 0.0}}
    p["save_white"] = {"class_type": "SaveImage", "inputs": {"images": ["white", 0], "filename_prefix": "white"}}
    p["save_mask"] = {"class_type": "SaveImage", "inputs": {"images": ["mask_img", 0], "filename_prefix": "mask"}}
    outputs = comfy.run(p)
    img = load_image(shared_data / "faces" / "wplus_in_the_wild_1.jpg")[0].numpy()
    pasted = _saved(comfy, outputs, "save_paste")[0]
    assert np.abs(pasted - img).mean() < 2.0 / 255
    white = _saved(comfy, outputs, "save_white")[0]
    m = _saved(comfy, outputs, "save_mask")[0][..., :1]
    ref = img * m + (1 - m)
    assert np.abs(white - ref).max() < 2.5 / 255
    assert (white[m[..., 0] == 0] > 0.995).all()


def test_workflow_file_up_to_date(comfy):
    import json

    from face_build_workflows import build

    # the shipped file must exist: never (re)write it here, or the test would compare it with itself
    assert WORKFLOW.exists(), (f"{WORKFLOW} is missing; regenerate it with face_build_workflows.write(comfy) "
                               "and commit it")
    assert json.loads(WORKFLOW.read_text()) == json.loads(json.dumps(build(comfy)))
