"""PersonaMagic (xzhe-Vision/PersonaMagic, AAAI 2025): stage-regulated textual inversion.

- :mod:`.mapper`: the timestep mapper (official parameter names), fp32.
- :mod:`.checkpoint`: official ``mapper-steps-N.pt`` (torch ``weights_only`` + an inert stand-in) and the pack's safetensors.
- :mod:`.staged`: per-timestep contexts and the MODEL ``attn2_patch`` (K from the text context,
  V from the bypass context).
"""
from .checkpoint import PersonaMagicBundle, load_mapper, save_mapper  # noqa: F401
from .mapper import PersonaMagicMapper, time_features  # noqa: F401
from .staged import PersonaMagicInputError, StageRegulatedPatch, StagedPrompt, apply_stage_regulated_ti  # noqa: F401
