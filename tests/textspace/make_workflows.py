"""Build the text-space workflows (API prompts) and write them as UI JSON into workflows/.

Run: cd tests && $FP_PY textspace/make_workflows.py
Needs (tiny kinds -> models folder): sd15 -> checkpoints (tiny_sd15-v1.safetensors), controlnet_sd15 ->
controlnet, adaface_pt + adaface_arc2face -> adaface, mean_emb_keanureeves.pt -> face_embeds (from
shared/data/adaface), input image celebahq_28017.jpg.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness import workflow  # noqa: E402
from harness.graphs import txt2img  # noqa: E402

from fixtures import tiny  # noqa: E402

CKPT = tiny.file_name("sd15")
ADA = {"class_type": "FP_LoadAdaFace", "inputs": {"adaface_file": tiny.file_name("adaface_pt"),
                                               "arc2face_encoder": tiny.file_name("adaface_arc2face"),
                                               "layer_weights": "checkpoint"}}


def _ada_invert(clip):
    return {"class_type": "AdaFaceInvert", "inputs": {"clip": clip, "adaface": ["la", 0], "trigger_word": "<ada>",
                                                      "id_cfg_scale": 1.0, "embeds_file": "mean_emb_keanureeves.pt"}}


def crossinit_basic():
    p = txt2img(CKPT, text="a photo of <face> person, smiling", negative="blurry, lowres", prefix="crossinit_basic")
    p["ci"] = {"class_type": "CrossInitEmbedding", "inputs": {"clip": ["ckpt", 1], "trigger_word": "<face>", "names_file": ""}}
    p["pos"]["inputs"]["clip"] = ["ci", 0]
    p["savee"] = {"class_type": "FP_SaveIdentityEmbedding", "inputs": {"identity_embedding": ["ci", 1], "name": "crossinit_face", "overwrite": True}}
    return p


def adaface_basic(batch=1, prefix="adaface_basic"):
    p = txt2img(CKPT, text="<ada> walking in a forest, photo", negative="flaws in the face, lowres, blurry", batch=batch, prefix=prefix)
    p["la"] = dict(ADA)
    p["inv"] = _ada_invert(["ckpt", 1])
    p["pos"]["inputs"]["clip"] = ["inv", 0]
    return p


def adaface_from_photo():
    """Photo -> insightface antelopev2 -> ArcFace mean -> AdaFace tokens -> sample -> ArcFace ID score."""
    p = adaface_basic(prefix="adaface_from_photo")
    p["photo"] = {"class_type": "LoadImage", "inputs": {"image": "celebahq_28017.jpg"}}
    p["fa"] = {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": "antelopev2", "provider": "auto",
                                                                 "det_size": 640}}
    p["detect"] = {"class_type": "FP_FaceDetect", "inputs": {"image": ["photo", 0], "face_analysis": ["fa", 0],
                                                             "select": "largest", "index": 0, "if_no_face": "error",
                                                             "det_thresh": 0.5}}
    p["embed"] = {"class_type": "FP_FaceEmbed", "inputs": {"faces": ["detect", 0], "mode": "mean"}}
    p["inv"]["inputs"]["face_embeds"] = ["embed", 0]
    p["inv"]["inputs"]["embeds_file"] = "(none)"
    p["score"] = {"class_type": "FP_FaceSimilarity", "inputs": {"image": ["decode", 0], "reference": ["embed", 0],
                                                                "face_analysis": ["fa", 0], "det_thresh": 0.5}}
    return p


def mix_identities():
    p = txt2img(CKPT, text="two people", negative="blurry", prefix="mix_identities")
    p["ci"] = {"class_type": "CrossInitEmbedding", "inputs": {"clip": ["ckpt", 1], "trigger_word": "<left>", "names_file": ""}}
    p["la"] = dict(ADA)
    p["inv"] = _ada_invert(["ci", 0])
    p["pos"]["inputs"]["clip"] = ["inv", 0]
    p["pos"]["inputs"]["text"] = "two people side by side"
    p["tl"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["inv", 0], "text": "a photo of <left> person"}}
    p["tr"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["inv", 0], "text": "a photo of <ada> person"}}
    p["zero"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 64, "height": 64}}
    p["half"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}}
    p["ml"] = {"class_type": "MaskComposite", "inputs": {"destination": ["zero", 0], "source": ["half", 0], "x": 0, "y": 0, "operation": "add"}}
    p["mr"] = {"class_type": "MaskComposite", "inputs": {"destination": ["zero", 0], "source": ["half", 0], "x": 32, "y": 0, "operation": "add"}}
    p["cl"] = {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["tl", 0], "mask": ["ml", 0], "strength": 1.0, "set_cond_area": "default"}}
    p["cr"] = {"class_type": "ConditioningSetMask", "inputs": {"conditioning": ["tr", 0], "mask": ["mr", 0], "strength": 1.0, "set_cond_area": "default"}}
    p["c1"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["cl", 0], "conditioning_2": ["cr", 0]}}
    p["c2"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["c1", 0], "conditioning_2": ["pos", 0]}}
    p["sample"]["inputs"]["positive"] = ["c2", 0]
    return p


# adaface_controlnet (Canny hint) and adaface_animatediff (AnimateDiff-Evolved nodes): tests/oneshot/photo_workflows.py
BUILDERS = {"crossinit_basic": crossinit_basic, "adaface_basic": adaface_basic, "adaface_from_photo": adaface_from_photo,
            "mix_identities": mix_identities}
NOTES = {
    "crossinit_basic": "# Cross Initialization\nCross Initialization takes **no photo here**: its identity comes from **training** on your photos. Run the *train_crossinit_fast* workflow first (*Train Cross Initialization*: a minute or two on a GPU); it saves `models/embeddings/<name>.safetensors`, which *Load Identity Embedding* (or plain `embedding:<name>` in the prompt) then uses in place of the node below.\n\nThis example shows the starting point of that training: the trigger word initialised from 691 celebrity-name embeddings (the paper's cross initialization), saved with *Save Identity Embedding*.\n\n**Checkpoint**: pick your SD1.5 model in *Load Checkpoint* (the demo ships a tiny random one, so images are noise).\nType the trigger word (default `<face>`) in the prompt.",
    "adaface_basic": "# AdaFace\nAn ArcFace face embedding becomes 16 prompt tokens under the trigger word; the UNet is untouched.\n\n**Checkpoint**: pick your SD1.5 model in *Load Checkpoint* (the demo ships a tiny random one, so images are noise).\n**Face**: *Load Face Embeds* from `models/face_embeds/` (or use *adaface_from_photo*). **AdaFace** checkpoint + Arc2Face encoder in `models/adaface/`.",
    "adaface_from_photo": "# AdaFace from a photo\nPhoto → face detection (antelopev2) → ArcFace embedding → AdaFace tokens → image → ID score.\n\n**Checkpoint**: pick your SD1.5 model in *Load Checkpoint* (the demo ships a tiny random one, so images are noise).\nPut your photo in *Load Image*; the antelopev2 pack in `models/insightface/models/antelopev2/`. The Face Similarity node shows the ID score (higher = closer likeness).",
    "mix_identities": "# Two identities in one image\nCross Initialization and AdaFace identities, each bound to a region mask (left / right).\n\n**Checkpoint**: pick your SD1.5 model in *Load Checkpoint* (the demo ships a tiny random one, so images are noise).\nChange the masks to place the people."
}


def main(names=None):
    workflow.write_builders({k: v for k, v in BUILDERS.items() if not names or k in names}, notes=NOTES)


if __name__ == "__main__":
    main(sys.argv[1:])
