"""FACE_EMBEDS: [N, 512] float32 L2-normalised ArcFace embeddings; per face, mean, save/load."""
import os

import torch

from .types import EMBED_DIM, DetectedFace, FaceBundle, normalise

EMBED_MODES = ["per_face", "mean"]
_KEYS = ("embeds", "face_embeds", "embedding", "embeddings", "mean_emb", "id_embeds", "arcface")


def mean_embedding(embeds: torch.Tensor) -> torch.Tensor:
    """Identity from several photos: mean of normalised embeddings, re-normalised -> [1, 512]."""
    return normalise(normalise(embeds).mean(0, keepdim=True))


def compute_embeddings(images, bundle: FaceBundle, analysis) -> FaceBundle:
    """Embed every face of ``bundle`` with ``analysis``'s recognition model (e.g. faces found by the
    offline detector, embedded by an antelopev2 FaceAnalysis)."""
    from .detect import _embed, check_images, describe, recognition_model, to_bgr_uint8

    check_images(images, "face embedding")
    rec = recognition_model(analysis)
    if rec is None:
        raise ValueError(f"{describe(analysis)} has no recognition (ArcFace) model; load antelopev2 or "
                         "buffalo_l with FP_FaceAnalysisLoader")
    if tuple(images.shape[1:3]) != tuple(bundle.image_sizes) or images.shape[0] != bundle.num_images:
        raise ValueError("the image batch does not match the one the FACES were detected on")
    cache, faces = {}, []
    for f in bundle.faces:
        if f.image_index not in cache:
            cache[f.image_index] = to_bgr_uint8(images[f.image_index])
        emb = _embed(rec, cache[f.image_index], f.kps.numpy())
        faces.append(DetectedFace(f.image_index, f.bbox, f.kps, f.score, emb))
    return FaceBundle(faces, bundle.num_images, bundle.image_sizes, bundle.detector, list(bundle.skipped))


def face_embeds(bundle: FaceBundle, mode: str = "per_face") -> torch.Tensor:
    if mode not in EMBED_MODES:
        raise ValueError(f"mode must be one of {EMBED_MODES}")
    e = bundle.embeddings()
    return mean_embedding(e) if mode == "mean" else normalise(e)


def as_face_embeds(obj, source="") -> torch.Tensor:
    """Coerce a loaded object to FACE_EMBEDS [N, 512] (normalised); clear error otherwise."""
    if isinstance(obj, dict):
        hit = next((obj[k] for k in _KEYS if k in obj and torch.is_tensor(obj[k])), None)
        tensors = [v for v in obj.values() if torch.is_tensor(v)]
        if hit is None and len(tensors) == 1:
            hit = tensors[0]
        if hit is None:
            raise ValueError(f"{source}: a dict without a face embedding tensor (keys {list(obj)[:10]}; "
                             f"expected one of {_KEYS})")
        obj = hit
    if not torch.is_tensor(obj):
        raise ValueError(f"{source}: expected a tensor [N, 512], got {type(obj).__name__}")
    t = obj.detach().float().cpu()
    if t.dim() == 1:
        t = t[None]
    t = t.reshape(-1, t.shape[-1])
    if t.shape[-1] != EMBED_DIM or t.shape[0] == 0:
        raise ValueError(f"{source}: expected ArcFace embeddings [N, {EMBED_DIM}], got {tuple(obj.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{source}: embeddings contain NaN/inf")
    return normalise(t)


def save_embeds(embeds: torch.Tensor, filename: str, directory: str) -> str:
    """Write FACE_EMBEDS to ``directory/filename`` (.safetensors key 'embeds', or .pt tensor)."""
    embeds = as_face_embeds(embeds, "embeds to save")
    name = os.path.basename(filename.strip()) or "face_embeds"
    if not name.endswith((".pt", ".safetensors")):
        name += ".safetensors"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    if name.endswith(".safetensors"):
        import safetensors.torch

        safetensors.torch.save_file({"embeds": embeds.contiguous()}, path)
    else:
        torch.save(embeds.contiguous(), path)
    return path


def load_embeds(path: str) -> torch.Tensor:
    from ..safe_load import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"face embedding file not found: {path}")
    try:
        obj = load_file(path)
    except Exception as exc:
        raise ValueError(f"could not read face embeddings from {path}: {type(exc).__name__}: {exc}") from exc
    return as_face_embeds(obj, path)
