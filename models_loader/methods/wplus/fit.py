"""Does a W+ Adapter file fit a base checkpoint? Checked by the training nodes before a job is made.

A training init file (``wplus_adapter.bin`` or the pack's safetensors) holds one residual cross-attention layer per
UNet cross-attention layer (to_q' [h, h] on that layer's width h, to_k'/to_v' [h, c]) and a mapping W+ -> tokens of
width c, the text-context width of the model it was made for (official: ``WProjModel(unet.config.cross_attention_dim)``,
what a fresh training here makes too). The base model's layers are read from the checkpoint's UNet tensor shapes
(``*.attn2.to_q.weight`` / ``to_k.weight``), from the safetensors header without loading any tensor, in the order
of :func:`...patch_engine.cross_attention_layers` (input, output, then middle blocks).
"""
import os
import re

_ATTN2 = re.compile(r"^(?P<prefix>.*?)(?:input_blocks\.(?P<inp>\d+)|output_blocks\.(?P<out>\d+)|(?P<mid>middle_block))"
                    r"\.(?P<sub>\d+)\.transformer_blocks\.(?P<tb>\d+)\.attn2\.to_(?P<w>[qk])\.weight$")
FAMILY_OF_CONTEXT = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def _shapes(path):
    """{key: shape tuple} of a checkpoint file (safetensors: header only)."""
    if str(path).lower().endswith((".safetensors", ".sft")):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import comfy.utils

    return {k: tuple(v.shape) for k, v in comfy.utils.load_torch_file(str(path), safe_load=True).items()
            if hasattr(v, "shape")}


def checkpoint_cross_attention(path):
    """[(inner_dim, context_dim)] of the UNet cross-attention layers of the checkpoint at ``path``, in
    ``cross_attention_layers`` order. Raises ValueError when the file holds no UNet cross-attention."""
    found = {}
    for key, shape in _shapes(path).items():
        m = _ATTN2.match(key)
        if not m or len(shape) != 2:
            continue
        if m.group("inp") is not None:
            block = (0, int(m.group("inp")))
        elif m.group("out") is not None:
            block = (1, int(m.group("out")))
        else:
            block = (2, 0)
        layer = found.setdefault((m.group("prefix"), block, int(m.group("sub")), int(m.group("tb"))), {})
        layer[m.group("w")] = shape
    prefixes = sorted({k[0] for k in found})
    if not prefixes:
        raise ValueError(f"{os.path.basename(str(path))} has no UNet cross-attention weights (attn2.to_q/to_k)")
    prefix = next((p for p in prefixes if p.endswith("diffusion_model.")), prefixes[0])
    out = []
    for key in sorted(k for k in found if k[0] == prefix):
        d = found[key]
        if "q" in d and "k" in d:
            out.append((int(d["q"][0]), int(d["k"][1])))
    return out


def _family(ctx):
    return FAMILY_OF_CONTEXT.get(ctx, f"a {ctx}-wide text context")


def check_init_file(path, ckpt_path, method, label=None):
    """Load the init file at ``path`` as a W+ Adapter file and check it fits the checkpoint at ``ckpt_path``; raise
    ValueError naming the file (``label``: the name the user picked) and what does not match. -> the loaded weights."""
    from .adapter import load_wplus_adapter

    label = label or os.path.basename(str(path))
    try:
        weights = load_wplus_adapter(path)
    except Exception as exc:
        raise ValueError(f"{method} init file '{label}' cannot be used: {exc}") from exc
    if not ckpt_path:
        return weights
    base = os.path.basename(str(ckpt_path))
    layers = checkpoint_cross_attention(ckpt_path)
    widths = [h for h, _ in layers]
    contexts = sorted({c for _, c in layers})
    ctx_txt = _family(contexts[0]) if len(contexts) == 1 else f"text contexts {contexts}"
    problems = []
    if len(weights.layers) != len(layers):
        problems.append(f"it has {len(weights.layers)} cross-attention layers, the base model has {len(layers)}")
    elif weights.widths() != widths:
        bad = next(n for n, (a, b) in enumerate(zip(weights.widths(), widths)) if a != b)
        problems.append(f"its layer widths {weights.widths()} differ from the base model's {widths} (first at layer "
                        f"{bad}: {weights.widths()[bad]} vs {widths[bad]})")
    if contexts != [weights.cross_dim]:
        problems.append(f"its face tokens are {weights.cross_dim} wide (made for {_family(weights.cross_dim)}), the "
                        f"base model's cross-attention context is {contexts[0] if len(contexts) == 1 else contexts} "
                        f"wide ({ctx_txt})")
    if problems:
        raise ValueError(f"{method} init file '{label}' does not fit the base model {base}: " + "; ".join(problems)
                         + f". The base model is {ctx_txt} with {len(layers)} cross-attention layers: pick an init file "
                         "trained for that model, or start from the UNet's own attention.")
    return weights
