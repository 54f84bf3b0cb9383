"""CLIP vision loader for any ViT size (PersonaMagic's bypass needs a ViT-B/32)."""
from ._common import category
from ..models_loader import clip_vision, paths


class FP_LoadCLIPVisionAnySize:
    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {
            "clip_name": (folder_paths.get_filename_list("clip_vision"), {
                "tooltip": "A CLIP vision model in models/clip_vision: HF CLIPVisionModelWithProjection or full "
                           "CLIPModel weights (e.g. openai/clip-vit-base-patch32 model.safetensors), or OpenAI "
                           "'visual.*' weights. Its size is read from the file."}),
            "activation": (list(clip_vision.ACTIVATIONS), {
                "default": "quick_gelu",
                "tooltip": "MLP activation, which the weights do not record: quick_gelu for OpenAI CLIP "
                           "(ViT-B/32, B/16, L/14), gelu for LAION/open_clip models."}),
            "precision": (list(clip_vision.PRECISIONS), {
                "default": "fp32",
                "tooltip": "fp32 keeps the image embedding exact (PersonaMagic computes its bypass in fp32); "
                           "auto uses ComfyUI's text-encoder dtype (fp16 on most GPUs)."}),
        }}

    RETURN_TYPES = ("CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"
    CATEGORY = category("loaders")
    DESCRIPTION = ("Loads a CLIP vision model of any ViT size (ComfyUI's Load CLIP Vision only knows the 24/32/48-"
                   "layer ones). The config (width, depth, patch and image size, projection) is read from the "
                   "weights; the result is a normal CLIP_VISION for CLIP Vision Encode. PersonaMagic's image bypass "
                   "uses OpenAI CLIP ViT-B/32 (512-d image_embeds).")

    def load(self, clip_name, activation="quick_gelu", precision="fp32"):
        return (clip_vision.load(paths.resolve("clip_vision", clip_name), activation, precision),)


NODE_CLASS_MAPPINGS = {"FP_LoadCLIPVisionAnySize": FP_LoadCLIPVisionAnySize}
NODE_DISPLAY_NAME_MAPPINGS = {"FP_LoadCLIPVisionAnySize": "Load CLIP Vision (any ViT size)"}
