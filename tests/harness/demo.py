"""The README's demo: start a real ComfyUI server with the pack, run the shipped example
workflows on tiny random models (or your real ones), and save the images to a folder.

    python tests/harness/demo.py [--out DIR] [--workflow NAME ...]
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import comfy_host, provision, workflow  # noqa: E402
from harness.server import ComfyServer  # noqa: E402

REPO = comfy_host.REPO
# shown first when present; every other workflow in workflows/ runs after these
PREFERRED = ["wplus_basic", "adaface_from_photo", "adaface_basic", "crossinit_basic", "personamagic_basic",
             "faces_detect_align"]


TRAIN_PHOTOS = ("celebahq_28017.jpg",)


def start_training(srv, home):
    """Queue a CrossInit (fast recipe, few steps at 64 px on the tiny model) from the shared photos; it trains in
    the background while the example workflows run."""
    import os

    shared = Path(os.environ.get("FP_SHARED", REPO.parent / "shared")) / "data" / "faces"
    if not all((shared / f).is_file() for f in TRAIN_PHOTOS):
        print(f"[demo] training skipped: no shared photos in {shared}", flush=True)
        return None
    photos = home / "input" / "demo_train_photos"
    photos.mkdir(parents=True, exist_ok=True)
    for f in TRAIN_PHOTOS:
        shutil.copyfile(shared / f, photos / f)
    name = f"demo_face_{int(time.time())}"
    ckpt = next(k for k in srv.input_types("CheckpointLoaderSimple")["required"]["ckpt_name"][0] if "sd15" in k)
    prompt = {"det": {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}},
              "train": {"class_type": "FP_TrainCrossInit", "inputs": {
                  "ckpt_name": ckpt, "face_analysis": ["det", 0], "name": name, "trigger_word": "<face>",
                  "preset": "custom", "steps": 10, "learning_rate": 0.08, "batch_size": 2, "grad_accum": 1,
                  "resolution": 64, "seed": 0, "precision": "fp32", "gradient_checkpointing": False,
                  "cache_latents": True, "checkpoint_every": 5, "preview_every": 0, "if_no_face": "error",
                  "pause_while_generating": False, "mode": "run", "photo_folder": str(photos)}}}
    try:
        outputs = srv.run(prompt)
    except Exception as exc:
        print(f"[demo] training: FAILED to submit: {exc}", flush=True)
        return None
    job_id = outputs["train"]["text"][0].split()[2]
    print(f"[demo] training job {job_id} queued (CrossInit, background) while the workflows run", flush=True)
    srv.demo_train_name, srv.demo_train_ckpt = name, ckpt
    return job_id


def shrink_training(prompt, workflow_name):
    """Training workflows ship real presets (25-320 steps of 8 images at 512 px: many minutes on a CPU); on the
    tiny models a few 64 px steps show the graph works. A fresh output name: a demo rerun never overwrites."""
    for node in prompt.values():
        if node["class_type"].startswith("FP_Train") and "preset" in node["inputs"]:
            node["inputs"].update(preset="custom", steps=4, resolution=64, batch_size=1, grad_accum=1,
                                  gradient_checkpointing=False, preview_every=0,
                                  name=f"{node['inputs'].get('name', 'demo')}_{int(time.time())}")
            print(f"[demo] {workflow_name}: training shrunk to 4 steps at 64 px (tiny models)", flush=True)


def finish_training(srv, job_id, images_dir, timeout=1800):
    workflows_done = time.time()  # called once the example workflows ran
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = srv.get_json(f"/fp/training/jobs/{job_id}")
        if job["status"] in ("done", "failed", "cancelled"):
            break
        time.sleep(1)
    print(f"[demo] training job {job_id}: {job['status']} at step {job.get('step')}/{job.get('total')}; "
          f"folder {job['job_dir']}; loss curve {job['job_dir']}/loss.jsonl", flush=True)
    if job["status"] != "done":
        print(f"[demo] training: FAILED: {job.get('error')}", flush=True)
        return False
    history = srv.get_json(f"/fp/training/jobs/{job_id}")["loss_history"]
    during = sum(1 for r in history if r["time"] <= workflows_done)
    print(f"[demo] training: {during} of {len(history)} steps ran while the example workflows ran; loss "
          f"{history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}", flush=True)
    from harness.graphs import txt2img

    p = txt2img(srv.demo_train_ckpt, text="a photo of <face> person", prefix="trained_crossinit")
    p["ident"] = {"class_type": "FP_LoadIdentityEmbedding", "inputs": {
        "clip": ["ckpt", 1], "embedding_file": f"crossinit/{srv.demo_train_name}/learned_embeds.bin", "trigger_word": "<face>"}}
    p["pos"]["inputs"]["clip"] = ["ident", 0]
    outputs = srv.run(p)
    for node_out in outputs.values():
        for item in node_out.get("images", []):
            src = srv.home / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
            if src.exists():
                shutil.copyfile(src, images_dir / f"trained_crossinit__{item['filename']}")
    print(f"[demo] generated with the trained identity crossinit/{srv.demo_train_name}", flush=True)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(REPO / "demo_output"), help="where the images go")
    ap.add_argument("--workflow", action="append", help="workflow name(s) from workflows/ (default: all)")
    ap.add_argument("--models", default=str(REPO / "models"),
                    help="real weights laid out like ComfyUI/models (checkpoints/, e4e/, wplus/, clip_vision/, ...); "
                         "a workflow uses the first real file of a folder instead of its tiny model (default: ./models)")
    opts = ap.parse_args()
    out = Path(opts.out).resolve()
    home = out / "comfy_home"
    t0 = time.monotonic()
    comfy_host.boot(home)  # builds tiny models with ComfyUI's own classes
    real = provision.link_real_models(home, opts.models)
    installed = provision.provision(home)
    if real:
        print(f"[demo] real weights from {opts.models}: " + ", ".join(f"{k}/ ({len(v)})" for k, v in real.items()),
              flush=True)
    names = opts.workflow or sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    names = [n for n in PREFERRED if n in names] + [n for n in names if n not in PREFERRED]
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    print(f"[demo] tiny models ready in {time.monotonic() - t0:.1f}s; starting ComfyUI server", flush=True)
    failures = []
    with ComfyServer(home) as srv:
        print(f"[demo] ComfyUI at {srv.url} (log: {srv.log_path})", flush=True)
        job_id = start_training(srv, home)
        for name in names:
            t = time.monotonic()
            ui, left_out = workflow.without_missing_packs(workflow.load(REPO / "workflows" / f"{name}.json"),
                                                          srv.object_info)
            for _, kind, pack in left_out:
                print(f"[demo] {name}: {kind} left out ({pack} is not installed; the frames run as a batch)", flush=True)
            prompt = workflow.ui_to_api(ui, srv.input_types)
            if workflow.shrink_training(prompt):  # a demo run, not a real training: 1 step at 64 px
                print(f"[demo] {name}: training shortened to 1 step at 64 px (the workflow's preset trains for real)",
                      flush=True)
            for _, tiny_name, real_name in provision.prefer_real_models(prompt, installed, real):
                print(f"[demo] {name}: {real_name} instead of the tiny {tiny_name}", flush=True)
            if not real.get("checkpoints"):
                shrink_training(prompt, name)
            try:
                outputs = srv.run(prompt)
            except Exception as exc:  # report and go on with the other workflows
                failures.append(name)
                print(f"[demo] {name}: FAILED: {exc}", flush=True)
                continue
            count = 0
            for node_out in outputs.values():
                for text in node_out.get("text", []):  # e.g. the Face Similarity report: its summary line
                    if isinstance(text, str) and text.strip():
                        print(f"[demo] {name}: {text.strip().splitlines()[-1]}", flush=True)
                for item in node_out.get("images", []):
                    src = home / item.get("type", "output") / item.get("subfolder", "") / item["filename"]
                    if src.exists():
                        shutil.copyfile(src, images_dir / f"{name}__{item['filename']}")
                        count += 1
            print(f"[demo] {name}: {count} image(s) in {time.monotonic() - t:.1f}s", flush=True)
        if job_id and not finish_training(srv, job_id, images_dir):
            failures.append("training")
    print(f"[demo] done in {time.monotonic() - t0:.1f}s; images in {images_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
