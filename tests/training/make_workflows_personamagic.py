"""Build the PersonaMagic training example workflow (API prompt) and write it as UI JSON into workflows/.

Run: cd tests && $FP_PY training/make_workflows_personamagic.py
tests/test_workflows.py runs it with the training node shrunk (1 step at 64 px) by editing the prompt.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import workflow  # noqa: E402
from harness.graphs import train_and_wait, txt2img  # noqa: E402

from fixtures import tiny  # noqa: E402

CKPT = tiny.file_name("sd15")
CLIP_VISION = "clip_vision_vitb32_tiny-v1.safetensors"
PHOTO = "celebahq_28017.jpg"
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"  # the official fixed negative

NOTE = """## Train a PersonaMagic mapper, then generate with it
1. **LoadImage**: a clear photo of ONE person (the official example trains on one photo; more: `photo_folder`).
2. **FP_TrainPersonaMagic → ckpt_name**: an SD1.x checkpoint (official: dreamlike-photoreal-2.0); use the same
   checkpoint in the loader below. **clip_vision**: OpenAI CLIP ViT-B/32 (`models/clip_vision`), for the bypass.
3. Defaults are the official recipe: 1000 steps, batch 1 x 2 accumulation, lr 1e-4, face-masked loss (face
   pipeline masks; the official code uses CLIPSeg) + the attention (TE) loss. The job runs in the background
   (training panel); FP_TrainingResult waits for it and outputs the mapper.
4. The mapper is saved as `models/personamagic/<name>.safetensors` (Load PersonaMagic Mapper). Write `<persona>`
   where the person goes in the Stage-Regulated TI prompt.
"""


def train_personamagic():
    text = "a photo of <persona> reading a book"
    p = txt2img(CKPT, text=text, negative=NEGATIVE, steps=4, cfg=8.0, sampler="dpmpp_2m", scheduler="karras",
                prefix="train_personamagic")
    p["photo"] = {"class_type": "LoadImage", "inputs": {"image": PHOTO}}
    p["det"] = {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}}
    p["clipv"] = {"class_type": "FP_LoadCLIPVisionAnySize", "inputs": {"clip_name": CLIP_VISION,
                                                                    "activation": "quick_gelu", "precision": "fp32"}}
    train_and_wait(p, "FP_TrainPersonaMagic", {
        "ckpt_name": CKPT, "face_analysis": ["det", 0], "clip_vision": ["clipv", 0], "name": "my_persona",
        "steps": 1000, "learning_rate": 1e-4, "grad_accum": 2, "resolution": 512, "framing": "whole photo (official)",
        "mask_source": "face pipeline", "class_word": "face", "seed": 0, "precision": "fp32",
        "gradient_checkpointing": True, "checkpoint_every": 100, "preview_every": 0, "if_no_face": "error",
        "pause_while_generating": True, "mode": "run", "images": ["photo", 0], "photo_folder": ""})
    p["clipv_enc"] = {"class_type": "FP_PersonaMagicReferenceEncode", "inputs": {"clip_vision": ["clipv", 0],
                                                                              "image": ["photo", 0]}}
    p["sti"] = {"class_type": "StageRegulatedTI", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "mapper": ["result", 0], "text": text, "trigger": "<persona>",
        "clip_vision_output": ["clipv_enc", 0], "class_word": "", "t_high": 800.0, "t_low": 400.0}}
    del p["pos"]
    p["sample"]["inputs"]["model"] = ["sti", 0]
    p["sample"]["inputs"]["positive"] = ["sti", 1]
    return p


BUILDERS = {"train_personamagic": train_personamagic}
NOTES = {"train_personamagic": NOTE}


def main(out_dir=None):
    return workflow.write_builders(BUILDERS, out_dir=out_dir, notes=NOTES)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
