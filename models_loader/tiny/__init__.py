"""Tiny, randomly initialised models of the *real* architectures, for the demo, tests and benches.

Deterministic (seeded), generated in seconds, cached on disk, never committed. Each generator is
registered under a kind name; :func:`ensure` returns the cached file, building it on first use.
Method modules add their own kinds (e4e, ArcFace ONNX, mappers, ...) with :func:`register`.
"""
import hashlib
import os
from pathlib import Path

_GENERATORS = {}


def cache_root() -> Path:
    root = os.environ.get("FP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "comfyui-face-personalization")
    path = Path(root) / "tiny"
    path.mkdir(parents=True, exist_ok=True)
    return path


def register(kind: str, filename: str, version: int = 1):
    """Decorator: ``fn(path)`` writes the model for ``kind`` to ``path``."""

    def deco(fn):
        if kind in _GENERATORS:
            raise ValueError(f"tiny model kind {kind!r} registered twice")
        _GENERATORS[kind] = (filename, version, fn)
        return fn

    return deco


def kinds():
    _load_builtin()
    return sorted(_GENERATORS)


def ensure(kind: str) -> Path:
    """Path of the cached tiny model ``kind``; generated (atomically) if missing."""
    _load_builtin()
    if kind not in _GENERATORS:
        raise KeyError(f"unknown tiny model kind {kind!r}; known: {sorted(_GENERATORS)}")
    filename, version, fn = _GENERATORS[kind]
    stem, ext = os.path.splitext(filename)
    path = cache_root() / f"{stem}-v{version}{ext}"
    if not path.exists():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        fn(tmp)
        os.replace(tmp, path)
    return path


def seeded_generator(kind: str):
    import torch

    seed = int(hashlib.sha256(kind.encode()).hexdigest()[:8], 16)
    return torch.Generator().manual_seed(seed)


def init_params_(module, gen, std=0.02):
    """Normal(0, std) weights, unit norm scales, zero biases: what a freshly initialised
    transformer/conv net looks like. Handles ComfyUI's uninitialised (``torch.empty``) ops."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias" or leaf.endswith("_bias"):
                p.zero_()
            elif p.dim() <= 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        for name, b in module.named_buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                b.zero_()
    return module


_loaded = False


def _load_builtin():
    """Import every module of this package once: each registers its kinds."""
    global _loaded
    if _loaded:
        return
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f".{info.name}", __name__)
    _loaded = True
