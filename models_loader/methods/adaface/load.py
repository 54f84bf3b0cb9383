"""Loading AdaFace checkpoints without running their code.

Official ``adaface.pt`` / ``*.ckpt`` pickle whole modules: ``{"string_to_subj_basis_generator_dict": {"z":
SubjBasisGenerator | ModuleList[consistentID, arc2face]}, "placeholder_strings", "subject_strings",
optional "unet_lora_modules", ...}``. They are read with torch's ``weights_only`` unpickler
(:func:`safe_load.load_file`): only the globals below are allowlisted, each as an inert stand-in record, and
:func:`safe_load.module_state_dict` flattens the generator into a state dict.

The pack's own format (safetensors): ``inverter.text_model.*`` (prompt2token_proj, HF layout),
``inverter.hidden_state_layer_weights`` [3, 1], optional ``inverter.pad_embeddings`` [77, 768] and
optional ``arc2face.text_model.*``; metadata ``num_id_vecs``.
"""
import logging
import os

import torch

from ... import safe_load
from .model import AdaFaceModel, Arc2FaceEncoder, ClipText, PromptInverter

log = logging.getLogger(__name__)

_HF = "transformers.models.clip."
ALLOWED_CLASSES = [
    "adaface.subj_basis_generator.SubjBasisGenerator",
    "adaface.arc2face_models.CLIPTextModelWrapper",
    "adaface.arc2face_models.CLIPAttentionMKV",
    "adaface.util.GradientScaler",
    "ldm.modules.subj_basis_generator.SubjBasisGenerator",
    "ldm.modules.arc2face_models.CLIPTextModelWrapper",
    "ldm.modules.arc2face_models.CLIPAttentionMKV",
    "ldm.util.GradientScaler",
    _HF + "modeling_clip.CLIPTextTransformer",
    _HF + "modeling_clip.CLIPTextEmbeddings",
    _HF + "modeling_clip.CLIPEncoder",
    _HF + "modeling_clip.CLIPEncoderLayer",
    _HF + "modeling_clip.CLIPMLP",
    _HF + "modeling_clip.CLIPAttention",
    _HF + "modeling_clip.CLIPSdpaAttention",
    _HF + "configuration_clip.CLIPTextConfig",
    _HF + "tokenization_clip.CLIPTokenizer",
    "transformers.tokenization_utils.Trie",
    "transformers.activations.QuickGELUActivation",
    "tokenizers.AddedToken",
    "einops.layers.torch.Rearrange",
]
ALLOWED_PREFIXES = ["torch.nn.modules."]
INERT_FUNCTIONS = ["ftfy.fix_text", "regex._regex.compile", "adaface.util.gen_gradient_scaler"]

ARC2FACE_INDEX_IN_JOINT = 1  # the joint checkpoint's "z" ModuleList is [consistentID, arc2face]
# ``patch_old_subj_basis_generator_ckpt`` (single-encoder patch path of the official code) re-initialises the
# hidden-state layer weights to these before copying an old checkpoint's state; the default (joint) loader
# keeps the checkpoint's own learned values (strict load_state_dict).
RESET_LAYER_WEIGHTS = torch.tensor([[1.0], [2.0], [4.0]])
LAYER_WEIGHT_MODES = ("checkpoint", "reset_1_2_4")


def _is(obj, suffix):
    return isinstance(obj, safe_load.PickledObject) and obj.class_path.endswith(suffix)


def _generators(ckpt, source):
    if not isinstance(ckpt, dict) or "string_to_subj_basis_generator_dict" not in ckpt:
        raise ValueError(f"{source}: not an AdaFace checkpoint (no 'string_to_subj_basis_generator_dict'; keys "
                         f"{sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__})")
    d = ckpt["string_to_subj_basis_generator_dict"]
    if isinstance(d, safe_load.PickledObject):  # a pickled nn.ModuleDict
        d = dict(d.state.get("_modules") or {})
    if not d:
        raise ValueError(f"{source}: empty string_to_subj_basis_generator_dict")
    key = "z" if "z" in d else next(iter(d))
    entry = d[key]
    if _is(entry, "ModuleList"):
        mods = entry.state.get("_modules") or {}
        return key, [mods[k] for k in sorted(mods, key=int)]
    return key, [entry]


def _generator_state(gen, source):
    if not _is(gen, "SubjBasisGenerator"):
        raise ValueError(f"{source}: expected a SubjBasisGenerator, found {getattr(gen, 'class_path', type(gen).__name__)}")
    sd = safe_load.module_state_dict(gen)
    st = gen.state
    n_id = st.get("N_ID", st.get("num_id_vecs", 16))
    pad = st.get("pad_embeddings")
    if gen.state.get("placeholder_is_bg"):
        raise ValueError(f"{source}: this generator is a background generator, not a face generator")
    return sd, int(n_id), pad if isinstance(pad, torch.Tensor) else None


def load_inverter_state(path, generator="auto"):
    """(prompt2token_proj state dict, num_id_vecs, layer_weights or None, pad_embeddings or None, description)."""
    source = os.path.basename(path)
    if path.lower().endswith((".safetensors", ".sft")):
        sd = safe_load.load_file(path)
        inv = {k[len("inverter."):]: v for k, v in sd.items() if k.startswith("inverter.")}
        if not inv:
            raise ValueError(f"{source}: no 'inverter.*' tensors (pack AdaFace format expected)")
        import safetensors

        with safetensors.safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        n_id = int(meta.get("num_id_vecs", 16))
        arc = {k[len("arc2face."):]: v for k, v in sd.items() if k.startswith("arc2face.")}
        return inv, n_id, inv.get("hidden_state_layer_weights"), inv.get("pad_embeddings"), arc or None, f"{source} (safetensors)"
    ckpt = safe_load.load_file(path, allowed_classes=ALLOWED_CLASSES, allowed_prefixes=ALLOWED_PREFIXES,
                               inert_functions=INERT_FUNCTIONS)
    key, gens = _generators(ckpt, source)
    if generator == "auto":
        idx = ARC2FACE_INDEX_IN_JOINT if len(gens) == 2 else 0
    else:
        idx = int(generator)
        if not 0 <= idx < len(gens):
            raise ValueError(f"{source}: generator index {idx} out of range (checkpoint has {len(gens)})")
    sd, n_id, pad = _generator_state(gens[idx], source)
    if "unet_lora_modules" in ckpt:
        log.info("%s: unet_lora_modules present but not applied (off by default, as officially)", source)
    inv = {k[len("prompt2token_proj."):]: v for k, v in sd.items() if k.startswith("prompt2token_proj.")}
    return inv, n_id, sd.get("hidden_state_layer_weights"), pad, None, f"{source} '{key}'[{idx}/{len(gens)}]"


def load_adaface(adaface_path, arc2face_path=None, generator="auto", layer_weights="checkpoint"):
    """Build the :class:`AdaFaceModel`. ``layer_weights``: "checkpoint" (default, the official joint loader)
    = the learned hidden-state layer weights stored in the file; "reset_1_2_4" = [1, 2, 4], what the
    official single-encoder patch path gives old checkpoints (``patch_old_subj_basis_generator_ckpt``)."""
    if layer_weights not in LAYER_WEIGHT_MODES:
        raise ValueError(f"layer_weights must be one of {LAYER_WEIGHT_MODES}, got {layer_weights!r}")
    inv_sd, n_id, lw_ckpt, pad, arc_sd, desc = load_inverter_state(adaface_path, generator)
    inverter_text = ClipText.from_state_dict(inv_sd, source=os.path.basename(adaface_path))
    if layer_weights == "checkpoint":
        if lw_ckpt is None:
            raise ValueError(f"{desc}: no hidden_state_layer_weights stored (an old single-encoder checkpoint?); "
                             "choose layer_weights 'reset_1_2_4' as the official code does for those")
        lw = lw_ckpt
    else:
        lw = RESET_LAYER_WEIGHTS
    if arc2face_path:
        arc_sd = safe_load.load_file(arc2face_path)
        arc_src = os.path.basename(arc2face_path)
    elif arc_sd is None:
        raise ValueError(f"{desc}: the Arc2Face encoder is not in this file; choose the Arc2Face text encoder "
                         "(arc2face/encoder/model.safetensors, HF CLIPTextModel) in models/adaface")
    else:
        arc_src = desc
    arc_text = ClipText.from_state_dict(arc_sd, source=arc_src)
    if arc_text.config["dim"] != inverter_text.config["dim"]:
        raise ValueError(f"Arc2Face encoder width {arc_text.config['dim']} != inverter width {inverter_text.config['dim']}")
    inverter = PromptInverter(inverter_text, n_id, lw, pad)
    return AdaFaceModel(Arc2FaceEncoder(arc_text), inverter, info=f"{desc} + {arc_src}, {n_id} tokens")


def save_adaface_safetensors(model: AdaFaceModel, path, include_arc2face=True, dtype=None):
    """The pack's own AdaFace file (tensors only); ``dtype`` e.g. torch.float16 for the text weights."""
    import safetensors.torch

    def cast(v):
        return (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()

    sd = {f"inverter.{k}": cast(v) for k, v in model.inverter.text.state_dict().items()}
    sd["inverter.hidden_state_layer_weights"] = model.inverter.layer_weights.contiguous()
    sd["inverter.pad_embeddings"] = model.inverter.pad_embeddings.contiguous()
    if include_arc2face:
        sd.update({f"arc2face.{k}": cast(v) for k, v in model.arc2face.text.state_dict().items()})
    safetensors.torch.save_file(sd, str(path), metadata={"num_id_vecs": str(model.inverter.num_id_vecs),
                                                         "format": "face-personalization adaface v1"})
    return path


_KIND_CACHE = {}  # (path, size, mtime) -> "adaface" | "arc2face"


def file_kind(path):
    """What a file in models/adaface is, from its layout (the safetensors header only, nothing loaded):
    "arc2face" for a bare HF CLIPTextModel (``text_model.*``: the Arc2Face text encoder), "adaface" for an
    AdaFace checkpoint (official .pt/.ckpt, or the pack's safetensors with ``inverter.*``)."""
    if not path.lower().endswith((".safetensors", ".sft")):
        return "adaface"
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _KIND_CACHE:
        import safetensors

        try:
            with safetensors.safe_open(path, "pt") as f:
                names = list(f.keys())
            kind = "adaface" if any(k.startswith("inverter.") for k in names) else "arc2face"
        except Exception:  # unreadable: offered as a checkpoint, the load names the problem
            kind = "adaface"
        _KIND_CACHE[key] = kind
    return _KIND_CACHE[key]
