"""Differentiable text encoding over ComfyUI's own CLIP weights and insertion code.

ComfyUI's ``comfy.clip_model.CLIPLayer.forward`` adds its residuals in place (``x += ...``), which
breaks autograd (the LayerNorm input it saved is overwritten). This module runs the very same
sub-modules (``layer_norm1``, ``self_attn``, ``layer_norm2``, ``mlp``, ``final_layer_norm``, ...) with
out-of-place residuals, and inserts tensor tokens with ComfyUI's own ``SDClipModel.process_tokens`` --
the insertion inference uses (:mod:`..clip_tokens` → ``embedding:`` tokens). The result equals
``CLIP.encode_from_tokens`` (tested) and is differentiable w.r.t. the inserted token rows.

Public API:

- :func:`encoders(clip) -> [(embedding_key, tokens_key, SDClipModel)]`
- :func:`encode_tokens(clip, token_lists, rows, checkpointing=False) -> (cond, pooled)`
"""
import torch


def encoders(clip):
    """[(embedding_key, tokens dict key, SDClipModel)] of a ComfyUI CLIP (SD1 ``l``, SD2 ``h``, SDXL ``l`` + ``g``)."""
    from ..textspace.trigger import sub_tokenizers as _sub_tokenizers

    out = []
    for _, tok in _sub_tokenizers(clip.tokenizer):
        key = tok.embedding_key
        enc = getattr(clip.cond_stage_model, key, None)
        if enc is None or not hasattr(enc, "process_tokens"):
            raise ValueError(f"text encoder '{key}' not found on this CLIP (SD1.x, SD2.x or SDXL expected)")
        out.append((key, key[len("clip_"):] if key.startswith("clip_") else key, enc))
    if not out:
        raise ValueError("this CLIP has no CLIP-style text encoder (SD1.x, SD2.x or SDXL expected)")
    return out


def _layer(layer, x, mask, attention):
    x = x + layer.self_attn(layer.layer_norm1(x), mask, attention)
    return x + layer.mlp(layer.layer_norm2(x))


def _transformer(text_model, embeds, attention_mask, num_tokens, intermediate_output, final_ln_intermediate,
                 checkpointing):
    """``comfy.clip_model.CLIPTextModel_.forward`` with out-of-place residuals (same modules, same order)."""
    import comfy.ops
    from comfy.ldm.modules.attention import optimized_attention_for_device

    x = embeds + comfy.ops.cast_to(text_model.embeddings.position_embedding.weight, dtype=embeds.dtype, device=embeds.device)
    mask = None
    if attention_mask is not None:
        b, n = attention_mask.shape
        mask = 1.0 - attention_mask.to(x.dtype).reshape(b, 1, -1, n).expand(b, 1, n, n)
        mask = mask.masked_fill(mask.to(torch.bool), -torch.finfo(x.dtype).max)
    causal = torch.full((x.shape[1], x.shape[1]), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device).triu_(1)
    mask = causal if mask is None else mask + causal

    layers = text_model.encoder.layers
    attention = optimized_attention_for_device(x.device, mask=True, small_input=True)
    if intermediate_output is not None and intermediate_output < 0:
        intermediate_output = len(layers) + intermediate_output
    intermediate = None
    for i, layer in enumerate(layers):
        if checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            x = checkpoint(_layer, layer, x, mask, attention, use_reentrant=False)
        else:
            x = _layer(layer, x, mask, attention)
        if i == intermediate_output:
            intermediate = x
    x = text_model.final_layer_norm(x)
    if intermediate is not None and final_ln_intermediate:
        intermediate = text_model.final_layer_norm(intermediate)
    pooled = x[list(range(x.shape[0])), [n - 1 for n in num_tokens]]
    return x, intermediate, pooled


def _encode_one(enc, token_lists, checkpointing):
    """``SDClipModel.forward`` for a batch of single-chunk token lists (tensor tokens may require grad)."""
    device = enc.transformer.get_input_embeddings().weight.device
    embeds, attention_mask, num_tokens, _ = enc.process_tokens(token_lists, device)
    if isinstance(enc.layer, list) or enc.layer == "all":
        raise ValueError(f"training does not support the CLIP output layer setting {enc.layer!r}")
    intermediate_output = None if enc.layer == "last" else enc.layer_idx
    transformer = enc.transformer
    x, inter, pooled = _transformer(transformer.text_model, embeds, attention_mask if enc.enable_attention_masks else None,
                                    num_tokens, intermediate_output, enc.layer_norm_hidden_state, checkpointing)
    z = (x if enc.layer == "last" else inter).float()
    if enc.zero_out_masked:
        z = z * attention_mask.unsqueeze(-1).float()
    if hasattr(transformer, "text_projection") and enc.return_projected_pooled:
        pooled = transformer.text_projection(pooled)
    return z, pooled.float()


def tokenize(clip, text):
    """ComfyUI's tokenization of one prompt: {tokens key: [token or tensor, ...]} (one 77-token chunk each)."""
    tokens = clip.tokenize(text)
    out = {}
    for key, chunks in tokens.items():
        if len(chunks) != 1:
            raise ValueError(f"training prompts must fit one 77-token chunk, {text!r} needs {len(chunks)}")
        weights = {w for _, w, *rest in chunks[0]}
        if weights != {1.0}:
            raise ValueError(f"training prompts may not use prompt weights, got {text!r}")
        out[key] = [t for t, *_ in chunks[0]]
    return out


def encode_tokens(clip, token_lists, substitute=None, checkpointing=False):
    """Conditioning of a batch of prompts as ComfyUI computes it, differentiably.

    ``token_lists``: one :func:`tokenize` result per prompt. ``substitute(embedding_key, tensor_token)``
    may return a replacement for each tensor token (e.g. the trainable row it stands for).
    Returns ``(cond [B, 77, D_total], pooled [B, D] or None)``: SDXL concatenates clip_l and clip_g and
    pools clip_g, exactly as ``comfy.sdxl_clip.SDXLClipModel``.
    """
    cond_model = clip.cond_stage_model
    cond_model.reset_clip_options()
    if clip.layer_idx is not None:
        cond_model.set_clip_options({"layer": clip.layer_idx})
    try:
        outs = {}
        for emb_key, tok_key, enc in encoders(clip):
            batch = []
            for tl in token_lists:
                row = tl[tok_key]
                if substitute is not None:
                    row = [substitute(emb_key, t) if torch.is_tensor(t) else t for t in row]
                batch.append(row)
            outs[emb_key] = _encode_one(enc, batch, checkpointing)
    finally:
        cond_model.reset_clip_options()
    if set(outs) == {"clip_l", "clip_g"}:
        l_out, g_out = outs["clip_l"][0], outs["clip_g"][0]
        cut = min(l_out.shape[1], g_out.shape[1])
        return torch.cat([l_out[:, :cut], g_out[:, :cut]], dim=-1), outs["clip_g"][1]
    if len(outs) != 1:
        raise ValueError(f"unsupported text encoder combination {sorted(outs)}")
    return next(iter(outs.values()))
