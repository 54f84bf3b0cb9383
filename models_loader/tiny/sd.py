"""Tiny Stable Diffusion checkpoints that ComfyUI's own loader detects as the right family.

Built from ComfyUI's model classes and saved through ``model_base.state_dict_for_saving`` (the
code path of ComfyUI's CheckpointSave), so the key layout is exactly the original one. Text
encoders and VAE are the full real architectures (random weights); only the UNet is reduced,
keeping what ComfyUI's detector needs (``model_channels=320`` and the family's context width).
"""
from . import ensure, init_params_, register, seeded_generator

# ComfyUI UNetModel kwargs. transformer_depth has one entry per input res block,
# transformer_depth_output one per output res block (num_res_blocks + 1 per level).
_COMMON = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "use_spatial_transformer": True, "legacy": False, "model_channels": 320,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
UNET_CONFIGS = {
    # 2 levels, 1 res block each, one transformer per block (+ middle): 6 cross-attention layers.
    "sd15": dict(_COMMON, adm_in_channels=None, num_res_blocks=[1, 1], channel_mult=[1, 2],
                 transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                 use_linear_in_transformer=False, context_dim=768, num_heads=8, num_head_channels=-1),
    "sd2": dict(_COMMON, adm_in_channels=None, num_res_blocks=[1, 1], channel_mult=[1, 2],
                transformer_depth=[1, 1], transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1,
                use_linear_in_transformer=True, context_dim=1024, num_heads=-1, num_head_channels=64),
    # Segmind Vega: the smallest config ComfyUI detects as an SDXL-family model.
    "sdxl": dict(_COMMON, num_classes="sequential", adm_in_channels=2816, num_res_blocks=[2, 2, 2],
                 channel_mult=[1, 2, 4], transformer_depth=[0, 0, 1, 1, 2, 2],
                 transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=-1,
                 use_linear_in_transformer=True, context_dim=2048, num_heads=-1, num_head_channels=64),
}
# The full-size SD1.5 UNet (860M params) for benchmarks: built with random weights, never saved.
SD15_FULL_UNET = dict(_COMMON, adm_in_channels=None, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                      transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                      transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                      use_linear_in_transformer=False, context_dim=768, num_heads=8, num_head_channels=-1)

_FAMILY = {"sd15": "SD15", "sd2": "SD20", "sdxl": "Segmind_Vega"}

SD_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                   "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def model_config(kind):
    """ComfyUI supported-model object for a tiny kind (or "sd15_full")."""
    import comfy.supported_models as sm

    if kind == "sd15_full":
        return sm.SD15(dict(SD15_FULL_UNET))
    return getattr(sm, _FAMILY[kind])(dict(UNET_CONFIGS[kind]))


def build_model(kind, dtype=None):
    """A ComfyUI ``BaseModel`` with random weights (no file): fast unit tests and benches."""
    import torch

    cfg = model_config(kind)
    cfg.set_inference_dtype(dtype or torch.float32, None)
    model = cfg.get_model({})
    init_params_(model.diffusion_model, seeded_generator(kind + "/unet"))
    return model


def _vae_state_dict(gen):
    import comfy.ldm.models.autoencoder as ae

    vae = ae.AutoencoderKL(ddconfig=SD_VAE_DDCONFIG, embed_dim=4)
    init_params_(vae, gen)
    return vae.state_dict()


def _clip_state_dict(cfg, gen):
    import comfy.sd

    target = cfg.clip_target({})
    clip = comfy.sd.CLIP(target, embedding_directory=None)
    init_params_(clip.cond_stage_model, gen)
    return clip.get_sd()


def _write_checkpoint(kind, path):
    import torch
    import comfy.utils

    gen = seeded_generator(kind)
    model = build_model(kind)
    clip_sd = _clip_state_dict(model.model_config, gen)
    vae_sd = _vae_state_dict(gen)
    sd = model.state_dict_for_saving(clip_sd, vae_sd)
    sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    comfy.utils.save_torch_file(sd, str(path), metadata={"tiny_model": kind})


@register("sd15", "tiny_sd15.safetensors")
def _sd15(path):
    _write_checkpoint("sd15", path)


@register("sd2", "tiny_sd2.safetensors")
def _sd2(path):
    _write_checkpoint("sd2", path)


@register("sdxl", "tiny_sdxl_vega.safetensors")
def _sdxl(path):
    _write_checkpoint("sdxl", path)


@register("controlnet_sd15", "tiny_controlnet_sd15.safetensors")
def _controlnet(path):
    """ControlNet in the original ``control_model.*`` layout for the tiny SD1.5 UNet."""
    import torch
    import comfy.cldm.cldm as cldm
    import comfy.utils

    cfg = {k: v for k, v in UNET_CONFIGS["sd15"].items() if k not in ("transformer_depth_output", "out_channels")}
    net = cldm.ControlNet(hint_channels=3, **cfg)
    init_params_(net, seeded_generator("controlnet_sd15"))
    sd = {f"control_model.{k}": v.to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    comfy.utils.save_torch_file(sd, str(path), metadata={"tiny_model": "controlnet_sd15"})


def ensure_checkpoint(kind):
    return ensure(kind)
