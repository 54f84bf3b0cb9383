"""Real ComfyUI graphs: CheckpointLoaderSimple -> FP_LoadPersonaMagic -> StageRegulatedTI -> KSampler -> SaveImage."""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_workflows import personamagic_basic  # noqa: E402


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


def test_graph_safetensors_mapper_and_listing(comfy, tiny_sd15, pm_install):
    st = pm_install("personamagic_mapper_st")
    assert st in comfy.node_classes["FP_LoadPersonaMagic"].INPUT_TYPES()["required"]["mapper_name"][0]
    outputs = comfy.run(personamagic_basic(ckpt=tiny_sd15, mapper=st, steps=2, prefix="pm_graph_st"))
    assert comfy.output_files(outputs)


def test_graph_wrong_family_is_a_clear_error(comfy, tiny_sd2, pm_install):
    mapper = pm_install("personamagic_mapper")
    err = comfy.run(personamagic_basic(ckpt=tiny_sd2, mapper=mapper, steps=1, prefix="pm_bad"), expect_error=True)
    text = str(err)
    assert "768-d tokens" in text and "1024-d" in text
