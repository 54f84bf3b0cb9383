"""Face-analysis loading from insightface model packs: folder checks, provider choice, clear errors.

Models live in ComfyUI's ``models/insightface/models/<name>/`` (the ``insightface`` folder from
models_loader.paths, laid out as insightface's own ``root``). The pack's SCRFD and ArcFace ONNX files
run on ONNX Runtime directly (``scrfd.py``, ``arcface.py``, ``onnx_analysis.py``): insightface is an
optional extra, and other packs' insightface objects are accepted as they are (``detect.py``).
Nothing is downloaded.
"""
import logging
import os
import threading

log = logging.getLogger(__name__)

# what each pack ships (from the official zips); det + rec are the ones this pack needs
KNOWN_PACKS = {
    "antelopev2": {"detection": "scrfd_10g_bnkps.onnx", "recognition": "glintr100.onnx",
                   "others": ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx")},
    "buffalo_l": {"detection": "det_10g.onnx", "recognition": "w600k_r50.onnx",
                  "others": ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx")},
}
PROVIDER_CHOICES = ["auto", "CUDA", "CoreML", "ROCm", "DirectML", "CPU"]
_ORT_NAMES = {"CUDA": "CUDAExecutionProvider", "CoreML": "CoreMLExecutionProvider",
              "ROCm": "ROCMExecutionProvider", "DirectML": "DmlExecutionProvider",
              "CPU": "CPUExecutionProvider"}
_AUTO_ORDER = ("CUDA", "ROCm", "CoreML", "DirectML")


class FaceModelError(RuntimeError):
    """A user-facing problem with face models (missing folder, corrupt file, no provider)."""


def available_providers():
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def choose_providers(requested: str = "auto", available=None):
    """ORT provider list for ``requested`` (one of PROVIDER_CHOICES), CPU always last as fallback."""
    if available is None:
        available = available_providers()
    if requested not in PROVIDER_CHOICES:
        raise FaceModelError(f"unknown provider {requested!r}; choose one of {PROVIDER_CHOICES}")
    if requested == "auto":
        for name in _AUTO_ORDER:
            if _ORT_NAMES[name] in available:
                return [_ORT_NAMES[name], "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    ort = _ORT_NAMES[requested]
    if ort not in available:
        hint = {"CUDA": " Install onnxruntime-gpu (and uninstall plain onnxruntime) for CUDA.",
                "CoreML": " CoreML is only available in onnxruntime on macOS.",
                "DirectML": " Install onnxruntime-directml for DirectML."}.get(requested, "")
        raise FaceModelError(f"provider {requested} ({ort}) is not available in this onnxruntime; "
                             f"available: {available}.{hint} Or choose 'auto' / 'CPU'.")
    return [ort] if ort == "CPUExecutionProvider" else [ort, "CPUExecutionProvider"]


def insightface_roots():
    """The registered ``insightface`` model folders (each an insightface ``root``)."""
    from .. import paths
    import folder_paths

    paths.register_model_folders()
    return list(folder_paths.get_folder_paths("insightface"))


def _onnx_files(d):
    try:
        return sorted(f for f in os.listdir(d) if f.lower().endswith(".onnx") and os.path.isfile(os.path.join(d, f)))
    except OSError:
        return []


def _expected_text(name):
    pack = KNOWN_PACKS.get(name)
    if not pack:
        return "at least a detection model (*.onnx; SCRFD) and, for embeddings, a recognition model (ArcFace)"
    return (f"{pack['detection']} (detection) and {pack['recognition']} (recognition)"
            f"{', optionally ' + ', '.join(pack['others']) if pack['others'] else ''}")


def installed_packs(roots=None) -> list:
    """Names of the model packs present: every folder in ``<root>/models/`` (one without .onnx files stays
    listed, so the loader can say what is wrong with it) and folders in ``<root>/`` that hold .onnx files
    (also in the zip's nested ``<name>/<name>/`` layout); known packs first."""
    found = set()
    for root in insightface_roots() if roots is None else roots:
        models = os.path.join(root, "models")
        if os.path.isdir(models):
            found.update(n for n in os.listdir(models) if os.path.isdir(os.path.join(models, n)))
        if os.path.isdir(root):
            for name in os.listdir(root):
                d = os.path.join(root, name)
                if name != "models" and os.path.isdir(d) and (_onnx_files(d) or _onnx_files(os.path.join(d, name))):
                    found.add(name)
    return [n for n in KNOWN_PACKS if n in found] + sorted(found - set(KNOWN_PACKS))


def find_model_dir(name: str, roots=None) -> str:
    """Directory holding ``name``'s .onnx files; handles the zip's nested ``<name>/<name>/`` folder.

    ``name`` may also be an absolute directory. Raises FaceModelError naming every path looked at
    and the files expected.
    """
    if os.path.isabs(name) and os.path.isdir(name):
        candidates = [name]
    else:
        roots = insightface_roots() if roots is None else roots
        candidates = []
        for root in roots:
            candidates += [os.path.join(root, "models", name), os.path.join(root, name)]
    looked = []
    for base in candidates:
        for d in (base, os.path.join(base, os.path.basename(base.rstrip(os.sep)))):  # zip nests once
            looked.append(d)
            if _onnx_files(d):
                return d
    zips = [c + ".zip" for c in candidates if os.path.isfile(c + ".zip")]
    existing = [c for c in candidates if os.path.isdir(c)]
    msg = (f"insightface model pack '{name}' not found. Expected {_expected_text(name)} in "
           f"{candidates[0] if candidates else '<no insightface folder registered>'}")
    if existing:
        msg += f". The folder {existing[0]} exists but holds no .onnx file (contents: {sorted(os.listdir(existing[0]))[:10]})"
    if zips:
        msg += f". Found {zips[0]}: unzip it there"
    msg += f". Looked in: {looked}."
    if name == "antelopev2":
        msg += " (antelopev2.zip extracts to antelopev2/antelopev2/*.onnx; either layout works.)"
    raise FaceModelError(msg)


def check_onnx_files(model_dir: str):
    """Cheap sanity check of every .onnx in ``model_dir`` before ORT sees it (corrupt, LFS pointer)."""
    for f in _onnx_files(model_dir):
        path = os.path.join(model_dir, f)
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(64)
        if size == 0:
            problem = "is empty (0 bytes)"
        elif head.startswith(b"version https://git-lfs"):
            problem = "is a git-lfs pointer, not the model (download the real file)"
        elif head[:1] != b"\x08":  # an ONNX ModelProto starts with field 1 (ir_version, varint)
            problem = f"does not start like an ONNX model ({size} bytes)"
        else:
            continue
        raise FaceModelError(f"corrupt ONNX file {path}: it {problem}. Re-download it "
                             "(incomplete downloads are the usual cause).")


_CACHE = {}
_LOCK = threading.Lock()


def _fingerprint(model_dir):
    out = []
    for f in _onnx_files(model_dir):
        st = os.stat(os.path.join(model_dir, f))
        out.append((f, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _open_pack(model_dir, name, providers, with_recognition):
    """{task: (session, path)} plus the ArcFace input normalisation, cached (one pack at a time)."""
    from .arcface import graph_normalises_input
    from .onnx_analysis import open_sessions

    modules = ("detection", "recognition") if with_recognition else ("detection",)
    key = (os.path.realpath(model_dir), tuple(providers), modules, _fingerprint(model_dir))
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        try:
            sessions = open_sessions(model_dir, _onnx_files(model_dir), providers, with_recognition)
            rec = sessions.get("recognition")
            mean_std = None if rec is None else ((0.0, 1.0) if graph_normalises_input(rec[1]) else (127.5, 127.5))
        except Exception as exc:
            raise FaceModelError(f"could not load the ONNX models in {model_dir} ({type(exc).__name__}: "
                                 f"{str(exc)[:300]}). A file is probably corrupt or incomplete: re-download "
                                 f"'{name}' ({_expected_text(name)}).") from exc
        if "detection" not in sessions:
            raise FaceModelError(f"no face detection model recognised in {model_dir} (files: "
                                 f"{_onnx_files(model_dir)}); expected {_expected_text(name)}")
        if with_recognition and "recognition" not in sessions:
            log.warning("face pack %s has no recognition model: FP_FaceEmbed will not work with it", model_dir)
        _CACHE.clear()  # keep one loaded pack
        _CACHE[key] = (sessions, mean_std)
        return sessions, mean_std


def load_face_analysis(name: str = "antelopev2", provider: str = "auto", det_size: int = 640,
                       det_thresh: float = 0.5, with_recognition: bool = True, roots=None):
    """A face analysis (SCRFD detection [+ ArcFace recognition]) for pack ``name``, run on ONNX Runtime
    directly (insightface is not needed; results equal insightface's on the same files).

    ORT sessions are cached and shared; each call returns a new ``OnnxFaceAnalysis`` holding its own
    ``det_size`` / ``det_thresh`` defaults, so no caller's settings leak into another's object.
    Its API is insightface's ``FaceAnalysis`` subset other packs call (INSIGHTFACE/FACEANALYSIS inputs).
    """
    from .onnx_analysis import OnnxFaceAnalysis, build_models

    model_dir = find_model_dir(name, roots)
    check_onnx_files(model_dir)
    providers = choose_providers(provider)
    sessions, mean_std = _open_pack(model_dir, name, providers, with_recognition)
    return OnnxFaceAnalysis(build_models(sessions, int(det_size), mean_std), model_dir, providers, det_thresh)


def session_providers(fa):
    """Providers the loaded ORT sessions actually use ({task: [...]})."""
    out = {}
    for task, model in getattr(fa, "models", {}).items():
        sess = getattr(model, "session", None)
        if sess is not None and hasattr(sess, "get_providers"):
            out[task] = list(sess.get_providers())
    return out
