"""FP_TrainPersonaMagic: validate, write a job folder (photos, face masks, CLIP image embeddings), submit, return."""
import os
import time

import numpy as np
import torch

from ..models_loader.training import jobfiles
from ..models_loader.training.spec import JobSpec
from .nodes import (TrainingNode, check_output_name, ckpt_input, detect_family, face_analysis_input, face_crops,
                    gather_photos, job_inputs, save_png, submit_job)

FRAMINGS = ["whole photo (official)", "face crop"]
MASK_SOURCES = ["face pipeline", "mask input / <photo>_mask.png"]


def check_personamagic_family(cfg, name):
    import comfy.supported_models as sm

    if isinstance(cfg, sm.SD15):
        return type(cfg).__name__
    raise ValueError(f"the base model {name} is {type(cfg).__name__}; PersonaMagic training needs an SD1.x "
                     "checkpoint (768-d text encoder; official: dreamlike-photoreal-2.0, an SD 1.5 model)")


def _resize(img, size):
    """float [H, W, 3] 0..1 -> uint8 PIL bicubic size x size -> float (what the trainer's loader sees)."""
    from PIL import Image

    arr = (img.clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    out = Image.fromarray(arr).resize((size, size), resample=Image.BICUBIC)
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0)


def _file_mask(label, size):
    """``<photo>_mask.png`` or ``mask/<photo name>`` (the official layout) beside a folder photo, or None."""
    from PIL import Image

    if not os.path.isfile(label):
        return None
    folder, fname = os.path.split(label)
    stem = os.path.splitext(fname)[0]
    for cand in (os.path.join(folder, stem + "_mask.png"), os.path.join(folder, "mask", fname)):
        if os.path.isfile(cand):
            with Image.open(cand) as im:
                m = im.convert("L").resize((size, size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)
    return None


def _face_mask(img, face_analysis, size):
    """Soft face mask [size, size] from the face pipeline (detected on ``img`` at its own size), or None."""
    from ..models_loader.face.detect import detect_faces
    from ..models_loader.face.mask import face_mask

    bundle = detect_faces(img[None], face_analysis, "largest", if_no_face="skip", embed=False)
    if not bundle.faces:
        return None
    return face_mask(bundle, "convex_hull", grow=1.1, feather=size / 64.0, height=size, width=size)[0]


def prepare_photos(photos, face_analysis, resolution, framing, mask_source, masks, if_no_face):
    """[(label, image [res, res, 3] 0..1, mask [res, res] 0..1)] after face checks (errors name the photo).
    Faces are detected on the photo (or a >= 512 px crop), not on the small training copy."""
    if framing == "face crop":
        items = face_crops(photos, face_analysis, max(resolution, 512), if_no_face)
    else:
        items = list(photos)
    if framing == "face crop" and mask_source == MASK_SOURCES[1]:
        raise ValueError("your own masks are drawn on the whole photos: use framing 'whole photo (official)' with "
                         "them, or mask_source 'face pipeline' with face crops")
    user = None
    if masks is not None:
        if mask_source != MASK_SOURCES[1]:
            raise ValueError("a mask is connected but mask_source is 'face pipeline': set mask_source to "
                             f"'{MASK_SOURCES[1]}' to use it, or disconnect it")
        n_img = sum(1 for label, _ in photos if label.endswith("(images input)"))
        if masks.shape[0] != n_img:
            raise ValueError(f"masks: {masks.shape[0]} masks for {n_img} images on the images input (one per image)")
        user = masks
    out = []
    for label, img in items:
        small = _resize(img, resolution)
        if mask_source == MASK_SOURCES[1]:
            if user is not None and label.endswith("(images input)"):
                k = int(label.split()[1]) - 1
                m = torch.nn.functional.interpolate(user[k:k + 1, None].float(), size=(resolution, resolution),
                                                    mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
            else:
                m = _file_mask(label, resolution)
            if m is None:
                raise ValueError(f"no mask for {label}: connect a MASK per image, or put <name>_mask.png beside "
                                 "each photo (or mask/<name>), or set mask_source to 'face pipeline'")
        else:
            m = _face_mask(img, face_analysis, resolution)
            if m is None:
                if if_no_face == "skip":
                    continue
                raise ValueError(f"no face found in {label}; use a photo that shows a face, or set if_no_face to 'skip'")
        if float(m.max()) <= 0:
            raise ValueError(f"the mask of {label} is empty (all black): the masked loss needs the face area white")
        out.append((label, small, m))
    if not out:
        raise ValueError(f"no face found in any of the {len(photos)} photos")
    return out


def image_embeddings(clip_vision, images, resolution):
    """[N, 512] CLIP ViT-B/32 image embeddings of the training pixels, official training preprocessing."""
    from ..models_loader.methods.personamagic.reference import encode_reference

    rows = [encode_reference(clip_vision, img[None], load_size=resolution)["image_embeds"].float().cpu()
            for img in images]
    emb = torch.cat(rows)
    if emb.shape[-1] != 512:
        raise ValueError(f"clip_vision gives {emb.shape[-1]}-d image embeddings; PersonaMagic's bypass takes the "
                         "512-d embedding of an OpenAI CLIP ViT-B/32 (load it with Load CLIP Vision)")
    return emb


class FP_TrainPersonaMagic(TrainingNode):
    DESCRIPTION = ("Trains a PersonaMagic mapper (AAAI 2025) from photos of one person in a background job and "
                   "returns at once: ComfyUI keeps running other prompts meanwhile. The official recipe "
                   "(training/coach_2.py): the timestep mapper and its image bypass head are trained with a "
                   "face-masked noise loss plus the official text-embedding attention loss, timesteps 400..799, "
                   "bypass dropped half of the time, 1000 steps, batch 1 x 2 accumulation, AdamW lr 1e-4. Writes "
                   "models/personamagic/<name>.safetensors (Load PersonaMagic Mapper / Stage-Regulated TI). "
                   "Trains on the checkpoint file you pick (its weights as saved, without LoRAs of this graph).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": ckpt_input("Base SD1.x checkpoint to train on (the official one is "
                                        "dreamlike-photoreal-2.0). The file's own weights are used."),
                "face_analysis": face_analysis_input("Face detector (FP_FaceAnalysisLoader or the offline detector): "
                                                     "checks every photo shows a face, makes the face masks (face "
                                                     "pipeline) and face crops; with a recognition model previews get "
                                                     "an ID score."),
                "clip_vision": ("CLIP_VISION", {"tooltip": "OpenAI CLIP ViT-B/32 (Load CLIP Vision): its 512-d "
                                                "image embedding of each training photo feeds the bypass head, "
                                                "as in the official training."}),
                "name": ("STRING", {"default": "my_persona", "tooltip": "Output name: models/personamagic/"
                                    "<name>.safetensors. Must not exist yet."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": 100000, "tooltip": "Optimiser steps (official 1000)."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                            "tooltip": "AdamW learning rate, already scaled (official 5e-5 x batch 1 "
                                                       "x accumulation 2 = 1e-4). Weight decay 0.01."}),
                "grad_accum": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "Photos per optimiser step, one "
                                       "at a time (gradient accumulation; official 2 with batch 1)."}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64,
                                       "tooltip": "Training image size (official 512: photos are resized to a square)."}),
                "framing": (FRAMINGS, {"default": FRAMINGS[0], "tooltip": "whole photo: each photo resized to a "
                            "square as the official code does (fine for portraits); face crop: an aligned face "
                            "crop (better for wide or group photos)."}),
                "mask_source": (MASK_SOURCES, {"default": MASK_SOURCES[0], "tooltip": "Where the loss looks: the "
                                "official code uses CLIPSeg 'face' masks; here the face pipeline draws a soft mask "
                                "around each detected face, or you give your own (the mask input, or a "
                                "<photo>_mask.png / mask/<photo> file beside folder photos; white = face)."}),
                "class_word": ("STRING", {"default": "face", "tooltip": "Class word the tokens start from and are "
                               "normalised to (official 'face'); one CLIP token."}),
                **job_inputs("Autocast precision of the forward pass; the mapper stays fp32. Official: fp32.",
                             checkpointing_tip="Recompute UNet activations in the backward pass: much less memory, "
                                               "~30% slower.",
                             preview_tip="Generate a preview with Stage-Regulated TI (and its ID score) every N "
                                         "steps; 0 = no previews."),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Training photos of one person (the official example uses one)."}),
                "photo_folder": ("STRING", {"default": "", "tooltip": "Folder of photos (inside ComfyUI's input "
                                 "folder, or an absolute path), in addition to / instead of images."}),
                "masks": ("MASK", {"tooltip": "Optional face masks, one per image of the images input (white = "
                          "where the loss counts); set mask_source to use them."}),
            },
        }

    def execute(self, ckpt_name, face_analysis, clip_vision, name, steps, learning_rate, grad_accum, resolution,
                framing, mask_source, class_word, seed, precision, gradient_checkpointing, checkpoint_every,
                preview_every, if_no_face, pause_while_generating, mode, images=None, photo_folder="", masks=None):
        import folder_paths
        import safetensors.torch

        from ..models_loader import paths
        from ..models_loader.methods.personamagic import train as pmt
        from .jobs import JobManager, comfyui_root

        if resolution % 64:
            raise ValueError(f"resolution {resolution} must be a multiple of 64")
        word = (class_word or "").strip()
        if not word or len(word.split()) != 1:
            raise ValueError(f"class_word {class_word!r} must be one word (official 'face')")
        ckpt = folder_paths.get_full_path("checkpoints", ckpt_name)
        if ckpt is None:
            raise FileNotFoundError(f"checkpoint {ckpt_name!r} not found in models/checkpoints")
        family = check_personamagic_family(detect_family(ckpt), ckpt_name)
        out_dirs = {"personamagic": paths.model_dir("personamagic")}
        manager = JobManager.get()
        stem = os.path.join(out_dirs["personamagic"], name.strip())
        name = check_output_name(name, [stem + ".safetensors", stem + ".json"],
                                 manager.reserved_names("personamagic"))
        items = prepare_photos(gather_photos(images, photo_folder), face_analysis, resolution, framing, mask_source,
                               masks, if_no_face)
        embeds = image_embeddings(clip_vision, [img for _, img, _ in items], resolution)
        job_id, job_dir = manager.new_job_dir("personamagic")
        photos, mask_files = [], []
        for i, (_, img, m) in enumerate(items):
            rel = os.path.join(jobfiles.PHOTOS_DIR, f"photo_{i:02d}.png")
            save_png(img, os.path.join(job_dir, rel))
            mrel = os.path.join(jobfiles.PHOTOS_DIR, f"photo_{i:02d}_mask.png")
            save_png(m[..., None].expand(-1, -1, 3), os.path.join(job_dir, mrel))
            photos.append(rel)
            mask_files.append(mrel)
        safetensors.torch.save_file({"image_embeds": embeds.contiguous()}, os.path.join(job_dir, "image_embeds.safetensors"))
        params = {"class_word": word, "weight_decay": pmt.OFFICIAL["weight_decay"], "framing": framing,
                  "mask_source": mask_source, "image_embeds_file": "image_embeds.safetensors",
                  "te_weight": pmt.OFFICIAL["te_weight"], "t_range": [pmt.OFFICIAL["t_min"], pmt.OFFICIAL["t_max"]],
                  "sources": [label for label, _, _ in items]}
        spec = JobSpec(job_id=job_id, method="personamagic", name=name, base_model=ckpt, base_model_name=ckpt_name,
                       family=family, photos=photos, masks=mask_files, params=params, steps=int(steps), seed=int(seed),
                       batch=1, grad_accum=int(grad_accum), learning_rate=float(learning_rate), resolution=resolution,
                       precision=precision, gradient_checkpointing=gradient_checkpointing, cache_latents=True,
                       checkpoint_every=checkpoint_every, preview_every=preview_every, output_dirs=out_dirs,
                       face_pack_dir=getattr(face_analysis, "fp_model_dir", "") or "", comfyui_path=comfyui_root(),
                       created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return submit_job(manager, spec, job_dir, mode, pause_while_generating,
                          os.path.join(out_dirs["personamagic"], name + ".safetensors"))


NODE_CLASS_MAPPINGS = {"FP_TrainPersonaMagic": FP_TrainPersonaMagic}
NODE_DISPLAY_NAME_MAPPINGS = {"FP_TrainPersonaMagic": "Train PersonaMagic (background job)"}
