"""W+ Adapter nodes: load the adapter, apply its residual cross-attention (RCA) to a MODEL."""
from ._common import category
from ..models_loader import paths

_STRENGTH_TIP = ("How strongly the face is imposed. Higher = stronger likeness but less freedom for the prompt "
                 "(pose, style); lower = the prompt wins. 0 = model unchanged; the official demo uses 1.0, its "
                 "Stage I notebook 0.8.")


class FP_LoadWPlusAdapter:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (paths.list_files("wplus"), {
            "tooltip": "W+ Adapter weights in models/wplus: the official wplus_adapter.bin (w_proj + wplus_adapter "
                       "dicts) or its safetensors form."})}}

    RETURN_TYPES = ("WPLUS_ADAPTER",)
    RETURN_NAMES = ("wplus_adapter",)
    FUNCTION = "load"
    CATEGORY = category("wplus")
    DESCRIPTION = ("Loads W+ Adapter weights (csxmli2016/w-plus-adapter, SD1.5): the projection that "
                   "turns a W+ code (18x512) into 4 face tokens and the per-layer residual cross-attention projections. Files are "
                   "loaded without executing pickled code.")

    def load(self, adapter_name):
        from ..models_loader.methods.registry import method

        return (method("wplus_rca").load(paths.resolve("wplus", adapter_name)),)


class ApplyResidualCrossAttention:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "SD1.5 model to patch (a patched clone is returned)."}),
                "wplus_adapter": ("WPLUS_ADAPTER", {"tooltip": "Weights from Load W+ Adapter."}),
                "wplus": ("WPLUS", {"tooltip": "W+ code(s) [B,18,512]: one code for the whole batch, or one per "
                                               "image of the batch."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 5.0, "step": 0.05, "tooltip": _STRENGTH_TIP}),
                "start_percent": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "Fraction of the sampling steps that run without the face, so the layout forms first: steps "
                    "up to int(start x steps) stay plain (0.2 = the official W+ Adapter rule; 0 = face from the "
                    "first step). Higher = the prompt sets layout and pose first, so the image follows the prompt more "
                    "and the face a bit less."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Fraction of the sampling steps after which the face stops "
                                                     "being added (1 = until the last step). Lower = the last, "
                                                     "detail-refining steps run without it (softer likeness, cleaner details)."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Optional region mask: the W+ residual is multiplied by it, so "
                                                  "several Apply nodes with different W+ codes and masks place "
                                                  "several identities."}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"
    CATEGORY = category("wplus")
    DESCRIPTION = ("Puts the face of a W+ code into the model (W+ Adapter, CVPR 2024): every cross-attention layer also "
                   "looks at 4 face tokens made from the code and adds what it finds, weighted by strength; the "
                   "negative prompt gets the tokens of an empty code, as in the official code. Chains with other "
                   "attention patches (IPAdapter, PIDiff, another identity) instead of replacing them.")

    def apply(self, model, wplus_adapter, wplus, strength, start_percent, end_percent, attn_mask=None):
        from ..models_loader.methods.registry import method

        return (method("wplus_rca").build(model, None, wplus_adapter, wplus, strength, start_percent, end_percent,
                                          attn_mask).model,)


NODE_CLASS_MAPPINGS = {
    "FP_LoadWPlusAdapter": FP_LoadWPlusAdapter,
    "ApplyResidualCrossAttention": ApplyResidualCrossAttention,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FP_LoadWPlusAdapter": "Load W+ Adapter",
    "ApplyResidualCrossAttention": "Apply W+ Residual Cross-Attention",
}
