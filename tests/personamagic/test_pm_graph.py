"""Real ComfyUI graphs: CheckpointLoaderSimple -> FP_LoadPersonaMagic -> StageRegulatedTI -> KSampler -> SaveImage.

Every test installs what its graph needs (mapper, CLIP vision model, reference photo): order-independent."""
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_workflows import CLIP_VISION, REFERENCE, personamagic_basic  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _bypass_inputs(comfy, comfy_home, install_model, shared_data):
    """The default graph's image bypass: the tiny CLIP ViT-B/32 and the reference photo in input/."""
    assert install_model("clip_vision_vitb32", "clip_vision") == CLIP_VISION
    shutil.copyfile(shared_data / "faces" / REFERENCE, Path(comfy_home) / "input" / REFERENCE)


def _image(comfy, outputs):
    files = comfy.output_files(outputs)
    assert len(files) == 1 and files[0].exists()
    return np.asarray(Image.open(files[0])).astype(np.float32)


def test_graph_runs_and_identity_changes_the_image(comfy, tiny_sd15, pm_install):
    mapper = pm_install("personamagic_mapper")
    prompt = personamagic_basic(ckpt=tiny_sd15, mapper=mapper, steps=3, prefix="pm_graph")
    img = _image(comfy, comfy.run(prompt))
    # same graph with the patched MODEL bypassed and the plain class-word prompt: a different image
    plain = personamagic_basic(ckpt=tiny_sd15, mapper=mapper, steps=3, prefix="pm_graph_plain")
    plain["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1],
                                                               "text": "a photo of face reading a book"}}
    plain["sample"]["inputs"]["model"] = ["ckpt", 0]
    plain["sample"]["inputs"]["positive"] = ["pos", 0]
    ref = _image(comfy, comfy.run(plain))
    assert np.abs(img - ref).max() > 0
    # the class-word stage (t > t_high) at every step: exactly the plain class-word image
    class_only = personamagic_basic(ckpt=tiny_sd15, mapper=mapper, steps=3, prefix="pm_graph_class")
    class_only["sti"]["inputs"].update(t_high=0.0, t_low=0.0)
    diff = np.abs(_image(comfy, comfy.run(class_only)) - ref)
    # same contexts through the patch's attention path: float rounding only (8-bit PNGs)
    assert diff.max() <= 2 and diff.mean() <= 0.05, (diff.max(), diff.mean(), np.abs(img - ref).mean())


def test_graph_safetensors_mapper_and_listing(comfy, comfy_home, tiny_sd15, pm_install, pm_bundle):
    """The official .pt saved as the pack's safetensors is listed and gives the very same image."""
    from comfyui_face_personalization.models_loader.methods.personamagic import save_mapper

    official = pm_install("personamagic_mapper")
    st = f"pm_roundtrip_{uuid.uuid4().hex[:8]}.safetensors"
    save_mapper(pm_bundle, str(Path(comfy_home) / "models" / "personamagic" / st))
    assert pm_install("personamagic_mapper_st") in comfy.node_classes["FP_LoadPersonaMagic"].INPUT_TYPES()["required"]["mapper_name"][0]
    assert st in comfy.node_classes["FP_LoadPersonaMagic"].INPUT_TYPES()["required"]["mapper_name"][0]
    a = _image(comfy, comfy.run(personamagic_basic(ckpt=tiny_sd15, mapper=st, steps=2, prefix="pm_graph_st")))
    b = _image(comfy, comfy.run(personamagic_basic(ckpt=tiny_sd15, mapper=official, steps=2, prefix="pm_graph_pt")))
    assert np.array_equal(a, b)


def test_graph_wrong_family_is_a_clear_error(comfy, tiny_sd2, pm_install):
    mapper = pm_install("personamagic_mapper")
    err = comfy.run(personamagic_basic(ckpt=tiny_sd2, mapper=mapper, steps=1, prefix="pm_bad"), expect_error=True)
    text = str(err)
    assert "768-d tokens" in text and "1024-d" in text
