"""The contract every method's trainer fills (``models_loader/methods/<m>/train.py``). Stable API.

The generic loop (:mod:`.loop`) owns the optimiser (AdamW), gradient accumulation, mixed precision,
gradient all-reduce across ``accelerate`` ranks, checkpoints (trainable state + optimiser + step),
resume, cancel/pause, logging, previews, the ID score and ``best``/``last``. A method only says *what*
is trained and *how one micro-batch's loss is computed*.

Registering a method
--------------------
Add ``"<method>": "<module path relative to the package>"`` to :data:`.registry.METHODS`. The module
defines::

    RESULT_TYPE = "IDENTITY_EMBEDDING"      # ComfyUI socket type FP_TrainingResult outputs for this method
    def build_trainer(spec, base, job_dir) -> MethodTrainer
    def load_result(outputs: list[dict]) -> object   # the asset FP_TrainingResult returns (from the written files)

``spec`` is the :class:`.spec.JobSpec` (``spec.params`` = the method's own hyper-parameters),
``base`` a :class:`BaseModels` (the loaded checkpoint, already on ``base.device``, all weights frozen),
``job_dir`` the job folder (photos in ``spec.photos``, relative to it).

The rules
---------
* **All randomness is an input.** ``sample_inputs(step, micro, generator)`` draws everything random for
  micro-batch ``micro`` (0..grad_accum-1) of optimiser step ``step`` (0-based) -- latents or pixels +
  VAE-posterior eps, noise, integer timesteps, prompt strings or token ids, masks, flips, W+ codes and
  drop flags, augmented W+, bypass-dropout decisions -- from the given CPU ``torch.Generator`` only
  (never the global RNG, ``random`` or numpy). The loop seeds it from ``(seed, step, micro)`` alone
  (:func:`step_generator`), so a resumed run and an uninterrupted one see identical inputs at every
  step, and ``accelerate`` ranks split the micro-batches of one step (rank r takes micro r, r+W, ...)
  and all-reduce to exactly the single-process gradient. Return plain tensors/lists/str/bool (CPU).
* **The loss is a pure function of (inputs, trainable tensors)**: ``loss_terms(inputs)`` returns a dict
  of scalar tensors; ``"loss"`` is the total of ONE micro-batch (the loop divides by ``grad_accum``
  and back-propagates). Other keys (``"mse"``, ``"reg"``, ...) are logged in loss.jsonl. It runs under
  the loop's autocast; keep the loss itself in fp32.
* **The trainable set is explicit and official**: ``trainable()`` returns ``{official name: Parameter}``
  (fp32 master copies, ``requires_grad=True``, same objects every call); everything else is frozen
  and must stay bit-identical. ``optimizer_config()`` returns AdamW's ``lr, betas, eps, weight_decay``
  (official values; ``lr`` already scaled, e.g. CrossInit 0.000625 x 8 = 0.005). One param group.
* ``export(name, meta) -> list[dict]`` writes the trained asset(s) from the current trainable state in
  the official layout + safetensors into ``spec.output_dirs[<folder>]``, never overwriting (raise
  ``FileExistsError``), and returns one dict per file: ``{"path": abs, "folder": "crossinit",
  "name": "<relative name a loader dropdown shows>", "kind": "official" | "safetensors" | "preview" |
  "metadata"}``. ``meta`` (method, base model name + sha256, steps, hyper-parameters, photos, date)
  goes into safetensors metadata and a ``.json`` beside the files. The loop then copies the latest
  preview next to them.
* optional ``preview(step, out_dir) -> [png paths]``: images generated with the *inference* patch of
  the current trainable state (the same module the nodes use); the loop scores them with ArcFace
  against the training photos when the job has a face pack.
* optional ``checkpoint_extra() -> dict`` / ``load_checkpoint_extra(d)``: extra tensors a method needs
  in its checkpoint (e.g. EMA); loaded with ``weights_only=True``, so tensors/numbers/str/lists only.

Gradient checkpointing / latent caching / precision are in ``spec`` (``gradient_checkpointing``,
``cache_latents``, ``precision``); a trainer honours the first two (helpers in :mod:`.diffusion`: ``checkpointed`` (per-block UNet
checkpointing), ``vae_posterior``, ``add_noise``, ``target``, ``unet_forward``, ``sdxl_y``; text encoding with
gradients: :class:`..textspace.TextEncoder`).

FP_TrainingResult outputs ``load_result(status["outputs"])`` as its ``trained`` socket (type ``*``); declare
``RESULT_TYPE`` so nodes/docs know what it is (``IDENTITY_EMBEDDING``, ``PERSONAMAGIC_MAPPER``,
``WPLUS_ADAPTER``, ``PIDIFF``). A method's training node builds a :class:`.spec.JobSpec` (see
``training_nodes/nodes.py`` FP_TrainCrossInit for the pattern: validate, write photos into the job dir,
``JobManager.get().submit(spec, job_dir, pause_while_generating)``) and returns the ``FP_TRAINING_JOB``
dict ``{"job_id", "method", "name", "job_dir"}``.
"""
import dataclasses
from typing import Any, Dict, List, Optional, Protocol

import torch


class MethodTrainer(Protocol):
    method: str

    def trainable(self) -> Dict[str, torch.nn.Parameter]: ...

    def optimizer_config(self) -> dict: ...

    def sample_inputs(self, step: int, micro: int, generator: torch.Generator) -> dict: ...

    def loss_terms(self, inputs: dict) -> Dict[str, torch.Tensor]: ...

    def export(self, name: str, meta: dict) -> List[dict]: ...

    def preview(self, step: int, out_dir) -> Optional[List[str]]: ...


@dataclasses.dataclass
class BaseModels:
    """The checkpoint a job trains on, loaded by ComfyUI's own loader (``comfy.sd``)."""
    model: Any          # comfy ModelPatcher (``.model`` = BaseModel, ``.model.diffusion_model`` = UNet)
    clip: Any           # comfy.sd.CLIP
    vae: Any            # comfy.sd.VAE
    device: torch.device
    path: str = ""


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator for micro-batch ``micro`` of optimiser step ``step`` (0-based): a function of
    (seed, step, micro) only, so resume and multi-process runs draw the same inputs."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 1009 + int(micro)) % (2 ** 63))


ADAMW_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}


def adamw_config(lr, weight_decay=ADAMW_DEFAULTS["weight_decay"]):
    """``optimizer_config()`` of a trainer: AdamW with this ``lr`` and weight decay, the default betas and eps."""
    return {"lr": lr, "betas": ADAMW_DEFAULTS["betas"], "eps": ADAMW_DEFAULTS["eps"], "weight_decay": weight_decay}
