"""PersonaMagic's timestep mapper (official ``models/mapper.py`` + ``models/positional_encoding.py``).

t -> 2048 sinusoidal features (cos then sin, max period 10000) -> ``input_layer`` (a Linear whose
weight rows are the features of 200 anchor timesteps 400, 402, ..., 798; read from the checkpoint)
-> ``timestep_proj`` (Linear, LayerNorm, LeakyReLU) x 2 -> 128-d time embedding e_t.

* tokens: ``output_layer(e_t)`` viewed as [N, D]; token_i = normalize(out_i + e_word) * norm_scale
  (e_word is the class word's input embedding, norm_scale its norm).
* bypass: ``image_output_layer(image_proj(cat(e_t, image_embedding)))`` viewed as [N, D]; it is
  added to the text encoder's last hidden state at the placeholder positions (norm-preserving)
  and the result feeds the cross-attention *values* only.

Everything is computed in float32 (fp16 autocast drifts ~1e-3 from the official outputs).
The training code imports this: :class:`PersonaMagicMapper` and :func:`apply_bypass` are the trainable
math, free of ``no_grad``/``detach``; inference wraps calls to them in ``torch.no_grad()``.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_FEATURES = 2048
MAX_PERIOD = 10000
HIDDEN = 128


def time_features(t, dim=NUM_FEATURES, max_period=MAX_PERIOD):
    """Official ``timestep_embedding(t, 2048)``: [len(t), dim] float32, cos half then sin half."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def anchor_weights(num_anchors=200, t_min=400, t_max=800):
    """What the official ``init_layer`` writes into ``input_layer.weight`` (only used to build
    fresh/tiny mappers: loading always takes the checkpoint's own weights)."""
    step = (t_max - t_min) // num_anchors
    return time_features(torch.arange(t_min, t_max, step, dtype=torch.float32))


class PersonaMagicMapper(nn.Module):
    """Same parameter names as the official ``Mapper`` so state dicts load unchanged."""

    def __init__(self, output_dim=768, token_num=4, num_anchors=200, image_dim=512, output_bypass=True,
                 num_features=NUM_FEATURES):
        super().__init__()
        self.output_dim = output_dim
        self.token_num = token_num
        self.image_dim = image_dim
        self.output_bypass = output_bypass
        self.num_features = num_features
        self.input_layer = nn.Linear(num_features, num_anchors)
        self.timestep_proj = nn.Sequential(
            nn.Linear(num_anchors, HIDDEN), nn.LayerNorm(HIDDEN), nn.LeakyReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.LayerNorm(HIDDEN), nn.LeakyReLU())
        if output_bypass:
            self.image_proj = nn.Sequential(
                nn.Linear(image_dim + HIDDEN, HIDDEN), nn.LayerNorm(HIDDEN), nn.LeakyReLU(),
                nn.Linear(HIDDEN, HIDDEN), nn.LayerNorm(HIDDEN), nn.LeakyReLU())
            self.image_output_layer = nn.Sequential(nn.Linear(HIDDEN, token_num * output_dim))
        self.output_layer = nn.Sequential(nn.Linear(HIDDEN, token_num * output_dim))

    @classmethod
    def from_state_dict(cls, sd, output_dim=None, token_num=None):
        """Build with the shapes found in ``sd`` and load it strictly."""
        try:
            out_rows, hidden = sd["output_layer.0.weight"].shape
            num_anchors, num_features = sd["input_layer.weight"].shape
        except KeyError as exc:
            raise ValueError(
                f"not a PersonaMagic mapper state dict: missing {exc.args[0]!r} "
                "(expected input_layer.*, timestep_proj.*, output_layer.0.*, optional image_proj.*)") from None
        if hidden != HIDDEN:
            raise ValueError(f"PersonaMagic mapper: output_layer expects {HIDDEN}-d input, found {hidden}")
        if token_num is None and output_dim is None:
            output_dim = 768  # the official Mapper hard-codes view(-1, 768)
        if token_num is None:
            if out_rows % output_dim:
                raise ValueError(f"PersonaMagic mapper: output_layer has {out_rows} rows, not a multiple of {output_dim}")
            token_num = out_rows // output_dim
        if output_dim is None:
            output_dim = out_rows // token_num
        if token_num * output_dim != out_rows:
            raise ValueError(
                f"PersonaMagic mapper: output_layer has {out_rows} rows, expected token_num*output_dim = "
                f"{token_num}*{output_dim}")
        bypass = "image_proj.0.weight" in sd
        image_dim = sd["image_proj.0.weight"].shape[1] - HIDDEN if bypass else 512
        m = cls(output_dim=output_dim, token_num=token_num, num_anchors=num_anchors, image_dim=image_dim,
                output_bypass=bypass, num_features=num_features)
        missing, unexpected = m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        if missing or unexpected:
            raise ValueError(f"PersonaMagic mapper state dict mismatch: missing {missing}, unexpected {unexpected}")
        return m.float().eval()

    def time_embedding(self, t):
        feats = time_features(t, self.num_features).to(self.input_layer.weight.device)
        return self.timestep_proj(self.input_layer(feats))

    def forward(self, t, word_embedding, norm_scale, image_embedding=None):
        """-> (tokens, bypass or None): [N, D] each for a scalar timestep ``t``, [T, N, D] for a 1-D
        tensor/list of T timesteps (one batched pass)."""
        dev = self.input_layer.weight.device
        scalar = not (torch.is_tensor(t) and t.dim() > 0) and not isinstance(t, (list, tuple))
        e_t = self.time_embedding(t)  # [T, 128]
        n_t = e_t.shape[0]
        word = word_embedding.to(dev, torch.float32).reshape(1, 1, -1)
        tokens = self.output_layer(e_t).view(n_t, -1, self.output_dim)
        tokens = F.normalize(tokens + word, dim=-1) * norm_scale
        bypass = None
        if self.output_bypass and image_embedding is not None:
            img = image_embedding.to(dev, torch.float32).reshape(1, -1).expand(n_t, -1)
            h = self.image_proj(torch.cat([e_t, img], dim=-1))
            bypass = self.image_output_layer(h).view(n_t, -1, self.output_dim)
        if scalar:
            return tokens[0], None if bypass is None else bypass[0]
        return tokens, bypass


def apply_bypass(hidden, bypass):
    """Official bypass rule: at the placeholder positions the text encoder's last hidden state ``e``
    (before the final LayerNorm) becomes ``normalize(e + bypass) * |e|`` (norm-preserving).
    ``hidden`` [..., N, D] (the N placeholder rows), ``bypass`` [N, D] or broadcastable -> same shape."""
    b = bypass.to(hidden.device, hidden.dtype)
    return F.normalize(hidden + b, dim=-1) * hidden.norm(dim=-1, keepdim=True)
