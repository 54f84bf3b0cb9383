"""Diffusion-training pieces over ComfyUI's own UNet/VAE modules (shared by every method's trainer).

DDPM forward process from the model's own schedule (``alphas_cumprod = 1 / (sigma^2 + 1)`` of ComfyUI's
``model_sampling``), ε or v target by the model's prediction type, the VAE posterior (mean, std) so a
latent is ``(mean + std * eps) * scale_factor`` (diffusers' ``latent_dist.sample()``) with ``eps`` an
input, and per-block gradient checkpointing of the UNet.
"""
import contextlib

import torch


def alphas_cumprod(model):
    """float32 [1000] of a ComfyUI BaseModel (from its sigmas)."""
    sigmas = model.model_sampling.sigmas.detach().double().cpu()
    return (1.0 / (sigmas * sigmas + 1.0)).float()


def prediction_type(model):
    import comfy.model_sampling as ms

    s = model.model_sampling
    if isinstance(s, ms.V_PREDICTION):
        return "v_prediction"
    if isinstance(s, ms.EPS):
        return "epsilon"
    raise ValueError(f"training supports ε- and v-prediction models, not {type(s).__name__}")


def add_noise(acp, x0, noise, t):
    """diffusers ``DDPMScheduler.add_noise``: sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε (ᾱ in float32)."""
    a = acp.to(x0.device)[t].to(x0.dtype)
    s1 = a.sqrt().view(-1, 1, 1, 1)
    s2 = (1 - a).sqrt().view(-1, 1, 1, 1)
    return s1 * x0 + s2 * noise


def target(kind, acp, x0, noise, t):
    if kind == "epsilon":
        return noise
    a = acp.to(x0.device)[t].to(x0.dtype)
    return a.sqrt().view(-1, 1, 1, 1) * noise - (1 - a).sqrt().view(-1, 1, 1, 1) * x0


def unet_forward(model, noisy, t, cond, y=None, transformer_options=None):
    """The bare ComfyUI UNet call (what ``BaseModel.apply_model`` runs inside): ε / v prediction."""
    kwargs = {"context": cond, "transformer_options": dict(transformer_options or {})}
    if y is not None:
        kwargs["y"] = y
    return model.diffusion_model(noisy, t.float(), **kwargs)


def sdxl_y(model, pooled, height, width):
    """The SDXL ``y`` (pooled clip_g + size/crop embeddings) as ComfyUI's ``SDXL.encode_adm`` builds it."""
    return model.encode_adm(pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0,
                            target_width=width, target_height=height).to(pooled.device)


def needs_y(model):
    return getattr(model.diffusion_model, "num_classes", None) is not None


@torch.no_grad()
def vae_posterior(vae, pixels):
    """(mean, std) of the VAE posterior for pixels in [-1, 1] [B, 3, H, W] (ComfyUI's AutoencoderKL)."""
    from comfy.ldm.modules.distributions.distributions import DiagonalGaussianDistribution

    fsm = vae.first_stage_model
    dev = next(fsm.parameters()).device
    dtype = next(fsm.parameters()).dtype
    h = fsm.encoder(pixels.to(dev, dtype))
    if getattr(fsm, "quant_conv", None) is not None:
        h = fsm.quant_conv(h)
    post = DiagonalGaussianDistribution(h.float())
    return post.mean, post.std


def scale_factor(model):
    return float(model.latent_format.scale_factor)


@contextlib.contextmanager
def checkpointed(diffusion_model, enabled=True):
    """Gradient checkpointing of each UNet block (res blocks and transformers) while active."""
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    wrapped = []
    for m in diffusion_model.modules():
        if isinstance(m, (ResBlock, SpatialTransformer)):
            fwd = m.forward

            def run(*args, _fwd=fwd, **kwargs):
                if not torch.is_grad_enabled():
                    return _fwd(*args, **kwargs)
                # the UNet sets transformer_options["block"] (and more) on one shared dict as it walks its blocks:
                # the backward's re-run of this block must see the values of this forward, not the last block's
                # (an attn2 patch keyed by block would otherwise run another layer's weights): a shallow copy each
                args = tuple(dict(a) if isinstance(a, dict) else a for a in args)
                kwargs = {k: dict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
                return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)

            m.forward = run
            wrapped.append(m)
    try:
        yield
    finally:
        for m in wrapped:
            del m.forward
