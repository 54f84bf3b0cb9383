"""ComfyUI face personalization pack.

Five published identity methods as nodes that patch ComfyUI's own MODEL / CLIP objects:
W+ Adapter, Cross Initialization, PIDiff, PersonaMagic and AdaFace, plus a shared face
pipeline and (later) background training jobs.

Importing this module must stay cheap: heavy libraries (insightface, onnxruntime, diffusers,
mediapipe) are imported inside the functions that need them.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
