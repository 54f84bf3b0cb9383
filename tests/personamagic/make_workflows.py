"""Build the PersonaMagic workflow (API prompt) and write it as UI JSON into workflows/.

Run: cd tests && $FP_PY personamagic/make_workflows.py
Needs: tiny kind sd15 -> models/checkpoints (tiny_sd15-v1.safetensors), personamagic_mapper ->
models/personamagic (mapper-steps-1000-v1.pt), clip_vision_vitb32 -> models/clip_vision, and the reference
photo personamagic_person_1.jpg in input/ (the V-only bypass, as the official inference uses it).
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import workflow  # noqa: E402
from harness.graphs import txt2img  # noqa: E402

from fixtures import tiny  # noqa: E402

# MAPPER: an official-layout mapper-steps-1000.pt
CKPT, MAPPER, CLIP_VISION = tiny.file_names("sd15", "personamagic_mapper", "clip_vision_vitb32")
REFERENCE = "personamagic_person_1.jpg"
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"  # the official fixed negative


def personamagic_basic(ckpt=CKPT, mapper=MAPPER, steps=4, prefix="personamagic_basic",
                       text="a photo of <persona> reading a book", clip_vision=CLIP_VISION, reference=REFERENCE):
    """``clip_vision=None`` leaves the optional image bypass unconnected."""
    p = txt2img(ckpt, text=text, negative=NEGATIVE, steps=steps, cfg=8.0, sampler="dpmpp_2m",
                scheduler="karras", prefix=prefix)
    p["pm"] = {"class_type": "FP_LoadPersonaMagic", "inputs": {"mapper_name": mapper}}
    p["sti"] = {"class_type": "StageRegulatedTI", "inputs": {
        "model": ["ckpt", 0], "clip": ["ckpt", 1], "mapper": ["pm", 0], "text": text, "trigger": "<persona>",
        "class_word": "", "t_high": 800.0, "t_low": 400.0}}
    if clip_vision:
        p["ref"] = {"class_type": "LoadImage", "inputs": {"image": reference}}
        p["clipv"] = {"class_type": "FP_LoadCLIPVisionAnySize", "inputs": {"clip_name": clip_vision,
                                                                        "activation": "quick_gelu",
                                                                        "precision": "fp32"}}
        p["clipv_enc"] = {"class_type": "FP_PersonaMagicReferenceEncode", "inputs": {
            "clip_vision": ["clipv", 0], "image": ["ref", 0]}}
        p["sti"]["inputs"]["clip_vision_output"] = ["clipv_enc", 0]
    del p["pos"]
    p["sample"]["inputs"]["model"] = ["sti", 0]
    p["sample"]["inputs"]["positive"] = ["sti", 1]
    return p


BUILDERS = {"personamagic_basic": personamagic_basic}


def main():
    workflow.write_builders(BUILDERS)


if __name__ == "__main__":
    main()
