"""``WPLUS`` codes: a plain float32 tensor [B,18,512] in StyleGAN2-FFHQ W+ space.

Files: torch ``.pt``/``.pth`` (the official e4e / W+ Adapter codes are a tensor [1,18,512]; e4e's
``latents.pt`` is [N,18,512]; a dict of such tensors is stacked), numpy ``.npy`` and safetensors
(key ``wplus``, or the only tensor in the file).
"""
import os

import torch

NUM_ROWS = 18
DIM = 512
SAFETENSORS_KEY = "wplus"
FORMATS = {"pt": ".pt", "pth": ".pth", "npy": ".npy", "safetensors": ".safetensors"}


def as_wplus(value, what="W+ code"):
    """Validate / normalise to float32 [B,18,512] ([18,512] gains a batch axis). Clear error otherwise."""
    if hasattr(value, "__array__") and not torch.is_tensor(value):
        value = torch.from_numpy(__import__("numpy").asarray(value))
    if not torch.is_tensor(value):
        raise ValueError(f"{what}: expected a tensor [B,18,512] (StyleGAN2-FFHQ W+), got {type(value).__name__}")
    t = value.detach()
    if t.dim() == 2 and tuple(t.shape) == (NUM_ROWS, DIM):
        t = t.unsqueeze(0)
    if t.dim() != 3 or tuple(t.shape[1:]) != (NUM_ROWS, DIM) or t.shape[0] < 1:
        hint = ""
        if tuple(t.shape[-1:]) == (DIM,) and t.dim() <= 2:
            hint = " (this looks like a W code or an InterFaceGAN direction [1,512], not a W+ code)"
        raise ValueError(f"{what}: expected shape [B,18,512] (or [18,512]) in StyleGAN2-FFHQ W+ space, "
                         f"got {list(t.shape)}{hint}")
    if not t.is_floating_point():
        raise ValueError(f"{what}: expected a floating-point tensor, got {t.dtype}")
    t = t.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what}: contains NaN or infinite values")
    return t.contiguous()


def load_wplus(path):
    """Load a W+ code file (.pt/.pth/.npy/.safetensors) -> [B,18,512] float32."""
    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"W+ code file not found: {path}")
    if ext == ".npy":
        import numpy as np

        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{name}: not a plain numeric .npy array ({exc})") from exc
        return as_wplus(torch.from_numpy(np.ascontiguousarray(arr)), name)
    from ...safe_load import load_file

    obj = load_file(path)
    if isinstance(obj, dict):
        if ext in (".safetensors", ".sft") and SAFETENSORS_KEY in obj:
            obj = obj[SAFETENSORS_KEY]
        else:
            tensors = [v for v in obj.values() if torch.is_tensor(v)]
            if not tensors or len(tensors) != len(obj):
                raise ValueError(f"{name}: expected a tensor [B,18,512] or a dict of such tensors, got keys {list(obj)[:8]}")
            obj = torch.cat([as_wplus(v, f"{name}[{k}]") for k, v in obj.items()], dim=0)
    elif isinstance(obj, (list, tuple)):
        raise ValueError(f"{name}: holds a list of {len(obj)} items, not one W+ code [B,18,512] "
                         f"(att_direction_scale.pth, for example, is a list of attribute directions)")
    return as_wplus(obj, name)


def save_wplus(wplus, path):
    """Write [B,18,512] float32 to ``path`` (format from the extension). Returns the path."""
    w = as_wplus(wplus)
    ext = os.path.splitext(path)[1].lower()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if ext in (".pt", ".pth"):
        torch.save(w.clone(), path)
    elif ext == ".npy":
        import numpy as np

        np.save(path, w.numpy())
    elif ext in (".safetensors", ".sft"):
        import safetensors.torch

        safetensors.torch.save_file({SAFETENSORS_KEY: w}, path, metadata={"format": "wplus", "shape": "B,18,512"})
    else:
        raise ValueError(f"unsupported W+ code extension {ext!r}; use one of {sorted(set(FORMATS.values()))}")
    return path


def _broadcast(a, b, what):
    if a.shape[0] != b.shape[0]:
        if a.shape[0] == 1:
            a = a.expand_as(b)
        elif b.shape[0] == 1:
            b = b.expand_as(a)
        else:
            raise ValueError(f"{what}: batch sizes {a.shape[0]} and {b.shape[0]} differ (one of them must be 1)")
    return a, b


def interpolate(a, b, t):
    """(1 - t)·a + t·b (t outside 0..1 extrapolates). A batch of 1 broadcasts against the other batch."""
    a, b = _broadcast(as_wplus(a, "wplus_a"), as_wplus(b, "wplus_b"), "interpolate")
    return ((1.0 - t) * a + t * b).contiguous()


def check_rows(start, end):
    start, end = int(start), int(end)
    if not (0 <= start < end <= NUM_ROWS):
        raise ValueError(f"row range must satisfy 0 <= start < end <= {NUM_ROWS}, got start={start}, end={end}")
    return start, end


def style_mix(a, b, start, end):
    """Rows start..end-1 from ``b``, the others from ``a`` (StyleGAN style mixing: rows 0-3 coarse
    pose/shape, 4-7 middle features, 8-17 fine colour/texture)."""
    start, end = check_rows(start, end)
    a, b = _broadcast(as_wplus(a, "wplus_a"), as_wplus(b, "wplus_b"), "style mix")
    out = a.clone()
    out[:, start:end] = b[:, start:end]
    return out


def average(wplus):
    """Mean over the batch -> [1,18,512] (one identity from several photos)."""
    return as_wplus(wplus).mean(dim=0, keepdim=True)


def save_wplus_named(wplus, filename, ext, folder, overwrite=False):
    """Save as ``filename`` (a name or sub-path inside ``folder``; never outside it) with extension
    ``ext``; without ``overwrite`` an existing file gets a numbered sibling (``name_00001.pt``).
    Returns the path written."""
    from ... import files

    stem = (filename or "").strip()
    if os.path.splitext(stem)[1].lower() in set(FORMATS.values()) | {".sft"}:
        stem = os.path.splitext(stem)[0]
    path = files.safe_path_in(folder, stem, overwrite, ext=ext, allowed_ext=(), what="Save W+ Code")
    try:
        return save_wplus(wplus, path)
    except BaseException:
        if not overwrite and os.path.isfile(path) and os.path.getsize(path) == 0:
            os.remove(path)
        raise


def concat(a, b):
    """Batch concatenation [A,18,512] + [B,18,512] -> [A+B,18,512]."""
    return torch.cat([as_wplus(a, "wplus_a"), as_wplus(b, "wplus_b")], dim=0)
