"""The generic training loop every method runs on (see :mod:`.protocol`).

:func:`optimizer_step` is one optimiser step as a plain function of (trainer, optimiser, the step's
micro-batch inputs): the loop calls it, and the method tests call it with hand-made inputs.
"""
import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from typing import Dict, List, Optional

import torch

from . import jobfiles
from .protocol import step_generator

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


class Stop(Exception):
    """Raised between steps when the job must stop (cancel flag, signal, parent server gone)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclasses.dataclass
class StepResult:
    terms: Dict[str, float]                 # mean over the step's micro-batches
    grads: Dict[str, torch.Tensor]          # gradient of every trainable before the optimiser step
    after: Dict[str, torch.Tensor]          # trainables after the step


@dataclasses.dataclass
class Distributed:
    """Ranks of a multi-process launch (``accelerate launch`` / torchrun); single process: rank 0 of 1."""
    rank: int = 0
    world: int = 1

    @property
    def main(self):
        return self.rank == 0

    def my_micros(self, accum):
        return list(range(self.rank, accum, self.world))

    def all_reduce_(self, tensor):
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def make_optimizer(trainer):
    cfg = dict(trainer.optimizer_config())
    params = list(trainer.trainable().values())
    for p in params:
        if p.dtype != torch.float32 or not p.requires_grad:
            raise TrainingError("trainable tensors must be fp32 leaf tensors with requires_grad=True")
    return torch.optim.AdamW(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                             weight_decay=cfg["weight_decay"])


def autocast(device, precision):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def optimizer_step(trainer, optimizer, micro_inputs: List[dict], accum: Optional[int] = None,
                   precision="fp32", device="cpu", dist: Optional[Distributed] = None, scaler=None,
                   step: int = 0) -> StepResult:
    """One AdamW step: mean of ``loss_terms`` over the step's micro-batches (``accum`` in all, this
    rank's share in ``micro_inputs``), gradients all-reduced across ranks, then ``optimizer.step()``."""
    dist = dist or Distributed()
    accum = accum or len(micro_inputs)
    trainables = trainer.trainable()
    optimizer.zero_grad(set_to_none=False)
    sums: Dict[str, torch.Tensor] = {}
    for inputs in micro_inputs:
        with autocast(device, precision):
            terms = trainer.loss_terms(inputs)
        loss = terms["loss"].float() / accum
        (scaler.scale(loss) if scaler is not None else loss).backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float().cpu() / accum
    if dist.world > 1:
        for p in trainables.values():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce_(p.grad)
        keys = sorted(sums)
        packed = dist.all_reduce_(torch.stack([torch.as_tensor(sums[k]) for k in keys]) if keys else torch.zeros(0))
        sums = dict(zip(keys, packed))
    terms = {k: float(v) for k, v in sums.items()}
    if not all(math.isfinite(v) for v in terms.values()):
        raise TrainingError(f"the loss became NaN/inf at step {step + 1} ({terms}); lower the learning rate "
                            "or use fp32 precision")
    if scaler is not None:
        scaler.unscale_(optimizer)
    grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for k, p in trainables.items()}
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    after = {k: p.detach().clone() for k, p in trainables.items()}
    return StepResult(terms, grads, after)


# ------------------------------------------------------------------------------------------- the loop

class _Signals:
    """SIGTERM/SIGINT -> stop at the next step boundary (the loop saves a checkpoint first)."""

    def __init__(self):
        self.received = None

    def install(self):
        def handler(signum, frame):
            self.received = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, handler)
            except ValueError:  # not the main thread (tests): flags still work
                pass
        return self


def checkpoint_state(trainer, optimizer, step, seed):
    state = {"step": int(step), "method": trainer.method,
             "trainable": {k: p.detach().cpu().clone() for k, p in trainer.trainable().items()},
             "optimizer": optimizer.state_dict(),
             # no RNG state is needed: every step's inputs come from a generator seeded by (seed, step, micro)
             "rng": {"seed": int(seed), "scheme": "torch.Generator seeded from (seed, step, micro)"}}
    extra = getattr(trainer, "checkpoint_extra", None)
    if extra is not None:
        state["extra"] = extra()
    return state


def restore(trainer, optimizer, state):
    tr = trainer.trainable()
    missing = sorted(set(tr) - set(state["trainable"]))
    if missing:
        raise TrainingError(f"checkpoint lacks trainable tensors {missing}")
    with torch.no_grad():
        for k, p in tr.items():
            p.copy_(state["trainable"][k].to(p.device, p.dtype))
    optimizer.load_state_dict(state["optimizer"])
    if "extra" in state and hasattr(trainer, "load_checkpoint_extra"):
        trainer.load_checkpoint_extra(state["extra"])
    return int(state["step"])


SIGNALS = _Signals()  # one per process: run.py installs it before loading models


class Loop:
    """Runs ``spec.steps`` optimiser steps of ``trainer`` with files in ``job_dir``."""

    def __init__(self, trainer, spec, job_dir, device="cpu", dist: Optional[Distributed] = None,
                 id_scorer=None, parent_pid: Optional[int] = None):
        self.trainer, self.spec, self.job_dir = trainer, spec, job_dir
        self.device = torch.device(device)
        self.dist = dist or Distributed()
        self.id_scorer = id_scorer
        self.parent_pid = parent_pid
        self.signals = SIGNALS.install()
        self.optimizer = make_optimizer(trainer)
        self.scaler = (torch.amp.GradScaler("cuda") if spec.precision == "fp16" and self.device.type == "cuda" else None)
        self.best = jobfiles.read_status(job_dir).get("best_id_score")
        self.fail_at = _fault_step(spec)

    # -- files (rank 0 only) ------------------------------------------------------------------------
    def status(self, **fields):
        if self.dist.main:
            return jobfiles.write_status(self.job_dir, **fields)

    def save(self, step, which=jobfiles.LAST_CKPT):
        if self.dist.main:
            jobfiles.save_checkpoint(self.job_dir, checkpoint_state(self.trainer, self.optimizer, step, self.spec.seed), which)

    # -- control ------------------------------------------------------------------------------------
    def _check_stop(self):
        if jobfiles.flag(self.job_dir, jobfiles.CANCEL_FLAG):
            raise Stop("cancelled", "cancelled by the user")
        if self.signals.received is not None:
            raise Stop("resumable", f"stopped by signal {self.signals.received}")
        if self.parent_pid and os.getppid() != self.parent_pid:
            raise Stop("resumable", "the ComfyUI server that started this job is gone")

    def _wait_while_paused(self):
        paused = False
        while jobfiles.flag(self.job_dir, jobfiles.PAUSE_FLAG):
            self._check_stop()
            if not paused:
                self.status(status="paused")
                paused = True
            time.sleep(0.2)
        if paused:
            self.status(status="running")
        return paused

    # -- run ----------------------------------------------------------------------------------------
    def run(self):
        spec, job_dir = self.spec, self.job_dir
        start = 0
        state = jobfiles.load_checkpoint(job_dir)
        if state is not None:
            start = restore(self.trainer, self.optimizer, state)
            log.info("resumed from checkpoint at step %d", start)
            if self.dist.main:
                jobfiles.truncate_jsonl(os.path.join(job_dir, jobfiles.LOSS_FILE), start)
                jobfiles.truncate_jsonl(os.path.join(job_dir, jobfiles.ID_FILE), start)
        self.status(status="running", step=start, total=spec.steps, error=None, pid=os.getpid(),
                    started=time.time(), first_step_s=None)
        t0 = time.time()
        step = start
        terms = {}
        try:
            for step in range(start, spec.steps):
                self._check_stop()
                if self._wait_while_paused():
                    t0 = time.time() - (step - start) / max(self._it_s or 1e-9, 1e-9)
                if self.fail_at is not None and step + 1 == self.fail_at:
                    raise TrainingError(f"injected training error at step {step + 1} (FP_TRAIN_FAIL_AT_STEP)")
                micros = [self.trainer.sample_inputs(step, m, step_generator(spec.seed, step, m))
                          for m in self.dist.my_micros(spec.grad_accum)]
                res = optimizer_step(self.trainer, self.optimizer, micros, spec.grad_accum, spec.precision,
                                     self.device, self.dist, self.scaler, step)
                terms = res.terms
                done = step + 1
                elapsed = time.time() - t0
                self._it_s = (done - start) / elapsed if elapsed > 0 else None
                lr = float(self.optimizer.param_groups[0]["lr"])
                if self.dist.main:
                    jobfiles.append_jsonl(os.path.join(job_dir, jobfiles.LOSS_FILE),
                                          {"step": done, "loss": terms["loss"], "terms": terms, "lr": lr, "time": time.time()})
                fields = dict(status="running", step=done, loss=terms["loss"], lr=lr, it_s=self._it_s,
                              eta_s=(spec.steps - done) / self._it_s if self._it_s else None)
                if done == start + 1:
                    fields["first_step_at"] = time.time()
                self.status(**fields)
                if spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < spec.steps:
                    self.save(done)
                if spec.preview_every and done % spec.preview_every == 0:
                    self.preview(done)
        except Stop as stop:
            self.save(step)  # `step` optimiser steps are complete
            self.status(status=stop.status, step=step, error=None, message=stop.reason)
            log.info("stopped at step %d: %s", step, stop.reason)
            return stop.status
        self.save(spec.steps)
        if spec.preview_every and spec.steps % spec.preview_every:
            self.preview(spec.steps)
        outputs = self.export() if self.dist.main else []
        self.dist.barrier()
        self.status(status="done", step=spec.steps, outputs=outputs, eta_s=0, finished=time.time())
        return "done"

    _it_s = None

    def preview(self, step):
        fn = getattr(self.trainer, "preview", None)
        if fn is None or not self.dist.main:
            return
        out_dir = os.path.join(self.job_dir, jobfiles.PREVIEWS_DIR)
        os.makedirs(out_dir, exist_ok=True)
        files = fn(step, out_dir) or []
        score = None
        if files and self.id_scorer is not None:
            score = self.id_scorer(files)
        row = {"step": step, "id_score": score, "files": [os.path.basename(f) for f in files]}
        jobfiles.append_jsonl(os.path.join(self.job_dir, jobfiles.ID_FILE), row)
        fields = {"preview": row["files"][-1] if files else None, "id_score": score}
        if score is not None and (self.best is None or score > self.best):
            self.best = score
            self.save(step, jobfiles.BEST_CKPT)
            fields.update(best_id_score=score, best_step=step)
        self.status(**fields)

    def export(self):
        spec = self.spec
        meta = export_meta(spec, self.job_dir, self.trainer)
        outputs = self.trainer.export(spec.name, meta)
        previews = jobfiles.list_previews(self.job_dir)
        if previews:
            import shutil

            src = os.path.join(self.job_dir, jobfiles.PREVIEWS_DIR, previews[-1])
            for o in list(outputs):
                if o.get("kind") in ("official", "safetensors"):
                    dst = os.path.splitext(o["path"])[0] + ".png"
                    if not os.path.exists(dst):
                        shutil.copyfile(src, dst)
                        outputs.append({"path": dst, "folder": o.get("folder"), "name": None, "kind": "preview"})
        return outputs


def export_meta(spec, job_dir, trainer):
    import datetime

    from .hashing import sha256_file

    return {
        "method": spec.method, "name": spec.name,
        "base_model": spec.base_model_name or os.path.basename(spec.base_model),
        "base_model_sha256": sha256_file(spec.base_model) if os.path.isfile(spec.base_model) else "",
        "family": spec.family, "steps": spec.steps, "seed": spec.seed, "batch": spec.batch,
        "grad_accum": spec.grad_accum, "learning_rate": spec.learning_rate, "resolution": spec.resolution,
        "precision": spec.precision, "params": spec.params,
        "photos": [os.path.basename(p) for p in spec.photos], "job_id": spec.job_id,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _fault_step(spec):
    """Test hook: FP_TRAIN_FAIL_AT_STEP=<n> (optionally FP_TRAIN_FAIL_NAME=<output name>) raises at step n."""
    at = os.environ.get("FP_TRAIN_FAIL_AT_STEP")
    name = os.environ.get("FP_TRAIN_FAIL_NAME")
    if not at or (name and name != spec.name):
        return None
    return int(at)
