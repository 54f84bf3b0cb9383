"""CLIP ViT-B/32 for PersonaMagic's bypass: the any-size CLIP vision loader against an HF
``CLIPVisionModelWithProjection`` oracle, every accepted key layout, bad files, and the bypass in a graph."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_workflows import personamagic_basic  # noqa: E402


@pytest.fixture(scope="module")
def vitb32(comfy):
    """(HF reference model, its state dict) of the tiny ViT-B/32-family checkpoint."""
    import safetensors.torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from fixtures import tiny
    from fixtures.tiny.clip_vision import TINY_VITB32

    sd = safetensors.torch.load_file(str(tiny.ensure("clip_vision_vitb32")))
    ref = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VITB32)).eval()
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    return ref, sd


def _photo(shared_data):
    img = Image.open(shared_data / "faces" / "personamagic_person_1.jpg").convert("RGB")
    return torch.from_numpy(np.asarray(img).astype(np.float32) / 255.0)[None]


def _reference_embeds(ref, image, crop):
    import comfy.clip_vision

    pixels = comfy.clip_vision.clip_preprocess(image, size=224, crop=crop).float()
    with torch.no_grad():
        out = ref(pixel_values=pixels)
    return out.image_embeds, out.last_hidden_state


def _to_openai_layout(sd):
    """HF vision keys -> the OpenAI CLIP ``visual.*`` layout (fused in_proj, c_fc/c_proj, proj transposed)."""
    out = {"visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
           "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
           "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
           "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
           "visual.proj": sd["visual_projection.weight"].t().contiguous()}
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    i = 0
    while f"vision_model.encoder.layers.{i}.layer_norm1.weight" in sd:
        src = f"vision_model.encoder.layers.{i}."
        dst = f"visual.transformer.resblocks.{i}."
        for a, b in names.items():
            for y in ("weight", "bias"):
                out[f"{dst}{b}.{y}"] = sd[f"{src}{a}.{y}"]
        for y in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{y}"] = torch.cat([sd[f"{src}self_attn.{p}_proj.{y}"] for p in "qkv"])
        i += 1
    return out


def test_loader_matches_hf_reference(comfy, vitb32, shared_data, install_model):
    ref, _ = vitb32
    name = install_model("clip_vision_vitb32", "clip_vision")
    node = comfy.node_classes["FP_LoadCLIPVisionAnySize"]()
    assert name in node.INPUT_TYPES()["required"]["clip_name"][0]
    cv = node.load(name, "quick_gelu", "fp32")[0]
    assert cv.config["num_hidden_layers"] == 2 and cv.config["patch_size"] == 32
    assert cv.config["image_size"] == 224 and cv.config["projection_dim"] == 512
    image = _photo(shared_data)
    for crop in (False, True):
        out = cv.encode_image(image, crop=crop)
        want, hidden = _reference_embeds(ref, image, crop)
        assert out["image_embeds"].shape == (1, 512)
        assert (out["image_embeds"].float() - want).abs().max() <= 1e-5
        assert (out["last_hidden_state"].float() - hidden).abs().max() <= 1e-5


def test_comfy_core_loader_does_not_know_vitb32(comfy, vitb32):
    """Why the node exists: ComfyUI's own detection returns None for a 12-layer-or-less ViT."""
    import comfy.clip_vision

    assert comfy.clip_vision.load_clipvision_from_sd(dict(vitb32[1])) is None


def test_openai_and_full_clip_layouts(comfy, vitb32, shared_data):
    from comfyui_face_personalization.models_loader import clip_vision

    ref, sd = vitb32
    image = _photo(shared_data)
    want, _ = _reference_embeds(ref, image, False)
    openai = _to_openai_layout(sd)
    openai["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3, 3)  # text tower keys are dropped
    full_hf = dict(sd, **{"text_model.embeddings.token_embedding.weight": torch.zeros(4, 4),
                          "text_projection.weight": torch.zeros(4, 4), "logit_scale": torch.tensor(2.0),
                          # older transformers saved this buffer
                          "vision_model.embeddings.position_ids": torch.arange(50)[None]})
    for weights in (openai, full_hf):
        cv = clip_vision.load_state_dict(weights)
        got = cv.encode_image(image, crop=False)["image_embeds"].float()
        assert (got - want).abs().max() <= 1e-5


def test_auto_precision_is_comfys_dtype_choice(comfy, vitb32, shared_data):
    import comfy.model_management

    from comfyui_face_personalization.models_loader import clip_vision

    cv = clip_vision.load_state_dict(vitb32[1], precision="auto")
    want = comfy.model_management.text_encoder_dtype(cv.load_device)
    assert cv.dtype == want and cv.model.vision_model.embeddings.patch_embedding.weight.dtype == want
    ref = clip_vision.load_state_dict(vitb32[1]).encode_image(_photo(shared_data), crop=False)["image_embeds"]
    got = cv.encode_image(_photo(shared_data), crop=False)["image_embeds"].float()
    assert (got - ref).abs().max() <= 2e-2  # reduced-precision weights, same model


def test_gelu_option_changes_the_activation(comfy, vitb32, shared_data):
    from comfyui_face_personalization.models_loader import clip_vision

    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from fixtures.tiny.clip_vision import TINY_VITB32

    image = _photo(shared_data)
    a = clip_vision.load_state_dict(vitb32[1], "quick_gelu").encode_image(image, crop=False)["image_embeds"]
    b = clip_vision.load_state_dict(vitb32[1], "gelu").encode_image(image, crop=False)["image_embeds"]
    ref_gelu = CLIPVisionModelWithProjection(CLIPVisionConfig(**dict(TINY_VITB32, hidden_act="gelu"))).eval()
    ref_gelu.load_state_dict(vitb32[1], strict=False)
    want_gelu, _ = _reference_embeds(ref_gelu, image, crop=False)
    want_quick, _ = _reference_embeds(vitb32[0], image, crop=False)
    assert vitb32[0].config.hidden_act == "quick_gelu"
    assert (b.float() - want_gelu).abs().max() <= 1e-5
    assert (a.float() - want_quick).abs().max() <= 1e-5
    assert (want_gelu - want_quick).abs().max() > 1e-4


def test_bad_files_are_clear_errors(comfy, vitb32, tmp_path):
    import safetensors.torch

    from comfyui_face_personalization.models_loader import clip_vision
    from fixtures import tiny

    with pytest.raises(clip_vision.ClipVisionFormatError, match="not a CLIP vision model"):
        clip_vision.load(str(tiny.ensure("sd15")))  # an SD checkpoint
    no_proj = {k: v for k, v in vitb32[1].items() if k != "visual_projection.weight"}
    path = tmp_path / "noproj.safetensors"
    safetensors.torch.save_file(no_proj, str(path))
    with pytest.raises(clip_vision.ClipVisionFormatError, match="noproj.safetensors.*visual_projection"):
        clip_vision.load(str(path))
    with pytest.raises(clip_vision.ClipVisionFormatError, match="activation"):
        clip_vision.load_state_dict(vitb32[1], "relu")


def _image(comfy, outputs):
    files = comfy.output_files(outputs)
    assert len(files) == 1
    return np.asarray(Image.open(files[0])).astype(np.float32)


def test_graph_bypass_from_reference_photo(comfy, tiny_sd15, pm_install, install_model, input_image, shared_data):
    """LoadImage -> FP_LoadCLIPVisionAnySize -> CLIPVisionEncode -> StageRegulatedTI: the bypass changes the image."""
    mapper = pm_install("personamagic_mapper")
    cv = install_model("clip_vision_vitb32", "clip_vision")
    ref = input_image(shared_data / "faces" / "personamagic_person_1.jpg")
    with_bypass = personamagic_basic(ckpt=tiny_sd15, mapper=mapper, steps=4, prefix="pm_cv", clip_vision=cv,
                                     reference=ref)
    without = personamagic_basic(ckpt=tiny_sd15, mapper=mapper, steps=4, prefix="pm_nocv", clip_vision=None)
    a, b = _image(comfy, comfy.run(with_bypass)), _image(comfy, comfy.run(without))
    assert np.abs(a - b).max() > 0
    # the bypass acts only in the mapper stage: with the class word at every step (t > t_high) it changes nothing
    graphs = []
    for g, prefix in ((with_bypass, "pm_cv_class"), (without, "pm_nocv_class")):
        g = {k: {**v, "inputs": dict(v["inputs"])} for k, v in g.items()}
        g["sti"]["inputs"].update(t_high=0.0, t_low=0.0)
        g["sample"]["inputs"]["steps"] = 2
        g["save"]["inputs"]["filename_prefix"] = prefix
        graphs.append(_image(comfy, comfy.run(g)))
    diff = np.abs(graphs[0] - graphs[1])
    # float rounding only (8-bit PNGs; measured mean 3e-4 grey levels, against 0.1 for the bypass itself)
    assert diff.max() <= 1 and diff.mean() <= 0.01, (diff.max(), diff.mean())


def test_reference_encode_matches_official_preprocessing(comfy, vitb32, shared_data, install_model):
    """FP_PersonaMagicReferenceEncode == official read_image (PIL bicubic 512) + MultiCLIP.preprocess (bicubic 224,
    align_corners, no antialias) + CLIP image embedding, written here with PIL + torch + the HF model."""
    import torch.nn.functional as F

    ref, _ = vitb32
    cv = comfy.node_classes["FP_LoadCLIPVisionAnySize"]().load(install_model("clip_vision_vitb32", "clip_vision"),
                                                            "quick_gelu", "fp32")[0]
    path = shared_data / "faces" / "personamagic_person_1.jpg"
    img = Image.open(path).convert("RGB").resize((512, 512), resample=Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True)
    x = ((x + 1.0) / 2.0 - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) \
        / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = ref(pixel_values=x).image_embeds
    photo = _photo(shared_data)
    node = comfy.node_classes["FP_PersonaMagicReferenceEncode"]()
    got = node.encode(cv, photo)[0]["image_embeds"].float()
    assert got.shape == (1, 512)
    assert (got - want).abs().max() <= 1e-5
    # core CLIPVisionEncode (antialiased resize) gives a measurably different embedding
    core = cv.encode_image(photo, crop=False)["image_embeds"].float()
    assert (core - want).abs().max() > 1e-3
