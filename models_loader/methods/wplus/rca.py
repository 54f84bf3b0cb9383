"""Residual cross-attention as trainable modules (W+ Adapter RCA and PIDiff SCA): the training code imports this.

One layer (official ``WPlusAttnProcessor2_0`` / PIDiff Eq. 3-4)::

    h_w = Attn(to_q_wplus(h_text), to_k_wplus(e), to_v_wplus(e))   # layer's heads, SDPA scale, no mask
    out = h_text + scale * h_w                                      # then the layer's to_out

:class:`ResidualCrossAttention` returns ``scale * h_w`` (the residual; the caller adds it to ``h_text``),
with ``scale`` (lambda) multiplied after the attention as the official processor does.
:class:`ResidualAdapter` holds one layer per UNet cross-attention layer under the official state-dict
keys ``{i}.to_q_wplus.weight`` ... (``i`` = the layer's index in diffusers' ``attn_processors``, odd:
attn2). Nothing here freezes, detaches or disables gradients: the inference engine casts and freezes
copies around these modules, training optimises them directly.
"""
import torch
import torch.nn.functional as F
from torch import nn


def sdpa_heads(q, k, v, heads):
    """Multi-head scaled-dot-product attention over [B, T, H*d] tensors (what ComfyUI's
    ``optimized_attention`` computes, in plain torch: the default for training)."""
    b, _, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, -1, inner)


class ResidualCrossAttention(nn.Module):
    """One layer's ``to_q_wplus`` [h, h], ``to_k_wplus`` / ``to_v_wplus`` [h, C] (bias-free)."""

    def __init__(self, hidden, cross_dim):
        super().__init__()
        self.to_q_wplus = nn.Linear(hidden, hidden, bias=False)
        self.to_k_wplus = nn.Linear(cross_dim, hidden, bias=False)
        self.to_v_wplus = nn.Linear(cross_dim, hidden, bias=False)

    @property
    def hidden(self):
        return int(self.to_q_wplus.weight.shape[0])

    def forward(self, h_text, tokens, heads, scale=1.0, attention=sdpa_heads):
        """``h_text`` [B, T, h] (text attention output before to_out), ``tokens`` [B, 4, C] -> ``scale * h_w``.
        ``attention(q, k, v, heads)``: any multi-head attention over [B, T, h] (inference passes ComfyUI's)."""
        h_w = attention(self.to_q_wplus(h_text), self.to_k_wplus(tokens), self.to_v_wplus(tokens), heads)
        return h_w if isinstance(scale, (int, float)) and scale == 1 else h_w * scale


def official_index(n):
    """diffusers ``attn_processors`` index of the n-th cross-attention layer (down, up, mid order)."""
    return 2 * n + 1


class ResidualAdapter(nn.Module):
    """All layers of one adapter; child ``str(official_index(n))`` is cross-attention layer n, so
    ``state_dict()`` has the official ``wplus_adapter`` keys (``1.to_q_wplus.weight``, ``3.…``)."""

    def __init__(self, widths, cross_dim):
        super().__init__()
        self.n_layers = len(widths)
        for n, h in enumerate(widths):
            self.add_module(str(official_index(n)), ResidualCrossAttention(int(h), int(cross_dim)))

    def layer(self, n) -> ResidualCrossAttention:
        return getattr(self, str(official_index(n)))

    def __len__(self):
        return self.n_layers

    def __iter__(self):
        return (self.layer(n) for n in range(self.n_layers))

    @property
    def cross_dim(self):
        return int(self.layer(0).to_k_wplus.weight.shape[1])

    def widths(self):
        return [l.hidden for l in self]

    @classmethod
    def from_weights(cls, layers):
        """From [(to_q, to_k, to_v) weight tensors] per layer (copies them as float32 parameters)."""
        layers = list(layers)
        m = cls([q.shape[0] for q, _, _ in layers], layers[0][1].shape[1])
        with torch.no_grad():  # parameter initialisation, not part of any forward
            for mod, (q, k, v) in zip(m, layers):
                mod.to_q_wplus.weight.copy_(q.float())
                mod.to_k_wplus.weight.copy_(k.float())
                mod.to_v_wplus.weight.copy_(v.float())
        return m

    @classmethod
    def from_attention(cls, attn_modules):
        """The official training init: each layer a copy of one cross-attention module's own ``to_q``, ``to_k``,
        ``to_v`` weights (W+ Adapter ``train_face.py``; PIDiff initialises W_q', W_k', W_v' the same way)."""
        return cls.from_weights([(m.to_q.weight.detach(), m.to_k.weight.detach(), m.to_v.weight.detach())
                                 for m in attn_modules])
