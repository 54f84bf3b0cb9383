"""StyleGAN2-FFHQ W+ space shared by the W+ Adapter and PIDiff: the e4e encoder (``e4e.py``),
W+ code helpers (``codes.py``), latent edits (``edits.py``) and the residual / style
cross-attention patches that consume W+ codes."""
