"""Training on what the user sees: the weight patches (LoRAs, merges) a graph put on its MODEL / CLIP, baked
into plain tensors on the ComfyUI side and written to the job folder; the worker loads the checkpoint file and
puts these tensors in place of the file's weights before training.

Only *weight* patches (``ModelPatcher.patches``) are baked. Attention or forward patches in ``model_options``
(e.g. other identity methods) are not part of the trained base.
"""
import os

OVERRIDES_FILE = "base_weights.safetensors"
PREFIXES = {"model": "model/", "clip": "clip/"}


def patched_weights(patcher):
    """{key: fp32 tensor} for every patched weight of a ComfyUI ModelPatcher, computed as ComfyUI's own
    ``patch_weight_to_device`` does (``comfy.lora.calculate_weight`` on the unpatched fp32 weight), without
    its stochastic rounding (the worker casts to its weight dtype)."""
    import comfy.lora
    import comfy.model_patcher
    import torch

    out = {}
    for key, patches in sorted(getattr(patcher, "patches", {}).items()):
        if not patches:
            continue
        weight, _, convert = comfy.model_patcher.get_key_weight(patcher.model, key)
        backup = patcher.backup.get(key)
        if backup is not None:  # the model is patched in place right now: start from the saved original
            weight = backup.weight
        w = weight.detach().to("cpu", torch.float32, copy=True)
        if convert is not None:
            w = convert(w, inplace=True)
        out[key] = comfy.lora.calculate_weight(patches, w, key).contiguous()
    return out


def write_overrides(job_dir, model=None, clip=None):
    """Bake the patches of ``model`` (MODEL) and ``clip`` (CLIP) into ``<job dir>/base_weights.safetensors``.
    Returns (file name relative to the job dir or "", {"model": n, "clip": n} patched tensors)."""
    import safetensors.torch

    tensors, counts = {}, {}
    for part, patcher in (("model", model), ("clip", getattr(clip, "patcher", None))):
        if patcher is None:
            continue
        baked = patched_weights(patcher)
        counts[part] = len(baked)
        tensors.update({PREFIXES[part] + k: v for k, v in baked.items()})
    if not tensors:
        return "", counts
    safetensors.torch.save_file(tensors, os.path.join(job_dir, OVERRIDES_FILE))
    return OVERRIDES_FILE, counts


def apply_overrides(path, model, clip):
    """Put the baked tensors of ``path`` into the freshly loaded checkpoint's ``model`` / ``clip`` (before they
    move to the device). Every key must exist with the same shape: else the MODEL/CLIP given to the training
    node were not the checkpoint picked in ``ckpt_name``."""
    import comfy.utils
    import safetensors.torch

    tensors = safetensors.torch.load_file(path)
    targets = {"model": model.model, "clip": clip.cond_stage_model}
    for full_key, value in tensors.items():
        part, key = full_key.split("/", 1)
        module = targets[part]
        try:
            current = comfy.utils.get_attr(module, key)
        except AttributeError:
            current = None
        if current is None or tuple(current.shape) != tuple(value.shape):
            raise ValueError(f"the {part.upper()} connected to the training node does not match the checkpoint "
                             f"picked in ckpt_name ({key}: {None if current is None else tuple(current.shape)} vs "
                             f"{tuple(value.shape)}); connect the MODEL/CLIP of that same checkpoint")
        comfy.utils.set_attr_param(module, key, value.to(current.dtype))
    return len(tensors)
