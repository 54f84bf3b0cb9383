"""Model folders, registered with ComfyUI's ``folder_paths`` so users drop files into
``ComfyUI/models/<folder>/`` (or map them in extra_model_paths.yaml)."""
import os

# folder name -> (subdirectory under models/, accepted extensions)
MODEL_FOLDERS = {
    "insightface": ("insightface", {".onnx"}),
    "e4e": ("e4e", {".pt", ".pth", ".safetensors"}),
    "wplus": ("wplus", {".bin", ".pt", ".pth", ".safetensors"}),
    "wplus_codes": ("wplus/codes", {".pt", ".pth", ".npy", ".safetensors"}),
    "wplus_directions": ("wplus/directions", {".pt", ".pth", ".npy", ".csv"}),
    "pidiff": ("pidiff", {".safetensors", ".bin", ".pt"}),
    "crossinit": ("crossinit", {".bin", ".pt", ".safetensors"}),
    "personamagic": ("personamagic", {".pt", ".safetensors"}),
    "adaface": ("adaface", {".pt", ".ckpt", ".safetensors"}),
    "face_embeds": ("face_embeds", {".pt", ".safetensors"}),
}


def register_model_folders():
    """Idempotent: adds each folder (and keeps paths a user or another pack registered)."""
    import folder_paths

    for name, (sub, exts) in MODEL_FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, *sub.split("/"))
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if path not in paths:
                paths.append(path)
            known.update(exts)
        else:
            folder_paths.folder_names_and_paths[name] = ([path], set(exts))


def model_dir(name: str) -> str:
    """First registered directory of a folder (where new files are written)."""
    import folder_paths

    register_model_folders()
    return folder_paths.get_folder_paths(name)[0]


def _nested_folder_prefixes(name: str) -> tuple:
    """Sub-paths of folder ``name`` that are folders of their own (models/wplus/codes/ inside models/wplus/):
    their files belong to that other folder's dropdown, not this one's."""
    sub = MODEL_FOLDERS.get(name, (None,))[0]
    if sub is None:
        return ()
    return tuple(other[len(sub) + 1:] + "/" for other, _ in MODEL_FOLDERS.values() if other.startswith(sub + "/"))


def list_files(name: str) -> list:
    """Files of folder ``name`` for a dropdown, leaving out the files of folders nested in it."""
    import folder_paths

    register_model_folders()
    nested = _nested_folder_prefixes(name)
    files = folder_paths.get_filename_list(name)
    return [f for f in files if not f.replace("\\", "/").startswith(nested)] if nested else files


def resolve(name: str, filename: str) -> str:
    """Full path of ``filename`` in folder ``name``; a clear error naming where we looked."""
    import folder_paths

    from . import files

    register_model_folders()
    if os.path.isabs(os.path.expanduser(filename)):  # only inside ComfyUI's folders
        return files.confined_read_path(filename, (name,), what=f"'{name}' file")
    path = folder_paths.get_full_path(name, filename)
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(name))
        raise FileNotFoundError(f"{filename!r} not found in the '{name}' model folder(s): {where}")
    return path
