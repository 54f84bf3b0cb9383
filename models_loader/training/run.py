"""THE training entrypoint: the ComfyUI worker subprocess and ``accelerate launch`` both run it.

    python <pack>/train.py --job <job dir>
    accelerate launch --multi_gpu --num_processes 2 <pack>/train.py --job <job dir>   (GPUs, or CPUs with gloo)

(``accelerate launch --cpu`` starts ONE process whatever ``--num_processes`` says — accelerate 1.x routes
``--cpu`` to its single-process launcher; ``--multi_gpu`` goes through torchrun and, with no CUDA or a
``"cpu": true`` job, the ranks join a gloo group on the CPU.)

It reads ``<job dir>/config.json``, puts ComfyUI on ``sys.path`` (``COMFYUI_PATH`` env or the spec's
``comfyui_path``), loads the base checkpoint with ``comfy.sd``, builds the method's trainer from the
registry and runs :class:`.loop.Loop`. Multi-process: ranks split each step's micro-batches and
all-reduce gradients (torch.distributed; gloo on CPU); rank 0 writes the files. Exit code 0 for
done/cancelled/resumable, 1 for failed (status.json says why).
"""
import argparse
import logging
import os
import sys
import time
import traceback

log = logging.getLogger("fp_training")


def _setup_comfy(spec):
    root = os.environ.get("COMFYUI_PATH") or spec.comfyui_path
    if not root or not os.path.isdir(os.path.join(root, "comfy")):
        raise RuntimeError(f"ComfyUI not found (COMFYUI_PATH={os.environ.get('COMFYUI_PATH')!r}, job config "
                           f"comfyui_path={spec.comfyui_path!r}); set COMFYUI_PATH to the ComfyUI folder")
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    if spec.cpu or os.environ.get("FP_TRAIN_CPU") == "1":
        args.cpu = True


def _distributed(spec):
    from .loop import Distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    try:
        import torch
        from accelerate import PartialState

        # without cpu=True accelerate ignores WORLD_SIZE on a CUDA-less machine (every rank would think it is alone)
        state = PartialState(cpu=bool(spec.cpu) or not torch.cuda.is_available())
        if state.num_processes != world:
            raise RuntimeError(f"accelerate sees {state.num_processes} processes but WORLD_SIZE={world}")
        return Distributed(rank=state.process_index, world=state.num_processes)
    except ImportError:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return Distributed(rank=dist.get_rank(), world=dist.get_world_size())


def load_base(spec, job_dir=None):
    """The checkpoint via ComfyUI's own loader, with the graph's baked weight patches when the job has them
    (``spec.base_overrides``, see :mod:`.baked`), on ComfyUI's torch device, every weight frozen."""
    import comfy.model_management as mm
    import comfy.sd

    from .protocol import BaseModels

    if not os.path.isfile(spec.base_model):
        raise FileNotFoundError(f"base model {spec.base_model} not found")
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(spec.base_model, output_vae=True, output_clip=True,
                                                                embedding_directory=None)
    if clip is None or vae is None:
        raise ValueError(f"{spec.base_model_name or spec.base_model} has no text encoder or VAE; training needs a full checkpoint")
    if spec.base_overrides:
        from .baked import apply_overrides

        n = apply_overrides(os.path.join(job_dir or ".", spec.base_overrides), model, clip)
        log.info("trains on the graph's patched weights: %d tensors from %s", n, spec.base_overrides)
    mm.load_models_gpu([model, clip.patcher, vae.patcher], force_full_load=True)
    device = mm.get_torch_device()
    for m in (model.model, clip.cond_stage_model, vae.first_stage_model):
        m.requires_grad_(False)
        m.eval()
    return BaseModels(model=model, clip=clip, vae=vae, device=device, path=spec.base_model)


def run_job(job_dir, parent_pid=None):
    from . import jobfiles, registry
    from .spec import JobSpec

    from .loop import SIGNALS

    SIGNALS.install()  # a SIGTERM while models load still ends in a checkpoint-less, resumable stop
    job_dir = os.path.abspath(job_dir)
    spec = JobSpec.load(job_dir)
    _setup_comfy(spec)
    dist = _distributed(spec)
    status = "failed"
    try:
        import torch

        from .idscore import make_scorer
        from .loop import Loop
        from .spec import photo_paths

        torch.manual_seed(spec.seed)  # nothing should use it (inputs come from per-step generators)
        if dist.main:
            jobfiles.write_status(job_dir, status="running", step=jobfiles.read_status(job_dir).get("step", 0),
                                  total=spec.steps, error=None, pid=os.getpid(), world=dist.world,
                                  worker_started=time.time())
        base = load_base(spec, job_dir)
        module = registry.method_module(spec.method)
        trainer = module.build_trainer(spec, base, job_dir)
        scorer = make_scorer(spec.face_pack_dir, photo_paths(spec, job_dir)) if (spec.preview_every and dist.main) else None
        loop = Loop(trainer, spec, job_dir, device=base.device, dist=dist, id_scorer=scorer, parent_pid=parent_pid)
        status = loop.run()
        return status
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}"
        log.error("training failed: %s\n%s", text, traceback.format_exc())
        if dist.main:
            jobfiles.write_status(job_dir, status="failed", error=text, finished=time.time())
        status = "failed"
        return status
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run one face-personalization training job folder")
    parser.add_argument("--job", required=True, help="job folder (holds config.json)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop with a checkpoint when this process (the ComfyUI server) is gone")
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = run_job(a.job, a.parent_pid)
    return 1 if status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
