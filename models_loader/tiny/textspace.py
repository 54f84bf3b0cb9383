"""Tiny AdaFace models in the official layouts (random weights, seeded).

- ``adaface_arc2face``: Arc2Face text encoder, HF ``CLIPTextModel`` keys (``text_model.*``), safetensors.
- ``adaface_pt``: an official-layout ``adaface.pt``: ``{"string_to_subj_basis_generator_dict": {"z":
  SubjBasisGenerator}, ...}`` pickling *modules* under the official global names (``adaface.*``,
  ``transformers.models.clip.*``, ``torch.nn.modules.*``, a ``regex._regex.compile`` call, ...). The
  pickle is written by name only: none of those packages is imported, and loading it needs the pack's
  restricted unpickler.
- ``adaface_safetensors``: the pack's own format (inverter + Arc2Face encoder, tensors only).

Real vocabulary (49408) and width 768 (the SD1.5 text space); 2-3 layers, MLP 256, MKV multipliers
[1, 2, 4] in the inverter.
"""
import pickle

from . import init_params_, register, seeded_generator

ARC2FACE_LAYERS = 2
INVERTER_MULTIPLIERS = (1, 2, 4)
INNER = 256
# learned-looking values, distinct from the official re-initialisation [1, 2, 4]
CKPT_LAYER_WEIGHTS = [[0.9], [1.1], [2.5]]


def _fake_class(module, name, base):
    cls = type(name, (base,), {})
    cls.__module__, cls.__qualname__ = module, name
    cls._fp_global = (module, name)
    return cls


class _NamedPickler(pickle._Pickler):
    """Writes ``_fp_global``-tagged classes/functions as GLOBAL module\\nname (no import lookup)."""

    def save_global(self, obj, name=None):
        tag = obj.__dict__.get("_fp_global") if hasattr(obj, "__dict__") else None
        if tag is not None:
            self.write(pickle.GLOBAL + f"{tag[0]}\n{tag[1]}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


_NamedPickler.dispatch = dict(pickle._Pickler.dispatch)
_NamedPickler.dispatch[type(lambda: None)] = _NamedPickler.save_global


class _PickleModule:
    Pickler = _NamedPickler
    Unpickler = pickle.Unpickler
    load = pickle.load
    dump = pickle.dump
    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _text_model(gen, multipliers, torch_mod):
    """ClipText with random weights (the pack's implementation; HF layout)."""
    from ..methods.adaface.model import ClipText

    m = ClipText(multipliers=multipliers, inner=INNER)
    init_params_(m, gen)
    with torch_mod.no_grad():  # round through fp16 like a stored checkpoint
        for p in m.parameters():
            p.copy_(p.half().float())
    return m


@register("adaface_arc2face", "tiny_arc2face_encoder.safetensors", version=1)
def _arc2face(path):
    import torch
    import safetensors.torch

    m = _text_model(seeded_generator("adaface_arc2face"), (1,) * ARC2FACE_LAYERS, torch)
    sd = {k: v.half().contiguous() for k, v in m.state_dict().items()}
    safetensors.torch.save_file(sd, str(path), metadata={"tiny_model": "adaface_arc2face"})


def _official_generator(text, torch):
    """A module tree shaped like the official pickled SubjBasisGenerator."""
    nn = torch.nn
    HF = "transformers.models.clip."
    SBG = _fake_class("adaface.subj_basis_generator", "SubjBasisGenerator", nn.Module)
    Wrapper = _fake_class("adaface.arc2face_models", "CLIPTextModelWrapper", nn.Module)
    MKV = _fake_class("adaface.arc2face_models", "CLIPAttentionMKV", nn.Module)
    Scaler = _fake_class("adaface.util", "GradientScaler", nn.Module)
    Transformer = _fake_class(HF + "modeling_clip", "CLIPTextTransformer", nn.Module)
    Emb = _fake_class(HF + "modeling_clip", "CLIPTextEmbeddings", nn.Module)
    Enc = _fake_class(HF + "modeling_clip", "CLIPEncoder", nn.Module)
    Layer = _fake_class(HF + "modeling_clip", "CLIPEncoderLayer", nn.Module)
    Attn = _fake_class(HF + "modeling_clip", "CLIPAttention", nn.Module)
    MLP = _fake_class(HF + "modeling_clip", "CLIPMLP", nn.Module)
    Act = _fake_class("transformers.activations", "QuickGELUActivation", nn.Module)
    Config = _fake_class(HF + "configuration_clip", "CLIPTextConfig", object)
    Tokenizer = _fake_class(HF + "tokenization_clip", "CLIPTokenizer", object)

    def regex_compile(pattern):  # never called: only pickled by name
        raise RuntimeError("not callable")

    regex_compile._fp_global = ("regex._regex", "compile")

    class _Pattern:
        def __reduce__(self):
            return regex_compile, (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",)

    src = text.text_model
    cfg = Config()
    cfg.__dict__.update(hidden_size=768, num_attention_heads=12, num_hidden_layers=len(src.encoder.layers),
                        intermediate_size=INNER, hidden_act="quick_gelu", vocab_size=49408, max_position_embeddings=77)
    tm = Transformer()
    tm.config = cfg
    tm.embeddings = Emb()
    tm.embeddings.token_embedding = src.embeddings.token_embedding
    tm.embeddings.position_embedding = src.embeddings.position_embedding
    tm.embeddings.register_buffer("position_ids", torch.arange(77).unsqueeze(0))
    tm.encoder = Enc()
    layers = []
    for i, s in enumerate(src.encoder.layers):
        lay = Layer()
        mult = s.self_attn.multiplier
        att = MKV() if mult > 1 else Attn()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(att, name, getattr(s.self_attn, name))
        att.multiplier, att.embed_dim, att.num_heads = mult, 768, 12
        att.config = cfg
        lay.self_attn, lay.layer_norm1, lay.layer_norm2 = att, s.layer_norm1, s.layer_norm2
        lay.mlp = MLP()
        lay.mlp.fc1, lay.mlp.fc2, lay.mlp.activation_fn = s.mlp.fc1, s.mlp.fc2, Act()
        layers.append(lay)
    tm.encoder.layers = nn.ModuleList(layers)
    tm.final_layer_norm = src.final_layer_norm
    wrapper = Wrapper()
    wrapper.text_model = tm
    wrapper.config = cfg

    gen = SBG()
    gen.prompt2token_proj = wrapper
    gen.hidden_state_layer_weights = nn.Parameter(torch.tensor(CKPT_LAYER_WEIGHTS))
    gen.hidden_state_layer_weights_grad_scaler = Scaler()
    gen.prompt2token_proj_grad_scaler = Scaler()
    gen.prompt2token_proj_attention_multipliers = list(INVERTER_MULTIPLIERS)
    gen.N_ID, gen.N_SFX, gen.placeholder_is_bg, gen.num_out_embs = 16, 0, False, 16
    gen.obj_proj_in = None
    with torch.no_grad():
        gen.pad_embeddings = (src.embeddings.token_embedding.weight[49407] + src.embeddings.position_embedding.weight).clone()
    tok = Tokenizer()
    tok.__dict__.update(pat=_Pattern(), model_max_length=77, pad_token="<|endoftext|>")
    gen.tokenizer = tok
    return gen


@register("adaface_pt", "tiny_adaface.pt", version=2)
def _adaface_pt(path):
    import torch

    text = _text_model(seeded_generator("adaface_inverter"), INVERTER_MULTIPLIERS, torch)
    text.half()  # smaller file; the values were already fp16-rounded
    gen = _official_generator(text, torch)
    ckpt = {"string_to_subj_basis_generator_dict": {"z": gen}, "placeholder_strings": ["z"],
            "subject_strings": ["z"], "token2num_vectors": {"z": 16}}
    with open(path, "wb") as f:
        torch.save(ckpt, f, pickle_module=_PickleModule, pickle_protocol=2)


@register("adaface_safetensors", "tiny_adaface.safetensors", version=2)
def _adaface_st(path):
    import torch

    from . import ensure
    from ..methods.adaface.load import load_adaface, save_adaface_safetensors

    model = load_adaface(str(ensure("adaface_pt")), str(ensure("adaface_arc2face")), layer_weights="checkpoint")
    save_adaface_safetensors(model, path, include_arc2face=True, dtype=torch.float16)
