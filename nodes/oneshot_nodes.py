"""One-node apply with presets: a face photo in, the patched MODEL / CLIP out (detect -> align -> encode ->
apply in one node, as IPAdapter's Unified Loader FaceID or PuLID's ``method`` preset do).

Each node calls the same functions as the fine-grained nodes with those nodes' defaults (largest face per
photo, FFHQ crop 512 with reflect padding, several photos averaged into one identity), so its result equals
the hand-wired chain with the same settings; the fine-grained nodes stay for everything else.
"""
from typing import NamedTuple

from ._common import FACE_ANALYSIS_TYPES, category
from ._textspace import build_tokens, trigger_inputs
from .face_nodes import load_pack, pack_choices
from .adaface_nodes import NO_CHECKPOINT, adaface_files
from ..models_loader import paths

CAT = category("apply")
CUSTOM = "custom"
# preset -> (strength, start_percent); "balanced" is each method's official inference setting
WPLUS_PRESETS = {"faithful": (1.0, 0.0), "balanced": (1.0, 0.2), "editable": (0.7, 0.4)}
PIDIFF_PRESETS = {"faithful": (0.6, 0.0), "balanced": (0.4, 0.0), "editable": (0.25, 0.2)}
ALIGN = {"name": "ffhq", "size": 512, "padding": "reflect"}  # FP_FaceAlign's defaults


class PhotoMethod(NamedTuple):
    """What the W+-code photo nodes (W+ Adapter, PIDiff) differ in."""
    method: str         # registry name
    folder: str         # models/ folder of its weights
    weights_input: str  # name of the weights-file input
    weights_tip: str
    presets: dict       # preset -> (strength, start_percent)
    official: str       # what "balanced" stands for (in the preset tooltip)


WPLUS = PhotoMethod("wplus_rca", "wplus", "adapter_name", "W+ Adapter weights in models/wplus (official "
                    "wplus_adapter.bin).", WPLUS_PRESETS, "balanced = the official demo")
PIDIFF = PhotoMethod("pidiff_sca", "pidiff", "pidiff_name", "PIDiff weights in models/pidiff (.safetensors).",
                     PIDIFF_PRESETS, "balanced = the paper's inference setting")


def _files_or(folder, missing):
    try:
        return paths.list_files(folder) or [missing]
    except Exception:
        return [missing]


def _preset_tip(presets, official):
    parts = [f"{name}: strength {s}, start {p}" for name, (s, p) in presets.items()]
    return ("How strongly the photo's face is imposed. " + "; ".join(parts) + f" ({official}). faithful = closest "
            "likeness (identity from the first step), editable = the prompt keeps more control. 'custom' uses the "
            "strength and start_percent below.")


def resolve_preset(presets, preset, strength, start_percent):
    if preset == CUSTOM:
        return strength, start_percent
    if preset not in presets:
        raise ValueError(f"preset must be one of {list(presets) + [CUSTOM]}, got {preset!r}")
    return presets[preset]


def _photo_inputs():
    return {
        "image": ("IMAGE", {"tooltip": "Your face photo(s): any size, the largest face of each is used; several "
                                       "photos of one person are averaged into one identity."}),
    }


def _face_analysis(model_pack, face_analysis):
    return face_analysis if face_analysis is not None else load_pack(model_pack, "auto", 640)


def _faces(image, model_pack, face_analysis, embed):
    from ..models_loader.face import detect

    return detect.detect_faces(image, _face_analysis(model_pack, face_analysis), "largest", 0, "error",
                               det_thresh=0.5, embed=embed)


def photo_to_wplus(image, encoder_name, model_pack, face_analysis=None):
    """Face photo(s) -> (W+ code [1,18,512] averaged over the photos, the aligned FFHQ crops)."""
    from ..models_loader.face import align
    from ..models_loader.methods.wplus import e4e

    faces = _faces(image, model_pack, face_analysis, embed=False)
    aligned, _ = align.align_faces(image, faces, **ALIGN)
    encoder = e4e.load_e4e(paths.resolve("e4e", encoder_name))
    return e4e.encode_images(encoder, aligned, average_batch=True), aligned


class _WPlusFromPhoto:
    """Shared body of the two W+-code methods (W+ Adapter, PIDiff): a subclass sets only ``SPEC``."""
    SPEC: PhotoMethod = None
    RETURN_TYPES = ("MODEL", "WPLUS", "IMAGE")
    RETURN_NAMES = ("model", "wplus", "aligned_faces")
    FUNCTION = "apply"
    CATEGORY = CAT

    @classmethod
    def INPUT_TYPES(cls):
        spec = cls.SPEC
        packs = pack_choices()
        strength, start = spec.presets["balanced"]
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SD1.5 model to patch (a patched clone is returned)."}),
                **_photo_inputs(),
                "preset": (list(spec.presets) + [CUSTOM], {"default": "balanced",
                                                           "tooltip": _preset_tip(spec.presets, spec.official)}),
                spec.weights_input: (_files_or(spec.folder, "(none installed: put the weights in "
                                                            f"models/{spec.folder})"), {"tooltip": spec.weights_tip}),
                "e4e_encoder": (_files_or("e4e", "(none installed: put e4e_ffhq_encode.pt in models/e4e)"), {
                    "tooltip": "e4e encoder in models/e4e (official e4e_ffhq_encode.pt) that turns the aligned face "
                               "into a W+ code."}),
                "model_pack": (packs, {"default": packs[0], "tooltip": "insightface pack in models/insightface/models/ "
                                       "used to find the face (antelopev2 or buffalo_l)."}),
                "strength": ("FLOAT", {"default": strength, "min": -2.0, "max": 5.0, "step": 0.05, "tooltip":
                             "Only with preset 'custom': higher = stronger likeness, lower = more freedom for the "
                             "prompt; 0 = model unchanged."}),
                "start_percent": ("FLOAT", {"default": start, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                  "Only with preset 'custom': fraction of the sampling steps that run without the face. "
                                  "Higher = the prompt sets layout and pose first, the face a bit less."}),
            },
            "optional": {
                "face_analysis": (FACE_ANALYSIS_TYPES, {"tooltip": "Optional: a face analysis from Face Analysis "
                                  "Loader or another pack (then model_pack is not used)."}),
            },
        }

    def apply(self, model, image, preset, e4e_encoder, model_pack, strength, start_percent, face_analysis=None,
              **weights):
        """``weights``: the one weights-file input, named ``SPEC.weights_input`` (adapter_name / pidiff_name)."""
        from ..models_loader.methods.registry import method

        spec = self.SPEC
        if set(weights) != {spec.weights_input}:
            raise TypeError(f"{type(self).__name__}.apply takes the weights file as {spec.weights_input}=..., "
                            f"got {sorted(weights)}")
        strength, start_percent = resolve_preset(spec.presets, preset, strength, start_percent)
        wplus, aligned = photo_to_wplus(image, e4e_encoder, model_pack, face_analysis)
        impl = method(spec.method)
        asset = impl.load(paths.resolve(spec.folder, weights[spec.weights_input]))
        patched = impl.build(model, None, asset, wplus, strength, start_percent, 1.0, None).model
        return (patched, wplus, aligned)


class FP_WPlusAdapterFromPhoto(_WPlusFromPhoto):
    SPEC = WPLUS
    DESCRIPTION = ("W+ Adapter in one node: finds the face in your photo, aligns it (FFHQ), encodes it with e4e and "
                   "applies the adapter's residual cross-attention to the model. Presets set strength and start; "
                   "same result as Face Detect -> Face Align -> W+ Encode -> Apply W+ Residual Cross-Attention.")


class FP_PIDiffFromPhoto(_WPlusFromPhoto):
    SPEC = PIDIFF
    DESCRIPTION = ("PIDiff in one node: finds the face in your photo, aligns it (FFHQ), encodes it with e4e and "
                   "applies PIDiff's style cross-attention to the model. Presets set strength and start; same "
                   "result as Face Detect -> Face Align -> W+ Encode -> Apply PIDiff Style Cross-Attention.")


class FP_AdaFaceFromPhoto:
    RETURN_TYPES = ("CLIP", "FACE_EMBEDS")
    RETURN_NAMES = ("clip", "face_embeds")
    FUNCTION = "apply"
    CATEGORY = CAT
    DESCRIPTION = ("AdaFace in one node: finds the face in your photo(s), takes their mean ArcFace embedding and maps "
                   "the trigger word in your prompt to AdaFace identity tokens (text space only, so it composes with "
                   "ControlNet and AnimateDiff). Same result as Face Detect -> Face Embed (mean) -> Load AdaFace -> "
                   "AdaFace Invert. face_embeds goes to Face Similarity to score the result.")

    @classmethod
    def INPUT_TYPES(cls):
        packs = pack_choices()
        return {
            "required": {
                **trigger_inputs("SD1.5 text encoder (from Load Checkpoint) to teach the trigger word.",
                                 _photo_inputs(), "<ada>",
                                 "Word to type in the positive prompt (e.g. '<ada> in a forest'); it becomes your face."),
                "adaface_file": (adaface_files("adaface") or [NO_CHECKPOINT], {"tooltip": "AdaFace checkpoint in "
                                 "models/adaface (official .pt/.ckpt or pack .safetensors)."}),
                "arc2face_encoder": (["(none)"] + adaface_files("arc2face"), {"tooltip": "Arc2Face text encoder "
                                     "in models/adaface; '(none)' if the AdaFace file contains it."}),
                "model_pack": (packs, {"default": packs[0], "tooltip": "insightface pack in models/insightface/models/ "
                                       "(antelopev2 gives the embeddings AdaFace was trained on)."}),
                "id_cfg_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip":
                                 "1 = the official Arc2Face setting. Higher pushes the identity tokens further from "
                                 "the neutral ones (stronger likeness, less prompt freedom)."}),
            },
            "optional": {
                "face_analysis": (FACE_ANALYSIS_TYPES, {"tooltip": "Optional: a face analysis with a recognition "
                                  "model (then model_pack is not used)."}),
            },
        }

    def apply(self, clip, image, trigger_word, adaface_file, arc2face_encoder, model_pack, id_cfg_scale,
              face_analysis=None):
        from ..models_loader import textspace
        from ..models_loader.face import embed
        from ..models_loader.methods.registry import method

        textspace.check_trigger(trigger_word)
        if adaface_file == NO_CHECKPOINT:
            raise FileNotFoundError(f"AdaFace from Photo: no AdaFace checkpoint found; put one into "
                                    f"{paths.model_dir('adaface')}")
        faces = embed.as_face_embeds(embed.face_embeds(_faces(image, model_pack, face_analysis, embed=True), "mean"),
                                     "AdaFace from Photo")
        arc = None if arc2face_encoder == "(none)" else paths.resolve("adaface", arc2face_encoder)
        model = method("adaface").load(paths.resolve("adaface", adaface_file), arc, layer_weights="checkpoint")
        return (build_tokens("adaface", clip, model, trigger_word, faces, id_cfg_scale)[0], faces)


NODE_CLASS_MAPPINGS = {
    "FP_WPlusAdapterFromPhoto": FP_WPlusAdapterFromPhoto,
    "FP_PIDiffFromPhoto": FP_PIDiffFromPhoto,
    "FP_AdaFaceFromPhoto": FP_AdaFaceFromPhoto,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FP_WPlusAdapterFromPhoto": "W+ Adapter from Photo",
    "FP_PIDiffFromPhoto": "PIDiff from Photo",
    "FP_AdaFaceFromPhoto": "AdaFace from Photo",
}
