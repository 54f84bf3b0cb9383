"""Build the training example workflow (API prompt) and write it as UI JSON into workflows/.

Run: cd tests && $FP_PY training/make_workflows.py
(then copy the file into workflows/, or run without an argument to write there directly). tests/test_workflows.py
runs it with the training node shrunk (preset "custom", 1 step at 64 px) by editing the prompt, not the product.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import workflow  # noqa: E402
from harness.graphs import train_and_wait, txt2img  # noqa: E402

from fixtures import tiny  # noqa: E402

CKPT = tiny.file_name("sd15")

NOTE = """## Train a face identity (Cross Initialization, fast preset)
1. **LoadImage**: pick a clear, front-facing photo of ONE person (more photos: use `photo_folder` on the train node).
2. **FP_TrainCrossInit → ckpt_name**: the checkpoint to train on (official: SD 2.1-base
   `v2-1_512-ema-pruned.safetensors`; SD1.5/SDXL work too). Use the same checkpoint in the loader below.
3. Preset **fast**: 25 steps at lr 0.08 (the paper's fast setting, a minute or two on a GPU). **full**: the official
   320 steps at lr 0.005. The job runs in the background (see the training panel); FP_TrainingResult waits for it.
4. The result is saved as `models/crossinit/<name>/learned_embeds.bin` and `models/embeddings/<name>.safetensors`;
   write the trigger word (`<face>`) in the prompt.
"""


def train_crossinit(ckpt, prefix, name, preset, steps, learning_rate):
    """Photo -> Train Cross Initialization (``preset`` with its ``steps`` / ``learning_rate``) -> Training Result ->
    Apply Identity Embedding on the prompt's CLIP (the fast and the full training workflow)."""
    p = txt2img(ckpt, text="a photo of <face> person, smiling, in a garden", negative="blurry, lowres", prefix=prefix)
    p["photo"] = {"class_type": "LoadImage", "inputs": {"image": "celebahq_28017.jpg"}}
    p["det"] = {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}}
    train_and_wait(p, "FP_TrainCrossInit", {
        "ckpt_name": ckpt, "face_analysis": ["det", 0], "name": name, "trigger_word": "<face>", "preset": preset,
        "steps": steps, "learning_rate": learning_rate, "batch_size": 8, "grad_accum": 4, "resolution": 512,
        "seed": 0, "precision": "fp32", "gradient_checkpointing": True, "cache_latents": True, "checkpoint_every": 50,
        "preview_every": 0, "if_no_face": "error", "pause_while_generating": True, "mode": "run",
        "images": ["photo", 0], "photo_folder": ""})
    p["apply"] = {"class_type": "FP_ApplyIdentityEmbedding", "inputs": {"clip": ["ckpt", 1],
                                                                        "identity_embedding": ["result", 0],
                                                                        "trigger_word": "<face>"}}
    p["pos"]["inputs"]["clip"] = ["apply", 0]
    return p


def train_crossinit_fast():
    return train_crossinit(CKPT, "train_crossinit_fast", "my_face", "fast", 25, 0.08)


BUILDERS = {"train_crossinit_fast": train_crossinit_fast}
NOTES = {"train_crossinit_fast": NOTE}


def main(out_dir=None):
    import inspect

    # write_builders takes notes= once harness.workflow supports note nodes (not yet on main at 23:30)
    kw = {"notes": NOTES} if "notes" in inspect.signature(workflow.write_builders).parameters else {}
    return workflow.write_builders(BUILDERS, out_dir=out_dir, **kw)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
