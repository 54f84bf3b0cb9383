"""Builds workflows/wplus_edit.json (UI format) from an API prompt.

    cd tests && $FP_PY wplus_codes/wplus_build_workflows.py

wplus_edit: Load W+ Code (e4e_1.pth) -> Delta-W Edit sweep (InterFaceGAN age -3 / +3, latent-direction
smile +2, plus the unedited code) -> W+ Batch -> Apply W+ Residual Cross-Attention on an SD1.5 checkpoint,
one code per image of a 4-image batch -> KSampler -> SaveImage.
Needs: models/checkpoints/tiny_sd15-v1.safetensors (tiny kind sd15; a real SD1.5 for real use),
models/wplus/tiny_wplus_adapter_sd15-v1.bin (tiny kind wplus_adapter_sd15; wplus_adapter.bin for real use),
models/wplus/codes/e4e_1.pth, models/wplus/directions/age.pt and smile.npy (shared data wplus/).
"""
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from harness import comfy_host  # noqa: E402
from harness import workflow as wf  # noqa: E402

from fixtures import tiny  # noqa: E402

CKPT, ADAPTER = tiny.file_names("sd15", "wplus_adapter_sd15")


def _edit(direction, strength, title, src="code"):
    return {"class_type": "DeltaWEdit", "_meta": {"title": title}, "inputs": {"wplus": [src, 0], "direction": direction, "strength": strength,
                                                   "rows": "preset", "start_row": 0, "end_row": 18}}


def wplus_edit_prompt(ckpt=CKPT, adapter=ADAPTER, code="e4e_1.pth"):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "adapter": {"class_type": "FP_LoadWPlusAdapter", "inputs": {"adapter_name": adapter}},
        "code": {"class_type": "FP_LoadWPlus", "inputs": {"code": code, "path": ""}},
        "younger": _edit("age.pt", -3.0, "Delta-W: age -3 (InterFaceGAN, all rows)"),
        "older": _edit("age.pt", 3.0, "Delta-W: age +3 (InterFaceGAN, all rows)"),
        "smile": _edit("smile.npy", 2.0, "Delta-W: smile +2 (latent direction, rows 0-7)"),
        "b1": {"class_type": "FP_WPlusBatch", "inputs": {"wplus_a": ["code", 0], "wplus_b": ["younger", 0]}},
        "b2": {"class_type": "FP_WPlusBatch", "inputs": {"wplus_a": ["b1", 0], "wplus_b": ["older", 0]}},
        "b3": {"class_type": "FP_WPlusBatch", "inputs": {"wplus_a": ["b2", 0], "wplus_b": ["smile", 0]}},
        "rca": {"class_type": "ApplyResidualCrossAttention", "inputs": {
            "model": ["ckpt", 0], "wplus_adapter": ["adapter", 0], "wplus": ["b3", 0], "strength": 1.0,
            "start_percent": 0.2, "end_percent": 1.0}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a woman wearing a red shirt in a garden",
                                                           "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["rca", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 23, "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "wplus_edit"}},
    }


def build(host):
    prompt = wplus_edit_prompt()
    ui = wf.api_to_ui(prompt, host.input_types, title="W+ edit sweep (original, age -3, age +3, smile +2)",
                      output_types=lambda c: host.node_classes[c].RETURN_TYPES,
                      note="# W+ edits\nEdits a face's W+ code along semantic directions (age, smile) before the W+ "
                           "Adapter: one image per code in the batch.\n\nDirections go in `models/wplus/directions/` "
                           "(InterFaceGAN `.pt`, latent `.npy`, GANSpace); *strength* sets how far to move.")
    return ui


def main():
    home = Path(tempfile.mkdtemp(prefix="wplus_wf_"))
    host = comfy_host.boot(home)
    out = REPO / "workflows" / "wplus_edit.json"
    out.parent.mkdir(exist_ok=True)
    wf.save(build(host), out)
    print("wrote", out)


if __name__ == "__main__":
    main()
