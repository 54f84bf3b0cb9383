"""Independent reference training steps (test-only): diffusers UNet2DConditionModel / AutoencoderKL /
DDPMScheduler and transformers CLIPTextModel on the tiny checkpoint's weights, hand-written attention
processors and a hand-written AdamW. Nothing here imports the pack's training code."""
import math

import torch
import torch.nn.functional as F


def _mh(x, h):
    b, n, d = x.shape
    return x.view(b, n, h, d // h).transpose(1, 2)


def _unmh(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attn(q, k, v, h):
    return _unmh(F.scaled_dot_product_attention(_mh(q, h), _mh(k, h), _mh(v, h)))


class RCAProcessor:
    """Official WPlusAttnProcessor2_0: to_out(h_text + scale * Attn(q'(h_text), k'(e), v'(e)))."""

    def __init__(self, wq, wk, wv, holder):
        self.wq, self.wk, self.wv, self.holder = wq, wk, wv, holder

    def __call__(self, a, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        h = a.heads
        h_text = attn(a.to_q(hidden_states), a.to_k(encoder_hidden_states), a.to_v(encoder_hidden_states), h)
        e = self.holder["tokens"]
        scale = self.holder.get("scale", 1.0)
        if scale:
            h_w = attn(h_text @ self.wq.T, e @ self.wk.T, e @ self.wv.T, h)
            h_text = h_text + scale * h_w
        return a.to_out[1](a.to_out[0](h_text))


class KVProcessor:
    """PersonaMagic MyAttenProc on attn2: K from the context, V from the bypass context."""

    def __init__(self, holder):
        self.holder = holder

    def __call__(self, a, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctx = self.holder["ctx"]
        ctx_v = self.holder.get("ctx_v")
        ctx_v = ctx if ctx_v is None else ctx_v
        out = attn(a.to_q(hidden_states), a.to_k(ctx), a.to_v(ctx_v), a.heads)
        return a.to_out[1](a.to_out[0](out))


def w_proj(p, w):
    """Official WProjModel from raw parameter tensors (p: {'proj_i.weight', 'norm.weight', 'norm.bias'})."""
    b = w.shape[0]
    toks = [w[:, a:e].reshape(b, -1) @ p[f"proj_{i}.weight"].T for i, (a, e) in enumerate(((0, 4), (4, 8), (8, 12), (12, 18)))]
    x = torch.stack(toks, 1)
    return F.layer_norm(x, (x.shape[-1],), p["norm.weight"], p["norm.bias"], eps=1e-5)


class AdamW:
    """torch.optim.AdamW's update written out (decoupled weight decay, bias correction, eps outside the sqrt)."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.p = params
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, betas[0], betas[1], eps, weight_decay
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}
        self.t = 0

    @torch.no_grad()
    def step(self, grads):
        self.t += 1
        for k, p in self.p.items():
            g = grads[k]
            p.mul_(1 - self.lr * self.wd)
            self.m[k].mul_(self.b1).add_(g, alpha=1 - self.b1)
            self.v[k].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            mh = self.m[k] / (1 - self.b1 ** self.t)
            vh = self.v[k] / (1 - self.b2 ** self.t)
            p.sub_(self.lr * mh / (vh.sqrt() + self.eps))


class References:
    def __init__(self, mp, clip, vae):
        self.unet = self._unet(mp)
        self.vae = self._vae(vae)
        self.text, self.tokenizer = self._text(clip)
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear")
        self.scaling = 0.18215

    @staticmethod
    def _unet(mp):
        from fixtures.tiny.sd import diffusers_unet

        return diffusers_unet(mp)

    @staticmethod
    def _vae(vae):
        from diffusers import AutoencoderKL
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                              block_out_channels=(128, 256, 512, 512), layers_per_block=2)
        sd = {k: v.float() for k, v in vae.get_sd().items()}
        conv = convert_ldm_vae_checkpoint(sd, dict(model.config))
        model.load_state_dict(conv, strict=True)
        return model.eval().requires_grad_(False)

    @staticmethod
    def _text(clip):
        import os

        import comfy.sd1_clip
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        sd = clip.get_sd()
        pre = "clip_l.transformer."
        hf = {k[len(pre) + len("text_model."):]: v.float() for k, v in sd.items()
              if k.startswith(pre + "text_model.")}
        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                             layer_norm_eps=1e-5, attn_implementation="eager")
        model = CLIPTextModel(cfg).eval()
        tm = getattr(model, "text_model", model)
        missing, unexpected = tm.load_state_dict(hf, strict=False)
        assert not [m for m in missing if "position_ids" not in m], missing
        tok = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
        return model.requires_grad_(False), tok

    # -- pieces of a step -----------------------------------------------------------------------
    def ids(self, prompts):
        return self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_text(self, prompts):
        return self.text(self.ids(prompts)).last_hidden_state

    @torch.no_grad()
    def latents(self, pixels, eps):
        dist = self.vae.encode(pixels.float()).latent_dist
        return (dist.mean + dist.std * eps) * self.scaling

    def noisy(self, x0, noise, t):
        return self.scheduler.add_noise(x0, noise, t.long())

    def set_rca(self, layers, holder):
        """layers: [(wq, wk, wv)] in attn_processors attn2 order (odd indices)."""
        from diffusers.models.attention_processor import AttnProcessor2_0

        procs, n = {}, 0
        for i, name in enumerate(self.unet.attn_processors):
            if name.endswith("attn2.processor"):
                assert i == 2 * n + 1
                procs[name] = RCAProcessor(*layers[n], holder)
                n += 1
            else:
                procs[name] = AttnProcessor2_0()
        self.unet.set_attn_processor(procs)

    def set_kv(self, holder):
        from diffusers.models.attention_processor import AttnProcessor2_0

        procs = {name: (KVProcessor(holder) if name.endswith("attn2.processor") else AttnProcessor2_0())
                 for name in self.unet.attn_processors}
        self.unet.set_attn_processor(procs)

    def unet_attn2(self):
        """attn2 modules in diffusers' attn_processors order (down, up, mid)."""
        mods = dict(self.unet.named_modules())
        return [mods[n[:-len(".processor")]] for n in self.unet.attn_processors if n.endswith("attn2.processor")]


def close_rel(a, b, rtol):
    a, b = float(a), float(b)
    return abs(a - b) <= rtol * max(abs(b), 1e-6)  # terms below 1e-6 (e.g. a zero disentangle) compare absolutely


def max_rel_err(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


__all__ = ["References", "AdamW", "w_proj", "attn", "close_rel", "max_rel_err", "math"]
