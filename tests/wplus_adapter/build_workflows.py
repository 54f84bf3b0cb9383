"""Build the W+ Adapter / PIDiff example workflows (UI format) from API prompts.

    cd tests && $FP_PY wplus_adapter/build_workflows.py      # rewrites workflows/{wplus_basic,pidiff_basic,wplus_controlnet}.json

Needs (provisioned by tests/harness/provision.py): models/checkpoints tiny_sd15-v1.safetensors (kind sd15),
models/wplus tiny_wplus_adapter_sd15-v1.bin (kind wplus_adapter_sd15), models/pidiff
tiny_pidiff_sd15-v1.safetensors (kind pidiff_sd15), models/controlnet tiny_controlnet_sd15-v1.safetensors
(kind controlnet_sd15), models/wplus/codes e4e_1.pth (shared/data/wplus/wcodes), input/celebahq_28017.jpg.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.graphs import apply_wplus, txt2img  # noqa: E402

from fixtures import tiny  # noqa: E402

CKPT, ADAPTER, PIDIFF, CONTROLNET = tiny.file_names("sd15", "wplus_adapter_sd15", "pidiff_sd15", "controlnet_sd15")
CODE = "e4e_1.pth"
POSE_PHOTO = "celebahq_28017.jpg"  # the ControlNet's layout: its Canny edge map (core's Canny node)
TEXT = "a photo of a person wearing a red shirt, in a garden"


def _base(prefix):
    p = txt2img(CKPT, text=TEXT, negative="blurry, low quality", steps=2, cfg=7.5, prefix=prefix)
    p["code"] = {"class_type": "FP_LoadWPlus", "inputs": {"code": CODE, "path": ""}}
    return p


def wplus_basic():
    p = _base("wplus_basic")
    p["adapter"] = {"class_type": "FP_LoadWPlusAdapter", "inputs": {"adapter_name": ADAPTER}}
    return apply_wplus(p, "wplus", ["adapter", 0], ["code", 0], 1.0, 0.2, node_id="rca")


def pidiff_basic():
    p = _base("pidiff_basic")
    p["pidiff"] = {"class_type": "FP_LoadPIDiff", "inputs": {"pidiff_name": PIDIFF}}
    return apply_wplus(p, "pidiff", ["pidiff", 0], ["code", 0], 0.4, 0.0, node_id="sca")


def wplus_controlnet():
    p = wplus_basic()
    p["save"]["inputs"]["filename_prefix"] = "wplus_controlnet"
    p["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}}
    p["pose_photo"] = {"class_type": "LoadImage", "inputs": {"image": POSE_PHOTO}}
    p["edges"] = {"class_type": "Canny", "inputs": {"image": ["pose_photo", 0], "low_threshold": 0.4,
                                                    "high_threshold": 0.8}}
    p["show_hint"] = {"class_type": "PreviewImage", "inputs": {"images": ["edges", 0]}}
    p["apply_cn"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["edges", 0],
        "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}}
    p["sample"]["inputs"]["positive"] = ["apply_cn", 0]
    p["sample"]["inputs"]["negative"] = ["apply_cn", 1]
    return p


WORKFLOWS = {"wplus_basic": wplus_basic, "pidiff_basic": pidiff_basic, "wplus_controlnet": wplus_controlnet}


def build(comfy, out_dir):
    from harness import workflow as wf

    wf.write_builders(WORKFLOWS, comfy, out_dir)


if __name__ == "__main__":
    from harness import workflow as wf

    wf.write_builders(WORKFLOWS)
