"""One text report of what the pack depends on: library versions, onnxruntime providers, torch device,
insightface packs and the files in each of the pack's model folders. For bug reports and for
"why is my model not in the list" questions; nothing here raises."""
import importlib.metadata
import os

LIBRARIES = ("torch", "torchvision", "numpy", "onnxruntime", "onnxruntime-gpu", "insightface", "kornia",
             "safetensors", "transformers", "diffusers", "mediapipe", "opencv-python", "opencv-python-headless")


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_lines():
    lines = [f"  {d}: {v}" for d in LIBRARIES for v in [_version(d)] if v]
    if _version("onnxruntime") and _version("onnxruntime-gpu"):
        lines.append("  WARNING: both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's "
                     "files. Uninstall both, then install one.")
    return lines


def runtime_lines():
    lines = []
    try:
        import torch

        cuda = torch.cuda.is_available()
        lines.append(f"  torch device: {'cuda ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}")
    except Exception as exc:  # report, never fail
        lines.append(f"  torch: {exc}")
    try:
        from .face.analysis import available_providers, choose_providers

        lines.append(f"  onnxruntime providers: {available_providers()} (auto picks {choose_providers('auto')[0]})")
    except Exception as exc:
        lines.append(f"  onnxruntime: not usable ({exc})")
    return lines


def insightface_lines(roots=None):
    """``roots``: insightface root folders (default: the registered ones)."""
    from .face.analysis import KNOWN_PACKS, find_model_dir

    lines = []
    for name in KNOWN_PACKS:
        try:
            d = find_model_dir(name, roots)
            lines.append(f"  {name}: {d} ({len([f for f in os.listdir(d) if f.endswith('.onnx')])} .onnx files)")
        except Exception as exc:
            lines.append(f"  {name}: not usable: {str(exc).splitlines()[0]}")
    return lines


def model_folder_lines():
    from . import paths

    import folder_paths

    paths.register_model_folders()
    lines = []
    for name in list(paths.MODEL_FOLDERS) + ["clip_vision"]:
        files = folder_paths.get_filename_list(name)
        where = ", ".join(folder_paths.get_folder_paths(name))
        shown = ", ".join(files[:8]) + (f", ... ({len(files)} in all)" if len(files) > 8 else "")
        lines.append(f"  {name} [{where}]: {shown or 'empty'}")
    return lines


def report():
    sections = [("libraries", library_lines), ("runtime", runtime_lines), ("insightface packs", insightface_lines),
                ("model folders", model_folder_lines)]
    out = ["Face Personalization diagnostics"]
    for title, fn in sections:
        out.append(f"{title}:")
        try:
            out.extend(fn())
        except Exception as exc:
            out.append(f"  could not check: {exc}")
    return "\n".join(out)
