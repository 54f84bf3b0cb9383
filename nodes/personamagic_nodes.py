"""PersonaMagic nodes: load a mapper, apply stage-regulated textual inversion to MODEL + prompt."""
import os

from ._common import category
from ..models_loader import files, paths
from ..models_loader.methods.personamagic import checkpoint as pm_ckpt
from ..models_loader.methods.personamagic import reference as pm_reference
from ..models_loader.methods.registry import method

CAT = category("personamagic")


class FP_LoadPersonaMagic:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mapper_name": (paths.list_files("personamagic"), {
                "tooltip": "Mapper in models/personamagic: an official mapper-steps-N.pt (loaded with torch's weights_only "
                           "loader and an inert stand-in for its pickled class: no pickled code runs) or the pack's .safetensors mapper."}),
        }}

    RETURN_TYPES = ("PERSONAMAGIC_MAPPER",)
    RETURN_NAMES = ("mapper",)
    FUNCTION = "load"
    CATEGORY = CAT
    DESCRIPTION = ("Loads a PersonaMagic timestep mapper (4 identity tokens per denoising timestep plus the "
                   "image bypass head). Reads the official mapper-steps-N.pt without executing pickled code "
                   "(only models.positional_encoding.TimePositionalEncoding is mapped, as inert data) and the "
                   "pack's safetensors format. The learned_embeds-steps-N.bin file is not needed.")

    def load(self, mapper_name):
        return (method("personamagic").load(paths.resolve("personamagic", mapper_name)),)


class StageRegulatedTI:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.x model to sample with; a patched clone is returned "
                                               "(use it in the KSampler)."}),
                "clip": ("CLIP", {"tooltip": "The text encoder of the same checkpoint (768-d for SD1.x)."}),
                "mapper": ("PERSONAMAGIC_MAPPER", {"tooltip": "From Load PersonaMagic Mapper."}),
                "text": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                    "default": "a photo of <persona> reading a book",
                                    "tooltip": "Positive prompt containing the trigger word where the identity "
                                               "goes (the official prompts use it in place of 'face'). Weights "
                                               "like (<persona>:1.2) work."}),
                "trigger": ("STRING", {"default": "<persona>",
                                       "tooltip": "Word in the prompt replaced by the 4 PersonaMagic tokens "
                                                  "(and by the class word at high noise)."}),
            },
            "optional": {
                "clip_vision_output": ("CLIP_VISION_OUTPUT", {
                    "tooltip": "PersonaMagic Reference Encode (official preprocessing) of the reference photo with "
                               "a CLIP ViT-B/32; its 512-d image_embeds feed the V-only bypass. Core CLIP Vision "
                               "Encode output is accepted too. Leave empty to disable the bypass."}),
                "class_word": ("STRING", {"default": "",
                                          "tooltip": "Class word used for t > 800 and for the token "
                                                     "normalisation; empty = the mapper's (official: 'face')."}),
                "t_high": ("FLOAT", {"default": 800.0, "min": 0.0, "max": 1000.0, "step": 1.0,
                                     "tooltip": "Noise level (0-1000) above which the plain class word is used instead of "
                                               "the identity (official 800). Higher = the identity acts from earlier, rougher "
                                               "steps: stronger likeness, less room for the prompt's layout."}),
                "t_low": ("FLOAT", {"default": 400.0, "min": 0.0, "max": 1000.0, "step": 1.0,
                                    "tooltip": "Noise level (0-1000) below which the last identity tokens are "
                                               "kept for the remaining detail steps (official 400). Higher = the tokens "
                                               "stop changing earlier."}),
            },
        }

    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "positive")
    FUNCTION = "apply"
    CATEGORY = CAT
    DESCRIPTION = ("PersonaMagic stage-regulated textual inversion. The positive prompt changes with the "
                   "sampler's timestep, for any sampler and scheduler: above t_high the trigger is the class word "
                   "('face'), between t_low and t_high it is the mapper's 4 tokens for that timestep, below t_low "
                   "the last tokens are reused. With a CLIP ViT-B/32 image embedding the cross-attention values "
                   "use the bypass context (keys keep the plain text). Connect both outputs: the MODEL patch swaps "
                   "the context of this CONDITIONING only (negative/other prompts are untouched).")

    def apply(self, model, clip, mapper, text, trigger, clip_vision_output=None, class_word="", t_high=800.0,
              t_low=400.0):
        patched = method("personamagic").build(model, clip, mapper, text, trigger, clip_vision_output, class_word,
                                               t_high, t_low)
        return (patched.model, patched.positive)


class FP_PersonaMagicReferenceEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "OpenAI CLIP ViT-B/32 (Load CLIP Vision (any ViT size))."}),
            "image": ("IMAGE", {"tooltip": "The reference photo of the person (several images: one embedding each; "
                                           "StageRegulatedTI averages them)."}),
        }}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    RETURN_NAMES = ("clip_vision_output",)
    FUNCTION = "encode"
    CATEGORY = CAT
    DESCRIPTION = ("CLIP image embedding of the reference photo for PersonaMagic's bypass, preprocessed exactly as the "
                   "official inference (PIL bicubic to 512, then bicubic to 224 with aligned corners and no "
                   "antialiasing). Core CLIP Vision Encode resizes differently, which moves the embedding.")

    def encode(self, clip_vision, image):
        return (pm_reference.encode_reference(clip_vision, image),)


class FP_SavePersonaMagicMapper:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mapper": ("PERSONAMAGIC_MAPPER", {"tooltip": "A loaded mapper (e.g. an official .pt)."}),
            "filename": ("STRING", {"default": "personamagic_mapper",
                                    "tooltip": "File name (without extension) written to models/personamagic "
                                               "as .safetensors (a sub-path there is allowed)."}),
        }, "optional": {
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file; otherwise a numbered "
                                      "name (_00001, ...) is used."}),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    FUNCTION = "save"
    CATEGORY = CAT
    OUTPUT_NODE = True
    DESCRIPTION = ("Saves a PersonaMagic mapper in the pack's safetensors format (official state-dict keys, "
                   "metadata: token count, width, target norm, class word) so it loads without any pickle.")

    def save(self, mapper, filename, overwrite=False):
        path = files.write_file("personamagic", filename, lambda p: pm_ckpt.save_mapper(mapper, p), overwrite,
                                ext=".safetensors", what="Save PersonaMagic Mapper")
        return files.saved(path)


NODE_CLASS_MAPPINGS = {
    "FP_LoadPersonaMagic": FP_LoadPersonaMagic,
    "StageRegulatedTI": StageRegulatedTI,
    "FP_SavePersonaMagicMapper": FP_SavePersonaMagicMapper,
    "FP_PersonaMagicReferenceEncode": FP_PersonaMagicReferenceEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FP_LoadPersonaMagic": "Load PersonaMagic Mapper",
    "StageRegulatedTI": "Stage-Regulated TI (PersonaMagic)",
    "FP_SavePersonaMagicMapper": "Save PersonaMagic Mapper (safetensors)",
    "FP_PersonaMagicReferenceEncode": "PersonaMagic Reference Encode (official preprocessing)",
}
