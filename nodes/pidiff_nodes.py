"""PIDiff nodes: load style cross-attention (SCA) weights, apply SCA to a MODEL."""
from ._common import category
from ..models_loader import paths


class FP_LoadPIDiff:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pidiff_name": (paths.list_files("pidiff"), {
            "tooltip": "PIDiff weights in models/pidiff: the pack's PIDiff safetensors (mapping.* + sca.<n>.*), or "
                       "an official W+ Adapter wplus_adapter.bin used as PIDiff weights."})}}

    RETURN_TYPES = ("PIDIFF",)
    RETURN_NAMES = ("pidiff",)
    FUNCTION = "load"
    CATEGORY = category("pidiff")
    DESCRIPTION = ("Loads PIDiff weights: the mapping network (W+ code to 4 visual tokens) and the per-layer "
                   "style cross-attention projections. Format documented in "
                   "models_loader/methods/pidiff/weights.py; official W+ Adapter weights load too.")

    def load(self, pidiff_name):
        from ..models_loader.methods.registry import method

        return (method("pidiff_sca").load(paths.resolve("pidiff", pidiff_name)),)


class FP_ApplyStyleCrossAttention:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SD1.5 model to patch (a patched clone is returned)."}),
                "pidiff": ("PIDIFF", {"tooltip": "Weights from Load PIDiff."}),
                "wplus": ("WPLUS", {"tooltip": "W+ code(s) [B,18,512] of the identity: one for the batch or one per image."}),
                "strength": ("FLOAT", {"default": 0.4, "min": -2.0, "max": 5.0, "step": 0.05, "tooltip":
                    "How strongly the face is imposed. Higher = stronger likeness but less freedom for the prompt; lower "
                    "= the prompt wins. 0 = model unchanged; the paper uses 0.4 for generation (1 in training)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Fraction of the sampling steps that run without the face: steps up to "
                                                       "int(start x steps) stay plain (0 = from the first step, as the paper). Higher = "
                                                       "the prompt sets layout and pose first."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Fraction of the sampling steps after which the face stops "
                                                     "being added (1 = until the last step). Lower = the "
                                                     "detail-refining steps run without it."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Optional region mask: the face acts only where the mask is white, so "
                                                  "several Apply nodes with different codes and masks place several people."}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"
    CATEGORY = category("pidiff")
    DESCRIPTION = ("Puts the face of a W+ code into the model (PIDiff): after every text cross-attention, an extra "
                   "style cross-attention looks at 4 visual tokens made from the code and adds its result, "
                   "weighted by strength. Same engine as the W+ Adapter (chains with other attention patches).")

    def apply(self, model, pidiff, wplus, strength, start_percent, end_percent, attn_mask=None):
        from ..models_loader.methods.registry import method

        return (method("pidiff_sca").build(model, None, pidiff, wplus, strength, start_percent, end_percent,
                                           attn_mask).model,)


NODE_CLASS_MAPPINGS = {
    "FP_LoadPIDiff": FP_LoadPIDiff,
    "FP_ApplyStyleCrossAttention": FP_ApplyStyleCrossAttention,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FP_LoadPIDiff": "Load PIDiff",
    "FP_ApplyStyleCrossAttention": "Apply PIDiff Style Cross-Attention",
}
