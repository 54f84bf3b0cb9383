"""Training benches of every method: engine step vs a bare torch loop of the same math on the same model (interleaved),
engine overhead, and peak CPU RSS of one step at 512 px on the full-size SD1.5 architecture.

Run from tests/: $FP_PY ../bench/bench_training.py [--method all|crossinit|pidiff|wplus1|wplus2|personamagic]
                 [--kind sd15] [--res 64] [--repeats 5] [--overhead] [--memory] [--memory-only] [--quick]
  engine: the loop's per-step path (sample_inputs from the per-step generator, optimizer_step with accumulation
          bookkeeping and the gradient / after-step copies, loss.jsonl + status.json writes);
  bare:   precomputed inputs, trainer.loss_terms -> backward -> AdamW.step (no bookkeeping).
  Both run the same trainer (the same model and trainable tensors), accumulation 2 x batch 1, interleaved; the
  medians and their ratio are printed per method (target <= 1.10). Every prompt template is encoded once before
  (the trainers cache encoded prompts, so that is a run's steady state; --cold-prompts leaves the cache empty).
--overhead: one 3-step CrossInit job through the job engine (JobManager -> worker subprocess, train.py):
  submit -> worker start -> first step.
--memory: per method, peak CPU RSS of one optimiser step (batch 1) at 512 px on the full-size SD1.5 UNet (random
  weights; the tiny checkpoint's CLIP-L text encoder and VAE are full-size already) with and without gradient
  checkpointing, each in its own process. The set-up (model build, latent caching of the photo) is measured apart:
  the kernel's peak counter (VmHWM) is reset after it, so the step figure is the step's own peak.
W+ Stage II needs the shared data's direction bank ($FP_SHARED/data/wplus, default ../shared next to the repo).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("crossinit", "pidiff", "wplus1", "wplus2", "personamagic")
TITLES = {"crossinit": "CrossInit", "pidiff": "PIDiff", "wplus1": "W+ Adapter Stage I", "wplus2": "W+ Adapter Stage II",
          "personamagic": "PersonaMagic"}


def _skipped(method, lines, what=""):
    """True (and the line said) when ``method`` cannot run here: W+ Stage II needs the shared direction bank."""
    if method == "wplus2" and not _shared_wplus().is_dir():
        lines.append(f"{TITLES[method]}{what}: skipped (no direction bank at {_shared_wplus()})")
        print(lines[-1], flush=True)
        return True
    return False


def _shared_wplus():
    repo = Path(__file__).resolve().parents[1]
    return Path(os.environ.get("FP_SHARED", repo.parent / "shared")).resolve() / "data" / "wplus"


def _face_masks(n, size):
    """[n, size, size] soft centred ellipses (a face-sized region) in 0..1."""
    import torch

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    m = ((xx / 0.55) ** 2 + (yy / 0.7) ** 2 <= 1.0).float()
    return m.expand(n, -1, -1).clone()


def make_trainer(method, mp, clip, vae, res, ckpt=False, n=2):
    """A trainer of ``method`` on (mp, clip, vae) with ``n`` random photos at ``res`` px, micro-batch 1."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    photos = torch.rand(n, 3, res, res, generator=g) * 2 - 1
    codes = torch.randn(n, 18, 512, generator=g) * 0.5
    if method == "crossinit":
        from comfyui_face_personalization.models_loader.methods.crossinit import train as ci

        return ci.CrossInitTrainer(mp, clip, vae, photos[:1], trigger="<face>", lr=0.005, batch=1, resolution=res,
                                   gradient_checkpointing=ckpt)
    if method == "pidiff":
        from comfyui_face_personalization.models_loader.methods.pidiff import train as pt

        return pt.PIDiffTrainer(mp, clip, vae, photos, codes, batch_size=1, gradient_checkpointing=ckpt)
    if method in ("wplus1", "wplus2"):
        from comfyui_face_personalization.models_loader.methods.wplus import train as wt

        masks = _face_masks(n, res)
        ex = [wt.Example(codes[i], ["a photo of a person in a park"], masks[i], f"photo_{i}") for i in range(n)]
        if method == "wplus1":
            return wt.WPlusAdapterTrainer(mp, clip, vae, photos, ex, stage=1, batch_size=1, gradient_checkpointing=ckpt)
        bank = wt.DirectionBank.from_folder(str(_shared_wplus()))
        stage1 = wt.weights_of(*wt.initial_modules(mp.model, None, 0, "cpu"), "wplus_adapter")  # a Stage I start
        return wt.WPlusAdapterTrainer(mp, clip, vae, photos, ex, stage=2, init=stage1, directions=bank,
                                      batch_size=1, gradient_checkpointing=ckpt)
    if method == "personamagic":
        from comfyui_face_personalization.models_loader.methods.personamagic import train as pmt

        masks = F.interpolate(_face_masks(n, res)[:, None], size=(res // 8, res // 8), mode="nearest")[:, 0]
        embeds = torch.randn(n, 512, generator=g)
        return pmt.PersonaMagicTrainer(mp, clip, vae, photos, masks, embeds, batch=1, gradient_checkpointing=ckpt)
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def warm_prompt_cache(tr):
    """Encode every prompt the trainer can draw once (its PromptEncoder caches them), so the timed steps are the steady
    state of a run; without this, each template's first appearance costs a CLIP encode inside the engine's steps
    only (the bare loop reuses its fixed prompts). Returns how many prompts were encoded."""
    pe = getattr(tr, "prompts", None)
    if pe is None or not callable(pe):
        return 0
    texts = {""}
    if hasattr(tr, "templates"):  # PIDiff
        texts.update(t.format(tr.cfg["pseudo_word"]) for t in tr.templates)
    elif getattr(tr, "stage", None) == 1:
        from comfyui_face_personalization.models_loader.methods.wplus.train import STAGE1_TEMPLATES

        texts.update(t.format(tr.class_word) for t in STAGE1_TEMPLATES)
    elif getattr(tr, "stage", None) == 2:
        texts.update(c for ex in tr.examples for c in (ex.captions or ["a person"]))
    for t in sorted(texts):
        pe([t])
    return len(texts)


def speed(a, methods):
    import _boot

    _boot.boot()
    from fixtures import tiny

    from comfyui_face_personalization.models_loader.training import jobfiles, loop, run
    from comfyui_face_personalization.models_loader.training.protocol import step_generator
    from comfyui_face_personalization.models_loader.training.spec import JobSpec

    base = run.load_base(JobSpec(job_id="b", method="crossinit", name="b", base_model=str(tiny.ensure(a.kind))))
    lines = []
    for method in methods:
        if _skipped(method, lines):
            continue
        tr = make_trainer(method, base.model, base.clip, base.vae, a.res)
        opt = loop.make_optimizer(tr)
        job = tempfile.mkdtemp(prefix="fp_bench_job_")
        fixed = [tr.sample_inputs(0, m, step_generator(0, 0, m)) for m in range(2)]
        state = {"step": 0}

        def engine():
            s = state["step"]
            micros = [tr.sample_inputs(s, m, step_generator(0, s, m)) for m in range(2)]
            res = loop.optimizer_step(tr, opt, micros, 2, step=s)
            jobfiles.append_jsonl(os.path.join(job, jobfiles.LOSS_FILE), {"step": s + 1, "loss": res.terms["loss"],
                                                                         "terms": res.terms})
            jobfiles.write_status(job, status="running", step=s + 1, loss=res.terms["loss"])
            state["step"] += 1

        def bare():
            opt.zero_grad()
            for inp in fixed:
                (tr.loss_terms(inp)["loss"] / 2).backward()
            opt.step()

        if not a.cold_prompts:
            warm_prompt_cache(tr)
        engine(), bare()  # warm-up (posterior cache, tokenization)
        t = _boot.interleaved({"engine": engine, "bare": bare}, a.repeats)
        lines.append(f"{TITLES[method]} {a.kind} {a.res}px, accum 2 x batch 1{', cold prompt cache' if a.cold_prompts else ''}: engine {t['engine']:.3f} s/step, bare "
                     f"{t['bare']:.3f} s/step, ratio {t['engine'] / t['bare']:.3f}")
        print(lines[-1], flush=True)
    return lines


def overhead(a):
    """submit -> first optimiser step of a real job (worker subprocess loads ComfyUI and the checkpoint)."""
    import _boot

    home = _boot.boot()
    from PIL import Image

    from fixtures import tiny

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


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _release():
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_child(method, ckpt, res):
    t0 = time.time()
    import _boot

    _boot.boot()
    import comfy.model_patcher
    import comfy.sd
    import torch

    from fixtures import tiny
    from fixtures.tiny import sd

    from comfyui_face_personalization.models_loader.training import loop
    from comfyui_face_personalization.models_loader.training.protocol import step_generator

    _, clip, vae = comfy.sd.load_checkpoint_guess_config(str(tiny.ensure("sd15")), output_model=False)[:3]
    for m in (clip.cond_stage_model, vae.first_stage_model):
        m.requires_grad_(False).eval()
    model = sd.build_model("sd15_full")
    model.requires_grad_(False).eval()
    dev = torch.device("cpu")
    mp = comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)
    tr = make_trainer(method, mp, clip, vae, res, ckpt=ckpt, n=1)
    opt = loop.make_optimizer(tr)
    inputs = [tr.sample_inputs(0, 0, step_generator(0, 0, 0))]
    setup_peak = _status_kb("VmHWM")
    _release()
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    reset_ok = _status_kb("VmHWM") <= before + 1024
    t1 = time.time()
    res_step = loop.optimizer_step(tr, opt, inputs, 1)
    t2 = time.time()
    print(json.dumps({"method": method, "checkpointing": ckpt, "res": res, "loss": res_step.terms["loss"],
                      "setup_peak_rss_mb": round(setup_peak / 1024), "rss_before_step_mb": round(before / 1024),
                      "step_peak_rss_mb": round(_status_kb("VmHWM") / 1024), "peak_reset": reset_ok,
                      "setup_s": round(t1 - t0, 1), "step_s": round(t2 - t1, 1)}))


def memory(a, methods):
    lines = []
    for method in methods:
        if _skipped(method, lines, " memory"):
            continue
        for mode in a.memory_modes.split(","):
            t = time.time()
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--method", method,
                                  "--res", str(a.memory_res)], capture_output=True, text=True)
            rows = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if out.returncode or not rows:
                lines.append(f"{TITLES[method]} {mode}: failed ({out.returncode}) {out.stderr[-1500:]}")
            else:
                r = json.loads(rows[-1])
                lines.append(f"{TITLES[method]} {a.memory_res}px full-size SD1.5, gradient checkpointing "
                             f"{'on' if r['checkpointing'] else 'off'}: step peak RSS {r['step_peak_rss_mb']} MB "
                             f"(RSS before the step {r['rss_before_step_mb']} MB, set-up peak {r['setup_peak_rss_mb']} "
                             f"MB; step {r['step_s']} s, process {time.time() - t:.0f} s)")
            print(lines[-1], flush=True)
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="all", help="all or one of " + ", ".join(METHODS))
    ap.add_argument("--kind", default="sd15")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--memory-res", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory", action="store_true", help="also the 512 px full-size memory runs")
    ap.add_argument("--memory-only", action="store_true", help="only the memory runs")
    ap.add_argument("--memory-modes", default="nockpt,ckpt", help="nockpt,ckpt (gradient checkpointing off / on)")
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--cold-prompts", action="store_true", help="do not pre-encode the trainers' prompt templates")
    ap.add_argument("--quick", action="store_true", help="2 repeats, no memory runs (run_all.py --quick)")
    ap.add_argument("--child", choices=["ckpt", "nockpt"])
    a = ap.parse_args()
    methods = METHODS if a.method == "all" else tuple(m.strip() for m in a.method.split(","))
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; known: all, {', '.join(METHODS)}")
    if a.child:
        return memory_child(methods[0], a.child == "ckpt", a.res)
    if a.quick:
        a.repeats, a.memory, a.memory_only = 2, False, False
    if not a.memory_only:
        speed(a, methods)
        if a.overhead:
            overhead(a)
    if a.memory or a.memory_only:
        memory(a, methods)


if __name__ == "__main__":
    main()
