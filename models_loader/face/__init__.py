"""The one face module every method uses: load a detector/recogniser, detect, embed, align, mask.

Submodules: ``types`` (the FACES bundle), ``analysis`` (insightface loader, provider choice, folder
checks), ``offline`` (mediapipe detector with wheel-bundled weights), ``detect``, ``embed``,
``align`` (kornia FFHQ / ArcFace alignment), ``mask``. Heavy imports happen inside functions.
"""
