"""Tiny PersonaMagic mappers (full official shapes: 4 x 768 tokens, 200 anchors; ~1.3M params).

* ``personamagic_mapper``: the *official pickled layout* ``mapper-steps-N.pt`` =
  {"state_dict", "cfg", "encoder": models.positional_encoding.TimePositionalEncoding}. The encoder is
  pickled from a stand-in nn.Module registered under that module path only while saving, and the
  storages are tagged ``cuda:0`` like the official files, so loading exercises the restricted
  unpickler and ``map_location``.
* ``personamagic_mapper_st``: the same weights in the pack's safetensors format.
"""
import sys
import threading
import types

from . import init_params_, register, seeded_generator

_TAG = threading.local()
_TAGGER_REGISTERED = False


def _tag_cuda(storage):
    return "cuda:0" if getattr(_TAG, "active", False) else None


def _no_restore(storage, location):
    return None


def _ensure_tagger():
    """Make torch.save tag storages as ``cuda:0`` while ``_TAG.active`` (CPU-only machines too)."""
    global _TAGGER_REGISTERED
    if _TAGGER_REGISTERED:
        return
    import torch.serialization as ser

    used = {p for p, _, _ in ser._package_registry}
    prio = next(p for p in range(1, 10) if p not in used)
    ser.register_package(prio, _tag_cuda, _no_restore)
    _TAGGER_REGISTERED = True


def build_mapper(kind="personamagic_mapper"):
    import torch

    from ..methods.personamagic.mapper import PersonaMagicMapper, anchor_weights

    gen = seeded_generator(kind)
    m = PersonaMagicMapper(output_dim=768, token_num=4, num_anchors=200)
    init_params_(m, gen, std=0.05)
    with torch.no_grad():
        m.input_layer.weight.copy_(anchor_weights(200))
        m.input_layer.bias.copy_(torch.randn(200, generator=gen) * 0.1)
        for name, p in m.named_parameters():  # non-trivial LayerNorm affine + biases
            if p.dim() == 1 and name != "input_layer.bias":
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return m.eval()


def official_cfg(target_norm=None):
    """A pyrallis-encoded RunConfig as ``save_mapper`` writes it (plain dicts/lists/str)."""
    return {
        "log": {"exp_name": "person_1", "exp_dir": "log/person_1", "save_steps": 1000},
        "data": {"train_data_dir": "data/person_1", "placeholder_token": [f"<new{i + 1}>" for i in range(4)],
                 "super_category_token": "face", "learnable_property": "object", "resolution": 512},
        "model": {"pretrained_model_name_or_path": "dreamlike-art/dreamlike-photoreal-2.0",
                  "normalize_mapper_output": True, "target_norm": target_norm, "use_positional_encoding": True,
                  "sigma_t": 1.0, "num_pe_time_anchors": 200, "output_bypass": True},
        "optim": {"max_train_steps": 1000, "learning_rate": 5e-05, "train_batch_size": 1},
    }


def save_official_layout(mapper, path, cfg, seed_gen=None):
    """torch.save in the official layout with a stand-in ``TimePositionalEncoding`` class."""
    import torch

    created = []
    if "models" not in sys.modules:
        pkg = types.ModuleType("models")
        pkg.__path__ = []
        sys.modules["models"] = pkg
        created.append("models")
    mod = types.ModuleType("models.positional_encoding")

    class TimePositionalEncoding(torch.nn.Module):
        def __init__(self, sigma_t=1.0, num_w=1024):
            super().__init__()
            self.sigma_t = sigma_t
            self.num_w = num_w
            w = torch.randn((num_w, 1), generator=seed_gen) * sigma_t
            self.w = w  # official: nn.Parameter(...).cuda() -> a plain tensor attribute

    TimePositionalEncoding.__module__ = "models.positional_encoding"
    TimePositionalEncoding.__qualname__ = "TimePositionalEncoding"
    mod.TimePositionalEncoding = TimePositionalEncoding
    prev = sys.modules.get("models.positional_encoding")
    sys.modules["models.positional_encoding"] = mod
    _ensure_tagger()
    try:
        obj = {"state_dict": mapper.state_dict(), "cfg": cfg, "encoder": TimePositionalEncoding()}
        _TAG.active = True
        torch.save(obj, str(path))
    finally:
        _TAG.active = False
        if prev is None:
            sys.modules.pop("models.positional_encoding", None)
        else:
            sys.modules["models.positional_encoding"] = prev
        for name in created:
            sys.modules.pop(name, None)


@register("personamagic_mapper", "mapper-steps-1000.pt", version=1)
def _gen_official(path):
    save_official_layout(build_mapper(), path, official_cfg(target_norm=0.5), seeded_generator("personamagic_encoder"))


@register("personamagic_mapper_st", "personamagic_tiny.safetensors", version=1)
def _gen_safetensors(path):
    from ..methods.personamagic.checkpoint import PersonaMagicBundle, save_mapper

    save_mapper(PersonaMagicBundle(build_mapper(), None, "face"), path)
