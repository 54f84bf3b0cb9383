"""AdaFace text-space identity encoder in plain torch (no transformers at runtime).

- :class:`ClipText`: a CLIP text transformer whose state-dict keys are HF ``CLIPTextModel``'s
  (``text_model.embeddings.token_embedding.weight`` ...). Its attention supports AdaFace's
  ``CLIPAttentionMKV`` (k_proj/v_proj widened ``multiplier`` times; each token contributes ``multiplier``
  keys/values per head, token-major order, causal mask shared by a token's copies). The multiplier of
  each layer is read from the weight shapes.
- :class:`Arc2FaceEncoder`: "photo of a id person" (22 tokens, padded with end-of-text), the L2-normalised
  ArcFace embedding zero-padded to the width replaces the "id" token embedding, output rows 4:20.
- :class:`PromptInverter` (``SubjBasisGenerator``'s ``prompt2token_proj`` path): template
  "photo of a " + ", " * (N + 2) (77 tokens), rows 4:4+N of the token embeddings replaced by the Arc2Face
  output, weighted sum of the last three hidden states (weights normalised to sum 1), final LayerNorm,
  rows 4:4+N; pad blend ``ada * s + pad * (1 - s)`` with ``pad`` = end-of-text token + position embeddings.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

BOS, EOS = 49406, 49407
ARC2FACE_PROMPT = "photo of a id person"
ARC2FACE_MAX_LENGTH = 22
ARC2FACE_OUT = (4, 20)
ID_TOKEN_POS = 4


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


_ACT = {"quick_gelu": quick_gelu, "gelu": F.gelu}


class _Attention(nn.Module):
    def __init__(self, dim, heads, multiplier=1):
        super().__init__()
        self.heads, self.multiplier = heads, multiplier
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim * multiplier)
        self.v_proj = nn.Linear(dim, dim * multiplier)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h, m = self.heads, self.multiplier
        hd = d // h
        q = self.q_proj(x).view(b, n, h, hd).transpose(1, 2)
        # [b, n, m*d] -> [b, n*m, h, hd]: token i's m copies sit at positions i*m .. i*m+m-1
        k = self.k_proj(x).view(b, n * m, h, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, n * m, h, hd).transpose(1, 2)
        src_token = torch.arange(n * m, device=x.device) // m
        allowed = src_token[None, :] <= torch.arange(n, device=x.device)[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class _MLP(nn.Module):
    def __init__(self, dim, inner, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, inner), nn.Linear(inner, dim), _ACT[act]

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, dim, heads, inner, act, multiplier):
        super().__init__()
        self.self_attn = _Attention(dim, heads, multiplier)
        self.layer_norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = _MLP(dim, inner, act)
        self.layer_norm2 = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, vocab, positions, dim):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, dim)
        self.position_embedding = nn.Embedding(positions, dim)


class _Encoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _TextModel(nn.Module):
    def __init__(self, vocab, positions, dim, heads, inner, act, multipliers):
        super().__init__()
        self.embeddings = _Embeddings(vocab, positions, dim)
        self.encoder = _Encoder([_Layer(dim, heads, inner, act, m) for m in multipliers])
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-5)


class ClipText(nn.Module):
    """CLIP text transformer, HF key layout (``text_model.*``)."""

    def __init__(self, vocab=49408, positions=77, dim=768, heads=None, inner=3072, act="quick_gelu", multipliers=(1,) * 12):
        super().__init__()
        self.config = dict(vocab=vocab, positions=positions, dim=dim, heads=heads or dim // 64, inner=inner, act=act,
                           multipliers=list(multipliers))
        self.text_model = _TextModel(vocab, positions, dim, heads or dim // 64, inner, act, multipliers)

    @classmethod
    def from_state_dict(cls, sd, heads=None, act="quick_gelu", source="checkpoint"):
        sd = normalize_text_keys(sd, source)
        tok = sd["text_model.embeddings.token_embedding.weight"]
        pos = sd["text_model.embeddings.position_embedding.weight"]
        if tok.dim() != 2 or tok.shape[0] <= EOS:  # the prompts use CLIP's token ids up to EOS = 49407
            raise ValueError(f"{source}: the text encoder's vocabulary has {tok.shape[0]} tokens; AdaFace needs "
                             f"CLIP's full vocabulary ({EOS + 1}): this file is not an AdaFace/Arc2Face text encoder")
        if pos.dim() != 2 or pos.shape[0] < 22:
            raise ValueError(f"{source}: {pos.shape[0]} position embeddings; AdaFace's prompts need at least 22 (77 usual)")
        n_layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers."))
        dim = tok.shape[1]
        mults = []
        for i in range(n_layers):
            kw = sd[f"text_model.encoder.layers.{i}.self_attn.k_proj.weight"]
            if kw.shape[0] % dim:
                raise ValueError(f"{source}: layer {i} k_proj {list(kw.shape)} is not a multiple of width {dim}")
            mults.append(kw.shape[0] // dim)
        inner = sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        model = cls(tok.shape[0], pos.shape[0], dim, heads, inner, act, mults)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items() if k.startswith("text_model.")}, strict=False)
        missing = [k for k in missing]
        if missing:
            raise ValueError(f"{source}: CLIP text weights incomplete, missing {missing[:6]}{'...' if len(missing) > 6 else ''}")
        return model.eval()

    def token_embeds(self, ids):
        return self.text_model.embeddings.token_embedding(ids)

    def forward(self, token_embeds, layer_weights=None):
        """token_embeds [B, L, D] (no positions) -> hidden states after final LayerNorm [B, L, D].
        ``layer_weights`` [K, 1] or [K, D]: normalised weighted sum of the last K layer outputs."""
        tm = self.text_model
        n = token_embeds.shape[1]
        x = token_embeds + tm.embeddings.position_embedding.weight[:n]
        hidden = []
        for layer in tm.encoder.layers:
            x = layer(x)
            hidden.append(x)
        if layer_weights is not None:
            w = layer_weights.to(x.dtype)
            w = w / w.sum(dim=0, keepdim=True)
            k = w.shape[0]
            x = sum(hidden[-k + j] * w[j] for j in range(k))
        return tm.final_layer_norm(x)


def normalize_text_keys(sd, source="checkpoint"):
    """HF CLIPTextModel keys with or without the ``text_model.`` prefix (or under a known wrapper)."""
    for prefix in ("", "prompt2token_proj.", "text_encoder.", "transformer."):
        if f"{prefix}text_model.embeddings.token_embedding.weight" in sd:
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix + "text_model.")}
        if f"{prefix}embeddings.token_embedding.weight" in sd:
            return {"text_model." + k[len(prefix):]: v for k, v in sd.items()
                    if k.startswith(prefix) and k[len(prefix):].split(".")[0] in ("embeddings", "encoder", "final_layer_norm")}
    raise ValueError(f"{source}: no CLIP text-model weights found (expected HF CLIPTextModel keys "
                     "'text_model.embeddings.token_embedding.weight' ...)")


_TOKENIZER = None


def clip_tokenizer():
    """ComfyUI's bundled CLIP BPE tokenizer (same vocabulary as openai/clip-vit-large-patch14)."""
    global _TOKENIZER
    if _TOKENIZER is None:
        import os

        import comfy.sd1_clip
        from transformers import CLIPTokenizer

        _TOKENIZER = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
    return _TOKENIZER


def prompt_ids(text, max_length):
    """Token ids padded with end-of-text to max_length (HF tokenizer, padding='max_length')."""
    ids = clip_tokenizer()(text)["input_ids"][:max_length]
    return torch.tensor(ids + [EOS] * (max_length - len(ids)))


class Arc2FaceEncoder(nn.Module):
    def __init__(self, text: ClipText):
        super().__init__()
        self.text = text
        ids = prompt_ids(ARC2FACE_PROMPT, ARC2FACE_MAX_LENGTH)
        if int(ids[ID_TOKEN_POS]) != clip_tokenizer().convert_tokens_to_ids("id</w>"):
            raise RuntimeError("unexpected tokenisation of the Arc2Face prompt")
        self.register_buffer("ids", ids, persistent=False)

    @torch.no_grad()
    def forward(self, face_embeds):
        """face_embeds [B, 512] (L2-normalised here) -> identity prompt embeddings [B, 16, D]."""
        face = F.normalize(face_embeds.float(), p=2, dim=-1)
        b = face.shape[0]
        dim = self.text.config["dim"]
        if face.shape[-1] > dim:
            raise ValueError(f"face embedding width {face.shape[-1]} exceeds the Arc2Face encoder width {dim}")
        tok = self.text.token_embeds(self.ids.unsqueeze(0).expand(b, -1)).clone()
        tok[:, ID_TOKEN_POS] = F.pad(face, (0, dim - face.shape[-1]))
        out = self.text(tok)
        return out[:, ARC2FACE_OUT[0]:ARC2FACE_OUT[1]]


class PromptInverter(nn.Module):
    def __init__(self, text: ClipText, num_id_vecs=16, layer_weights=None, pad_embeddings=None):
        super().__init__()
        self.text = text
        self.num_id_vecs = int(num_id_vecs)
        lw = torch.tensor([[1.0], [2.0], [4.0]]) if layer_weights is None else layer_weights.float().reshape(layer_weights.shape[0], -1)
        self.register_buffer("layer_weights", lw, persistent=False)
        positions = text.config["positions"]
        self.register_buffer("ids", prompt_ids("photo of a " + ", " * (self.num_id_vecs + 2), positions), persistent=False)
        if pad_embeddings is None:
            with torch.no_grad():
                emb = text.text_model.embeddings
                pad_embeddings = emb.token_embedding.weight[EOS] + emb.position_embedding.weight[:positions]
        self.register_buffer("pad_embeddings", pad_embeddings.float().reshape(-1, text.config["dim"]), persistent=False)

    @torch.no_grad()
    def forward(self, id_prompt_embs, cfg_scale=1.0):
        """[B, N, D] Arc2Face identity embeddings -> [B, N, D] AdaFace tokens (text input space)."""
        b, n, _ = id_prompt_embs.shape
        if n != self.num_id_vecs:
            raise ValueError(f"the inverter expects {self.num_id_vecs} identity vectors, got {n}")
        tok = self.text.token_embeds(self.ids.unsqueeze(0).expand(b, -1)).clone()
        tok[:, ID_TOKEN_POS:ID_TOKEN_POS + n] = id_prompt_embs.float()
        out = self.text(tok, layer_weights=self.layer_weights)[:, ID_TOKEN_POS:ID_TOKEN_POS + n]
        if cfg_scale != 1:
            pad = self.pad_embeddings[ID_TOKEN_POS:ID_TOKEN_POS + n].unsqueeze(0)
            out = out * cfg_scale + pad * (1 - cfg_scale)
        return out


class AdaFaceModel:
    """Arc2Face encoder + prompt inverter (the ``ADAFACE`` value passed between nodes)."""

    def __init__(self, arc2face: Arc2FaceEncoder, inverter: PromptInverter, info=""):
        self.arc2face, self.inverter, self.info = arc2face, inverter, info

    @property
    def width(self):
        return self.inverter.text.config["dim"]

    @torch.no_grad()
    def encode(self, face_embeds, cfg_scale=1.0, average=True):
        """face_embeds [K, 512] -> AdaFace tokens [N, D] (K faces averaged at the ArcFace stage, then
        L2-normalised, as the official ``avg_at_stage='id_emb'``) or [K, N, D] without averaging."""
        face = face_embeds.float().reshape(-1, face_embeds.shape[-1])
        if average:
            face = F.normalize(face, p=2, dim=-1).mean(dim=0, keepdim=True)
        from ...progress import progress

        bar = progress(2)  # two CLIP text-encoder passes: Arc2Face, then the prompt inverter
        prompt_embs = self.arc2face(face)
        bar.update(1)
        out = self.inverter(prompt_embs, cfg_scale=cfg_scale)
        bar.update(1)
        return out[0] if average else out
