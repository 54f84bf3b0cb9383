"""Fixtures for the composition tests: a tiny SD1.5 UNet (ComfyUI, random weights), the tiny W+ Adapter
and PIDiff files (raw state dicts for the hand references and the loaded weights), toy IPAdapter layers."""
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_unet(comfy):
    import comfy.model_patcher
    from fixtures.tiny.sd import build_model

    return comfy.model_patcher.ModelPatcher(build_model("sd15"), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


@pytest.fixture(scope="module")
def layers(tiny_unet):
    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers

    return cross_attention_layers(tiny_unet)


@pytest.fixture(scope="module")
def ip_layers(layers):
    from peers import ToyIPLayers

    return ToyIPLayers(layers)


@pytest.fixture(scope="module")
def residual_methods(comfy):
    """{"rca": (loaded weights, raw official-layout dict), "sca": ...}; raw: {"w_proj": .., "layers": [(wq, wk, wv)]}
    with layer n of the UNet's cross-attention enumeration (down, up, mid) = official index 2n+1."""
    from safetensors.torch import load_file

    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.pidiff import load_pidiff
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    rca_path, sca_path = tiny.ensure("wplus_adapter_sd15"), tiny.ensure("pidiff_sd15")
    raw = torch.load(str(rca_path), weights_only=True, map_location="cpu")
    a = raw["wplus_adapter"]
    n_rca = len({k.split(".")[0] for k in a})
    rca = {"w_proj": raw["w_proj"], "layers": [tuple(a[f"{2 * n + 1}.to_{p}_wplus.weight"].float() for p in "qkv")
                                               for n in range(n_rca)]}
    sd = load_file(str(sca_path))
    n_sca = len({k.split(".")[1] for k in sd if k.startswith("sca.")})
    sca = {"w_proj": {k[len("mapping."):]: v for k, v in sd.items() if k.startswith("mapping.")},
           "layers": [tuple(sd[f"sca.{n}.to_{p}.weight"].float() for p in "qkv") for n in range(n_sca)]}
    return {"rca": (load_wplus_adapter(rca_path), rca), "sca": (load_pidiff(sca_path), sca)}
