"""Training nodes for the residual cross-attention methods: FP_TrainPIDiff and FP_TrainWPlusAdapter.

Like FP_TrainCrossInit (``nodes.py``, whose validation helpers these reuse): check everything first (photos, faces,
base family, output name, init file, direction bank), turn the photos into W+ codes with the pack's e4e path
(``methods/wplus/e4e.encode_images``, what WPlusEncode runs), write a job folder and submit it; the node returns at
once. The worker runs ``methods/pidiff/train.py`` / ``methods/wplus/train.py``.
"""
import os
import time

import torch

from ..models_loader.training import jobfiles
from ..models_loader.training.spec import JobSpec
from .nodes import (TrainingNode, check_output_name, ckpt_input, detect_family, face_analysis_input, face_crops,
                    gather_photos, job_inputs, largest_faces, save_png, submit_job)

FROM_UNET = "(none: copy the UNet's own attention)"
E4E_SIZE = 256
_FAMILIES = ("SD15", "SD20", "SDXL")


def check_residual_family(cfg, name, method):
    """SD1.x (official), SD2.x and SDXL: every UNet whose cross-attention the residual attention patches."""
    import comfy.supported_models as sm

    if isinstance(cfg, (sm.SD15, sm.SD20, sm.SDXL)):
        return type(cfg).__name__
    raise ValueError(f"the base model {name} is {type(cfg).__name__}; {method} training supports SD1.x (official: "
                     "SD 1.5), SD2.x and SDXL checkpoints")


def adapter_files():
    """W+ Adapter files in models/wplus (not the codes/ and directions/ sub-folders)."""
    from ..models_loader import paths

    return [f for f in paths.list_files("wplus") if not f.replace("\\", "/").startswith(("codes/", "directions/"))]


def _init_file(init_adapter, ckpt=None, method="W+ Adapter"):
    if init_adapter == FROM_UNET:
        return ""
    from ..models_loader import paths
    from ..models_loader.methods.wplus.fit import check_init_file

    path = paths.resolve("wplus", init_adapter)
    # a broken file, a file of another kind or one made for another base model fails here, naming it, not in the worker
    check_init_file(path, ckpt, method, label=init_adapter)
    return path


def crop_face_mask(size, n):
    """MASK [n, size, size] of FFHQ-aligned crops: the pack's convex-hull face mask at the FFHQ template landmarks
    (an aligned crop has its 5 points there)."""
    from ..models_loader.face.align import template
    from ..models_loader.face.mask import face_mask
    from ..models_loader.face.types import DetectedFace, FaceBundle

    kps = template("ffhq", size).float()
    box = torch.cat([kps.min(0).values, kps.max(0).values])
    faces = [DetectedFace(i, box, kps, 1.0) for i in range(n)]
    return face_mask(FaceBundle(faces, n, (size, size)))


def encode_wplus(e4e, crops, whiten):
    """[N, S, S, 3] FFHQ-aligned crops -> W+ codes [N, 18, 512] with the pack's e4e (background whitened first when
    ``whiten``, as the W+ Adapter's preprocessing and PIDiff's paper do)."""
    from ..models_loader.methods.wplus import e4e as we4e

    x = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), size=(E4E_SIZE, E4E_SIZE), mode="bilinear",
                                        align_corners=False, antialias=True).permute(0, 2, 3, 1).clamp(0, 1)
    mask = crop_face_mask(E4E_SIZE, x.shape[0]) if whiten else None
    codes = we4e.encode_images(e4e, x, mask=mask)
    if not torch.isfinite(codes).all():
        raise ValueError("the e4e encoder returned non-finite W+ codes; check the encoder file")
    return codes


def _square_around(img, mask, center, resolution):
    """The largest square of ``img`` [H, W, 3] / ``mask`` [H, W] centred on ``center`` (x, y) as far as the picture
    allows, resized to ``resolution`` (training pictures are square; no stretching)."""
    import torch.nn.functional as F

    h, w = img.shape[:2]
    side = min(h, w)
    x0 = int(min(max(center[0] - side / 2, 0), w - side))
    y0 = int(min(max(center[1] - side / 2, 0), h - side))
    sq = img[y0:y0 + side, x0:x0 + side].permute(2, 0, 1)[None]
    sq = F.interpolate(sq, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    m = F.interpolate(mask[y0:y0 + side, x0:x0 + side][None, None], size=(resolution, resolution), mode="bilinear",
                      align_corners=False)
    return sq[0].permute(1, 2, 0).clamp(0, 1), m[0, 0].clamp(0, 1)


def _side_file_mask(stem, hw):
    """``<photo>_mask.png`` beside a folder photo as [H, W] in 0..1, or None."""
    import numpy as np
    from PIL import Image

    if not os.path.isfile(stem + "_mask.png"):
        return None
    with Image.open(stem + "_mask.png") as im:
        arr = np.asarray(im.convert("L").resize((hw[1], hw[0]), Image.BILINEAR), np.float32)
    return torch.from_numpy(arr / 255.0)


def _captions(stem, default_caption):
    if os.path.isfile(stem + ".txt"):
        with open(stem + ".txt", encoding="utf-8") as f:
            lines = [c.strip() for c in f if c.strip()]
        if lines:
            return lines
    return [default_caption.strip() or "a photo of a person"]


def wild_examples(photos, face_analysis, resolution, if_no_face, default_caption):
    """Stage II: per photo (label, square picture [R, R, 3] around the face, its face mask [R, R], the FFHQ crop
    [512, 512, 3] for e4e, captions). Captions: the lines of ``<photo>.txt`` beside a folder photo, else
    ``default_caption``; mask: ``<photo>_mask.png`` beside it (e.g. a face-parsing mask, as the official data), else
    the pack's landmark face mask."""
    from ..models_loader.face.align import align_faces
    from ..models_loader.face.mask import face_mask

    out = []
    for label, img, bundle in largest_faces(photos, face_analysis, if_no_face):
        crop, _ = align_faces(img[None], bundle, "ffhq", 512)
        stem = os.path.splitext(label)[0]
        mask = _side_file_mask(stem, img.shape[:2])
        if mask is None:
            mask = face_mask(bundle)[0]
        picture, picture_mask = _square_around(img, mask, bundle.faces[0].bbox.view(2, 2).mean(0).tolist(), resolution)
        out.append((label, picture, picture_mask, crop[0], _captions(stem, default_caption)))
    return out


def _base(ckpt_name, method):
    import folder_paths

    ckpt = folder_paths.get_full_path("checkpoints", ckpt_name)
    if ckpt is None:
        raise FileNotFoundError(f"checkpoint {ckpt_name!r} not found in models/checkpoints")
    try:
        cfg = detect_family(ckpt)
    except ValueError as exc:  # its wording names Cross Initialization: say which training this is
        raise ValueError(str(exc).replace("Cross Initialization", method)) from exc
    return ckpt, check_residual_family(cfg, ckpt_name, method)


def _save_codes(job_dir, codes):
    from safetensors.torch import save_file

    from ..models_loader.methods.wplus.train import WPLUS_FILE

    save_file({"wplus": codes.float().contiguous()}, os.path.join(job_dir, WPLUS_FILE))


def _save_images(job_dir, images, sub, prefix):
    rels = []
    for i, img in enumerate(images):
        rel = os.path.join(sub, f"{prefix}_{i:02d}.png")
        os.makedirs(os.path.join(job_dir, sub), exist_ok=True)
        if img.dim() == 2:
            img = img[..., None].expand(-1, -1, 3)
        save_png(img.float().cpu(), os.path.join(job_dir, rel))
        rels.append(rel)
    return rels


def _engine_inputs(precision_tip):
    """The job-engine options every residual-attention training node shows (after its own inputs)."""
    return {
        "grad_accum": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": "Micro-batches per step: batch_size/"
                               "grad_accum images go through the model at once (less memory, same result)."}),
        "resolution": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64,
                               "tooltip": "Training image size in pixels (official 512)."}),
        **job_inputs(precision_tip, checkpoint_max=1000000, mode_where="another machine or a cluster",
                     checkpoint_tip="Save a resumable checkpoint every N steps (and always on cancel), with a "
                     "preview image and its likeness score to your photos."),
    }


def _custom_inputs(steps, steps_max, batch_size, batch_max, batch_source):
    """steps, learning_rate, batch_size: what the 'custom' preset trains with."""
    return {
        "steps": ("INT", {"default": steps, "min": 1, "max": steps_max, "tooltip": "Optimiser steps (custom preset only)."}),
        "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-8, "max": 1.0, "step": 1e-5,
                                    "tooltip": "AdamW learning rate (custom preset only; weight decay 0.01)."}),
        "batch_size": ("INT", {"default": batch_size, "min": 1, "max": batch_max, "tooltip": "Images per step (custom "
                               f"preset only; {batch_source}). Split into micro-batches by grad_accum."}),
    }


def _preset_values(presets, preset, steps, learning_rate, batch_size, grad_accum):
    """(steps, learning_rate, batch_size): the preset's, or the inputs' for 'custom'; batch_size must split into
    grad_accum micro-batches."""
    if preset in presets:
        steps, learning_rate, batch_size = (presets[preset][k] for k in ("steps", "learning_rate", "batch_size"))
    if batch_size % grad_accum:
        raise ValueError(f"batch_size {batch_size} must be a multiple of grad_accum {grad_accum}")
    return steps, learning_rate, batch_size


_CKPT_TIP = ("Base checkpoint to train on ({official}; SD2.x and SDXL work too). The file's own weights are used "
             "(LoRAs or merges of this graph are not trained on). Use the same checkpoint to generate.")
_FA_TIP = ("Face detector (FP_FaceAnalysisLoader or the offline detector): each photo's largest face is found and "
           "aligned like FFHQ for the e4e encoder.")
_E4E_TIP = "The e4e encoder (Load e4e Encoder): turns each aligned face into its W+ code, the identity input."
_PHOTOS_TIP = "Training photos of the person (one identity)."
_FOLDER_TIP = ("Folder of photos (inside ComfyUI's input folder, or an absolute path), in addition to / instead of "
               "images. Files with '_mask' in the name are not used as photos.")


class FP_TrainPIDiff(TrainingNode):
    DESCRIPTION = ("Fine-tunes PIDiff (its mapping network and the query/key/value projections of its style "
                   "cross-attention) on photos of one person in a background job and returns at once. The paper's recipe: "
                   "projections start from the UNet's own q/k/v (or a W+ Adapter file), random templates "
                   "'an image of <word>', noise on the W+ code, text dropped 30 % / face dropped 50 % of the time, "
                   "AdamW lr 1e-4, weight decay 0.01, batch 4, 600 steps, 6+ photos. Writes models/pidiff/<name>"
                   ".safetensors (loads in Load PIDiff; generate at strength 0.4).")
    PRESETS = {"paper": {"steps": 600, "learning_rate": 1e-4, "batch_size": 4}}

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": ckpt_input(_CKPT_TIP.format(official="official: SD 1.5")),
                "face_analysis": face_analysis_input(_FA_TIP),
                "e4e": ("E4E_ENCODER", {"tooltip": _E4E_TIP}),
                "name": ("STRING", {"default": "my_pidiff", "tooltip": "Output name: models/pidiff/<name>.safetensors "
                                    "(and .json with what it was trained on). Must not exist yet."}),
                "pseudo_word": ("STRING", {"default": "sks", "tooltip": "The word S* in the training prompts "
                                           "('an image of sks'). The paper does not name one."}),
                "init_from": ([FROM_UNET] + adapter_files(), {"default": FROM_UNET, "tooltip": "Start F and the "
                              "projections from the UNet's own attention (paper) or from a W+ Adapter file in "
                              "models/wplus (e.g. the official wplus_adapter.bin: a good start)."}),
                "preset": (["paper", "custom"], {"default": "paper", "tooltip": "paper: 600 steps, lr 1e-4, batch 4 "
                           "(fewer steps under-fit, more over-fit, paper Table 3); custom: the values below."}),
                **_custom_inputs(600, 1000000, 4, 64, "paper 4"),
                "drop_text": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "How often the prompt is left empty during training (paper 0.3)."}),
                "drop_face": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                        "tooltip": "How often the face (W+ code) is left out during training (paper 0.5)."}),
                "wplus_noise": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "Std of "
                                          "the random noise added to the W+ codes (the paper adds noise, its size is "
                                          "not stated; 0.05 is this pack's choice)."}),
                "whiten_background": ("BOOLEAN", {"default": True, "tooltip": "Paint the background white before "
                                      "e4e (the paper removes the background; the mask is the face-pipeline mask)."}),
                **_engine_inputs("Autocast precision of the forward pass; the trained weights stay fp32."),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": _PHOTOS_TIP + " The paper uses 6 or more."}),
                "photo_folder": ("STRING", {"default": "", "tooltip": _FOLDER_TIP}),
            },
        }

    def execute(self, ckpt_name, face_analysis, e4e, name, pseudo_word, init_from, preset, steps, learning_rate,
                batch_size, drop_text, drop_face, wplus_noise, whiten_background, grad_accum, resolution, seed, precision,
                gradient_checkpointing, checkpoint_every, if_no_face, pause_while_generating, mode, images=None,
                photo_folder=""):
        from ..models_loader import paths
        from ..models_loader.methods.pidiff import train as pt
        from .jobs import JobManager, comfyui_root

        steps, learning_rate, batch_size = _preset_values(self.PRESETS, preset, steps, learning_rate, batch_size,
                                                          grad_accum)
        word = (pseudo_word or "").strip()
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"pseudo_word must be one word, got {pseudo_word!r}")
        ckpt, family = _base(ckpt_name, "PIDiff")
        out_dir = paths.model_dir("pidiff")
        manager = JobManager.get()
        name = check_output_name(name, [os.path.join(out_dir, name.strip() + ext) for ext in (".safetensors", ".json")],
                                 manager.reserved_names("pidiff"))
        init_file = _init_file(init_from, ckpt, "PIDiff")
        crops = face_crops(gather_photos(images, photo_folder), face_analysis, resolution, if_no_face)
        codes = encode_wplus(e4e, torch.stack([c for _, c in crops]), whiten_background)
        job_id, job_dir = manager.new_job_dir("pidiff")
        photos = _save_images(job_dir, [c for _, c in crops], jobfiles.PHOTOS_DIR, "photo")
        _save_codes(job_dir, codes)
        params = {"pseudo_word": word, "drop_text": float(drop_text), "drop_visual": float(drop_face),
                  "wplus_noise": float(wplus_noise), "weight_decay": pt.OFFICIAL["weight_decay"], "init_file": init_file,
                  "whiten_background": bool(whiten_background), "preset": preset, "sources": [c[0] for c in crops]}
        spec = make_spec(job_id, "pidiff", name, ckpt, ckpt_name, family, photos, params, steps, seed, batch_size,
                         grad_accum, learning_rate, resolution, precision, gradient_checkpointing, checkpoint_every,
                         {"pidiff": out_dir}, face_analysis, comfyui_root())
        return submit_job(manager, spec, job_dir, mode, pause_while_generating, os.path.join(out_dir, name + ".safetensors"))


def make_spec(job_id, method, name, ckpt, ckpt_name, family, photos, params, steps, seed, batch_size, grad_accum, lr,
              resolution, precision, gradient_checkpointing, checkpoint_every, output_dirs, face_analysis, comfy_root,
              masks=()):
    return JobSpec(job_id=job_id, method=method, name=name, base_model=ckpt, base_model_name=ckpt_name, family=family,
                   photos=photos, masks=list(masks), params=params, steps=int(steps), seed=int(seed),
                   batch=int(batch_size) // int(grad_accum), grad_accum=int(grad_accum), learning_rate=float(lr),
                   resolution=int(resolution), precision=precision, gradient_checkpointing=bool(gradient_checkpointing),
                   cache_latents=True, checkpoint_every=int(checkpoint_every), preview_every=int(checkpoint_every),
                   output_dirs=output_dirs, face_pack_dir=getattr(face_analysis, "fp_model_dir", "") or "",
                   comfyui_path=comfy_root, created=time.strftime("%Y-%m-%dT%H:%M:%S"))


STAGES = {"Stage I (faces)": 1, "Stage II (in the wild)": 2}


class FP_TrainWPlusAdapter(TrainingNode):
    DESCRIPTION = ("Trains the W+ Adapter (CVPR 2024) in a background job and returns at once. Stage I (faces, "
                   "train_face.py): w_proj + the residual cross-attention from aligned face photos, plain noise-"
                   "prediction loss. Stage II (in the wild, train_wild.py): starts from a Stage I file, w_proj frozen, "
                   "loss + 2.0 x disentangle (background kept apart from the face, with disturbed W+ codes) + 1.0 x "
                   "preserve, from an image folder with captions (<photo>.txt). AdamW lr 1e-4, weight decay 0.01, "
                   "batch 16, drop rates 0.05. Writes models/wplus/<name>.bin (official layout) + .safetensors.")
    PRESETS = {"official": {"steps": 1_000_000, "learning_rate": 1e-4, "batch_size": 16},
               "short": {"steps": 2000, "learning_rate": 1e-4, "batch_size": 16}}

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": ckpt_input(_CKPT_TIP.format(official="official: SD 1.5")),
                "face_analysis": face_analysis_input(_FA_TIP + " Stage II: also gives the face mask when a photo has "
                                                     "no <photo>_mask.png beside it."),
                "e4e": ("E4E_ENCODER", {"tooltip": _E4E_TIP}),
                "name": ("STRING", {"default": "my_wplus_adapter", "tooltip": "Output name: models/wplus/<name>.bin, "
                                    ".safetensors and .json. Must not exist yet."}),
                "stage": (list(STAGES), {"default": "Stage I (faces)", "tooltip": "Stage I learns faces from aligned "
                          "face photos; Stage II teaches a Stage I adapter to leave the background and the rest of "
                          "the picture to the prompt (in-the-wild photos with captions)."}),
                "init_from": ([FROM_UNET] + adapter_files(), {"default": FROM_UNET, "tooltip": "Stage I: start "
                              "from the UNet's own attention (official) or continue a W+ Adapter file. Stage II: the "
                              "Stage I file to start from (required)."}),
                "preset": (list(cls.PRESETS) + ["custom"], {"default": "short", "tooltip": "official: the scripts' "
                           "1,000,000 steps at batch 16 (24 h + 96 h on 8 GPUs: use mode 'export job only' and "
                           "accelerate); short: the same recipe for 2000 steps (not from the paper); custom: the "
                           "values below."}),
                **_custom_inputs(2000, 10000000, 16, 256, "official 16 per GPU"),
                "caption": ("STRING", {"default": "a photo of a person", "tooltip": "Stage II: the caption of photos "
                                       "without a <photo>.txt file (one caption per line in it). Stage I uses the "
                                       "official templates ('a photo of a face', ...)."}),
                "whiten_background": ("BOOLEAN", {"default": True, "tooltip": "Paint the background white before e4e, "
                                      "as the W+ Adapter's own preprocessing (face-pipeline mask)."}),
                **_engine_inputs("Autocast precision of the forward pass; the trained weights stay fp32 (the "
                                 "official launch scripts use fp16 mixed precision)."),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": _PHOTOS_TIP.replace("(one identity)", "(Stage II: in-the-wild "
                                     "pictures of people)")}),
                "photo_folder": ("STRING", {"default": "", "tooltip": _FOLDER_TIP + " Stage II: <photo>.txt holds "
                                            "its captions, <photo>_mask.png its face mask."}),
            },
        }

    def execute(self, ckpt_name, face_analysis, e4e, name, stage, init_from, preset, steps, learning_rate, batch_size,
                caption, whiten_background, grad_accum, resolution, seed, precision, gradient_checkpointing,
                checkpoint_every, if_no_face, pause_while_generating, mode, images=None, photo_folder=""):
        from ..models_loader import paths
        from ..models_loader.methods.wplus import train as wt
        from .jobs import JobManager, comfyui_root

        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        n_stage = STAGES[stage]
        steps, learning_rate, batch_size = _preset_values(self.PRESETS, preset, steps, learning_rate, batch_size,
                                                          grad_accum)
        ckpt, family = _base(ckpt_name, "W+ Adapter")
        out_dir = paths.model_dir("wplus")
        manager = JobManager.get()
        name = check_output_name(name, [os.path.join(out_dir, name.strip() + ext) for ext in (".bin", ".safetensors", ".json")],
                                 manager.reserved_names("wplus"))
        if n_stage == 2 and init_from == FROM_UNET:
            raise ValueError("W+ Adapter Stage II starts from a Stage I adapter: pick its file in init_from "
                             "(models/wplus), e.g. one trained with Stage I or the official wplus_adapter.bin")
        init_file = _init_file(init_from, ckpt, "W+ Adapter")
        params = {"stage": n_stage, "weight_decay": wt.OFFICIAL[n_stage]["weight_decay"], "init_file": init_file,
                  "whiten_background": bool(whiten_background), "preset": preset, "class_word": "face"}
        photos_in = gather_photos(images, photo_folder)
        masks = []
        if n_stage == 1:
            crops = face_crops(photos_in, face_analysis, resolution, if_no_face)
            train_imgs, e4e_in, sources = [c for _, c in crops], [c for _, c in crops], [c[0] for c in crops]
        else:
            directions = paths.model_dir("wplus_directions")
            wt.DirectionBank.from_folder(directions)  # the Stage II W+ disturbance needs it: fail here, naming it
            ex = wild_examples(photos_in, face_analysis, resolution, if_no_face, caption)
            train_imgs, masks, e4e_in = [e[1] for e in ex], [e[2] for e in ex], [e[3] for e in ex]
            sources = [e[0] for e in ex]
            params.update(captions=[e[4] for e in ex], directions_dir=directions,
                          lambda_disen=wt.OFFICIAL[2]["lambda_disen"], lambda_preserve=wt.OFFICIAL[2]["lambda_preserve"])
        codes = encode_wplus(e4e, torch.stack(e4e_in), whiten_background)
        params["sources"] = sources
        job_id, job_dir = manager.new_job_dir("wplus")
        photos = _save_images(job_dir, train_imgs, jobfiles.PHOTOS_DIR, "photo")
        mask_files = _save_images(job_dir, masks, "masks", "mask") if masks else []
        _save_codes(job_dir, codes)
        spec = make_spec(job_id, "wplus", name, ckpt, ckpt_name, family, photos, params, steps, seed, batch_size,
                         grad_accum, learning_rate, resolution, precision, gradient_checkpointing, checkpoint_every,
                         {"wplus": out_dir}, face_analysis, comfyui_root(), masks=mask_files)
        return submit_job(manager, spec, job_dir, mode, pause_while_generating, os.path.join(out_dir, name + ".safetensors"))


NODE_CLASS_MAPPINGS = {"FP_TrainPIDiff": FP_TrainPIDiff, "FP_TrainWPlusAdapter": FP_TrainWPlusAdapter}
NODE_DISPLAY_NAME_MAPPINGS = {"FP_TrainPIDiff": "Train PIDiff (background job)",
                              "FP_TrainWPlusAdapter": "Train W+ Adapter, Stage I / II (background job)"}
