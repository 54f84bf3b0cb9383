"""Put what shipped workflows need into a ComfyUI base directory: tiny models from the factory
(into the models/ folder each kind belongs to) and the shared example photos/data."""
import os
import shutil
from pathlib import Path

# tiny-factory kind -> models/ sub-folder (method helpers add theirs here)
TINY_MODEL_FOLDERS = {
    "sd15": "checkpoints",
    "sd2": "checkpoints",
    "sdxl": "checkpoints",
    "controlnet_sd15": "controlnet",
    "e4e": "e4e",
    "wplus_adapter_sd15": "wplus",
    "pidiff_sd15": "pidiff",
    "personamagic_mapper": "personamagic",
    "personamagic_mapper_st": "personamagic",
    "clip_vision_vitb32": "clip_vision",
    "adaface_pt": "adaface",
    "adaface_arc2face": "adaface",
    "adaface_safetensors": "adaface",
}

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
    "crossinit/learned_embeddings/28017.bin": "crossinit",
    "adaface/mean_emb_keanureeves.pt": "face_embeds",
    "adaface/mean_emb_jenniferlawrence.pt": "face_embeds",
}


def shared_data_dir():
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("FP_SHARED", repo.parent / "shared")) / "data"


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        return
    try:
        dst.symlink_to(src, target_is_directory=Path(src).is_dir())
    except OSError:
        shutil.copy2(src, dst)


def provision(home, kinds=None, shared=True):
    """Install tiny models (all registered kinds with a known folder, or ``kinds``) and shared files.
    Returns {file name: kind} for the installed tiny models."""
    from comfyui_face_personalization.models_loader import tiny

    home = Path(home)
    installed = {}
    for kind in kinds or tiny.kinds():
        folder = TINY_MODEL_FOLDERS.get(kind)
        if folder is None:
            continue
        src = tiny.ensure(kind)
        _link(src, home / "models" / folder / src.name)
        installed[src.name] = kind
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
