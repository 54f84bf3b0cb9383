"""Identity embeddings in the text space (CrossInit, AdaFace, PersonaMagic, files): the training code imports this.

``IDENTITY_EMBEDDING`` (the value passed between nodes)::

    {"name": str, "method": str, "vectors": tensor [N, D] | {embedding_key: tensor [N, D]}}

:func:`apply_identity` is the one "CLIP + trigger word + vectors -> (patched CLIP, identity)" step every
node uses; :func:`vectors_from_state` / :func:`load_identity_file` / :func:`save_identity_file` read and
write the official CrossInit ``learned_embeds.bin`` and ComfyUI's ``embedding:`` format.
"""
import os
import re

import torch

from .. import safe_load
from .trigger import apply_trigger, check_trigger


def make_identity(name, vectors, method):
    return {"name": name, "method": method, "vectors": vectors}


def apply_identity(clip, trigger, vectors, method, what="identity embedding", name=None):
    """(CLIP clone where ``trigger`` becomes ``vectors``, IDENTITY_EMBEDDING named after the trigger)."""
    trigger = check_trigger(trigger)
    return apply_trigger(clip, trigger, vectors, what=what), make_identity(name or trigger, vectors, method)


_OFFICIAL_KEY = re.compile(r"^(?P<stem>.+)_v(?P<idx>\d+)$")
_ENCODER_KEYS = ("clip_l", "clip_g", "clip_h")


def vectors_from_state(sd, source="file"):
    """Identity vectors from a loaded file: tensor [N, D] or {embedding_key: tensor [N, D]}.

    Accepts the official CrossInit ``{"<id>_v0": [D], "<id>_v1": [D]}``, the pack's / ComfyUI's
    ``{"emb_params": [N, D]}``, per-encoder ``{"clip_l": .., "clip_g": ..}``, A1111 ``string_to_param``
    and a bare tensor."""
    if isinstance(sd, torch.Tensor):
        return sd.float().reshape(-1, sd.shape[-1])
    if not isinstance(sd, dict):
        raise ValueError(f"{source}: not an embedding file (got {type(sd).__name__})")
    if "string_to_param" in sd and isinstance(sd["string_to_param"], dict):
        t = next(iter(sd["string_to_param"].values()))
        return t.float().reshape(-1, t.shape[-1])
    enc = {k: v for k, v in sd.items() if k in _ENCODER_KEYS and isinstance(v, torch.Tensor)}
    if enc:
        return {k: v.float().reshape(-1, v.shape[-1]) for k, v in enc.items()}
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    official = {}
    for k, v in tensors.items():
        m = _OFFICIAL_KEY.match(k)
        if m:
            official.setdefault(m.group("stem"), {})[int(m.group("idx"))] = v
    if official:
        if len(official) > 1:
            raise ValueError(f"{source}: holds several identities {sorted(official)}; one identity per file expected")
        parts = next(iter(official.values()))
        idx = sorted(parts)
        if idx != list(range(len(idx))):
            raise ValueError(f"{source}: token indices {idx} are not consecutive from 0")
        return torch.stack([parts[i].float().reshape(-1) for i in idx])
    if "emb_params" in tensors:
        t = tensors["emb_params"]
        return t.float().reshape(-1, t.shape[-1])
    if len(tensors) == 1:
        t = next(iter(tensors.values()))
        return t.float().reshape(-1, t.shape[-1])
    raise ValueError(f"{source}: unrecognised embedding layout (keys {sorted(sd)[:8]}); expected "
                     "{'<id>_v0','<id>_v1'} (official learned_embeds.bin), {'emb_params'} or {'clip_l','clip_g'}")


def load_identity_file(path):
    """IDENTITY_EMBEDDING from a file (tensor-only loading; pickled code is refused)."""
    sd = safe_load.load_file(path)
    name = os.path.splitext(os.path.basename(path))[0]
    if isinstance(sd, dict):
        stems = [m.group("stem") for k in sd if (m := _OFFICIAL_KEY.match(str(k)))]
        if stems:
            name = stems[0]
    return make_identity(name, vectors_from_state(sd, os.path.basename(path)), "file")


def save_identity_file(identity, path):
    """Write ComfyUI's ``embedding:`` format: one tensor [N, D] (``emb_params``) for a single encoder,
    ``{"clip_l": .., "clip_g": ..}`` for several."""
    import safetensors.torch

    vec = identity["vectors"]
    if isinstance(vec, dict):
        sd = {k: v.float().contiguous() for k, v in vec.items()}
        if len(sd) == 1:
            sd = {"emb_params": next(iter(sd.values()))}
    else:
        sd = {"emb_params": vec.float().contiguous()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {"name": str(identity.get("name", "")), "method": str(identity.get("method", "")),
            "format": "face-personalization identity embedding"}
    safetensors.torch.save_file(sd, path, metadata=meta)
    return path
