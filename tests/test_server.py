"""The pack in a real ComfyUI server: it imports cleanly, its nodes appear in /object_info, and
prompts (built-in graph and every shipped workflow's first one) execute over HTTP."""
import io
import shutil
import sys

import pytest
from PIL import Image

from harness.graphs import txt2img
from harness.server import ComfyServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd15, comfy_home):
    home = tmp_path_factory.mktemp("server_home")
    (home / "models" / "checkpoints").mkdir(parents=True)
    for sub in ("checkpoints", "controlnet", "insightface", "e4e", "wplus", "pidiff", "personamagic", "adaface",
                "embeddings", "clip_vision", "face_embeds", "crossinit"):
        src = comfy_home / "models" / sub
        if src.is_dir():
            shutil.copytree(src, home / "models" / sub, symlinks=True, dirs_exist_ok=True)
    with ComfyServer(home, python=sys.executable) as srv:
        yield srv


def test_nodes_in_object_info(server, pack):
    info = server.object_info
    missing = [n for n in pack.NODE_CLASS_MAPPINGS if n not in info]
    assert not missing, f"pack nodes missing from /object_info: {missing}"
    for node_id in pack.NODE_CLASS_MAPPINGS:
        assert info[node_id]["category"].startswith("face_personalization")
        assert info[node_id]["python_module"].startswith("custom_nodes.")


def test_prompt_over_http(server, tiny_sd15, comfy):
    """Smoke test over HTTP, plus one real check: the server's image equals the in-process executor's for the
    same prompt, pixel for pixel (same ComfyUI, same models, CPU)."""
    import numpy as np

    outputs = server.run(txt2img(tiny_sd15, prefix="server_txt2img"))
    images = server.fetch_images(outputs)
    assert len(images) == 1
    over_http = np.asarray(Image.open(io.BytesIO(images[0])))
    assert over_http.shape == (64, 64, 3)
    local = np.asarray(Image.open(comfy.output_files(comfy.run(txt2img(tiny_sd15, prefix="server_local")))[0]))
    assert np.abs(over_http.astype(np.int16) - local.astype(np.int16)).max() <= 1  # two processes' float rounding


def test_bad_prompt_keeps_server_serving(server, tiny_sd15):
    bad = txt2img("no_such_checkpoint.safetensors")
    status, body = server.post_json("/prompt", {"prompt": bad})
    assert status == 400 and "node_errors" in body
    # still serving
    assert server.run(txt2img(tiny_sd15, prefix="server_after_error"))


def test_web_extension_served(server):
    exts = server.get_json("/extensions")
    assert any("comfyui_face_personalization" in e for e in exts), exts


def test_face_errors_over_http_keep_server_serving(server, tiny_sd15):
    """No face in the photo / missing model folder: a clear execution error, and the server goes on."""
    import numpy as np

    gray = server.home / "input" / "face_gray.png"
    gray.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(gray)
    prompt = {
        "load": {"class_type": "LoadImage", "inputs": {"image": "face_gray.png"}},
        "detector": {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}},
        "detect": {"class_type": "FP_FaceDetect", "inputs": {"image": ["load", 0], "face_analysis": ["detector", 0],
                   "select": "largest", "index": 0, "if_no_face": "error", "det_thresh": 0.5}},
        "align": {"class_type": "FP_FaceAlign", "inputs": {"image": ["load", 0], "faces": ["detect", 0],
                  "template": "ffhq", "size": 512, "padding": "reflect"}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["align", 0], "filename_prefix": "bad"}},
    }
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "no face found in image 1 of 1" in errors[0]["exception_message"]

    (server.home / "models" / "insightface" / "models" / "empty_pack").mkdir(parents=True, exist_ok=True)
    missing = {"loader": {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": "empty_pack", "provider": "CPU", "det_size": 640}},
               "detect": {"class_type": "FP_FaceDetect", "inputs": {"image": ["load", 0], "face_analysis": ["loader", 0],
                          "select": "largest", "index": 0, "if_no_face": "error", "det_thresh": 0.5}},
               "load": prompt["load"],
               "mask": {"class_type": "FP_FaceMask", "inputs": {"image": ["load", 0], "faces": ["detect", 0],
                        "shape": "convex_hull", "grow": 1.0, "feather": 8.0}},
               "preview": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
               "save": {"class_type": "SaveImage", "inputs": {"images": ["preview", 0], "filename_prefix": "bad2"}}}
    entry = server.wait(server.queue(missing))
    assert entry["status"]["status_str"] == "error"
    text = str(entry["status"]["messages"])
    assert "empty_pack" in text and ".onnx" in text, text[-2000:]
    assert server.run(txt2img(tiny_sd15, prefix="server_after_face_error"))
