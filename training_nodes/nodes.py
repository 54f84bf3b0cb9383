"""Training nodes: validate, write a job folder, submit to the job engine and return at once."""
import os
import re
import shlex
import time

import numpy as np
import torch

from ..models_loader.training import jobfiles
from ..models_loader.training.spec import JobSpec

JOB = "FP_TRAINING_JOB"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
CATEGORY = "face_personalization/training"
_FACE_TYPES = "FACE_ANALYSIS,INSIGHTFACE,FACEANALYSIS"
_IMG_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class AnyType(str):
    """Matches every socket type (ComfyUI's validator compares with ``!=``)."""

    def __ne__(self, other):
        return False


def _checkpoints():
    import folder_paths

    return folder_paths.get_filename_list("checkpoints")


def detect_family(path):
    """ComfyUI's model-detection class name of a checkpoint (SD15, SD20, SDXL, ...), or raise."""
    import comfy.model_detection
    import comfy.utils

    try:
        sd = comfy.utils.load_torch_file(path, safe_load=True)
        prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
        cfg = comfy.model_detection.model_config_from_unet(sd, prefix)
    except Exception as exc:
        raise ValueError(f"could not detect the model family of {os.path.basename(path)} ({type(exc).__name__}: {exc}); "
                         "Cross Initialization training needs an SD1.x, SD2.x or SDXL checkpoint") from exc
    if cfg is None:
        raise ValueError(f"the base model {os.path.basename(path)} is not a Stable Diffusion checkpoint ComfyUI "
                         "recognises; Cross Initialization training needs SD1.x, SD2.x or SDXL checkpoints")
    return cfg


def check_crossinit_family(cfg, name):
    import comfy.supported_models as sm

    if isinstance(cfg, (sm.SD15, sm.SD20, sm.SDXL)):
        return type(cfg).__name__
    raise ValueError(f"the base model {name} is {type(cfg).__name__}; Cross Initialization training supports "
                     "SD1.x, SD2.x (official: SD 2.1-base) and SDXL checkpoints")


def gather_photos(images, photo_folder):
    """[(label, float image [H, W, 3] 0..1)] from an IMAGE batch and/or a folder (in input/, or inside ComfyUI's folders)."""
    from PIL import Image

    out = []
    if images is not None:
        for i in range(images.shape[0]):
            out.append((f"image {i + 1} of {images.shape[0]} (images input)", images[i].float().cpu()))
    folder = (photo_folder or "").strip()
    if folder:
        from ..models_loader import files as pack_files

        folder = pack_files.confined_read_dir(folder, what="photo_folder")  # ComfyUI's folders only
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(_IMG_EXT) and "_mask" not in f.lower())
        for f in files:
            p = os.path.join(folder, f)
            try:
                with Image.open(p) as im:
                    arr = np.array(im.convert("RGB")).astype(np.float32) / 255.0
            except Exception as exc:
                raise ValueError(f"photo {p} is not a readable image ({type(exc).__name__}: {exc}); remove or "
                                 "replace it") from exc
            out.append((p, torch.from_numpy(arr)))
    if not out:
        raise ValueError("no training photos: connect images or give a photo folder with .png/.jpg files")
    return out


def largest_faces(photos, face_analysis, if_no_face):
    """[(label, image, FaceBundle of its largest face)] of the photos with a face; a photo without one stops with
    an error naming it, or is left out (``if_no_face`` 'skip'); no face at all is an error."""
    from ..models_loader.face.detect import detect_faces

    out = []
    for label, img in photos:
        bundle = detect_faces(img[None], face_analysis, "largest", if_no_face="skip", embed=False)
        if bundle.faces:
            out.append((label, img, bundle))
        elif if_no_face != "skip":
            raise ValueError(f"no face found in {label}; use a photo that shows a face, or set if_no_face to 'skip'")
    if not out:
        raise ValueError(f"no face found in any of the {len(photos)} photos")
    return out


def face_crops(photos, face_analysis, size, if_no_face):
    """FFHQ-aligned face crops [size, size, 3] with the pack's face pipeline; labels kept for errors."""
    from ..models_loader.face.align import align_faces

    return [(label, align_faces(img[None], bundle, "ffhq", size)[0][0])
            for label, img, bundle in largest_faces(photos, face_analysis, if_no_face)]


def save_png(img, path):
    from PIL import Image

    Image.fromarray((img.numpy() * 255.0).round().clip(0, 255).astype(np.uint8)).save(path)


def check_output_name(name, targets, reserved):
    name = (name or "").strip()
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid output name {name!r}: letters, digits, _ . - only (no folders)")
    for t in targets:
        if os.path.exists(t):
            raise FileExistsError(f"{t} exists; choose another output name (training never overwrites)")
    if name in reserved:
        raise FileExistsError(f"a queued or running job already writes the output name {name!r}")
    return name


def command_line(job_dir):
    from .jobs import ENTRYPOINT

    return f"accelerate launch {shlex.quote(ENTRYPOINT)} --job {shlex.quote(job_dir)}"


class TrainingNode:
    """What every training node (FP_Train*) shares: an output node in the training category whose ``execute``
    returns the job (for FP_TrainingResult), its id, the file it will write and the accelerate command."""
    CATEGORY = CATEGORY
    RETURN_TYPES = (JOB, "STRING", "STRING", "STRING")
    RETURN_NAMES = ("job", "job_id", "output_path", "command")
    FUNCTION = "execute"
    OUTPUT_NODE = True


def ckpt_input(tooltip):
    """The ``ckpt_name`` input of a training node: a file of models/checkpoints."""
    return (_checkpoints(), {"tooltip": tooltip})


def face_analysis_input(tooltip):
    """The ``face_analysis`` input of a training node: the pack's face detector (or a compatible one)."""
    return (_FACE_TYPES, {"tooltip": tooltip})


_CHECKPOINTING_TIP = "Recompute activations in the backward pass: much less memory, ~30% slower."
_MODE_TIP = "run: queue the job here. export: only write the job folder and output the accelerate command for {where}."


def job_inputs(precision_tip, checkpoint_every=100, checkpoint_max=100000, checkpointing_tip=_CHECKPOINTING_TIP,
               cache_latents_tip=None, preview_tip=None, mode_where="another machine", checkpoint_tip=None):
    """The job-engine inputs every training node ends its required inputs with, in this order: seed, precision,
    gradient_checkpointing, [cache_latents], checkpoint_every, [preview_every], if_no_face, pause_while_generating,
    mode (the bracketed ones when their tooltip is given)."""
    out = {
        "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 31 - 1, "tooltip": "Seed of all training randomness "
                         "(same seed = same result, also after resume)."}),
        "precision": (["fp32", "bf16", "fp16"], {"default": "fp32", "tooltip": precision_tip}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": checkpointing_tip}),
    }
    if cache_latents_tip:
        out["cache_latents"] = ("BOOLEAN", {"default": True, "tooltip": cache_latents_tip})
    out["checkpoint_every"] = ("INT", {"default": checkpoint_every, "min": 1, "max": checkpoint_max, "tooltip":
                                       checkpoint_tip or "Save a resumable checkpoint every N steps (and always on "
                                       "cancel)."})
    if preview_tip:
        out["preview_every"] = ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": preview_tip})
    out.update({
        "if_no_face": (["error", "skip"], {"default": "error", "tooltip": "A photo without a face: stop with an "
                       "error naming it, or leave it out."}),
        "pause_while_generating": ("BOOLEAN", {"default": True, "tooltip": "Pause training between steps while "
                                   "ComfyUI runs a prompt, so interactive generation gets the GPU first."}),
        "mode": (["run", "export job only"], {"default": "run", "tooltip": _MODE_TIP.format(where=mode_where)}),
    })
    return out


def submit_job(manager, spec, job_dir, mode, pause_while_generating, out_path):
    """The end of every training node: queue the job (mode 'run') or only write its folder for the accelerate
    command (mode 'export job only'); the node's output (``ui.job_id``: how the canvas progress bar,
    web/js/training/node_progress.js, finds the node's job)."""
    cmd = command_line(job_dir)
    if mode == "run":
        manager.submit(spec, job_dir, pause_while_generating)
        msg = f"training job {spec.job_id} queued ({spec.steps} steps); folder {job_dir}"
    else:
        spec.validate()
        spec.save(job_dir)
        jobfiles.write_status(job_dir, status="resumable", step=0, total=spec.steps, method=spec.method,
                              name=spec.name, message="exported; run the command or resume it here")
        msg = f"job folder {job_dir} written; run: {cmd}"
    job = {"job_id": spec.job_id, "method": spec.method, "name": spec.name, "job_dir": job_dir}
    return {"ui": {"text": [msg], "job_id": [spec.job_id]}, "result": (job, spec.job_id, out_path, cmd)}


class FP_TrainCrossInit(TrainingNode):
    DESCRIPTION = ("Trains a Cross Initialization identity (CVPR 2024) from your photos in a background job and "
                   "returns at once: ComfyUI keeps running other prompts meanwhile. The official recipe: two tokens "
                   "initialised by Cross Initialization, AdamW on them only, ε-MSE + 1e-5 · distance to the init, "
                   "81 prompt templates 'face of <trigger> person', flips. Writes models/crossinit/<name>/"
                   "learned_embeds.bin (official) and models/embeddings/<name>.safetensors (embedding:<name>). "
                   "Trains on the checkpoint you pick; connect the graph's MODEL/CLIP (after LoRA loaders) to train "
                   "on what you see: their LoRA/merge weights are baked into the base it trains on.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "ckpt_name": ckpt_input("Base checkpoint to train on (SD 2.1-base is the official one; SD1.x and "
                                        "SDXL work too). The file's own weights are used."),
                "face_analysis": face_analysis_input("Face detector (FP_FaceAnalysisLoader or the offline detector): "
                                                     "each photo is cropped and aligned to its face. With a "
                                                     "recognition model (antelopev2/buffalo_l) previews get an ID score."),
                "name": ("STRING", {"default": "my_face", "tooltip": "Output name: models/crossinit/<name>/ and "
                                    "models/embeddings/<name>.safetensors. Must not exist yet."}),
                "trigger_word": ("STRING", {"default": "<face>", "tooltip": "Word that stands for the identity in "
                                            "prompts (one word, e.g. <face>)."}),
                "preset": (["fast", "full", "custom"], {"default": "fast", "tooltip": "fast: 25 steps, lr 0.08 (paper's "
                           "fast version, ~26 s on an A800); full: 320 steps, lr 0.005 (official); custom: use the "
                           "steps and learning rate below."}),
                "steps": ("INT", {"default": 25, "min": 1, "max": 100000, "tooltip": "Optimiser steps (custom preset only)."}),
                "learning_rate": ("FLOAT", {"default": 0.005, "min": 1e-7, "max": 10.0, "step": 1e-4,
                                            "tooltip": "AdamW learning rate (custom preset only)."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": "Effective batch per step "
                                       "(official 8). Split into micro-batches by gradient accumulation below."}),
                "grad_accum": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Micro-batches per step: "
                                       "batch_size/grad_accum images go through the model at once (less memory, "
                                       "same result). 8/4 = 2 per pass fits a 12 GB GPU at 512 px."}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 1024, "step": 64, "tooltip": "Training image size (official 512)."}),
                **job_inputs("Autocast precision of the forward pass; the trained tokens stay fp32. Official: fp32.",
                             checkpoint_every=50,
                             cache_latents_tip="Encode each photo with the VAE once (the posterior is still sampled "
                                               "every step, as officially).",
                             preview_tip="Generate a preview (and its ID score) every N steps; 0 = no previews."),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "Training photos (one or more, one identity)."}),
                "photo_folder": ("STRING", {"default": "", "tooltip": "Folder of photos (a folder name in ComfyUI's "
                                 "input folder, or a path inside ComfyUI's folders), in addition to / instead of images."}),
                "model": ("MODEL", {"tooltip": "Optional: the MODEL of this graph (e.g. after a LoRA loader) from the "
                          "SAME checkpoint as ckpt_name. Its weight patches (LoRAs, merges) are baked into the UNet "
                          "the identity is trained on, so the identity fits what you generate with. Attention patches "
                          "of other nodes are not trained on. Empty: the checkpoint file's own weights."}),
                "clip": ("CLIP", {"tooltip": "Optional: the CLIP of this graph (e.g. after a LoRA loader) from the same "
                         "checkpoint. Its LoRA weights are baked into the text encoder trained through. Empty: the "
                         "checkpoint file's own text encoder."}),
            },
        }

    def execute(self, ckpt_name, face_analysis, name, trigger_word, preset, steps, learning_rate, batch_size, grad_accum,
                resolution, seed, precision, gradient_checkpointing, cache_latents, checkpoint_every, preview_every,
                if_no_face, pause_while_generating, mode, images=None, photo_folder="", model=None, clip=None):
        from ..models_loader.methods.crossinit import train as ci
        from .jobs import JobManager

        if preset in ci.PRESETS:
            steps = ci.PRESETS[preset]["steps"]
        manager = JobManager.get()
        with manager.rejections("crossinit", name, ckpt_name, steps):
            return self._submit(manager, ckpt_name, face_analysis, name, trigger_word, preset, steps, learning_rate,
                                batch_size, grad_accum, resolution, seed, precision, gradient_checkpointing,
                                cache_latents, checkpoint_every, preview_every, if_no_face, pause_while_generating,
                                mode, images, photo_folder, model, clip)

    def _submit(self, manager, ckpt_name, face_analysis, name, trigger_word, preset, steps, learning_rate, batch_size,
                grad_accum, resolution, seed, precision, gradient_checkpointing, cache_latents, checkpoint_every,
                preview_every, if_no_face, pause_while_generating, mode, images, photo_folder, model, clip):
        from ..models_loader.training import baked
        import folder_paths

        from ..models_loader import paths
        from ..models_loader.methods.crossinit import train as ci
        from ..models_loader.textspace.trigger import check_trigger
        from .jobs import comfyui_root

        trigger = check_trigger(trigger_word)
        if preset in ci.PRESETS:
            steps, learning_rate = ci.PRESETS[preset]["steps"], ci.PRESETS[preset]["learning_rate"]
        if batch_size % grad_accum:
            raise ValueError(f"batch_size {batch_size} must be a multiple of grad_accum {grad_accum}")
        ckpt = folder_paths.get_full_path("checkpoints", ckpt_name)
        if ckpt is None:
            raise FileNotFoundError(f"checkpoint {ckpt_name!r} not found in models/checkpoints")
        family = check_crossinit_family(detect_family(ckpt), ckpt_name)
        out_dirs = {"crossinit": paths.model_dir("crossinit"), "embeddings": folder_paths.get_folder_paths("embeddings")[0]}
        emb = os.path.join(out_dirs["embeddings"], name.strip())
        name = check_output_name(name, [os.path.join(out_dirs["crossinit"], name.strip()), emb + ".safetensors",
                                        emb + ".json"],
                                 manager.reserved_names("crossinit"))
        crops = face_crops(gather_photos(images, photo_folder), face_analysis, resolution, if_no_face)
        job_id, job_dir = manager.new_job_dir("crossinit")
        photos = []
        for i, (label, crop) in enumerate(crops):
            rel = os.path.join(jobfiles.PHOTOS_DIR, f"photo_{i:02d}.png")
            save_png(crop, os.path.join(job_dir, rel))
            photos.append(rel)
        overrides, patched = baked.write_overrides(job_dir, model, clip)
        spec = JobSpec(job_id=job_id, method="crossinit", name=name, base_model=ckpt, base_model_name=ckpt_name,
                       family=family, photos=photos, params={"trigger_word": trigger, "reg_weight": ci.REG_WEIGHT,
                                                             "preset": preset, "sources": [c[0] for c in crops],
                                                             "base_patched": patched},
                       steps=int(steps), seed=int(seed), batch=batch_size // grad_accum, grad_accum=grad_accum,
                       learning_rate=float(learning_rate), resolution=resolution, precision=precision,
                       gradient_checkpointing=gradient_checkpointing, cache_latents=cache_latents,
                       checkpoint_every=checkpoint_every, preview_every=preview_every, output_dirs=out_dirs,
                       face_pack_dir=getattr(face_analysis, "fp_model_dir", "") or "", comfyui_path=comfyui_root(),
                       base_overrides=overrides, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        return submit_job(manager, spec, job_dir, mode, pause_while_generating,
                          os.path.join(out_dirs["crossinit"], name, "learned_embeds.bin"))


class FP_TrainingResult:
    DESCRIPTION = ("Waits for a training job (progress bar; Interrupt stops waiting, not the job) and outputs what it "
                   "trained: an IDENTITY_EMBEDDING for Cross Initialization (connect it to Apply Identity Embedding), "
                   "the mapper / adapter for the other methods, plus the written file's path. Use it to train and "
                   "generate in one graph; leave it out to let the job run in the background.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (AnyType("*"), "STRING", "STRING")
    RETURN_NAMES = ("trained", "path", "loader_name")
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"job": (JOB, {"tooltip": "The job output of a training node."}),
                             "cancel_job_on_interrupt": ("BOOLEAN", {"default": False, "tooltip": "When you press "
                                                         "Interrupt while waiting, also cancel the training job."})}}

    def execute(self, job, cancel_job_on_interrupt=False):
        import comfy.model_management as mm
        import comfy.utils

        from ..models_loader.training import registry
        from .jobs import JobManager

        manager = JobManager.get()
        job_id = job["job_id"]
        total = int(jobfiles.read_status(manager.job_dir(job_id)).get("total") or 1)
        bar = comfy.utils.ProgressBar(total)

        def progress(st):
            bar.update_absolute(int(st.get("step") or 0), total)

        st = manager.wait(job_id, progress, should_stop=mm.processing_interrupted)
        if st is None:
            if cancel_job_on_interrupt:
                manager.cancel(job_id)
            mm.throw_exception_if_processing_interrupted()
            raise RuntimeError("stopped waiting")
        if st.get("status") != "done":
            raise RuntimeError(f"training job {job_id} ended {st.get('status')}: {st.get('error') or st.get('message')}")
        outputs = st.get("outputs") or []
        asset = registry.method_module(job["method"]).load_result(outputs)
        main = next((o for o in outputs if o.get("kind") == "official"), outputs[0])
        return (asset, main["path"], f"{main['folder']}/{main['name']}")


NODE_CLASS_MAPPINGS = {"FP_TrainCrossInit": FP_TrainCrossInit, "FP_TrainingResult": FP_TrainingResult}
NODE_DISPLAY_NAME_MAPPINGS = {"FP_TrainCrossInit": "Train Cross Initialization (background job)",
                              "FP_TrainingResult": "Training Result (wait for job)"}
