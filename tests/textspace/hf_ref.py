"""Independent reference forwards with HF transformers' CLIPTextModel (test-only)."""
import torch
from torch import nn


def hf_text_model(sd, hidden, heads, inner, act, prefix_strip=("text_model.",)):
    """transformers CLIPTextModel (eager attention) holding the given HF-layout weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    sd = {k: v for k, v in sd.items()}
    for p in prefix_strip:
        sd = {(k[len(p):] if k.startswith(p) else k): v for k, v in sd.items()}
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    cfg = CLIPTextConfig(vocab_size=sd["embeddings.token_embedding.weight"].shape[0], hidden_size=hidden,
                         intermediate_size=inner, num_hidden_layers=layers, num_attention_heads=heads,
                         max_position_embeddings=sd["embeddings.position_embedding.weight"].shape[0],
                         hidden_act=act, layer_norm_eps=1e-5, attn_implementation="eager")
    model = CLIPTextModel(cfg).eval()
    mkv = {}
    for i in range(layers):
        kw = sd[f"encoder.layers.{i}.self_attn.k_proj.weight"]
        if kw.shape[0] != hidden:
            mkv[i] = kw.shape[0] // hidden
            model.encoder.layers[i].self_attn = OfficialMKV(hidden, heads, mkv[i])
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()
                                                 if k.split(".")[0] in ("embeddings", "encoder", "final_layer_norm")}, strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    return model


class OfficialMKV(nn.Module):
    """AdaFace's CLIPAttentionMKV.forward, transcribed (bmm, mask viewed as (src_len0, multiplier))."""

    def __init__(self, dim, heads, multiplier):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim, self.multiplier = dim, heads, dim // heads, multiplier
        self.scale = self.head_dim ** -0.5
        self.k_proj = nn.Linear(dim, dim * multiplier)
        self.v_proj = nn.Linear(dim, dim * multiplier)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _shape(self, t, seq_len, bsz):
        return t.view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2).contiguous()

    def forward(self, hidden_states, attention_mask=None, **kw):
        bsz, tgt_len, _ = hidden_states.size()
        q = self.q_proj(hidden_states) * self.scale
        k = self._shape(self.k_proj(hidden_states), -1, bsz)
        v = self._shape(self.v_proj(hidden_states), -1, bsz)
        proj = (bsz * self.num_heads, -1, self.head_dim)
        q = self._shape(q, tgt_len, bsz).view(*proj)
        k, v = k.view(*proj), v.view(*proj)
        src_len = k.size(1)
        src_len0 = src_len // self.multiplier
        w = torch.bmm(q, k.transpose(1, 2))
        if attention_mask is not None:  # causal mask [bsz, 1, tgt, src0]
            w = w.view(bsz, self.num_heads, tgt_len, src_len0, self.multiplier) + attention_mask.unsqueeze(4)
            w = w.view(bsz * self.num_heads, tgt_len, src_len)
        w = torch.softmax(w, dim=-1)
        out = torch.bmm(w, v).view(bsz, self.num_heads, tgt_len, self.head_dim).transpose(1, 2).reshape(bsz, tgt_len, self.embed_dim)
        return self.out_proj(out), None


def causal_mask(n, dtype=torch.float32):
    return torch.full((n, n), torch.finfo(dtype).min).triu(1)[None, None]


@torch.no_grad()
def hidden_states(model, token_embeds):
    """All layer outputs (list) for token embeddings [B, L, D] (position embeddings added by HF)."""
    h = model.embeddings(inputs_embeds=token_embeds.float())
    mask = causal_mask(h.shape[1]).expand(h.shape[0], 1, -1, -1)
    out = []
    for layer in model.encoder.layers:
        h = layer(h, mask)
        if isinstance(h, tuple):
            h = h[0]
        out.append(h)
    return out


def comfy_clip_to_hf(clip, key):
    """HF-layout weights of one ComfyUI text encoder (e.g. key 'clip_l' / 'clip_h')."""
    sd = clip.get_sd()
    prefix = f"{key}.transformer."
    out = {k[len(prefix):]: v.float() for k, v in sd.items() if k.startswith(prefix) and ".text_model." in "." + k[len(prefix):]}
    assert out, sorted(sd)[:5]
    return out
