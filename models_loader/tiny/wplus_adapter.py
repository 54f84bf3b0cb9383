"""Tiny W+ Adapter / PIDiff weights for the tiny SD1.5 UNet (random, seeded).

``wplus_adapter_sd15``: the official ``wplus_adapter.bin`` layout (``{"w_proj", "wplus_adapter"}``,
odd indices) torch.save'd with the tiny UNet's widths; ``pidiff_sd15``: the pack's PIDiff
safetensors format. Norm bias/weight are non-trivial so the unconditional tokens ``w_proj(0)``
(= norm.bias) are not zero, and q/k/v use a larger std than the UNet so the residual is visible.
"""
from . import register, seeded_generator


def _tiny_widths():
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from ..patch_engine import cross_attention_layers
    from .sd import UNET_CONFIGS

    unet = UNetModel(**UNET_CONFIGS["sd15"], device="meta", operations=comfy.ops.disable_weight_init)
    return [l.inner_dim for l in cross_attention_layers(unet)]


def random_weights(widths, seed_name, cross_dim=768, std=0.05):
    """ResidualAttnWeights with random tensors for the given per-layer widths."""
    import torch

    from ..methods.wplus.adapter import ROW_GROUPS, W_DIM, ResidualAttnWeights, WProjModel

    g = seeded_generator(seed_name)
    m = WProjModel(cross_dim)
    with torch.no_grad():
        for i, (a, b) in enumerate(ROW_GROUPS):
            getattr(m, f"proj_{i}").weight.copy_(torch.randn(cross_dim, (b - a) * W_DIM, generator=g) * 0.02)
        m.norm.weight.copy_(1.0 + 0.1 * torch.randn(cross_dim, generator=g))
        m.norm.bias.copy_(0.5 * torch.randn(cross_dim, generator=g))
    layers = [(torch.randn(h, h, generator=g) * std, torch.randn(h, cross_dim, generator=g) * std,
               torch.randn(h, cross_dim, generator=g) * std) for h in widths]
    return ResidualAttnWeights(m, layers, "wplus_adapter", seed_name)


@register("wplus_adapter_sd15", "tiny_wplus_adapter_sd15.bin", version=1)
def _wplus(path):
    import torch

    from ..methods.wplus.adapter import to_official_dicts

    torch.save(to_official_dicts(random_weights(_tiny_widths(), "wplus_adapter_sd15")), str(path))


@register("pidiff_sd15", "tiny_pidiff_sd15.safetensors", version=1)
def _pidiff(path):
    from ..methods.pidiff.weights import save_pidiff

    save_pidiff(random_weights(_tiny_widths(), "pidiff_sd15"), path)
