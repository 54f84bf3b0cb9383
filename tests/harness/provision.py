"""Put what shipped workflows need into a ComfyUI base directory: tiny models from the factory
(into the models/ folder each kind belongs to) and the shared example photos/data."""
import os
import shutil
from pathlib import Path

# files from shared/data -> "input" or a models/ sub-folder
SHARED_FILES = {
    "faces/wplus_in_the_wild_1.jpg": "input",
    "faces/wplus_aligned_1.png": "input",
    "faces/celebahq_28017.jpg": "input",
    "faces/personamagic_person_1.jpg": "input",
    "wplus/wcodes/e4e_1.pth": "wplus/codes",
    "wplus/wcodes/e4e_2.pth": "wplus/codes",
    "wplus/interfacegan/age.pt": "wplus/directions",
    "wplus/interfacegan/smile.pt": "wplus/directions",
    "wplus/latent_directions/smile.npy": "wplus/directions",
    "wplus/latent_directions/age.npy": "wplus/directions",
    "wplus/att_direction_scale.pth": "wplus/directions",  # Stage II W+ disturbance (train_wplus_stage2)
    "wplus/ganspace/ffhq_pca.pt": "wplus/directions",
    "wplus/ganspace/ganspace_configs.csv": "wplus/directions",
    "crossinit/learned_embeddings/28017.bin": "crossinit",
    "adaface/mean_emb_keanureeves.pt": "face_embeds",
    "adaface/mean_emb_jenniferlawrence.pt": "face_embeds",
}


def shared_data_dir():
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("FP_SHARED", repo.parent / "shared")) / "data"


def link(src, dst):
    """Symlink ``src`` at ``dst`` (a copy where symlinks fail); a folder onto an existing folder merges
    into it; an existing ``dst`` is left as it is."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_dir() and not dst.is_symlink() and Path(src).is_dir():  # merge into an existing folder
        for child in sorted(Path(src).iterdir()):
            link(child, dst / child.name)
        return
    if dst.exists() or dst.is_symlink():
        return
    try:
        dst.symlink_to(src, target_is_directory=Path(src).is_dir())
    except OSError:
        shutil.copy2(src, dst)


def provision(home, kinds=None, shared=True):
    """Install tiny models (all registered kinds with a known folder, or ``kinds``) and shared files.
    Returns {file name: kind} for the installed tiny models."""
    from fixtures import tiny

    home = Path(home)
    installed = {}
    for kind in kinds or tiny.kinds():
        folder = tiny.folder(kind)
        if folder is None:
            continue
        src = tiny.ensure(kind)
        link(src, home / "models" / folder / src.name)
        installed[src.name] = kind
    pack = home / "models" / "insightface" / "models" / "antelopev2"
    if kinds is None and not pack.exists():  # tiny insightface pack (a real one, if linked, wins)
        from fixtures.tiny import face as tiny_face

        tiny_face.make_pack(home / "models" / "insightface", "antelopev2")
    data = shared_data_dir()
    if shared and data.is_dir():
        for rel, folder in SHARED_FILES.items():
            src = data / rel
            if src.exists():
                dst_dir = home / "input" if folder == "input" else home / "models" / folder
                dst = dst_dir / src.name  # a copy: tests may overwrite it, never the shared original
                if not dst.exists():
                    dst_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
    return installed


def link_real_models(home, models_dir):
    """Link the files of a real ``models/`` tree (laid out like ComfyUI/models: checkpoints/, e4e/, wplus/, ...)
    into ``home``/models. Returns {folder: sorted file names} of the top-level files per folder."""
    models_dir = Path(models_dir)
    found = {}
    if not models_dir.is_dir():
        return found
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            link(entry.resolve(), Path(home) / "models" / folder.name / entry.name)
            if entry.is_file():
                found.setdefault(folder.name, []).append(entry.name)
    return found


def prefer_real_models(prompt, installed, real):
    """Point every input that names a tiny model at the first real file of the same folder, if any.
    ``installed``: {tiny file name: kind} from :func:`provision`; ``real``: from :func:`link_real_models`.
    Returns [(node id, tiny name, real name)] of the substitutions."""
    from fixtures import tiny

    swaps = []
    for nid, node in prompt.items():
        for key, value in node.get("inputs", {}).items():
            kind = installed.get(value) if isinstance(value, str) else None
            files = real.get(tiny.folder(kind) or "", []) if kind else []
            if files:
                node["inputs"][key] = files[0]
                swaps.append((nid, value, files[0]))
    return swaps
