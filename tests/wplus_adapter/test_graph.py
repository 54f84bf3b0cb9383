"""Real ComfyUI graphs: FP_LoadWPlus + FP_LoadWPlusAdapter -> ApplyResidualCrossAttention -> KSampler,
and FP_LoadPIDiff -> FP_ApplyStyleCrossAttention; the W+ code actually changes the image."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.graphs import txt2img


@pytest.fixture(scope="module")
def wplus_models(comfy, comfy_home, shared_data, tiny_sd15, install_model):
    home = Path(comfy_home) / "models"
    for sub in ("wplus", "wplus/codes", "pidiff"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    for name in ("e4e_1.pth", "e4e_2.pth"):
        shutil.copyfile(shared_data / "wplus" / "wcodes" / name, home / "wplus" / "codes" / name)
    adapter = install_model("wplus_adapter_sd15", "wplus")
    pidiff = install_model("pidiff_sd15", "pidiff")
    return adapter, pidiff


def rca_prompt(ckpt, adapter, code, strength=1.0, start=0.0, prefix="fp_wplus"):
    p = txt2img(ckpt, steps=2, prefix=prefix)
    p["code"] = {"class_type": "FP_LoadWPlus", "inputs": {"code": code}}
    p["adapter"] = {"class_type": "FP_LoadWPlusAdapter", "inputs": {"adapter_name": adapter}}
    p["rca"] = {"class_type": "ApplyResidualCrossAttention", "inputs": {
        "model": ["ckpt", 0], "wplus_adapter": ["adapter", 0], "wplus": ["code", 0], "strength": strength,
        "start_percent": start, "end_percent": 1.0}}
    p["sample"]["inputs"]["model"] = ["rca", 0]
    return p


def _image(comfy, outputs):
    files = comfy.output_files(outputs)
    assert len(files) == 1
    return np.asarray(Image.open(files[0]), dtype=np.float32)


def test_rca_graph_wplus_changes_image(comfy, tiny_sd15, wplus_models):
    adapter, _ = wplus_models
    plain = _image(comfy, comfy.run(txt2img(tiny_sd15, steps=2, prefix="fp_wplus_plain")))
    a = _image(comfy, comfy.run(rca_prompt(tiny_sd15, adapter, "e4e_1.pth", prefix="fp_wplus_a")))
    b = _image(comfy, comfy.run(rca_prompt(tiny_sd15, adapter, "e4e_2.pth", prefix="fp_wplus_b")))
    zero = _image(comfy, comfy.run(rca_prompt(tiny_sd15, adapter, "e4e_1.pth", strength=0.0, prefix="fp_wplus_0")))
    assert np.abs(a - b).max() > 0 and np.abs(a - plain).max() > 0
    assert np.array_equal(zero, plain)


def test_pidiff_graph(comfy, tiny_sd15, wplus_models):
    _, pidiff = wplus_models
    p = rca_prompt(tiny_sd15, "unused", "e4e_1.pth", prefix="fp_pidiff")
    del p["adapter"], p["rca"]
    p["pidiff"] = {"class_type": "FP_LoadPIDiff", "inputs": {"pidiff_name": pidiff}}
    p["sca"] = {"class_type": "FP_ApplyStyleCrossAttention", "inputs": {
        "model": ["ckpt", 0], "pidiff": ["pidiff", 0], "wplus": ["code", 0], "strength": 0.4,
        "start_percent": 0.0, "end_percent": 1.0}}
    p["sample"]["inputs"]["model"] = ["sca", 0]
    img = _image(comfy, comfy.run(p))
    plain = _image(comfy, comfy.run(txt2img(tiny_sd15, steps=2, prefix="fp_pidiff_plain")))
    assert np.abs(img - plain).max() > 0
    p["sca"]["inputs"]["strength"] = 0.0  # strength 0 through the graph: the plain image, bit for bit
    p["save"]["inputs"]["filename_prefix"] = "fp_pidiff_0"
    assert np.array_equal(_image(comfy, comfy.run(p)), plain)


@pytest.mark.parametrize("scheduler,steps,strength", [
    ("simple", 10, 0.87), ("normal", 20, 0.88), ("normal", 10, 0.89), ("karras", 14, 0.86), ("normal", 50, 0.85),
])
def test_start_percent_default_switches_on_like_official(comfy, tiny_sd15, wplus_models, monkeypatch, scheduler,
                                                         steps, strength):
    """The node's default start_percent in a real KSampler run: the residual is off for steps
    i <= int(0.2 * steps) (official rule) and on after, observed at the attention layers."""
    import nodes
    from comfy.samplers import calculate_sigmas

    from comfyui_face_personalization.models_loader.methods.wplus import attention

    adapter, _ = wplus_models
    default = comfy.node_classes["ApplyResidualCrossAttention"].INPUT_TYPES()["required"]["start_percent"][1]["default"]
    calls = []
    real = attention.residual_attention

    def spy(h_text, q, k, v, extra_options, entry):
        calls.append(float(extra_options["sigmas"].reshape(-1)[0]))
        return real(h_text, q, k, v, extra_options, entry)

    monkeypatch.setattr(attention, "residual_attention", spy)
    # a strength of its own per case: ComfyUI would otherwise reuse a cached patched MODEL (without this spy)
    p = rca_prompt(tiny_sd15, adapter, "e4e_1.pth", strength=strength, start=default,
                   prefix=f"fp_wplus_default_{scheduler}{steps}")
    p["sample"]["inputs"].update(steps=steps, scheduler=scheduler)  # euler: one model call per step
    comfy.run(p)
    model = nodes.CheckpointLoaderSimple().load_checkpoint(tiny_sd15)[0]
    sigmas = calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)[:-1]
    on_steps = {int((sigmas - s).abs().argmin()) for s in calls}
    off = int(0.2 * steps)
    assert on_steps == set(range(off + 1, steps)), (default, sorted(on_steps))
