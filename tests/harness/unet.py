"""One denoise call of a ComfyUI ModelPatcher's UNet, the way the sampler makes it (transformer_options with
cond_or_uncond and sigmas), for tests that compare patched and unpatched outputs."""
import torch


def comfy_eps(mp, x, t, ctx, cond_or_uncond, sigma=1.0, **transformer_extra):
    """``cond_or_uncond``: chunk order of the batch (0 cond, 1 uncond); ``transformer_extra``: more
    transformer_options entries (e.g. ``sub_idxs`` or ``context_window``)."""
    to = dict(mp.model_options["transformer_options"])
    to["cond_or_uncond"] = list(cond_or_uncond)
    to["sigmas"] = torch.full((x.shape[0],), float(sigma))
    to.update(transformer_extra)
    with torch.no_grad():
        return mp.model.diffusion_model(x, timesteps=t, context=ctx, transformer_options=to)
