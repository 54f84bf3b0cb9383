"""Safe checkpoint loading.

Plain tensor dicts load with ``torch.load(weights_only=True)`` or safetensors. Some official
checkpoints pickle whole modules (PersonaMagic's ``mapper-steps-N.pt`` pickles a
``TimePositionalEncoding``; AdaFace pickles transformers/CLIP modules). For those we use a
restricted unpickler: only globals on an explicit allowlist resolve, and every pickled *class*
resolves to :class:`PickledObject`, an inert record of the object's state. No constructor,
``__setstate__`` or other code of the original classes ever runs; tensors are rebuilt by torch's
own rebuild helpers. :func:`module_state_dict` then flattens a pickled ``nn.Module`` tree into a
regular state dict.
"""
import collections
import os
import pickle

import torch

SAFETENSORS_EXT = (".safetensors", ".sft")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file needs a global that is not on the allowlist: refused, nothing was executed."""


class PickledObject:
    """Stand-in for any allowed pickled class: keeps the class name and the pickled state."""

    __slots__ = ("class_path", "args", "state")

    def __init__(self, class_path, args=()):
        self.class_path = class_path
        self.args = args
        self.state = {}

    def __setstate__(self, state):  # BUILD opcode
        if isinstance(state, tuple) and len(state) == 2:  # (dict_state, slot_state)
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        self.state = state if isinstance(state, dict) else {"__state__": state}

    # dict-like access to the state, e.g. obj["_parameters"]
    def __getitem__(self, key):
        return self.state[key]

    def get(self, key, default=None):
        return self.state.get(key, default)

    def __repr__(self):
        return f"PickledObject({self.class_path})"


def _pickled_type(class_path):
    """A real type for an allowed class (protocol-2 pickles use NEWOBJ, which needs a type):
    instances are inert :class:`PickledObject`s, no code of the original class runs."""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.class_path, obj.args, obj.state = class_path, args, {}
        return obj

    return type("Pickled_" + class_path.rsplit(".", 1)[-1], (PickledObject,),
                {"__slots__": (), "__new__": __new__, "__init__": lambda self, *a, **k: None})


class _PickledClass:
    """What ``find_class`` returns for an allowed class: calling it (REDUCE/NEWOBJ) gives a
    PickledObject instead of running the real constructor."""

    def __init__(self, class_path):
        self.class_path = class_path

    def __call__(self, *args, **kwargs):
        return PickledObject(self.class_path, args)

    def __reduce__(self):  # pragma: no cover - never re-pickled
        raise TypeError("not picklable")


def _reconstructor(cls, base, state=None):
    """copyreg._reconstructor without calling ``base.__new__`` on arbitrary types."""
    if isinstance(cls, _PickledClass):
        return PickledObject(cls.class_path)
    if isinstance(cls, type) and issubclass(cls, PickledObject):
        return cls()
    if cls is collections.OrderedDict:
        return collections.OrderedDict()
    raise UnsafeCheckpointError(f"copyreg._reconstructor for {cls!r} is not allowed")


def _inert(name):
    def fn(*args, **kwargs):
        return PickledObject(name, args)

    return fn


# Globals that resolve to real, side-effect-free callables.
_SAFE_GLOBALS = {
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "__builtin__.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.tuple": tuple,
    "builtins.list": list,
    "builtins.dict": dict,
    "copyreg._reconstructor": _reconstructor,
    "builtins.object": object,
    "__builtin__.object": object,
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": torch._utils._rebuild_parameter_with_state,
    "torch.nn.parameter.Parameter": torch.nn.Parameter,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "torch.float32": torch.float32,
    "torch.float16": torch.float16,
    "torch.bfloat16": torch.bfloat16,
    "_codecs.encode": __import__("_codecs").encode,  # rebuilds bytes in protocol-2 pickles
}
for _st in ("Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool"):
    _SAFE_GLOBALS[f"torch.{_st}Storage"] = getattr(torch, f"{_st}Storage")
_SAFE_GLOBALS["torch.storage.UntypedStorage"] = torch.UntypedStorage
for _dt in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool"):
    _SAFE_GLOBALS[f"torch.{_dt}"] = getattr(torch, _dt)


def _make_pickle_module(allowed_classes, allowed_prefixes=(), inert_functions=()):
    allowed_classes = set(allowed_classes)
    inert_functions = set(inert_functions)

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            path = f"{module}.{name}"
            if path in _SAFE_GLOBALS:
                return _SAFE_GLOBALS[path]
            if path in allowed_classes or any(path.startswith(p) for p in allowed_prefixes):
                return _pickled_type(path)
            if path in inert_functions:
                return _inert(path)
            raise UnsafeCheckpointError(
                f"checkpoint refers to '{path}', which is not on this loader's allowlist; "
                "refusing to unpickle it (nothing was executed)"
            )

    class RestrictedPickleModule:
        Unpickler = RestrictedUnpickler
        UnpicklingError = pickle.UnpicklingError
        @staticmethod
        def load(f, **kwargs):  # legacy (non-zip) torch files read their header with pickle_module.load
            return RestrictedUnpickler(f, **kwargs).load()

        @staticmethod
        def loads(*a, **k):  # pragma: no cover
            raise UnsafeCheckpointError("loads is not supported")

    return RestrictedPickleModule


def load_file(path, map_location="cpu", allowed_classes=(), allowed_prefixes=(), inert_functions=()):
    """Load a checkpoint without executing pickled code.

    - ``.safetensors``: safetensors.
    - otherwise ``torch.load(weights_only=True)``; if that refuses the file and an allowlist is
      given, retry with the restricted unpickler (classes become :class:`PickledObject`).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.lower().endswith(SAFETENSORS_EXT):
        import safetensors.torch

        return safetensors.torch.load_file(path, device=str(map_location))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not (allowed_classes or allowed_prefixes or inert_functions):
            raise UnsafeCheckpointError(
                f"{os.path.basename(path)} contains pickled code objects that this loader does not "
                f"accept ({exc}). Only tensor checkpoints are loaded."
            ) from exc
    except RuntimeError as exc:
        if "zip" in str(exc).lower() or "magic number" in str(exc).lower():
            raise ValueError(f"{os.path.basename(path)} is not a torch checkpoint (corrupt or wrong file): {exc}") from exc
        raise
    module = _make_pickle_module(allowed_classes, allowed_prefixes, inert_functions)
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=module)


def module_state_dict(obj, prefix=""):
    """Flatten a pickled ``nn.Module`` (a :class:`PickledObject` tree) into ``{name: tensor}``."""
    out = collections.OrderedDict()
    if not isinstance(obj, PickledObject):
        return out
    for kind in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(kind) or {}).items():
            if t is not None:
                out[prefix + name] = t.detach() if isinstance(t, torch.Tensor) else t
    for name, child in (obj.state.get("_modules") or {}).items():
        out.update(module_state_dict(child, f"{prefix}{name}."))
    return out
