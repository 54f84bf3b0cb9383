"""Cross Initialization (Pang et al., CVPR 2024; lyuPang/CrossInitialization).

:mod:`.core`: the official initialisation on a ComfyUI CLIP, loading official ``learned_embeds.bin`` and
the pack's own files, and saving in ComfyUI's ``embedding:`` format.
"""
