"""Latent edits of W+ codes, as the official editing code computes them.

- **InterFaceGAN** boundary ``.pt`` [1,512] (e4e ``editings/interfacegan_directions``):
  ``w + a·d`` on every row (e4e ``LatentEditor.apply_interfacegan``; W+ Adapter
  ``get_direction_from_interfacegan`` repeats d to 18 rows).
- **Latent direction** ``.npy`` [18,512] float64 (W+ Adapter ``w_direction/latent_directions``):
  ``w + a·d``; the W+ Adapter demo edits rows 0:8 only (its preset rows here).
- **GANSpace** (``ffhq_pca.pt`` {mean [1,512], comp [80,1,512], std [80]} + ``ganspace_configs.csv``
  rows ``name  pca_idx  start  end  strength``): e4e ``editings/ganspace.py:get_delta``:
  ``c = <w[0] - mean, comp[idx]> / std[idx]`` from row 0, ``δ = (s - c)·std[idx]·comp[idx]``, added to
  rows start..end-1. It *sets* row 0's coordinate on that component to ``s`` standard deviations (so
  s = 0 moves the code to the PCA mean along that axis; it is not the identity). As in the W+
  Adapter demo, the node's strength replaces the csv's strength column.

Directions are applied per batch item; the result is a new float32 [B,18,512] tensor.
"""
import csv
import os
from dataclasses import dataclass, field

import torch

from .codes import NUM_ROWS, DIM, as_wplus, check_rows

GANSPACE_PREFIX = "ganspace:"
GANSPACE_CSV = "ganspace_configs.csv"
KINDS = ("interfacegan", "latent", "ganspace")
# default rows per kind: InterFaceGAN all rows (official), latent directions 0:8 (W+ Adapter demo);
# GANSpace: the config's own start/end
PRESET_ROWS = {"interfacegan": (0, NUM_ROWS), "latent": (0, 8)}


@dataclass
class WPlusDirection:
    """The ``WPLUS_DIRECTION`` socket value."""

    kind: str
    name: str
    direction: torch.Tensor = None  # [18,512] (interfacegan: the [1,512] vector repeated) for interfacegan/latent
    pca: dict = field(default=None, repr=False)  # ganspace: mean [1,512], comp [K,1,512], std [K]
    pca_idx: int = 0
    rows: tuple = (0, NUM_ROWS)  # preset rows (start, end)
    csv_strength: float = None

    @property
    def preset_rows(self):
        return tuple(self.rows)


def _tensor_from_file(path):
    name = os.path.basename(path)
    if path.lower().endswith(".npy"):
        import numpy as np

        try:
            return torch.from_numpy(np.ascontiguousarray(np.load(path, allow_pickle=False)))
        except ValueError as exc:
            raise ValueError(f"{name}: not a plain numeric .npy array ({exc})") from exc
    from ...safe_load import load_file

    obj = load_file(path)
    if isinstance(obj, dict) and {"mean", "comp", "std"} <= set(obj):
        raise ValueError(f"{name} is a GANSpace PCA file, not a direction: put it in the wplus/directions folder "
                         f"next to {GANSPACE_CSV} and pick one of the '{GANSPACE_PREFIX}<name>' presets")
    if isinstance(obj, dict) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not torch.is_tensor(obj):
        raise ValueError(f"{name}: expected a direction tensor ([1,512] InterFaceGAN or [18,512] latent direction), "
                         f"got {type(obj).__name__}")
    return obj


def direction_from_tensor(t, name="direction"):
    """[512]/[1,512] -> InterFaceGAN (all rows); [18,512]/[1,18,512] -> latent direction (rows 0:8)."""
    t = t.detach().cpu()
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point direction, got {t.dtype}")
    shape = list(t.shape)
    if shape in ([DIM], [1, DIM]):
        d, kind = t.reshape(1, DIM).expand(NUM_ROWS, DIM).clone(), "interfacegan"
    elif shape in ([NUM_ROWS, DIM], [1, NUM_ROWS, DIM]):
        d, kind = t.reshape(NUM_ROWS, DIM).clone(), "latent"
    else:
        raise ValueError(f"{name}: direction has shape {shape}; expected [1,512] (InterFaceGAN boundary, "
                         f"applied to all 18 rows) or [18,512] (per-row latent direction)")
    if not torch.isfinite(d).all():
        raise ValueError(f"{name}: direction contains NaN or infinite values")
    return WPlusDirection(kind=kind, name=name, direction=d, rows=PRESET_ROWS[kind])


def load_direction_file(path):
    return direction_from_tensor(_tensor_from_file(path), os.path.basename(path))


def read_ganspace_configs(path):
    """``name -> (pca_idx, start, end, strength)`` from the tab-separated csv (official format)."""
    out = {}
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or not row[0].strip():
                continue
            try:
                idx, start, end, strength = (int(v) for v in row[1:5])
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{os.path.basename(path)} line {lineno}: expected 'name<TAB>pca_idx<TAB>start"
                                 f"<TAB>end<TAB>strength' integers, got {row}") from exc
            out[row[0].strip()] = (idx, start, end, strength)
    return out


def load_pca(path):
    from ...safe_load import load_file

    pca = load_file(path)
    name = os.path.basename(path)
    if not (isinstance(pca, dict) and {"mean", "comp", "std"} <= set(pca)):
        raise ValueError(f"{name}: expected a GANSpace PCA dict with 'mean' [1,512], 'comp' [K,1,512], 'std' [K]")
    mean, comp, std = (pca[k].float() for k in ("mean", "comp", "std"))
    k = comp.shape[0]
    if mean.numel() != DIM or comp.reshape(k, -1).shape[1] != DIM or std.numel() != k:
        raise ValueError(f"{name}: GANSpace shapes mean {list(mean.shape)}, comp {list(comp.shape)}, std {list(std.shape)} "
                         f"do not match mean [1,512], comp [K,1,512], std [K]")
    return {"mean": mean.reshape(1, DIM), "comp": comp.reshape(k, 1, DIM), "std": std.reshape(k)}


def ganspace_direction(pca, name, config):
    idx, start, end, strength = config
    if not 0 <= idx < pca["comp"].shape[0]:
        raise ValueError(f"GANSpace preset {name!r}: component {idx} out of range (PCA has {pca['comp'].shape[0]})")
    check_rows(start, end)
    return WPlusDirection(kind="ganspace", name=name, pca=pca, pca_idx=idx, rows=(start, end), csv_strength=float(strength))


def ganspace_delta(w, pca, idx, strength):
    """e4e get_delta for each batch item: w [B,18,512] -> delta [B,1,512]."""
    mean = pca["mean"].to(w)
    comp = pca["comp"][idx].reshape(-1).to(w)
    std = pca["std"][idx].to(w)
    coord = ((w[:, 0] - mean) * comp).sum(dim=-1) / std  # [B]: row 0's coordinate in std units
    return ((strength - coord)[:, None] * comp[None] * std)[:, None]


def apply_edit(wplus, direction: WPlusDirection, strength, start=None, end=None):
    """Edited copy of ``wplus`` ([B,18,512]); rows start..end-1 (default: the direction's preset rows)."""
    w = as_wplus(wplus, "wplus")
    if start is None or end is None:
        start, end = direction.preset_rows
    start, end = check_rows(start, end)
    strength = float(strength)
    out = w.clone()
    if direction.kind == "ganspace":
        delta = ganspace_delta(w, direction.pca, direction.pca_idx, strength)
        out[:, start:end] = w[:, start:end] + delta
    elif direction.kind in ("interfacegan", "latent"):
        if strength == 0.0:
            return out
        d = direction.direction.to(torch.float64)[start:end]
        out[:, start:end] = (w[:, start:end].to(torch.float64) + strength * d).to(torch.float32)
    else:
        raise ValueError(f"unknown direction kind {direction.kind!r} (expected one of {KINDS})")
    return out


# ---------------------------------------------------------------- model-folder lookup

def _folder_files():
    from ... import paths

    try:
        return paths.list_files("wplus_directions")
    except Exception:
        return []


def _ganspace_files(files):
    csvs = [f for f in files if os.path.basename(f).lower() == GANSPACE_CSV]
    pcas = [f for f in files if os.path.basename(f).lower().endswith((".pt", ".pth")) and "pca" in os.path.basename(f).lower()]
    if not csvs or not pcas:
        return None, None
    csv_file = csvs[0]
    same_dir = [p for p in pcas if os.path.dirname(p) == os.path.dirname(csv_file)]
    ffhq = [p for p in (same_dir or pcas) if "ffhq" in os.path.basename(p).lower()]
    return csv_file, (ffhq or same_dir or pcas)[0]


def list_choices():
    """Dropdown entries: direction files in models/wplus/directions, then GANSpace presets
    ('ganspace:<name>') when ganspace_configs.csv and a *pca*.pt are both present."""
    files = _folder_files()
    out = [f for f in files if f.lower().endswith((".pt", ".pth", ".npy")) and "pca" not in os.path.basename(f).lower()]
    csv_file, pca_file = _ganspace_files(files)
    if csv_file:
        from ... import paths

        try:
            out += [GANSPACE_PREFIX + n for n in read_ganspace_configs(paths.resolve("wplus_directions", csv_file))]
        except (OSError, ValueError):
            pass
    return out


_cache = {}


def _cached(path, loader):
    key = (loader.__name__, path, os.path.getmtime(path))
    if key not in _cache:
        if len(_cache) > 32:
            _cache.clear()
        _cache[key] = loader(path)
    return _cache[key]


def resolve_choice(choice):
    """A dropdown entry (file name, absolute path or 'ganspace:<name>') -> WPlusDirection."""
    from ... import paths

    if choice.startswith(GANSPACE_PREFIX):
        name = choice[len(GANSPACE_PREFIX):]
        csv_file, pca_file = _ganspace_files(_folder_files())
        if not csv_file:
            where = paths.model_dir("wplus_directions")
            raise FileNotFoundError(f"GANSpace preset {name!r} needs {GANSPACE_CSV} and ffhq_pca.pt in {where} "
                                    f"(from omertov/encoder4editing editings/ganspace_pca and the W+ Adapter repo)")
        configs = _cached(paths.resolve("wplus_directions", csv_file), read_ganspace_configs)
        if name not in configs:
            raise ValueError(f"GANSpace preset {name!r} is not in {csv_file}; known: {sorted(configs)}")
        pca = _cached(paths.resolve("wplus_directions", pca_file), load_pca)
        return ganspace_direction(pca, name, configs[name])
    return _cached(paths.resolve("wplus_directions", choice), load_direction_file)
