"""CrossInit training: engine step vs a bare torch loop of the same math, on the same model, interleaved.

Run from tests/: $FP_PY ../bench/bench_training.py [--kind sd15] [--res 64] [--repeats 5]
  engine: the loop's per-step path (sample_inputs from the per-step generator, optimizer_step with accumulation
          bookkeeping, loss.jsonl + status.json writes);
  bare:   precomputed inputs, trainer.loss_terms -> backward -> AdamW.step (no bookkeeping).
Prints both medians and the ratio (target <= 1.10). With --overhead it also runs one 3-step job through the job
engine (JobManager -> worker subprocess, train.py) and prints submit -> worker start -> first step. With --memory it also prints the peak CPU RSS of one step at
512 px on the full-size SD1.5 UNet (random weights) with and without gradient checkpointing (separate processes).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _trainer(base, res, ckpt=False):
    import torch

    from comfyui_face_personalization.models_loader.methods.crossinit import train as ci

    photos = torch.rand(1, 3, res, res) * 2 - 1
    return ci.CrossInitTrainer(base.model, base.clip, base.vae, photos, trigger="<face>", lr=0.005, batch=1,
                               resolution=res, gradient_checkpointing=ckpt)


def speed(a):
    import _boot

    _boot.boot()
    import torch

    from fixtures import tiny

    from comfyui_face_personalization.models_loader.training import jobfiles, loop, run
    from comfyui_face_personalization.models_loader.training.protocol import step_generator
    from comfyui_face_personalization.models_loader.training.spec import JobSpec

    base = run.load_base(JobSpec(job_id="b", method="crossinit", name="b", base_model=str(tiny.ensure(a.kind))))
    tr = _trainer(base, a.res)
    opt = loop.make_optimizer(tr)
    job = tempfile.mkdtemp(prefix="fp_bench_job_")
    fixed = [tr.sample_inputs(0, m, step_generator(0, 0, m)) for m in range(2)]
    state = {"step": 0}

    def engine():
        s = state["step"]
        micros = [tr.sample_inputs(s, m, step_generator(0, s, m)) for m in range(2)]
        res = loop.optimizer_step(tr, opt, micros, 2, step=s)
        jobfiles.append_jsonl(os.path.join(job, jobfiles.LOSS_FILE), {"step": s + 1, "loss": res.terms["loss"]})
        jobfiles.write_status(job, status="running", step=s + 1, loss=res.terms["loss"])
        state["step"] += 1

    def bare():
        opt.zero_grad()
        for inp in fixed:
            (tr.loss_terms(inp)["loss"] / 2).backward()
        opt.step()

    engine(), bare()  # warm-up (posterior cache, tokenization)
    t = _boot.interleaved({"engine": engine, "bare": bare}, a.repeats)
    print(f"CrossInit {a.kind} {a.res}px, accum 2 x batch 1: engine {t['engine']:.3f} s/step, bare {t['bare']:.3f} "
          f"s/step, ratio {t['engine'] / t['bare']:.3f}")


def overhead(a):
    """submit -> first optimiser step of a real job (worker subprocess loads ComfyUI and the checkpoint)."""
    import time

    import _boot

    home = _boot.boot()
    from PIL import Image

    from fixtures import tiny

    from comfyui_face_personalization.models_loader.training import jobfiles
    from comfyui_face_personalization.models_loader.training.spec import JobSpec
    from comfyui_face_personalization.training_nodes.jobs import JobManager, comfyui_root

    manager = JobManager(tempfile.mkdtemp(prefix="fp_bench_jobs_"))
    job_id, job_dir = manager.new_job_dir("crossinit")
    Image.new("RGB", (a.res, a.res), (120, 100, 90)).save(os.path.join(job_dir, "photos", "photo_00.png"))
    out = tempfile.mkdtemp(prefix="fp_bench_out_")
    spec = JobSpec(job_id=job_id, method="crossinit", name="bench", base_model=str(tiny.ensure(a.kind)),
                   photos=["photos/photo_00.png"], params={"trigger_word": "<face>"}, steps=3, resolution=a.res,
                   checkpoint_every=100, output_dirs={"crossinit": out, "embeddings": out}, comfyui_path=comfyui_root(),
                   cpu=True)
    manager.submit(spec, job_dir, pause_while_generating=False)
    st = manager.wait(job_id, poll=0.1)
    assert st["status"] == "done", st
    print(f"engine overhead ({a.kind} {a.res}px, CPU): submit -> worker spawned {st['spawned'] - st['submitted']:.2f} s, "
          f"-> worker running {st['worker_started'] - st['submitted']:.2f} s, -> first step done "
          f"{st['first_step_at'] - st['submitted']:.2f} s (3 steps, {st['it_s']:.2f} it/s)")
    del home


def memory_child(ckpt):
    import _boot

    _boot.boot()
    import torch

    from fixtures.tiny import sd

    from comfyui_face_personalization.models_loader.training import diffusion

    model = sd.build_model("sd15_full")
    model.requires_grad_(False)
    cond = torch.randn(1, 77, 768, requires_grad=True)
    x = torch.randn(1, 4, 64, 64)
    t = torch.tensor([500])
    with diffusion.checkpointed(model.diffusion_model, ckpt):
        out = diffusion.unet_forward(model, x, t, cond)
    out.float().pow(2).mean().backward()
    print(json.dumps({"checkpointing": ckpt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="sd15")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--child", choices=["ckpt", "nockpt"])
    a = ap.parse_args()
    if a.child:
        return memory_child(a.child == "ckpt")
    speed(a)
    if a.overhead:
        overhead(a)
    if a.memory:
        for mode in ("nockpt", "ckpt"):
            out = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True)
            print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:])


if __name__ == "__main__":
    main()
