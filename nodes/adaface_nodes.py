"""AdaFace: ArcFace embedding -> identity tokens inserted into the prompt under a trigger word."""
from ._common import category
from ._textspace import TriggerNode, build_tokens, trigger_inputs
from ..models_loader import paths, textspace
from ..models_loader.face import embed as face_embed
from ..models_loader.methods.adaface import load as ada_load
from ..models_loader.methods.registry import method

ADAFACE = "ADAFACE"
_NONE = "(none)"
NO_CHECKPOINT = "(none installed: put an AdaFace .pt/.ckpt/.safetensors in models/adaface)"


def _files(folder):
    try:
        return paths.list_files(folder)
    except Exception:
        return []


def adaface_files(kind):
    """Files of models/adaface of one kind: "adaface" checkpoints or "arc2face" text encoders (told apart by
    their layout, :func:`ada_load.file_kind`)."""
    out = []
    for name in _files("adaface"):
        try:
            if ada_load.file_kind(paths.resolve("adaface", name)) == kind:
                out.append(name)
        except OSError:
            continue
    return out


class FP_LoadAdaFace:
    DESCRIPTION = ("Loads an AdaFace prompt inverter (official adaface .pt/.ckpt, read with torch's weights_only loader, its "
                   "pickled classes as inert stand-ins: no checkpoint code runs, or the pack's .safetensors) and the Arc2Face text encoder (HF "
                   "CLIPTextModel safetensors) from models/adaface. In a joint checkpoint the Arc2Face generator is used.")
    CATEGORY = category("adaface")
    RETURN_TYPES = (ADAFACE,)
    RETURN_NAMES = ("adaface",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls):
        files = adaface_files("adaface") or [NO_CHECKPOINT]
        return {
            "required": {
                "adaface_file": (files, {"tooltip": "AdaFace checkpoint in models/adaface (official .pt/.ckpt or pack "
                                 ".safetensors). Arc2Face text encoders are listed in the next input, not here."}),
                "arc2face_encoder": ([_NONE] + adaface_files("arc2face"), {"tooltip": "Arc2Face text encoder (HF "
                                     "CLIPTextModel safetensors, e.g. arc2face/encoder/model.safetensors) in models/adaface; "
                                     "'(none)' if the AdaFace file contains it."}),
                "layer_weights": (list(ada_load.LAYER_WEIGHT_MODES), {"default": "checkpoint", "tooltip":
                                  "Weights of the last 3 inverter layers: 'checkpoint' = the learned values stored in the "
                                  "file (the official loader); 'reset_1_2_4' = [1, 2, 4], only for old single-encoder "
                                  "checkpoints, as the official code patches those."}),
            },
        }

    def execute(self, adaface_file, arc2face_encoder, layer_weights):
        if adaface_file == NO_CHECKPOINT:
            raise FileNotFoundError(f"Load AdaFace: no AdaFace checkpoint found; put one into {paths.model_dir('adaface')}")
        path = paths.resolve("adaface", adaface_file)
        arc = None if arc2face_encoder == _NONE else paths.resolve("adaface", arc2face_encoder)
        return (method("adaface").load(path, arc, layer_weights=layer_weights),)


class AdaFaceInvert(TriggerNode):
    DESCRIPTION = ("AdaFace: turns ArcFace face embeddings into identity tokens in the text space (Arc2Face encoder + "
                   "prompt inverter) and maps a trigger word in the prompt to them as inline tokens (no vocabulary or "
                   "UNet change, so it composes with ControlNet and AnimateDiff). Put the trigger word only in the "
                   "positive prompt; the negative prompt stays plain text, as in the official pipeline. SD1.5 text space (768).")
    CATEGORY = category("adaface")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **trigger_inputs("SD1.x text encoder (768 wide) to patch with the trigger word.",
                                 {"adaface": (ADAFACE, {"tooltip": "Model from Load AdaFace."})}, "<ada>",
                                 "Word to type in the positive prompt (e.g. '<ada> in a forest'); replaced by the N "
                                 "identity tokens."),
                "id_cfg_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip": "How far "
                                 "the identity tokens are pushed away from a neutral face (the official blend with the "
                                 "padding tokens). Higher = stronger, more exaggerated likeness; 1 = Arc2Face default "
                                 "(no push); the ConsistentID branch uses 6."}),
            },
            "optional": {
                "face_embeds": ("FACE_EMBEDS", {"tooltip": "ArcFace (antelopev2) embeddings [N, 512]; several faces are "
                                "averaged (normalised, mean, renormalised), as the official avg_at_stage='id_emb'."}),
                "embeds_file": ([_NONE] + _files("face_embeds"), {"tooltip": "Or a saved embedding (.pt tensor [N, 512], "
                                "e.g. AdaFace's mean_emb_*.pt) from models/face_embeds; used when face_embeds is not connected."}),
            },
        }

    def execute(self, clip, adaface, trigger_word, id_cfg_scale, face_embeds=None, embeds_file=_NONE):
        textspace.check_trigger(trigger_word)
        if face_embeds is not None:
            faces = face_embed.as_face_embeds(face_embeds, "face_embeds input")
        elif embeds_file and embeds_file != _NONE:
            path = paths.resolve("face_embeds", embeds_file)
            faces = face_embed.load_embeds(path)
        else:
            raise ValueError("AdaFaceInvert needs face embeddings: connect face_embeds or choose an embeds_file "
                             "(models/face_embeds)")
        return build_tokens("adaface", clip, adaface, trigger_word, faces, id_cfg_scale)


NODE_CLASS_MAPPINGS = {"FP_LoadAdaFace": FP_LoadAdaFace, "AdaFaceInvert": AdaFaceInvert}
NODE_DISPLAY_NAME_MAPPINGS = {"FP_LoadAdaFace": "Load AdaFace", "AdaFaceInvert": "AdaFace Invert (face -> prompt tokens)"}
