"""The method registry: the pack's five identity methods, what kind of patch each is, how to load its asset
and how to build its patch from the loaded asset. Nodes, tests (``tests/contracts``) and benches use it.

Kinds:

* ``attention_patch``: an entry on the shared ``attn2`` engine of the MODEL (W+ Adapter RCA, PIDiff SCA);
* ``text_tokens``: inline identity tokens under a trigger word on the CLIP (CrossInit, AdaFace);
* ``staged_context``: a per-timestep context swap on the MODEL plus the CONDITIONING it recognises
  (PersonaMagic).

``build(model, clip, asset, **options) -> Patched``: never mutates ``model``/``clip`` (clones).
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

ATTENTION = "attention_patch"
TEXT_TOKENS = "text_tokens"
STAGED = "staged_context"


@dataclass
class Patched:
    model: Any                      # MODEL to sample with
    clip: Any                       # CLIP to encode prompts with
    positive: Any = None            # CONDITIONING the method made itself (staged context), else None
    identity: Optional[dict] = None  # IDENTITY_EMBEDDING (text-token methods)


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    kind: str
    folder: Optional[str]           # models/ folder of its asset (None: built in, e.g. CrossInit's names list)
    load: Callable                  # path -> asset
    build: Callable                 # (model, clip, asset, **options) -> Patched
    off: dict = field(default_factory=dict)  # options that switch the method off (bit-identical to plain)
    nodes: tuple = ()               # node IDs that apply it


def _load_wplus(path):
    from .wplus.adapter import load_wplus_adapter

    return load_wplus_adapter(path)


def _load_pidiff(path):
    from .pidiff import load_pidiff

    return load_pidiff(path)


def _residual(default_strength, default_start):
    def build(model, clip, asset, wplus, strength=default_strength, start_percent=default_start, end_percent=1.0,
              mask=None):
        from .wplus.attention import apply_residual_cross_attention

        return Patched(apply_residual_cross_attention(model, asset, wplus, strength, start_percent, end_percent, mask),
                       clip)

    return build


def _load_names(path=None):
    from .crossinit.core import load_names

    return load_names(path)


def _build_crossinit(model, clip, asset, trigger):
    from .. import textspace
    from .crossinit.core import cross_init_vectors

    textspace.check_trigger(trigger)  # before the names encode
    patched, identity = textspace.apply_identity(clip, trigger, cross_init_vectors(clip, asset), "crossinit",
                                                 what="cross-init embedding")
    return Patched(model, patched, identity=identity)


def _load_adaface(path, arc2face_path=None, layer_weights="checkpoint"):
    from .adaface.load import load_adaface

    return load_adaface(path, arc2face_path, layer_weights=layer_weights)


def _build_adaface(model, clip, asset, trigger, face_embeds, id_cfg_scale=1.0):
    from .. import textspace

    textspace.check_trigger(trigger)
    tokens = asset.encode(face_embeds, cfg_scale=id_cfg_scale)
    patched, identity = textspace.apply_identity(clip, trigger, {"clip_l": tokens}, "adaface",
                                                 what="AdaFace identity (768-d, SD1.x)")
    return Patched(model, patched, identity=identity)


def _load_personamagic(path):
    from .personamagic.checkpoint import load_mapper

    return load_mapper(path)


def _build_personamagic(model, clip, asset, text, trigger="<persona>", clip_vision_output=None, class_word="",
                        t_high=800.0, t_low=400.0):
    from .personamagic.staged import apply_stage_regulated_ti

    m, cond, _ = apply_stage_regulated_ti(model, clip, asset, text, trigger, clip_vision_output, class_word,
                                          t_high, t_low)
    return Patched(m, clip, positive=cond)


METHODS = {m.name: m for m in (
    Method("wplus_rca", "W+ Adapter residual cross-attention", ATTENTION, "wplus", _load_wplus,
           _residual(1.0, 0.2), off={"strength": 0.0}, nodes=("FP_LoadWPlusAdapter", "ApplyResidualCrossAttention")),
    Method("pidiff_sca", "PIDiff style cross-attention", ATTENTION, "pidiff", _load_pidiff,
           _residual(0.4, 0.0), off={"strength": 0.0}, nodes=("FP_LoadPIDiff", "FP_ApplyStyleCrossAttention")),
    Method("crossinit", "Cross Initialization", TEXT_TOKENS, None, _load_names, _build_crossinit,
           nodes=("CrossInitEmbedding",)),
    Method("adaface", "AdaFace", TEXT_TOKENS, "adaface", _load_adaface, _build_adaface,
           nodes=("FP_LoadAdaFace", "AdaFaceInvert")),
    Method("personamagic", "PersonaMagic stage-regulated TI", STAGED, "personamagic", _load_personamagic,
           _build_personamagic, nodes=("FP_LoadPersonaMagic", "StageRegulatedTI")),
)}


def method(name) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {sorted(METHODS)}") from None
