"""The contract every method's trainer fills (``models_loader/methods/<m>/train.py``).

The generic loop (:mod:`.loop`) owns the optimiser, gradient accumulation, mixed precision,
checkpoints (trainable state + optimiser + step), resume, logging, previews and cancel. A method
only says *what* is trained and *how one micro-batch's loss is computed*:

* **all randomness is an input.** ``sample_inputs(step, micro, generator)`` draws everything random
  for one micro-batch (latents or pixels + VAE-posterior eps, noise, integer timesteps, prompt strings
  or token ids, masks, W+ codes and drop flags, augmented W+, bypass-dropout decisions, flips) from the
  given ``torch.Generator``, which the loop seeds from ``(seed, step, micro)`` alone. A resumed run and
  an uninterrupted one therefore see the same inputs at every step, and ``accelerate`` ranks can split
  the micro-batches of one optimiser step between them and compute the same mean gradient.
* **the loss is a pure function of (inputs, trainable tensors)**: ``loss_terms(inputs)`` returns a
  dict of scalar tensors; ``"loss"`` is the total that is back-propagated (already divided by nothing:
  the loop divides by the number of micro-batches). Other keys (``"mse"``, ``"reg"``, ...) are logged.
* **the trainable set is explicit and official**: ``trainable()`` returns ``{official name: Parameter}``
  (fp32 master copies); everything else is frozen and must be bit-identical after a step.
* ``optimizer_config()`` returns AdamW's ``lr, betas, eps, weight_decay`` (official values).
* ``export(out_dir, name, meta)`` writes the trained asset(s) in the official layout + safetensors and
  returns the written paths; ``meta`` (method, base model name/hash, steps, hyper-parameters, photos,
  date) goes into safetensors metadata and a ``.json`` beside them.
* optional ``preview(step, out_dir) -> [png paths]``: images generated with the *inference* patch
  of the current trainable state (the same module the nodes use).
"""
from typing import Dict, List, Optional, Protocol

import torch


class MethodTrainer(Protocol):
    method: str

    def trainable(self) -> Dict[str, torch.nn.Parameter]: ...

    def optimizer_config(self) -> dict: ...

    def sample_inputs(self, step: int, micro: int, generator: torch.Generator) -> dict: ...

    def loss_terms(self, inputs: dict) -> Dict[str, torch.Tensor]: ...

    def export(self, out_dir, name: str, meta: dict) -> List[str]: ...

    def preview(self, step: int, out_dir) -> Optional[List[str]]: ...


def step_generator(seed: int, step: int, micro: int, rank_independent: bool = True) -> torch.Generator:
    """The generator for micro-batch ``micro`` of optimiser step ``step`` (0-based): a function of
    (seed, step, micro) only, so resume and multi-process runs draw the same inputs."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 1009 + int(micro)) % (2 ** 63))
