"""Foundation: the pack loads into real ComfyUI, tiny checkpoints are detected as the right
family by ComfyUI's own loader, and a txt2img prompt runs through ComfyUI's executor."""
import numpy as np
import pytest
from PIL import Image

from harness.graphs import txt2img


def test_pack_registers_nodes(comfy, pack):
    mine = pack.NODE_CLASS_MAPPINGS
    assert mine, "the pack registers no nodes"
    for node_id, cls in mine.items():
        assert comfy.node_classes.get(node_id) is cls
        assert getattr(cls, "CATEGORY", "").startswith("face_personalization"), node_id
        assert getattr(cls, "DESCRIPTION", ""), f"{node_id} has no DESCRIPTION"
        inputs = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name, spec in inputs.get(group, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"


@pytest.mark.parametrize("kind,family", [("sd15", "SD15"), ("sd2", "SD20"), ("sdxl", "SDXL")])
def test_tiny_checkpoint_detected(comfy, install_model, kind, family):
    import comfy.model_base as mb
    import comfy.supported_models as sm

    name = install_model(kind, "checkpoints")
    model, clip, vae = comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(name)[:3]
    cfg = model.model.model_config
    expected = {"SD15": sm.SD15, "SD20": sm.SD20, "SDXL": sm.SDXL}[family]
    assert isinstance(cfg, expected), type(cfg).__name__
    if family == "SDXL":
        assert isinstance(model.model, mb.SDXL)
        assert clip.cond_stage_model.clip_g is not None and clip.cond_stage_model.clip_l is not None
    width = {"SD15": 768, "SD20": 1024, "SDXL": 2048}[family]
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo"), return_pooled=True)
    assert cond.shape[-1] == width
    assert vae.latent_channels == 4


def test_txt2img_in_process(comfy, tiny_sd15):
    """Smoke test of the harness, plus one real check: the graph's image is what ComfyUI's own sampler and
    VAE give when called directly with the same seed and settings (the executor runs what we think)."""
    import nodes

    outputs = comfy.run(txt2img(tiny_sd15, prefix="host_txt2img"))
    files = comfy.output_files(outputs)
    assert len(files) == 1 and files[0].exists()
    img = np.asarray(Image.open(files[0]))
    assert img.shape == (64, 64, 3)
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(tiny_sd15)[:3]
    pos, neg = (nodes.CLIPTextEncode().encode(clip, t)[0] for t in ("a photo of a person", "blurry"))
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    sampled = nodes.common_ksampler(model, 0, 2, 5.0, "euler", "normal", pos, neg, latent)[0]
    direct = (vae.decode(sampled["samples"])[0].detach().clamp(0, 1).numpy() * 255.0).round()
    assert np.abs(img.astype(np.float32) - direct).max() <= 1.0


def test_controlnet_loads_and_applies(comfy, tiny_sd15, tiny_controlnet):
    """Smoke test: it runs end to end (the numerical oracles live in the method tests)."""
    prompt = txt2img(tiny_sd15, prefix="host_cn")
    prompt["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": tiny_controlnet}}
    prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 16777215}}
    prompt["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["hint", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    prompt["sample"]["inputs"]["positive"] = ["apply", 0]
    prompt["sample"]["inputs"]["negative"] = ["apply", 1]
    base = np.asarray(Image.open(comfy.output_files(comfy.run(txt2img(tiny_sd15, prefix="host_nocn")))[0]), dtype=np.int16)
    with_cn = np.asarray(Image.open(comfy.output_files(comfy.run(prompt))[0]), dtype=np.int16)
    assert np.abs(base - with_cn).max() > 0, "the ControlNet had no effect"
    prompt["apply"]["inputs"]["strength"] = 0.0  # core skips a strength-0 ControlNet: the plain image again
    prompt["save"]["inputs"]["filename_prefix"] = "host_cn0"
    off = np.asarray(Image.open(comfy.output_files(comfy.run(prompt))[0]), dtype=np.int16)
    assert np.array_equal(off, base)
