"""One rule for every file a node (or a training helper) reads or writes: ComfyUI's folders only.

Writing
    ``safe_output_path(folder_kind, name, overwrite=False, ext=None, allowed_ext=())`` -> path to write.
    ``folder_kind`` is a model folder name registered with ``folder_paths`` (``"embeddings"``,
    ``"wplus_codes"``, ...: the file goes to its first directory) or one of ``"output"``, ``"temp"``,
    ``"user"``, ``"input"``. ``name`` is a plain file name or a sub-path inside that folder (an absolute path inside it is
    taken as a sub-path); ``../``, an
    absolute path elsewhere, or a symlink leading out of the folder is refused with :class:`UnsafePathError`.
    ``ext`` is appended unless the name already ends in one of ``allowed_ext``. An existing file is
    only replaced when ``overwrite`` is true; otherwise the next free numbered name
    (``name_00001.ext``) is reserved atomically.
    ``safe_path_in(base_dir, name, ...)``: the same for a directory the caller already resolved.
    ``write_file(folder_kind, name, writer, overwrite=False, ext=None, allowed_ext=())`` -> path: the
    same, then ``writer(path)``; a reserved file is removed again if the writer fails.
    ``saved(path, extra="")`` -> the ``{"ui": {"text": [...]}, "result": (path,)}`` an output node returns.

Reading
    ``confined_read_path(path, folder_kinds=())`` -> absolute path of an existing file. A relative name
    is looked up in the given model folders, then in ComfyUI's input folder; an absolute path must lie
    inside one of ComfyUI's known folders (every registered model folder incl. extra_model_paths, the
    models, input, output, user and temp directories). Like ComfyUI core, a symlink *placed inside*
    those folders by the machine's owner is followed (shared model libraries are commonly linked in);
    ``..`` segments are resolved before the check, so they cannot climb out.
    ``confined_read_dir(path, what)`` -> absolute path of an existing folder: a relative name inside
    ComfyUI's input folder, an absolute path inside one of the known folders; the same refusals.

This module never imports the server; ``folder_paths`` is imported lazily.
"""
import os

KNOWN_DIRS = ("output", "temp", "user", "input")


class UnsafePathError(ValueError):
    """A file name that would leave ComfyUI's folders (or replace a file silently)."""


def _folder_paths():
    import folder_paths

    from . import paths

    paths.register_model_folders()
    return folder_paths


def target_dir(folder_kind):
    """The directory new files of ``folder_kind`` go to."""
    fp = _folder_paths()
    if folder_kind in KNOWN_DIRS:
        return fp.get_directory_by_type(folder_kind) if folder_kind != "user" else fp.get_user_directory()
    dirs = fp.get_folder_paths(folder_kind)
    if not dirs:
        raise UnsafePathError(f"unknown ComfyUI folder {folder_kind!r}")
    return dirs[0]


def known_roots():
    """[(label, absolute dir)] of every folder files may be read from."""
    fp = _folder_paths()
    roots = [("models", fp.models_dir)]
    for kind in KNOWN_DIRS:
        try:
            roots.append((kind, target_dir(kind)))
        except Exception:  # a folder ComfyUI has not set up
            pass
    for kind, (dirs, _) in fp.folder_names_and_paths.items():
        roots += [(f"models/{kind}", d) for d in dirs]
    return [(label, os.path.abspath(d)) for label, d in roots if d]


def _inside(path, root):
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def _clean_name(name, what):
    name = (name or "").strip().replace("\\", "/")
    if not name:
        raise UnsafePathError(f"{what}: the file name is empty")
    if "\x00" in name:
        raise UnsafePathError(f"{what}: the file name contains a NUL character")
    if os.path.isabs(name) or name.startswith("~") or (len(name) > 1 and name[1] == ":"):
        raise UnsafePathError(f"{what}: {name!r} is an absolute path outside the target folder; give a file name "
                              "(or a sub-path) inside it instead")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"{what}: {name!r} climbs out of the target folder ('..'); give a file name "
                              "(or a sub-path) inside it")
    if not parts:
        raise UnsafePathError(f"{what}: {name!r} is not a file name")
    return parts


def safe_output_path(folder_kind, name, overwrite=False, ext=None, allowed_ext=(), what="save", reserve=True):
    """Where to write ``name`` in ``folder_kind`` (see the module docstring). With ``reserve`` and
    without ``overwrite`` the returned file has been created empty, so no other writer takes it."""
    return safe_path_in(target_dir(folder_kind), name, overwrite, ext, allowed_ext, what, reserve)


def safe_path_in(base, name, overwrite=False, ext=None, allowed_ext=(), what="save", reserve=True):
    """:func:`safe_output_path` for an explicit directory ``base`` (one the caller got from folder_paths)."""
    raw = (name or "").strip()
    if raw and os.path.isabs(raw) and _inside(os.path.abspath(raw), os.path.abspath(base)):
        name = os.path.relpath(os.path.abspath(raw), os.path.abspath(base))  # an absolute path inside is a sub-path
    parts = _clean_name(name, what)
    allowed = tuple(e.lower() for e in (allowed_ext or ((ext,) if ext else ())))
    if ext and not parts[-1].lower().endswith(allowed):
        parts[-1] += ext
    real_base = os.path.realpath(base)
    path = os.path.join(base, *parts)
    stem, suffix = os.path.splitext(path)
    n = 0
    while True:
        if not _inside(os.path.realpath(path), real_base):
            raise UnsafePathError(f"{what}: {name!r} leads outside {base} (through a symlink); choose a name "
                                  "inside that folder")
        if os.path.isdir(path):
            raise UnsafePathError(f"{what}: {path} is a folder; give a file name")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not _inside(os.path.realpath(os.path.dirname(path)), real_base):  # a folder swapped for a link meanwhile
            raise UnsafePathError(f"{what}: {name!r} leads outside {base}")
        if overwrite:
            return path
        if not os.path.lexists(path):
            if not reserve:
                return path
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return path
            except FileExistsError:
                pass
        n += 1
        path = f"{stem}_{n:05d}{suffix}"


def write_file(folder_kind, name, writer, overwrite=False, ext=None, allowed_ext=(), what="save"):
    """``writer(path)`` at :func:`safe_output_path`; returns the path written."""
    path = safe_output_path(folder_kind, name, overwrite, ext, allowed_ext, what)
    fresh = not overwrite or not os.path.exists(path)
    try:
        writer(path)
    except BaseException:
        if fresh and os.path.isfile(path) and os.path.getsize(path) == 0:
            os.remove(path)
        raise
    return path


def saved(path, extra=""):
    """What an output node returns: the path as its output and shown under the node."""
    text = f"saved {path}" + (f"; {extra}" if extra else "")
    return {"ui": {"text": [text]}, "result": (path,)}


def confined_read_path(path, folder_kinds=(), what="file"):
    """Absolute path of an existing file inside ComfyUI's folders (see the module docstring)."""
    raw = (path or "").strip()
    if not raw:
        raise FileNotFoundError(f"{what}: no file name given")
    fp = _folder_paths()
    folder_kinds = (folder_kinds,) if isinstance(folder_kinds, str) else tuple(folder_kinds)
    if not os.path.isabs(os.path.expanduser(raw)):
        parts = _clean_name(raw, what)
        rel = os.path.join(*parts)
        for kind in folder_kinds:
            hit = fp.get_full_path(kind, rel)
            if hit:
                return os.path.abspath(hit)
        candidate = os.path.join(fp.get_input_directory(), rel)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
        where = [d for k in folder_kinds for d in fp.get_folder_paths(k)] + [fp.get_input_directory()]
        raise FileNotFoundError(f"{what}: {raw!r} not found in {', '.join(where)}")
    full = os.path.abspath(os.path.expanduser(raw))  # normalises '..' before the check
    roots = known_roots()
    if not any(_inside(full, root) for _, root in roots):
        home = [d for k in folder_kinds for d in fp.get_folder_paths(k)][:1] or [fp.get_input_directory()]
        raise UnsafePathError(f"{what}: {raw!r} is outside ComfyUI's folders and is not read; put the file in "
                              f"{home[0]} (or ComfyUI's input folder) and give its name")
    if not os.path.isfile(full):
        raise FileNotFoundError(f"{what}: {full} does not exist (or is not a file)")
    return full


def confined_read_dir(path, what="folder"):
    """Absolute path of an existing folder inside ComfyUI's folders (see the module docstring)."""
    raw = (path or "").strip()
    if not raw:
        raise FileNotFoundError(f"{what}: no folder given")
    fp = _folder_paths()
    if not os.path.isabs(os.path.expanduser(raw)):
        full = os.path.join(fp.get_input_directory(), *_clean_name(raw, what))
    else:
        full = os.path.abspath(os.path.expanduser(raw))
        if not any(_inside(full, root) for _, root in known_roots()):
            raise UnsafePathError(f"{what}: {raw!r} is outside ComfyUI's folders and is not read; put the folder in "
                                  f"{fp.get_input_directory()} and give its name")
    if not os.path.isdir(full):
        raise FileNotFoundError(f"{what}: folder {full} does not exist")
    return full
