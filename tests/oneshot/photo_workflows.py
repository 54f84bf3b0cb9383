"""Build the photo-in example workflows (API prompts) and write them as UI JSON into workflows/.

    cd tests && $FP_PY oneshot/photo_workflows.py            # rewrites the workflows named in BUILDERS

Writes wplus_quickstart (one node: W+ Adapter from Photo), wplus_from_photo and pidiff_from_photo (the
fine-grained chain: detect -> align -> e4e -> apply, scored with Face Similarity), adaface_controlnet (a
Canny hint from core) and adaface_animatediff (AnimateDiff-Evolved's real nodes; that pack is not installed
here, so its node specs below mirror its source). Needs what tests/harness/provision.py installs.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.graphs import apply_wplus, txt2img  # noqa: E402

from fixtures import tiny  # noqa: E402

CKPT, E4E, ADAPTER, PIDIFF = tiny.file_names("sd15", "e4e", "wplus_adapter_sd15", "pidiff_sd15")
PHOTO = "celebahq_28017.jpg"
TEXT = "a photo of a person wearing a red shirt, in a garden"
NEGATIVE = "blurry, low quality"
MOTION_MODEL = "mm_sd_v15_v2.ckpt"
CHECKPOINT_LINE = ("**Checkpoint**: pick your SD1.5 model in *Load Checkpoint* (the demo ships a tiny random one, so "
                   "images are noise).")

# AnimateDiff-Evolved (Kosinkadink/ComfyUI-AnimateDiff-Evolved @ d8d163c) node specs, as its INPUT_TYPES give
# them: animatediff/nodes_gen1.py:16-40 (AnimateDiffLoaderGen1), animatediff/nodes_context.py:100-122
# (StandardUniformContextOptionsNode), value lists from animatediff/utils_model.py:148-172 (BetaSchedules)
# and animatediff/context.py:19-38 (ContextFuseMethod.LIST). Used only to lay the workflow out.
_BETA = ["autoselect", "use existing", "sqrt_linear (AnimateDiff)", "linear (AnimateDiff-SDXL)",
         "linear (HotshotXL/default)", "avg(sqrt_linear,linear)", "lcm avg(sqrt_linear,linear)", "lcm",
         "lcm[100_ots]", "lcm >> sqrt_linear", "sqrt", "cosine", "squaredcos_cap_v2"]
_FUSE = ["pyramid", "flat", "overlap-linear", "🔬delayed reverse sawtooth", "🔬pyramid-sigma",
         "🔬pyramid-sigma inverse", "🔬gauss-sigma", "🔬gauss-sigma inverse", "🔬random"]
ADE_SPECS = {
    "ADE_AnimateDiffLoaderGen1": ({
        "required": {"model": ("MODEL",), "model_name": ([MOTION_MODEL],),
                     "beta_schedule": (_BETA, {"default": "autoselect"})},
        "optional": {"context_options": ("CONTEXT_OPTIONS",), "motion_lora": ("MOTION_LORA",),
                     "ad_settings": ("AD_SETTINGS",), "ad_keyframes": ("AD_KEYFRAMES",),
                     "sample_settings": ("SAMPLE_SETTINGS",), "scale_multival": ("MULTIVAL",),
                     "effect_multival": ("MULTIVAL",), "per_block": ("PER_BLOCK",)}}, ("MODEL",)),
    "ADE_StandardUniformContextOptions": ({
        "required": {"context_length": ("INT", {"default": 16, "min": 1}),
                     "context_stride": ("INT", {"default": 1, "min": 1}),
                     "context_overlap": ("INT", {"default": 4, "min": 0})},
        "optional": {"fuse_method": (_FUSE,), "use_on_equal_length": ("BOOLEAN", {"default": False}),
                     "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                     "guarantee_steps": ("INT", {"default": 1, "min": 0}),
                     "prev_context": ("CONTEXT_OPTIONS",), "view_opts": ("VIEW_OPTS",)}}, ("CONTEXT_OPTIONS",)),
}


def _photo_chain(p):
    """Your photo -> Face Analysis Loader -> Face Detect -> Face Align (FFHQ) -> e4e -> W+ code; ArcFace for the score."""
    p["photo"] = {"class_type": "LoadImage", "inputs": {"image": PHOTO}}
    p["fa"] = {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": "antelopev2", "provider": "auto",
                                                                 "det_size": 640}}
    p["detect"] = {"class_type": "FP_FaceDetect", "inputs": {"image": ["photo", 0], "face_analysis": ["fa", 0],
                   "select": "largest", "index": 0, "if_no_face": "error", "det_thresh": 0.5}}
    p["align"] = {"class_type": "FP_FaceAlign", "inputs": {"image": ["photo", 0], "faces": ["detect", 0],
                  "template": "ffhq", "size": 512, "padding": "reflect"}}
    p["show_face"] = {"class_type": "PreviewImage", "inputs": {"images": ["align", 0]}}
    p["e4e"] = {"class_type": "LoadE4EEncoder", "inputs": {"encoder_name": E4E}}
    p["encode"] = {"class_type": "WPlusEncode", "inputs": {"e4e": ["e4e", 0], "image": ["align", 0],
                   "average_batch": True, "batch_size": 4}}
    p["embed"] = {"class_type": "FP_FaceEmbed", "inputs": {"faces": ["detect", 0], "mode": "mean"}}
    p["score"] = {"class_type": "FP_FaceSimilarity", "inputs": {"image": ["decode", 0], "reference": ["embed", 0],
                  "face_analysis": ["fa", 0], "det_thresh": 0.5}}
    return p


def _from_photo(method, loader, strength, start_percent):
    """The photo chain, then ``loader`` = (node id, class_type, inputs) of the weights and the apply node."""
    key, class_type, inputs = loader
    p = _photo_chain(txt2img(CKPT, text=TEXT, negative=NEGATIVE, steps=2, cfg=7.5, prefix=f"{method}_from_photo"))
    p[key] = {"class_type": class_type, "inputs": inputs}
    return apply_wplus(p, method, [key, 0], ["encode", 0], strength, start_percent)


def wplus_from_photo():
    return _from_photo("wplus", ("adapter", "FP_LoadWPlusAdapter", {"adapter_name": ADAPTER}), 1.0, 0.2)


def pidiff_from_photo():
    return _from_photo("pidiff", ("pidiff", "FP_LoadPIDiff", {"pidiff_name": PIDIFF}), 0.4, 0.0)


def wplus_quickstart():
    p = txt2img(CKPT, text=TEXT, negative=NEGATIVE, steps=2, cfg=7.5, prefix="wplus_quickstart")
    p["photo"] = {"class_type": "LoadImage", "inputs": {"image": PHOTO}}
    p["face"] = {"class_type": "FP_WPlusAdapterFromPhoto", "inputs": {
        "model": ["ckpt", 0], "image": ["photo", 0], "preset": "balanced", "adapter_name": ADAPTER,
        "e4e_encoder": E4E, "model_pack": "antelopev2", "strength": 1.0, "start_percent": 0.2}}
    p["sample"]["inputs"]["model"] = ["face", 0]
    p["show_face"] = {"class_type": "PreviewImage", "inputs": {"images": ["face", 2]}}
    return p


def _adaface(p, clip):
    from textspace.make_workflows import ADA

    p["la"] = dict(ADA)
    p["inv"] = {"class_type": "AdaFaceInvert", "inputs": {"clip": clip, "adaface": ["la", 0], "trigger_word": "<ada>",
                                                          "id_cfg_scale": 1.0, "embeds_file": "mean_emb_keanureeves.pt"}}
    p["pos"]["inputs"]["clip"] = ["inv", 0]
    return p


def adaface_controlnet():
    p = _adaface(txt2img(CKPT, text="<ada> walking in a forest, photo", negative="flaws in the face, lowres, blurry",
                         prefix="adaface_controlnet"), ["ckpt", 1])
    p["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": tiny.file_name("controlnet_sd15")}}
    p["pose_photo"] = {"class_type": "LoadImage", "inputs": {"image": PHOTO}}
    p["edges"] = {"class_type": "Canny", "inputs": {"image": ["pose_photo", 0], "low_threshold": 0.4,
                                                    "high_threshold": 0.8}}
    p["show_hint"] = {"class_type": "PreviewImage", "inputs": {"images": ["edges", 0]}}
    p["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["edges", 0],
        "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}}
    p["sample"]["inputs"]["positive"] = ["apply", 0]
    p["sample"]["inputs"]["negative"] = ["apply", 1]
    return p


def adaface_animatediff():
    """16 frames through AnimateDiff-Evolved (Gen1 loader + uniform context), AdaFace in the prompt, an animated WEBP."""
    p = _adaface(txt2img(CKPT, text="<ada> walking in a forest, photo", negative="flaws in the face, lowres, blurry",
                         batch=16, prefix="adaface_animatediff"), ["ckpt", 1])
    p["context"] = {"class_type": "ADE_StandardUniformContextOptions", "inputs": {
        "context_length": 16, "context_stride": 1, "context_overlap": 4, "fuse_method": "pyramid",
        "use_on_equal_length": False, "start_percent": 0.0, "guarantee_steps": 1}}
    p["animatediff"] = {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {
        "model": ["ckpt", 0], "model_name": MOTION_MODEL, "beta_schedule": "autoselect",
        "context_options": ["context", 0]}}
    p["sample"]["inputs"]["model"] = ["animatediff", 0]
    p["save"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["decode", 0], "filename_prefix":
                 "adaface_animatediff", "fps": 8.0, "lossless": False, "quality": 85, "method": "default"}}
    return p


NOTES = {
    "wplus_quickstart": (
        "# Your face in one node (W+ Adapter)\n"
        "Put your photo in *Load Image*; **W+ Adapter from Photo** finds the face, aligns it, encodes it with e4e "
        "and patches the model. Pick a *preset*: **faithful** (closest likeness), **balanced** (the official "
        "setting), **editable** (the prompt keeps more control), or *custom* to set strength and start yourself.\n\n"
        + CHECKPOINT_LINE + "\n"
        "**Files**: `wplus_adapter.bin` in `models/wplus/`, `e4e_ffhq_encode.pt` in `models/e4e/`, the insightface "
        "pack `antelopev2` in `models/insightface/models/antelopev2/`.\n"
        "The preview shows the aligned face it used. Step by step: *wplus_from_photo*."),
    "wplus_from_photo": (
        "# W+ Adapter from a photo, step by step\n"
        "Photo → *Face Detect* → *Face Align* (FFHQ) → *W+ Encode* (e4e) → *Apply W+ Residual Cross-Attention* → "
        "image → *Face Similarity* (ID score shown on the node: higher = closer likeness).\n\n"
        + CHECKPOINT_LINE + "\n"
        "**Your photo** in *Load Image* (several photos of one person in a batch are averaged).\n"
        "**Files**: `wplus_adapter.bin` in `models/wplus/`, `e4e_ffhq_encode.pt` in `models/e4e/`, `antelopev2` in "
        "`models/insightface/models/`.\n"
        "Raise *strength* for a stronger likeness, raise *start_percent* to let the prompt set the layout. "
        "The same in one node: *wplus_quickstart*; from a saved W+ code: *wplus_basic*."),
    "pidiff_from_photo": (
        "# PIDiff from a photo\n"
        "Photo → *Face Detect* → *Face Align* (FFHQ) → *W+ Encode* (e4e) → *Apply PIDiff Style Cross-Attention* → "
        "image → *Face Similarity* (ID score on the node).\n\n"
        + CHECKPOINT_LINE + "\n"
        "**Files**: PIDiff weights (`.safetensors`) in `models/pidiff/`, `e4e_ffhq_encode.pt` in `models/e4e/`, "
        "`antelopev2` in `models/insightface/models/`.\n"
        "*strength* 0.4 is the paper's inference value: higher = stronger likeness. One-node version: "
        "*PIDiff from Photo*."),
    "adaface_controlnet": (
        "# AdaFace + ControlNet (Canny edges)\n"
        "The identity lives in the prompt (trigger word `<ada>`); the ControlNet takes its pose and outline from "
        "the edge map that core's *Canny* node makes from the second photo (the preview shows it).\n\n"
        + CHECKPOINT_LINE + "\n"
        "**Files**: an SD1.5 **Canny** ControlNet (e.g. `control_v11p_sd15_canny.pth`) in `models/controlnet/`; "
        "AdaFace checkpoint + Arc2Face encoder in `models/adaface/`; the face in *Load Face Embeds* "
        "(`models/face_embeds/`) or from a photo as in *adaface_from_photo*.\n"
        "For a pose ControlNet use a pose preprocessor instead of Canny."),
    "adaface_animatediff": (
        "# AdaFace + AnimateDiff (16 frames)\n"
        "**Needs the ComfyUI-AnimateDiff-Evolved pack** (install it with ComfyUI-Manager). Its *AnimateDiff Loader* "
        "adds the motion module to the MODEL and the *Context Options* node sets 16-frame windows; AdaFace works "
        "in the prompt only, so every frame gets the same identity.\n\n"
        + CHECKPOINT_LINE + "\n"
        "**Files**: a motion module (`mm_sd_v15_v2.ckpt`) in `models/animatediff_models/`; AdaFace checkpoint + "
        "Arc2Face encoder in `models/adaface/`.\n"
        "*batch_size* in *Empty Latent Image* is the number of frames; *Save Animated WEBP* writes the clip."),
}
BUILDERS = {"wplus_quickstart": wplus_quickstart, "wplus_from_photo": wplus_from_photo,
            "pidiff_from_photo": pidiff_from_photo, "adaface_controlnet": adaface_controlnet,
            "adaface_animatediff": adaface_animatediff}


def build_ui(name, host):
    """UI JSON of workflow ``name`` (harness.workflow.api_to_ui, with the AnimateDiff-Evolved specs for its nodes)."""
    from harness import workflow as wf

    def input_types(c):
        return ADE_SPECS[c][0] if c in ADE_SPECS and c not in host.node_classes else host.input_types(c)

    def output_types(c):
        return ADE_SPECS[c][1] if c in ADE_SPECS and c not in host.node_classes else host.node_classes[c].RETURN_TYPES

    return wf.api_to_ui(BUILDERS[name](), input_types, title=name, output_types=output_types, note=NOTES[name])


def write(host=None, out_dir=None):
    from harness import comfy_host
    from harness import workflow as wf

    if host is None:
        import tempfile

        host = comfy_host.boot(Path(tempfile.mkdtemp(prefix="fp_wf_")))
    out_dir = Path(out_dir) if out_dir else comfy_host.REPO / "workflows"
    written = []
    for name in BUILDERS:
        wf.save(build_ui(name, host), out_dir / f"{name}.json")
        written.append(out_dir / f"{name}.json")
        print("wrote", written[-1])
    return written


if __name__ == "__main__":
    write()
