"""Diagnostics: a text report of versions, providers and model files (for bug reports)."""
from ._common import category
from ..models_loader import diagnostics


class FP_Diagnostics:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    @classmethod
    def IS_CHANGED(cls):
        return float("nan")  # re-check every run: files and installs change between runs

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    FUNCTION = "execute"
    OUTPUT_NODE = True
    CATEGORY = category("utils")
    DESCRIPTION = ("Reports what the pack sees: library versions (a warning when onnxruntime and onnxruntime-gpu are "
                   "both installed), torch device, onnxruntime providers, the insightface packs found, and the files "
                   "in each model folder. Paste it into bug reports; run it when a model is missing from a list.")

    def execute(self):
        text = diagnostics.report()
        return {"ui": {"text": [text]}, "result": (text,)}


NODE_CLASS_MAPPINGS = {"FP_Diagnostics": FP_Diagnostics}
NODE_DISPLAY_NAME_MAPPINGS = {"FP_Diagnostics": "Face Personalization Diagnostics"}
