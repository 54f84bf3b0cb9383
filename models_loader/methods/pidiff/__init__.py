"""PIDiff (style cross-attention on W+ tokens): weights file format and loader.

The SCA computation is the W+ Adapter's residual cross-attention (one implementation:
:mod:`..wplus.attention`); PIDiff only brings its own weights and the default lambda 0.4.
"""
from .weights import FORMAT, load_pidiff, save_pidiff  # noqa: F401
