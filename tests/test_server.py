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


def test_prompt_over_http(server, tiny_sd15):
    outputs = server.run(txt2img(tiny_sd15, prefix="server_txt2img"))
    images = server.fetch_images(outputs)
    assert len(images) == 1
    assert Image.open(io.BytesIO(images[0])).size == (64, 64)


def test_bad_prompt_keeps_server_serving(server, tiny_sd15):
    bad = txt2img("no_such_checkpoint.safetensors")
    status, body = server.post_json("/prompt", {"prompt": bad})
    assert status == 400 and "node_errors" in body
    # still serving
    assert server.run(txt2img(tiny_sd15, prefix="server_after_error"))


def test_web_extension_served(server):
    exts = server.get_json("/extensions")
    assert any("comfyui_face_personalization" in e for e in exts), exts
