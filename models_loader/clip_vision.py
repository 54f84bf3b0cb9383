"""CLIP vision models of any ViT size, as ComfyUI ``CLIP_VISION`` objects.

ComfyUI's ``CLIPVisionLoader`` recognises a model by its layer count (48 = bigG, 32 = H, 24 = L)
and returns ``None`` for anything else, so the 12-layer ViT-B/32 that PersonaMagic's bypass was
trained with (OpenAI ``clip-vit-base-patch32``, 512-d ``image_embeds``) cannot be loaded there.
Here the config is read off the weights instead (width, depth, patch and image size, projection)
and the model is ComfyUI's own ``ClipVisionModel``, so ``CLIPVisionEncode`` and every node that
takes a ``CLIP_VISION`` work with it unchanged.

Accepted layouts: HF ``CLIPVisionModelWithProjection`` (``vision_model.*``, ``visual_projection``),
a whole HF ``CLIPModel`` (text keys are dropped), and OpenAI/open_clip (``visual.*``).
"""
import json
import os
import re
import tempfile

ACTIVATIONS = ("quick_gelu", "gelu")  # OpenAI CLIP uses quick_gelu, LAION/open_clip models gelu


class ClipVisionFormatError(ValueError):
    pass


def to_transformers_layout(sd):
    """Any accepted layout -> HF ``vision_model.*`` + ``visual_projection.weight`` keys (vision only)."""
    import comfy.clip_vision

    if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
        sd = comfy.clip_vision.convert_to_transformers(dict(sd), "visual.")
    return {k: v for k, v in sd.items()
            if (k.startswith("vision_model.") or k == "visual_projection.weight") and not k.endswith("position_ids")}


def infer_config(sd, activation="quick_gelu"):
    """ComfyUI ``clip_vision_model`` config from HF-layout vision weights."""
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"]
        positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
        fc1 = sd["vision_model.encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise ClipVisionFormatError(
            f"not a CLIP vision model: the key {exc} is missing (expected HF 'vision_model.*' or OpenAI "
            f"'visual.*' weights)") from None
    if "visual_projection.weight" not in sd:
        raise ClipVisionFormatError("this CLIP vision file has no visual_projection: it cannot produce image_embeds "
                                    "(use the CLIPVisionModelWithProjection / full CLIP weights)")
    if activation not in ACTIVATIONS:
        raise ClipVisionFormatError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    hidden, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ClipVisionFormatError(f"position embedding of {positions} rows is not 1 + a square patch grid")
    layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)] if m)
    return {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": activation,
        "hidden_size": hidden,
        "image_size": grid * patch_size,
        "intermediate_size": fc1.shape[0],
        "layer_norm_eps": 1e-05,
        "model_type": "clip_vision_model",
        "num_attention_heads": max(1, hidden // 64),  # every CLIP ViT uses 64-d heads
        "num_channels": channels,
        "num_hidden_layers": layers,
        "patch_size": patch_size,
        "projection_dim": sd["visual_projection.weight"].shape[0],
    }


PRECISIONS = ("fp32", "auto")


def load_state_dict(sd, activation="quick_gelu", precision="fp32"):
    """-> ``comfy.clip_vision.ClipVisionModel`` built from ``sd`` (strict: every weight must load).

    ``precision`` "fp32" keeps the weights in fp32 (PersonaMagic's bypass is computed in fp32; fp16
    weights move the image embedding by ~3e-3); "auto" is ComfyUI's text-encoder dtype choice."""
    import comfy.clip_vision
    import torch

    if precision not in PRECISIONS:
        raise ClipVisionFormatError(f"precision must be one of {PRECISIONS}, got {precision!r}")

    sd = to_transformers_layout(sd)
    config = infer_config(sd, activation)
    fd, path = tempfile.mkstemp(suffix=".json", prefix="clip_vision_")
    try:  # ComfyUI's constructor takes a json path
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        model = comfy.clip_vision.ClipVisionModel(path)
    finally:
        os.unlink(path)
    if precision == "fp32" and model.dtype != torch.float32:
        model.model.to(torch.float32)  # before loading, so the fp32 weights are not rounded
        model.dtype = torch.float32
    missing, unexpected = model.load_sd(sd)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise ClipVisionFormatError(f"CLIP vision weights do not match the inferred config {config}: "
                                    f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    model.config = config
    return model


def load(path, activation="quick_gelu", precision="fp32"):
    from . import safe_load

    sd = safe_load.load_file(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ClipVisionFormatError(f"{os.path.basename(path)} is not a state dict")
    try:
        return load_state_dict(sd, activation, precision)
    except ClipVisionFormatError as exc:
        raise ClipVisionFormatError(f"{os.path.basename(path)}: {exc}") from None
