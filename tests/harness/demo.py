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
        for name in names:
            t = time.monotonic()
            ui = workflow.load(REPO / "workflows" / f"{name}.json")
            prompt = workflow.ui_to_api(ui, srv.input_types)
            for _, tiny_name, real_name in provision.prefer_real_models(prompt, installed, real):
                print(f"[demo] {name}: {real_name} instead of the tiny {tiny_name}", flush=True)
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
    print(f"[demo] done in {time.monotonic() - t0:.1f}s; images in {images_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
