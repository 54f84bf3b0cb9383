"""Attention-patch engine contracts: chaining with a foreign attn2 replace in either order, clones,
every key visited, keys enumerated from the model (official W+ Adapter table on full SD1.5), errors."""
import copy
import sys
from pathlib import Path

import pytest
import torch

from harness.unet import comfy_eps
from test_rca_oracle import _apply, _inputs, _mh, _unmh, ref_w_proj

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "composition"))
from peers import IPAdapterAttn2Replace as ForeignAttn2Replace  # noqa: E402  the one IPAdapter stand-in (cited there)

ALWAYS = {"sigma_start": float("inf"), "sigma_end": 0.0}  # IPAdapter's kwargs always carry a sigma window


def foreign_residual(out, q, k, v, extra_options, weight=1.0, sigma_start=1e9, sigma_end=0.0, log=None):
    if log is not None:
        log.append(extra_options["block"])
    return weight * torch.tanh(q)  # a cheap, visible residual


def install_foreign(model, weight, log=None):
    """Mimics IPAdapter's set_model_patch_replace: SD1.5 2-tuple keys, .add on an occupant."""
    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers

    m = model.clone()
    for layer in cross_attention_layers(m):
        key = tuple(layer.block)
        to = m.model_options["transformer_options"].copy()
        to["patches_replace"] = dict(to.get("patches_replace", {}))
        to["patches_replace"]["attn2"] = dict(to["patches_replace"].get("attn2", {}))
        slot = to["patches_replace"]["attn2"]
        if key not in slot:
            slot[key] = ForeignAttn2Replace(foreign_residual, weight=weight, log=log, **ALWAYS)
            m.model_options["transformer_options"] = to
        else:
            slot[key].add(foreign_residual, weight=weight, log=log, **ALWAYS)
    return m


@pytest.fixture(scope="module")
def adapter(tiny_adapter_path):
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    return load_wplus_adapter(tiny_adapter_path)


def _eps(m, seed=7):
    x, t, ctx = _inputs(seed=seed, hw=8)
    return comfy_eps(m, x, t, ctx, [1, 0])


def _sdpa(q, k, v, heads):
    return _unmh(torch.nn.functional.scaled_dot_product_attention(_mh(q, heads), _mh(k, heads), _mh(v, heads)))


def test_chaining_either_order(tiny_unet, adapter, tiny_adapter_path, wcodes):
    """Foreign first (wrapped as base) and ours first (the foreign pack .add()s onto our chain) both give,
    per layer, plain + foreign + RCA(plain): checked against that explicit sum; the two orders agree."""
    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers

    raw = torch.load(str(tiny_adapter_path), weights_only=True, map_location="cpu")
    w, lam, fw, cou = wcodes[0], 0.9, 0.3, [1, 0]
    foreign_first = _apply(install_foreign(tiny_unet, fw), adapter, w, lam)
    ours_first = install_foreign(_apply(tiny_unet, adapter, w, lam), fw)
    e_c, e_u = ref_w_proj(raw["w_proj"], w), ref_w_proj(raw["w_proj"], torch.zeros_like(w))
    e = torch.cat([e_u if c == 1 else e_c for c in cou])
    g = torch.Generator().manual_seed(3)
    for n, layer in enumerate(cross_attention_layers(tiny_unet)):
        q = torch.randn(2, 16, layer.inner_dim, generator=g)
        k, v = torch.randn(2, 77, layer.inner_dim, generator=g), torch.randn(2, 77, layer.inner_dim, generator=g)
        eo = {"n_heads": layer.heads, "attn_precision": None, "cond_or_uncond": cou, "block": layer.block,
              "sigmas": torch.ones(2)}
        a = raw["wplus_adapter"]
        wq, wk, wv = (a[f"{2 * n + 1}.to_{p}_wplus.weight"].float() for p in "qkv")
        plain = _sdpa(q, k, v, layer.heads)
        rca = lam * _sdpa(plain @ wq.T, e @ wk.T, e @ wv.T, layer.heads)
        want = plain + fw * torch.tanh(q) + rca
        for model in (foreign_first, ours_first):
            chain = model.model_options["transformer_options"]["patches_replace"]["attn2"][tuple(layer.block)]
            got = chain(q, k, v, eo)
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), layer.block
        assert rca.abs().max() > 1e-2 * want.abs().max() and fw * torch.tanh(q).abs().max() > 1e-2
    x_a, x_b = _eps(foreign_first), _eps(ours_first)
    assert (x_a - x_b).abs().max() <= 1e-5 * x_a.abs().max()


def test_two_identities_stack(tiny_unet, adapter, wcodes):
    from comfyui_face_personalization.models_loader.patch_engine import installed_chains

    m1 = _apply(tiny_unet, adapter, wcodes[0], 1.0, mask=torch.ones(1, 8, 8))
    m2 = _apply(m1, adapter, wcodes[1], 1.0, mask=torch.zeros(1, 8, 8))
    chains = installed_chains(m2)
    assert all(c.methods() == ["wplus_rca", "wplus_rca"] for c in chains.values())
    # second identity with an all-zero mask adds nothing
    assert torch.allclose(_eps(m2), _eps(m1), atol=1e-6)


def test_clone_leaves_original_untouched(tiny_unet, adapter, wcodes):
    from comfyui_face_personalization.models_loader.patch_engine import installed_chains

    before = copy.deepcopy(tiny_unet.model_options)
    first = _apply(tiny_unet, adapter, wcodes[0], 1.0)
    assert tiny_unet.model_options == before  # no patch leaked into the input MODEL
    chains_first = {k: (c, c.entries) for k, c in installed_chains(first).items()}
    out_first = _eps(first)
    second = _apply(first, adapter, wcodes[1], 0.7)  # copy-on-add
    for k, (c, entries) in chains_first.items():
        assert installed_chains(first)[k] is c and c.entries == entries and len(entries) == 1
        assert len(installed_chains(second)[k].entries) == 2
    clone = first.clone()  # ModelPatcher.clone deep-copies model_options: weights shared
    c0 = next(iter(installed_chains(first).values()))
    c1 = next(iter(installed_chains(clone).values()))
    assert c0 is not c1 and c0.entries[0].params.shared is c1.entries[0].params.shared
    assert torch.equal(_eps(first), out_first) and torch.equal(_eps(clone), out_first)


def test_every_installed_key_is_visited(tiny_unet, adapter, wcodes):
    from comfyui_face_personalization.models_loader import patch_engine

    m = _apply(tiny_unet, adapter, wcodes[0], 1.0)
    chains = patch_engine.installed_chains(m)
    layers = patch_engine.cross_attention_layers(tiny_unet)
    assert len(chains) == len(layers) == 7
    seen = []
    for key, chain in chains.items():
        orig = chain.__call__

        def spy(q, k, v, eo, _key=key, _orig=orig):
            seen.append(_key)
            return _orig(q, k, v, eo)
        m.model_options["transformer_options"]["patches_replace"]["attn2"][key] = spy
    _eps(m)
    assert sorted(seen) == sorted(chains)


def test_official_table_on_full_sd15():
    """Down, up, mid enumeration of the full SD1.5 UNet == the official index table."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import official_index
    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers
    from fixtures.tiny.sd import SD15_FULL_UNET

    unet = UNetModel(**SD15_FULL_UNET, device="meta", operations=comfy.ops.disable_weight_init)
    layers = cross_attention_layers(unet)
    table = {official_index(n): (l.block, l.inner_dim, l.heads) for n, l in enumerate(layers)}
    expect = {1: (("input", 1), 320), 3: (("input", 2), 320), 5: (("input", 4), 640), 7: (("input", 5), 640),
              9: (("input", 7), 1280), 11: (("input", 8), 1280), 13: (("output", 3), 1280), 15: (("output", 4), 1280),
              17: (("output", 5), 1280), 19: (("output", 6), 640), 21: (("output", 7), 640), 23: (("output", 8), 640),
              25: (("output", 9), 320), 27: (("output", 10), 320), 29: (("output", 11), 320), 31: (("middle", 0), 1280)}
    assert {i: v[:2] for i, v in table.items()} == expect
    assert all(v[2] == 8 for v in table.values())


def test_bad_inputs(comfy, tiny_unet, adapter, tmp_path):
    from comfyui_face_personalization.models_loader.methods.pidiff import load_pidiff
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    with pytest.raises(ValueError, match=r"\[B,18,512\]"):
        _apply(tiny_unet, adapter, torch.zeros(1, 14, 512), 1.0)
    with pytest.raises(ValueError, match="one per image"):
        m = _apply(tiny_unet, adapter, torch.zeros(3, 18, 512), 1.0)
        _eps(m)
    bad = tmp_path / "not_adapter.pt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, str(bad))
    with pytest.raises(ValueError, match="not a W\\+ Adapter checkpoint"):
        load_wplus_adapter(bad)
    with pytest.raises(ValueError, match="not a PIDiff weights file"):
        load_pidiff(bad)
    trunc = tmp_path / "trunc.bin"
    raw = torch.load(str(__import__("fixtures.tiny", fromlist=["x"]).ensure(
        "wplus_adapter_sd15")), weights_only=True)
    raw["w_proj"]["proj_3.weight"] = raw["w_proj"]["proj_3.weight"][:, :2048]
    torch.save(raw, str(trunc))
    with pytest.raises(ValueError, match="proj_3.weight"):
        load_wplus_adapter(trunc)


def test_sdxl_model_with_sd15_adapter_errors(comfy, tiny_sdxl, adapter, wcodes):
    import comfy.sd
    import folder_paths

    out = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", tiny_sdxl),
                                                output_vae=False, output_clip=False)
    with pytest.raises(ValueError, match="SDXL") as ei:
        _apply(out[0], adapter, wcodes[0], 1.0)
    assert "SD1.5" in str(ei.value) or "Stable Diffusion 1.5" in str(ei.value)


def test_default_start_reproduces_official_switch_on():
    """Official: lambda = 0 for steps i <= min(int(0.2*steps), 30), whatever the scheduler (the rule counts steps)."""
    from comfyui_face_personalization.models_loader.methods.wplus.attention import OFFICIAL_START_PERCENT, StepWindow

    rule = StepWindow(OFFICIAL_START_PERCENT)
    for steps in range(1, 151):
        first_on = next((i for i in range(steps) if rule(i, steps)), steps)
        assert first_on == min(int(0.2 * steps), 30) + 1 or first_on == steps, steps
    assert all(StepWindow(0.0)(i, 10) for i in range(10))  # 0: on from the first step
    assert [StepWindow(0.0, 0.5)(i, 10) for i in range(10)] == [True] * 5 + [False] * 5


def test_step_index_within_the_run():
    """current_step: a call at the run's k-th sigma is step k; a sampler's intermediate sigma counts as the
    step it started from; no schedule -> None (the sigma window applies)."""
    from comfyui_face_personalization.models_loader.patch_engine import current_step

    schedule = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    assert [current_step({"sample_sigmas": schedule}, s) for s in (14.6, 7.0, 3.0, 1.0)] == [(i, 4) for i in range(4)]
    assert current_step({"sample_sigmas": schedule}, 5.0) == (1, 4)
    assert current_step({}, 5.0) is None