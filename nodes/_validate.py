"""Validation at the node boundary, applied by the registry to every node (new nodes included).

:func:`guard` wraps a node class's ``FUNCTION`` so that, before the node runs, every input is checked
against its declared socket type: FLOAT widgets finite and inside the INPUT_TYPES min/max (a NaN in
the prompt JSON passes ComfyUI's own range check), tensors (IMAGE, MASK, LATENT samples, WPLUS,
FACE_EMBEDS, IDENTITY_EMBEDDING vectors) finite, non-empty and of the expected rank/shape. After the
node ran, its tensor outputs of those types are checked finite, so no NaN is passed on silently.
Errors are :class:`NodeInputError` naming the node (display name) and the input.
"""
import functools
import math
import numbers

# socket type -> (allowed ranks, fixed trailing shape or None, what it is)
TENSOR_TYPES = {
    "IMAGE": ((4,), None, "an image batch [B, H, W, C]"),
    "MASK": ((2, 3), None, "a mask [H, W] or [B, H, W]"),
    "WPLUS": ((3,), (18, 512), "W+ codes [B, 18, 512]"),
    "FACE_EMBEDS": ((1, 2), (512,), "ArcFace embeddings [N, 512]"),
}


class NodeInputError(ValueError):
    """A node input (or output) failed the boundary check; the message names node and input."""


def _tensor_problem(t, ranks, trailing, what):
    import torch

    if not isinstance(t, torch.Tensor):
        return f"must be {what}, got {type(t).__name__}"
    if t.dim() not in ranks:
        return f"must be {what}, got shape {list(t.shape)}"
    if trailing and tuple(t.shape[-len(trailing):]) != trailing:
        return f"must be {what}, got shape {list(t.shape)}"
    if t.numel() == 0:
        return f"is empty (shape {list(t.shape)}): an empty batch, e.g. from a filter or a loader that found nothing"
    if t.is_floating_point() or t.is_complex():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            return f"contains {kind} values ({int(bad.sum())} of {t.numel()}); the node that produced it failed"
    return None


def _value_problem(kind, value, opts):
    import torch

    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"must be a number, got {type(value).__name__}"
        if not math.isfinite(float(value)):
            return f"must be a finite number, got {value}"
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and value < lo or hi is not None and value > hi:
            return f"= {value} is outside its range [{lo}, {hi}]"
        return None
    if kind in TENSOR_TYPES:
        return _tensor_problem(value, *TENSOR_TYPES[kind])
    if kind == "LATENT":
        if not isinstance(value, dict) or "samples" not in value:
            return f"must be a LATENT (a dict with 'samples'), got {type(value).__name__}"
        return _tensor_problem(value["samples"], (4, 5), None, "latent samples [B, C, H, W]")
    if kind == "IDENTITY_EMBEDDING":
        vectors = value.get("vectors") if isinstance(value, dict) else None
        if vectors is None:
            return f"must be an identity embedding (a dict with 'vectors'), got {type(value).__name__}"
        for key, t in (vectors.items() if isinstance(vectors, dict) else [("", vectors)]):
            problem = _tensor_problem(t, (2,), None, "identity vectors [N, D]")
            if problem:
                return f"vectors{'[' + key + ']' if key else ''} {problem}"
        return None
    return None


def _spec(cls):
    """{input name: (socket type, options)} from INPUT_TYPES (types we check only)."""
    out = {}
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, decl in (types.get(section) or {}).items():
            if isinstance(decl, (tuple, list)) and decl and isinstance(decl[0], str):
                kind = decl[0]
                opts = decl[1] if len(decl) > 1 and isinstance(decl[1], dict) else {}
                if kind == "FLOAT" or kind == "LATENT" or kind == "IDENTITY_EMBEDDING" or kind in TENSOR_TYPES:
                    out[name] = (kind, opts)
    return out


def check_inputs(node_name, spec, kwargs, is_list=False):
    for name, (kind, opts) in spec.items():
        if name not in kwargs or kwargs[name] is None:
            continue
        values = kwargs[name] if is_list and isinstance(kwargs[name], list) else [kwargs[name]]
        for i, value in enumerate(values):
            problem = _value_problem(kind, value, opts)
            if problem:
                where = f"[{i}]" if len(values) > 1 else ""
                raise NodeInputError(f"{node_name}: input '{name}'{where} ({kind}) {problem}")


def check_outputs(node_name, cls, result):
    values = result.get("result") if isinstance(result, dict) else result
    if not isinstance(values, (tuple, list)):
        return
    names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
    for kind, name, value in zip(cls.RETURN_TYPES, names, values):
        if kind in TENSOR_TYPES or kind in ("LATENT", "IDENTITY_EMBEDDING"):
            opts = {}
            for v in (value if getattr(cls, "OUTPUT_IS_LIST", None) and isinstance(value, list) else [value]):
                problem = _value_problem(kind, v, opts)
                if problem and ("NaN" in problem or "Inf" in problem):
                    raise NodeInputError(f"{node_name}: output '{name}' ({kind}) {problem.replace('the node that produced it failed', 'check the inputs and settings of this node')}")


def guard(cls, display_name):
    """Wrap ``cls.FUNCTION`` with the boundary checks (idempotent)."""
    fname = getattr(cls, "FUNCTION", None)
    fn = getattr(cls, fname, None) if fname else None
    if fn is None or getattr(cls.__dict__.get(fname), "_fp_guarded", False):
        return cls
    fn = getattr(fn, "__wrapped__", fn) if getattr(fn, "_fp_guarded", False) else fn  # inherited: wrap per class
    is_list = bool(getattr(cls, "INPUT_IS_LIST", False))
    spec_cache = []

    @functools.wraps(fn)
    def guarded(self, *args, **kwargs):
        if not spec_cache:
            spec_cache.append(_spec(cls))
        check_inputs(display_name, spec_cache[0], kwargs, is_list)
        result = fn(self, *args, **kwargs)
        check_outputs(display_name, cls, result)
        return result

    guarded._fp_guarded = True
    if isinstance(cls.__dict__.get(fname), (classmethod, staticmethod)):
        return cls  # not used by this pack; left unwrapped rather than guessed
    setattr(cls, fname, guarded)
    return cls
