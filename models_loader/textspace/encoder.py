"""Differentiable text-encoder forward over ComfyUI's own CLIP weights: the training code imports this.

ComfyUI's ``comfy.clip_model.CLIPLayer`` adds its residuals in place (``x += ...``), so autograd cannot
run through ``clip.encode_from_tokens``. :class:`TextEncoder` runs the *same* weights of one
``SDClipModel`` (SD1 ``clip_l``, SD2 ``clip_h``, SDXL ``clip_l`` / ``clip_g``) out of place, with the output
layer this CLIP conditions with (ComfyUI default or ``CLIPSetLastLayer``): SD1 last layer + final
LayerNorm, SD2 penultimate + final LayerNorm, SDXL penultimate without LayerNorm for each encoder.
It is tested equal to ComfyUI's encoding (``tests/textspace/test_textspace_encoder.py``).

Typical use (Cross Initialization / PersonaMagic training, PersonaMagic inference)::

    enc = TextEncoder.of_clip(clip)["clip_l"]
    embeds = insert_rows(enc.token_embeddings(ids), positions, vectors)   # vectors may require grad
    out = enc(embeds)                                                     # out.context: [B, 77, D]
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class EncoderOutput:
    context: torch.Tensor            # [B, L, D]: what the UNet cross-attends to (ComfyUI's ``cond``)
    hidden: torch.Tensor             # [B, L, D]: the output layer's hidden state before any final LayerNorm
    pooled: Optional[torch.Tensor]   # [B, D'] pooled output as ComfyUI returns it (or None without eos_index)
    attention: Optional[torch.Tensor] = None  # [B, H, L, L] last layer's attention probabilities (attentions=True)


def insert_rows(embeds, positions, vectors):
    """Out-of-place insertion: ``embeds`` [B, L, D] with rows ``positions`` (list of (b, l) pairs, or a
    list of l applied to every row b) replaced by ``vectors`` [K, D] (K = len(positions)) or
    [B, K, D]. Gradients flow to ``vectors`` (and to the untouched rows of ``embeds``)."""
    b, length, _ = embeds.shape
    if positions and not isinstance(positions[0], (tuple, list)):
        positions = [(i, p) for i in range(b) for p in positions]
        if vectors.dim() == 2:
            vectors = vectors.unsqueeze(0).expand(b, -1, -1)
    flat_v = vectors.reshape(-1, vectors.shape[-1]).to(embeds.dtype)
    if len(positions) != flat_v.shape[0]:
        raise ValueError(f"{len(positions)} positions but {flat_v.shape[0]} vectors")
    if not positions:
        return embeds
    index = torch.tensor([i * length + p for i, p in positions], device=embeds.device)
    flat = embeds.reshape(b * length, -1).index_copy(0, index, flat_v.to(embeds.device))
    return flat.reshape(embeds.shape)


def _output_options(clip, enc):
    """(layer, layer_idx, return_projected_pooled) this CLIP encodes with (respects CLIPSetLastLayer)."""
    enc.reset_clip_options()
    if clip is not None and getattr(clip, "layer_idx", None) is not None:
        enc.set_clip_options({"layer": clip.layer_idx})
    got = (enc.layer, enc.layer_idx, enc.return_projected_pooled)
    enc.reset_clip_options()
    return got


class TextEncoder:
    """Out-of-place forward of one ComfyUI ``SDClipModel`` (its weights are used, never copied)."""

    def __init__(self, sd_clip_model, layer="last", layer_idx=None, projected_pooled=None):
        if layer not in ("last", "hidden"):
            raise ValueError(f"text-encoder output mode {layer!r} is not supported (last / hidden only)")
        self.model = sd_clip_model
        self.text_model = sd_clip_model.transformer.text_model
        self.layer, self.layer_idx = layer, layer_idx
        self.layer_norm_hidden = bool(sd_clip_model.layer_norm_hidden_state)
        self.projected_pooled = sd_clip_model.return_projected_pooled if projected_pooled is None else projected_pooled
        self.special_tokens = sd_clip_model.special_tokens

    @classmethod
    def of_clip(cls, clip):
        """{embedding_key: TextEncoder} for every CLIP-style encoder of a ComfyUI ``CLIP``."""
        from .trigger import sub_tokenizers

        clip.load_model()
        out = {}
        for _, tok in sub_tokenizers(clip.tokenizer):
            enc = getattr(clip.cond_stage_model, tok.embedding_key, None)
            if enc is None or not hasattr(enc, "transformer"):
                raise ValueError(f"CLIP encoder '{tok.embedding_key}' not found in this CLIP model "
                                 "(SD1.x, SD2.x and SDXL text encoders are supported)")
            layer, idx, proj = _output_options(clip, enc)
            out[tok.embedding_key] = cls(enc, layer, idx, proj)
        if not out:
            raise ValueError("this CLIP has no CLIP-style text encoder (SD1.x/SD2.x/SDXL expected)")
        return out

    @property
    def device(self):
        return self.text_model.embeddings.token_embedding.weight.device

    @property
    def width(self):
        return int(self.text_model.embeddings.token_embedding.weight.shape[1])

    @property
    def num_positions(self):
        return int(self.text_model.embeddings.position_embedding.weight.shape[0])

    def token_embeddings(self, ids):
        """Input embeddings [B, L, D] (float32, no positions) of token ids [B, L]."""
        w = self.text_model.embeddings.token_embedding.weight
        return F.embedding(torch.as_tensor(ids, device=w.device), w).float()

    def _linear(self, mod, x):
        w = mod.weight.to(x.device, x.dtype)
        b = None if mod.bias is None else mod.bias.to(x.device, x.dtype)
        return F.linear(x, w, b)

    def _norm(self, mod, x):
        return F.layer_norm(x, (x.shape[-1],), mod.weight.to(x.device, x.dtype), mod.bias.to(x.device, x.dtype),
                            mod.eps)

    def _attention(self, attn, x, mask, probs_out=None):
        b, n, d = x.shape
        h = attn.heads
        q, k, v = (self._linear(p, x).view(b, n, h, d // h).transpose(1, 2)
                   for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        if probs_out is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:  # explicit softmax (HF "eager" attention) so the probabilities can be returned, with gradients
            probs = torch.softmax(q @ k.transpose(-1, -2) * (d // h) ** -0.5 + mask, dim=-1)
            probs_out.append(probs)
            out = probs @ v
        return self._linear(attn.out_proj, out.transpose(1, 2).reshape(b, n, d))

    def _layer(self, layer, x, mask, probs_out=None):
        x = x + self._attention(layer.self_attn, self._norm(layer.layer_norm1, x), mask, probs_out)
        mlp = layer.mlp
        return x + self._linear(mlp.fc2, mlp.activation(self._linear(mlp.fc1, self._norm(layer.layer_norm2, x))))

    def __call__(self, embeds, eos_index=None, attention_mask=None, attentions=False, checkpointing=False):
        """``embeds`` [B, L, D] input embeddings (no positions) -> :class:`EncoderOutput`.
        ``eos_index`` [B]: position of each row's end token (for ``pooled``); ``attention_mask`` [B, L]
        (1 = keep) only for models that ComfyUI runs with attention masks. ``attentions=True`` also returns the
        attention probabilities of the encoder's last layer (HF ``attentions[-1]``; all layers then run), e.g.
        for PersonaMagic's TE loss; the other outputs are unchanged. ``checkpointing``: recompute each layer in
        the backward pass instead of keeping its activations (training memory)."""
        tm = self.text_model
        x = embeds.float() + tm.embeddings.position_embedding.weight[:embeds.shape[1]].to(embeds.device, torch.float32)
        n = x.shape[1]
        mask = torch.full((n, n), float("-inf"), device=x.device).triu(1)
        if attention_mask is not None:
            pad = (1.0 - attention_mask.float()).reshape(x.shape[0], 1, 1, n) * torch.finfo(torch.float32).min
            mask = mask + pad
        layers = tm.encoder.layers
        stop = len(layers) if self.layer == "last" else (self.layer_idx % len(layers)) + 1
        last_needed = len(layers) if (eos_index is not None or attentions) else stop
        hidden = None
        probs = []
        for i, layer in enumerate(layers[:last_needed]):
            want = attentions and i == len(layers) - 1
            if checkpointing and torch.is_grad_enabled() and not want:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(self._layer, layer, x, mask, use_reentrant=False)
            else:
                x = self._layer(layer, x, mask, probs if want else None)
            if i == stop - 1:
                hidden = x
        final = tm.final_layer_norm
        if self.layer == "last" or self.layer_norm_hidden:
            context = self._norm(final, hidden)
        else:
            context = hidden
        pooled = None
        if eos_index is not None:
            last = context if self.layer == "last" else self._norm(final, x)
            pooled = last[torch.arange(last.shape[0], device=last.device), torch.as_tensor(eos_index, device=last.device)]
            if self.projected_pooled:
                pooled = F.linear(pooled, self.model.transformer.text_projection.weight.to(pooled.device, pooled.dtype))
        return EncoderOutput(context, hidden, pooled, probs[0] if probs else None)
