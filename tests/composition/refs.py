"""Hand references (float64, plain torch) for the composition tests: multi-head attention, the official
W+ mapping, the RCA/SCA residual and IPAdapter's residual, each written from the papers'/packs' formulas."""
import torch
import torch.nn.functional as F


def attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, in float64."""
    q, k, v = (t.double() for t in (q, k, v))
    b, n, d = q.shape
    split = lambda t: t.view(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (d // heads) ** 0.5, dim=-1)
    return (w @ split(v)).transpose(1, 2).reshape(b, n, d)


def w_proj(wp, w):
    """Official WProjModel: 4 tokens from W+ rows [0:4], [4:8], [8:12], [12:18], then LayerNorm."""
    b = w.shape[0]
    toks = [w[:, a:e].reshape(b, -1).double() @ wp[f"proj_{i}.weight"].double().T
            for i, (a, e) in enumerate(((0, 4), (4, 8), (8, 12), (12, 18)))]
    x = torch.stack(toks, 1)
    return F.layer_norm(x, (x.shape[-1],), wp["norm.weight"].double(), wp["norm.bias"].double(), eps=1e-5)


def layer_mask(mask, hw, cou):
    """[B,H,W] region masks -> [len(cou)*B, h*w, 1] on the layer's token grid (bilinear)."""
    m = F.interpolate(mask[:, None].double(), size=hw, mode="bilinear", align_corners=False)
    return m.reshape(m.shape[0], -1, 1).repeat(len(cou), 1, 1)


def residual(h_text, raw, n, w, lam, cou, heads, mask=None, hw=None):
    """lam * Attn(h_text Wq'^T, e Wk'^T, e Wv'^T) [* mask]; e = w_proj(w+) for cond chunks, w_proj(0) for uncond."""
    wq, wk, wv = (t.double() for t in raw["layers"][n])
    b = h_text.shape[0] // len(cou)
    e_c = w_proj(raw["w_proj"], w).expand(b, -1, -1) if w.shape[0] == 1 else w_proj(raw["w_proj"], w)
    e_u = w_proj(raw["w_proj"], torch.zeros_like(w[:1])).expand(b, -1, -1)
    e = torch.cat([e_u if c == 1 else e_c for c in cou])
    h_w = attention(h_text.double() @ wq.T, e @ wk.T, e @ wv.T, heads)
    if mask is not None:
        h_w = h_w * layer_mask(mask, hw, cou)
    return lam * h_w


def ip_residual(q, ip_layers, module_key, cond, uncond, weight, cou, heads):
    """IPAdapter "V only": weight * Attn(q, to_k_ip(tokens), to_v_ip(tokens)), tokens per chunk."""
    kk = ip_layers.to_kvs[module_key + "_to_k_ip"].weight.double()
    vk = ip_layers.to_kvs[module_key + "_to_v_ip"].weight.double()
    b = q.shape[0] // len(cou)
    toks = torch.cat([(uncond if c == 1 else cond).double().expand(b, -1, -1) for c in cou])
    return weight * attention(q, toks @ kk.T, toks @ vk.T, heads)
