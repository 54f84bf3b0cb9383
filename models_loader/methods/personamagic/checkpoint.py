"""Loading PersonaMagic mappers.

Official ``mapper-steps-N.pt`` (``checkpoint_handler.save_mapper``)::

    {"state_dict": OrderedDict(Mapper.state_dict()),     # storages tagged cuda:0
     "cfg": dict (pyrallis-encoded RunConfig),           # cfg["model"]["target_norm"], cfg["data"][...]
     "encoder": models.positional_encoding.TimePositionalEncoding}   # a pickled nn.Module

It needs a pickled class, so it is read with torch's ``weights_only`` unpickler with that one class
allowlisted as an inert stand-in record (:mod:`...safe_load`) (nothing of the original code runs); tensors are mapped to
the CPU. The encoder's random ``w`` is not used by the official forward; we keep ``num_w``/``sigma_t``
for the record only.

The pack's own format, ``*.safetensors`` (written by :func:`save_mapper`):

* tensors: the official state-dict keys (``input_layer.weight`` [200, 2048], ``input_layer.bias``,
  ``timestep_proj.{0,1,3,4}.*``, ``output_layer.0.*``, and for the bypass ``image_proj.{0,1,3,4}.*``,
  ``image_output_layer.0.*``), float32;
* ``__metadata__``: ``format`` = ``comfyui-face-personalization/personamagic-mapper``,
  ``format_version`` = ``1``, ``token_num``, ``output_dim``, ``target_norm`` (empty: use the class
  word's norm), ``super_category_token`` (the class word, "face"), ``placeholder_tokens`` (JSON list).
"""
import json
import os
from dataclasses import dataclass, field

from ... import safe_load
from .mapper import PersonaMagicMapper

FORMAT = "comfyui-face-personalization/personamagic-mapper"
FORMAT_VERSION = "1"
ENCODER_CLASS = "models.positional_encoding.TimePositionalEncoding"


@dataclass
class PersonaMagicBundle:
    """What ``FP_LoadPersonaMagic`` returns (socket type PERSONAMAGIC_MAPPER)."""

    mapper: PersonaMagicMapper
    target_norm: float = None  # None: use the class word's embedding norm (official default)
    class_word: str = "face"
    placeholder_tokens: list = field(default_factory=lambda: [f"<new{i + 1}>" for i in range(4)])
    source: str = ""

    @property
    def output_dim(self):
        return self.mapper.output_dim

    @property
    def token_num(self):
        return self.mapper.token_num


def _official_meta(cfg):
    cfg = cfg if isinstance(cfg, dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    target = model.get("target_norm")
    placeholders = data.get("placeholder_token")
    if isinstance(placeholders, str):
        placeholders = [placeholders]
    return {
        "target_norm": float(target) if target is not None else None,
        "class_word": data.get("super_category_token") or "face",
        "placeholder_tokens": list(placeholders) if isinstance(placeholders, (list, tuple)) else None,
    }


def load_mapper(path):
    """Official ``mapper-steps-N.pt`` or the pack's ``.safetensors`` -> :class:`PersonaMagicBundle`."""
    name = os.path.basename(path)
    if path.lower().endswith(safe_load.SAFETENSORS_EXT):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        sd = safe_load.load_file(path)
        if meta.get("format") not in (None, FORMAT):
            raise ValueError(f"{name}: safetensors format {meta.get('format')!r} is not a PersonaMagic mapper ({FORMAT})")
        sd = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
        token_num = int(meta["token_num"]) if meta.get("token_num") else None
        output_dim = int(meta["output_dim"]) if meta.get("output_dim") else None
        mapper = _build(sd, name, output_dim, token_num)
        target = meta.get("target_norm") or ""
        placeholders = json.loads(meta["placeholder_tokens"]) if meta.get("placeholder_tokens") else None
        bundle = PersonaMagicBundle(mapper, float(target) if target else None, meta.get("super_category_token") or "face",
                                    source=name)
        if placeholders:
            bundle.placeholder_tokens = placeholders
        return bundle

    ckpt = safe_load.load_file(path, map_location="cpu", allowed_classes={ENCODER_CLASS})
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{name} is not a PersonaMagic mapper checkpoint: expected a dict with 'state_dict', 'cfg', "
            f"'encoder' (mapper-steps-N.pt), found {keys}")
    encoder = ckpt.get("encoder")
    if encoder is not None and getattr(encoder, "class_path", ENCODER_CLASS) != ENCODER_CLASS:
        raise ValueError(f"{name}: unexpected encoder class {encoder.class_path}")
    meta = _official_meta(ckpt.get("cfg"))
    placeholders = meta["placeholder_tokens"]
    token_num = len(placeholders) if placeholders and len(placeholders) > 1 else None
    mapper = _build(dict(ckpt["state_dict"]), name, None, token_num)
    bundle = PersonaMagicBundle(mapper, meta["target_norm"], meta["class_word"], source=name)
    if placeholders and len(placeholders) == mapper.token_num:
        bundle.placeholder_tokens = placeholders
    else:
        bundle.placeholder_tokens = [f"<new{i + 1}>" for i in range(mapper.token_num)]
    return bundle


def _build(sd, name, output_dim, token_num):
    try:
        return PersonaMagicMapper.from_state_dict(sd, output_dim=output_dim, token_num=token_num)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def save_mapper(bundle, path, metadata=None):
    """Write ``bundle`` in the pack's safetensors format (see module docstring); ``metadata``: extra string
    entries (e.g. training provenance), never overriding the format keys."""
    import safetensors.torch

    sd = {k: v.detach().float().contiguous().cpu() for k, v in bundle.mapper.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "token_num": str(bundle.mapper.token_num),
        "output_dim": str(bundle.mapper.output_dim),
        "target_norm": "" if bundle.target_norm is None else repr(float(bundle.target_norm)),
        "super_category_token": bundle.class_word,
        "placeholder_tokens": json.dumps(list(bundle.placeholder_tokens)),
    }
    meta = dict({str(k): str(v) for k, v in (metadata or {}).items()}, **meta)
    safetensors.torch.save_file(sd, str(path), metadata=meta)
    return path
