"""Safe checkpoint loading: torch's own hardened unpickler plus an allowlist of inert stand-ins.

Every ``.pt``/``.bin``/``.ckpt`` is read with ``torch.load(weights_only=True)``; safetensors with
safetensors. Some official checkpoints pickle whole objects (PersonaMagic's ``mapper-steps-N.pt``
pickles a ``TimePositionalEncoding``; AdaFace pickles transformers/CLIP modules). For those a loader
passes the official dotted names it expects; each becomes a *fresh* stand-in class registered for
that one load with ``torch.serialization.safe_globals([(StandIn, "official.dotted.Name"), ...])``:

- an instance records the class name, the constructor arguments and the pickled state
  (:class:`PickledObject`: ``class_path``, ``args``, ``state``); no code of the original class runs;
- torch's unpickler only BUILDs instances of allowlisted types (never a function, class or module
  object), so a file cannot mutate anything that outlives the load; the stand-in classes are created
  per load and dropped afterwards;
- globals not on the loader's allowlist are refused before anything is unpickled (every pickle of the
  file is scanned first, zip and legacy pre-1.6 files alike), with a message naming the global;
- legacy (non-zip) files go through the same scan, allowlist and unpickler, after a dry run that
  checks every declared storage has data in the file (no uninitialised memory, no oversized
  allocation); tar-era files, raw ``pickle.dump`` output and anything else are refused.

:func:`module_state_dict` then flattens a pickled ``nn.Module`` tree into a regular state dict, with
limits on depth and size so a crafted tree cannot exhaust the stack or memory.
"""
import collections
import os
import pickle
import zipfile

SAFETENSORS_EXT = (".safetensors", ".sft")
LOADABLE = ("Loadable formats: .safetensors, and official checkpoints that hold only tensors or the "
            "classes this loader knows.")
MAX_TREE_NODES = 200_000  # pickled modules in one checkpoint (a real AdaFace file has a few thousand)
MAX_TREE_DEPTH = 64
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch's pre-1.6 format


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file was refused for safety (a global not on the allowlist, or a disallowed pickle
    operation); nothing in it was executed."""


class PickledObject:
    """Inert stand-in for an allowed pickled class: the class name and the pickled state only."""

    __slots__ = ("args", "state")
    class_path = "?"

    def __new__(cls, *args, **kwargs):  # NEWOBJ / REDUCE: record the arguments, run nothing
        obj = object.__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):  # BUILD: the state is kept as data, never set as attributes
        if isinstance(state, tuple) and len(state) == 2:  # (dict_state, slot_state)
            merged = dict(state[0] or {}) if isinstance(state[0], dict) else {}
            merged.update(state[1] if isinstance(state[1], dict) else {})
            state = merged
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def __getitem__(self, key):
        return self.state[key]

    def get(self, key, default=None):
        return self.state.get(key, default)

    def __repr__(self):
        return f"PickledObject({self.class_path})"


def _stand_ins(names):
    """Fresh stand-in classes, one per official name, for a single load."""
    out = []
    for name in sorted(set(names)):
        cls = type("Pickled_" + name.rsplit(".", 1)[-1], (PickledObject,), {"__slots__": (), "class_path": name})
        out.append((cls, name))
    return out


def _short(name):
    return os.path.basename(str(name))


def _refused(name, detail):
    return UnsafeCheckpointError(
        f"{_short(name)} was refused for safety: {detail} (nothing in it was executed). {LOADABLE}")


def _torch_reason(exc):
    """The specific reason from torch's weights_only error, without its advice to disable the check."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    text = text.strip().split("\n")[0].replace(" or types allowlisted via `add_safe_globals`", "")
    for cut in (" Please use `torch.serialization", " Re-running", " was not an allowed global by default"):
        if cut in text:
            text = text.split(cut)[0] + (" is not on this loader's allowlist" if "allowed global" in cut else "")
    return text.strip().rstrip(".")[:300]


def _check_container(path):
    """'zip' or 'legacy' for a torch file; a clear error for anything else or a zip bomb."""
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head.startswith(b"PK"):
        size = os.path.getsize(path)
        try:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{_short(path)} is not a torch checkpoint (a damaged zip file: {exc}). {LOADABLE}") from None
        if not any(i.filename.endswith("data.pkl") for i in infos):
            raise ValueError(f"{_short(path)} is a zip file but not a torch checkpoint (no data.pkl). {LOADABLE}")
        unpacked = sum(i.file_size for i in infos)
        if unpacked > 2 * size + (1 << 20):
            raise _refused(path, f"its entries unpack to {unpacked} bytes from a {size}-byte file (a zip bomb)")
        return "zip"
    if head == _LEGACY_MAGIC:
        return "legacy"
    if head[:1] == b"\x80":  # a raw pickle (pickle.dump), which torch.load would not read either
        raise _refused(path, "it is a plain Python pickle, not a torch checkpoint")
    raise ValueError(f"{_short(path)} is not a torch checkpoint or safetensors file (unknown content). {LOADABLE}")


def _globals_in(path, kind):
    """Globals the data pickle refers to, found by torch's opcode scan (nothing is unpickled).

    zip: the ``data.pkl`` record. legacy (pre-1.6 ``_use_new_zipfile_serialization=False`` files): the
    file is four pickles in a row (magic number, protocol, system info, data) then the raw storages;
    every header pickle is scanned too, so a global hidden in one of them is refused as well."""
    import io

    import torch
    from torch import _weights_only_unpickler as wu

    if kind == "zip":
        with open(path, "rb") as f, torch.serialization._open_zipfile_reader(f) as zf:
            name = next(n for n in zf.get_all_records() if n.endswith("data.pkl"))
            return set(wu.get_globals_in_pkl(io.BytesIO(zf.get_record(name))))
    found = set()
    with open(path, "rb") as f:
        for _ in range(4):
            found |= set(wu.get_globals_in_pkl(f))
    return found


def _check_legacy_storages(path, stand_ins):
    """Legacy files declare each storage's size in the data pickle and append the bytes after a list of
    storage keys; torch allocates the declared size and fills only the listed keys. A dry run of the same
    weights-only unpickler (meta-device storages: nothing allocated) collects the declared storages, which
    must all be listed and fit in the file, so a file can neither hand out uninitialised memory nor ask
    for more than it holds."""
    import torch
    from torch import _weights_only_unpickler as wu

    declared = {}

    def persistent_load(saved_id):
        if not isinstance(saved_id, tuple) or not saved_id:
            raise pickle.UnpicklingError("a malformed storage reference")
        kind = saved_id[0].decode("ascii") if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"an unknown persistent reference {str(kind)[:40]!r}")
        if len(saved_id) != 6:
            raise pickle.UnpicklingError(f"a malformed storage reference ({len(saved_id)} fields, legacy files have 6)")
        storage_type, key, _, numel, _ = saved_id[1:]
        dtype = storage_type.dtype
        nbytes = int(numel) * torch._utils._element_size(dtype)
        if nbytes < 0:
            raise pickle.UnpicklingError("a storage of negative size")
        declared[key] = max(declared.get(key, 0), nbytes)
        meta = torch.UntypedStorage(nbytes, device="meta")
        return torch.storage.TypedStorage(wrap_storage=meta, dtype=dtype, _internal=True)

    with open(path, "rb") as f, torch.serialization.safe_globals(stand_ins):
        for _ in range(3):
            wu.Unpickler(f, encoding="utf-8").load()
        unpickler = wu.Unpickler(f, encoding="utf-8")
        unpickler.persistent_load = persistent_load
        try:
            unpickler.load()
        except pickle.UnpicklingError as exc:
            if "Only persistent_load of storage" in str(exc):  # torch.save of a whole nn.Module, pre-1.6 format
                raise _refused(path, "it is a legacy (pre-1.6) torch file that pickles a module class by reference, "
                                     "which torch's safe loader does not read; a state-dict or .safetensors "
                                     "version of it loads") from None
            raise
        keys = wu.Unpickler(f, encoding="utf-8").load()
        remaining = os.path.getsize(path) - f.tell()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _refused(path, "its storage list is not a list of names")
    missing = sorted(set(declared) - set(keys))
    if missing:
        raise _refused(path, f"it declares storages without data ({', '.join(missing[:3])}): their memory would "
                             "be left uninitialised")
    total = sum(declared.values())
    if total > remaining:
        raise _refused(path, f"its tensors claim {total} bytes but the file holds {remaining}")


def load_file(path, map_location="cpu", allowed_classes=(), allowed_prefixes=(), inert_functions=()):
    """Load a checkpoint without executing pickled code.

    ``allowed_classes`` / ``inert_functions``: official dotted names that load as inert
    :class:`PickledObject` stand-ins (calling a stand-in "function" also just records its arguments);
    ``allowed_prefixes``: the same for every name under a prefix (``"torch.nn.modules."``).
    """
    import torch

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.lower().endswith(SAFETENSORS_EXT):
        import safetensors.torch

        try:
            return safetensors.torch.load_file(path, device=str(map_location))
        except Exception as exc:  # SafetensorError, OSError: a damaged or mislabeled file
            raise ValueError(f"{_short(path)} is not a readable safetensors file ({exc}).") from None
    kind = _check_container(path)  # zip or legacy; same scan, same allowlist, same unpickler for both
    names = set(allowed_classes) | set(inert_functions)
    from torch import _weights_only_unpickler as wu

    try:
        found = _globals_in(path, kind)
    except pickle.UnpicklingError as exc:
        raise _refused(path, f"it uses a pickle operation the safe loader does not accept ({_torch_reason(exc)})") from None
    except Exception as exc:
        raise ValueError(f"{_short(path)} is not a readable torch checkpoint ({type(exc).__name__}: {exc}). "
                         f"{LOADABLE}") from None
    known = set(wu._get_allowed_globals())
    prefixes = tuple(allowed_prefixes)
    names |= {g for g in found if prefixes and g.startswith(prefixes)}
    bad = sorted(g for g in found if g not in known and g not in names)
    if bad:
        raise _refused(path, f"it refers to {', '.join(repr(b) for b in bad[:5])}, which is not on this "
                             "loader's allowlist")
    try:
        if kind == "legacy":
            _check_legacy_storages(path, _stand_ins(names))
        with torch.serialization.safe_globals(_stand_ins(names)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except UnsafeCheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        raise _refused(path, _torch_reason(exc)) from None
    except (RuntimeError, EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError,
            OverflowError, MemoryError) as exc:
        raise ValueError(f"{_short(path)} could not be read as a torch checkpoint "
                         f"({type(exc).__name__}: {str(exc)[:200]}). {LOADABLE}") from None


def module_state_dict(obj, prefix=""):
    """Flatten a pickled ``nn.Module`` (a :class:`PickledObject` tree) into ``{name: tensor}``.

    Iterative, with depth and size budgets: a cyclic, exponentially shared or absurdly deep tree is refused."""
    import torch

    out = collections.OrderedDict()
    if not isinstance(obj, PickledObject):
        return out
    stack, visits = [(obj, prefix, 0)], 0
    while stack:
        node, pre, depth = stack.pop()
        visits += 1
        if depth > MAX_TREE_DEPTH or visits > MAX_TREE_NODES:
            what = (f"nests modules deeper than {MAX_TREE_DEPTH} (or loops back on itself)" if depth > MAX_TREE_DEPTH
                    else f"holds more than {MAX_TREE_NODES} modules")
            raise UnsafeCheckpointError(f"refused for safety: the pickled module tree {what} at '{(pre or '<root>')[:80]}'")
        state = node.state if isinstance(node.state, dict) else {}
        for kind in ("_parameters", "_buffers"):
            tensors = state.get(kind)
            for name, t in (tensors.items() if isinstance(tensors, dict) else ()):
                if isinstance(t, torch.Tensor):
                    out[f"{pre}{name}"] = t.detach()
        children = state.get("_modules")
        pending = [(c, f"{pre}{n}.", depth + 1) for n, c in (children.items() if isinstance(children, dict) else ())
                   if isinstance(c, PickledObject)]
        stack.extend(reversed(pending))
    return out
