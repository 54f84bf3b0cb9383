"""W+ Adapter Stage I / Stage II trainer == an independent reference step (diffusers UNet + VAE + DDPM scheduler,
transformers CLIP, hand-written RCA processors, W+ projection and AdamW) on the same weights and inputs."""
import pytest
import torch
import torch.nn.functional as F

from common import (AdamWReplay, assert_bit_identical, assert_official_adamw, compare_step, snapshot, update_peak, eps_band_fraction)
from reference import AdamW, w_proj

SEED = 7


def _wt():
    from comfyui_face_personalization.models_loader.methods.wplus import train as wt

    return wt


def _loop():
    from comfyui_face_personalization.models_loader.training import loop

    return loop


def one_step(trainer, inputs, opt):
    r = _loop().optimizer_step(trainer, opt, inputs)
    return r.terms, r.grads, r.after


def _gen(step):
    from comfyui_face_personalization.models_loader.training.protocol import step_generator

    return step_generator(SEED, step, 0)


def ref_loss(ref, params, inputs, pixels, stage):
    """The official train_face.py / train_wild.py loss on the reference models."""
    idx = inputs["index"]
    t = inputs["timesteps"]
    x0 = ref.latents(pixels[idx], inputs["vae_eps"])
    x_t = ref.noisy(x0, inputs["noise"], t)
    ctx = ref.encode_text(inputs["prompts"])
    wp = {k[len("w_proj."):]: v for k, v in params.items() if k.startswith("w_proj.")}
    w = inputs["wplus"].clone()
    w[inputs["drop_wplus"]] = 0.0
    holder = {"tokens": w_proj(wp, w), "scale": 1.0}
    layers = [(params[f"wplus_adapter.{2 * n + 1}.to_q_wplus.weight"], params[f"wplus_adapter.{2 * n + 1}.to_k_wplus.weight"],
               params[f"wplus_adapter.{2 * n + 1}.to_v_wplus.weight"]) for n in range(len(ref.unet_attn2()))]
    ref.set_rca(layers, holder)
    pred = ref.unet(x_t, t, encoder_hidden_states=ctx).sample
    rec = F.mse_loss(pred.float(), inputs["noise"].float(), reduction="mean")
    if stage == 1:
        return {"loss": rec, "mse": rec}
    with torch.no_grad():
        holder["tokens"] = w_proj(wp, inputs["wplus_aug"])
        aug = ref.unet(x_t, t, encoder_hidden_states=ctx).sample
        holder["scale"] = 0.0
        now = ref.unet(x_t, t, encoder_hidden_states=ctx).sample
    m = inputs["region"]
    disen = F.mse_loss(aug.float() * m, pred.float() * m, reduction="mean")
    pres = F.mse_loss(now.float(), pred.float(), reduction="mean")
    return {"loss": rec + 2.0 * disen + 1.0 * pres, "mse": rec, "disentangle": disen, "preserve": pres}


def run_against_reference(trainer, ref, pixels, ref_params, trainable_keys, stage, steps=3):
    """``steps`` optimiser steps of the trainer and of the reference. Each step's reference loss and gradients are
    evaluated at the trainer's current tensors (so fp32 noise of one step does not compound through the forward
    passes of the next); the reference AdamW then updates its own copy from its own gradients, and that copy is
    compared with the trainer's tensors after 1, 2 and 3 steps."""
    loop = _loop()
    opt = loop.make_optimizer(trainer)
    cfg = trainer.optimizer_config()
    assert_official_adamw(opt, cfg, 1e-4, 1e-2)
    own = {k: ref_params[k].detach().clone() for k in trainable_keys}
    ropt = AdamW(own, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    frozen_mods = [trainer.model.diffusion_model, trainer.prompts.clip.cond_stage_model]
    before = snapshot(*frozen_mods)
    replay = AdamWReplay({k: p.detach() for k, p in trainer.trainable().items()}, 1e-4)
    peak = {}
    seen_terms = []
    current = {k: p.detach().clone() for k, p in trainer.trainable().items()}
    for s in range(steps):
        inputs = trainer.sample_inputs(s, 0, _gen(s))
        terms, grads, after = one_step(trainer, [inputs], opt)
        at = dict(ref_params)
        at.update({k: current[k].clone().requires_grad_(True) for k in trainable_keys})
        rterms = ref_loss(ref, at, inputs, pixels, stage)
        rterms["loss"].backward()
        rgrads = {k: at[k].grad.detach().clone() for k in trainable_keys}
        ropt.step(rgrads)
        update_peak(peak, rgrads)
        compare_step(s, terms, {k: v.detach() for k, v in rterms.items()}, grads, rgrads, after, own, 1e-4,
                     grad_peak=peak)
        replay.check(s, grads, after)
        current = after
        seen_terms.append(terms)
    assert_bit_identical(before, frozen_mods, "W+ training")
    assert eps_band_fraction(peak) < 0.01  # the noise-floor exemption covers a sliver of the elements
    return seen_terms


@pytest.fixture(scope="module")
def bank(shared_data):
    return _wt().DirectionBank.from_folder(str(shared_data / "wplus"))


def _examples(wcodes, photos, n=3):
    wt = _wt()
    pixels, masks, names = photos
    return [wt.Example(wcodes[i % len(wcodes)], [f"a photo of a person number {i}", "a person outdoors"], masks[i], names[i])
            for i in range(n)]


def test_stage1_step_matches_reference(sd15, ref, photos, wcodes):
    wt = _wt()
    mp, clip, vae = sd15
    pixels = photos[0][:3]
    trainer = wt.WPlusAdapterTrainer(mp, clip, vae, pixels, _examples(wcodes, photos), stage=1, batch_size=2)
    tr = trainer.trainable()
    # exactly the official trainable set: w_proj (6 tensors) + 3 projections per cross-attention layer
    n_layers = len(ref.unet_attn2())
    assert set(tr) == {f"w_proj.{k}" for k in ("proj_0.weight", "proj_1.weight", "proj_2.weight", "proj_3.weight",
                                              "norm.weight", "norm.bias")} | \
        {f"wplus_adapter.{2 * n + 1}.to_{p}_wplus.weight" for n in range(n_layers) for p in "qkv"}
    # official init: adapter = copies of each attn2's to_q/k/v (read from the diffusers reference UNet)
    ref_params = {}
    for n, a in enumerate(ref.unet_attn2()):
        for p, lin in (("q", a.to_q), ("k", a.to_k), ("v", a.to_v)):
            key = f"wplus_adapter.{2 * n + 1}.to_{p}_wplus.weight"
            assert torch.equal(tr[key].detach(), lin.weight.float()), key
            ref_params[key] = lin.weight.detach().clone().float().requires_grad_(True)
    for k in tr:
        if k.startswith("w_proj."):
            ref_params[k] = tr[k].detach().clone().requires_grad_(True)  # initial trainables: given
    run_against_reference(trainer, ref, pixels, ref_params, sorted(tr), stage=1)


def test_stage2_step_matches_reference(sd15, ref, photos, wcodes, bank, comfy):
    from fixtures import tiny

    wt = _wt()
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    mp, clip, vae = sd15
    pixels = photos[0][:3]
    path = tiny.ensure("wplus_adapter_sd15")
    raw = torch.load(str(path), weights_only=True, map_location="cpu")
    trainer = wt.WPlusAdapterTrainer(mp, clip, vae, pixels, _examples(wcodes, photos), stage=2, batch_size=2,
                                     init=load_wplus_adapter(path), directions=bank)
    tr = trainer.trainable()
    assert not any(k.startswith("w_proj.") for k in tr)  # w_proj frozen in Stage II
    assert set(tr) == {f"wplus_adapter.{k}" for k in raw["wplus_adapter"]}
    assert all(not p.requires_grad for p in trainer.mapping.parameters())
    ref_params = {f"w_proj.{k}": v.float().clone() for k, v in raw["w_proj"].items()}
    ref_params.update({f"wplus_adapter.{k}": v.float().clone().requires_grad_(True) for k, v in raw["wplus_adapter"].items()})
    w_before = {k: p.detach().clone() for k, p in trainer.mapping.state_dict().items()}
    terms = run_against_reference(trainer, ref, pixels, ref_params, sorted(tr), stage=2)
    assert all(torch.equal(w_before[k], v) for k, v in trainer.mapping.state_dict().items())
    assert any(float(t["disentangle"]) > 0 for t in terms) and all(float(t["preserve"]) > 0 for t in terms)


def test_drop_rule_and_augmentation_are_the_official_ones(bank, wcodes):
    wt = _wt()
    u = torch.tensor([0.01, 0.07, 0.12, 0.2, 0.049999, 0.05, 0.1, 0.15])
    dw, dt = wt.draw_drops(u, 0.05, 0.05, 0.05)
    assert dw.tolist() == [True, False, True, False, True, False, True, False]
    assert dt.tolist() == [False, True, True, False, False, True, True, False]
    # each of the five branches, with the draws replayed by hand from a copy of the generator
    w = wcodes[:3].clone()
    drop = torch.tensor([False, True, False])
    w[drop] = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        out = wt.augment_wplus(w, drop, bank, g)
        g2 = torch.Generator().manual_seed(seed)
        perm = torch.randperm(3, generator=g2)
        u = float(torch.rand((), generator=g2, dtype=torch.float64))
        shuf = w[perm]
        if u > 0.55:
            a = -40 + 80 * float(torch.rand((), generator=g2, dtype=torch.float64))
            exp = shuf + (w - shuf) * a
        elif u > 0.48:
            exp = shuf + w * (int(torch.randint(-60, 61, (), generator=g2)) / 10.0)
        else:
            assert out[1].abs().max() == 0
            assert torch.isfinite(out).all()
            continue
        exp[drop] = 0
        assert torch.allclose(out, exp, atol=1e-5, rtol=1e-6), (seed, u)
        assert out[1].abs().max() == 0  # dropped samples are zeroed again


def test_stage1_loss_falls(sd15, photos, wcodes):
    wt = _wt()
    mp, clip, vae = sd15
    trainer = wt.WPlusAdapterTrainer(mp, clip, vae, photos[0][:2], _examples(wcodes, photos, 2), stage=1,
                                     batch_size=2, lr=2e-3)
    opt = _loop().make_optimizer(trainer)
    fixed = trainer.sample_inputs(0, 0, _gen(0))
    fixed["drop_wplus"][:] = False
    losses = [float(one_step(trainer, [fixed], opt)[0]["loss"]) for _ in range(6)]
    assert losses[-1] < 0.9 * losses[0], losses


def test_exported_file_loads_in_the_inference_node_and_changes_output(sd15, photos, wcodes, comfy, comfy_home):
    from harness.unet import comfy_eps

    wt = _wt()
    mp, clip, vae = sd15
    trainer = wt.WPlusAdapterTrainer(mp, clip, vae, photos[0][:2], _examples(wcodes, photos, 2), stage=1, batch_size=1)
    opt = _loop().make_optimizer(trainer)
    one_step(trainer, [trainer.sample_inputs(0, 0, _gen(0))], opt)
    trainer.output_dirs = {"wplus": str(comfy_home / "models" / "wplus")}
    outs = trainer.export("trained_stage1_test", {"steps": 1, "base_model": "tiny_sd15"})
    assert [o["kind"] for o in outs] == ["official", "safetensors", "metadata"]
    files = [o["path"] for o in outs[:2]]
    with pytest.raises(FileExistsError):
        trainer.export("trained_stage1_test", {})
    raw = torch.load(files[0], weights_only=True, map_location="cpu")
    assert set(raw) == {"w_proj", "wplus_adapter"}
    for k, p in trainer.trainable().items():
        top, sub = k.split(".", 1)
        assert torch.equal(raw[top][sub], p.detach())
    load = comfy.node_classes["FP_LoadWPlusAdapter"]()
    apply = comfy.node_classes["ApplyResidualCrossAttention"]()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 500.0)
    plain = comfy_eps(mp, x, t, ctx, [0, 1])
    for f in files:
        (weights,) = load.load(f.rsplit("/", 1)[1])[:1]
        patched = apply.apply(mp, weights, wcodes[:1], 1.0, 0.0, 1.0)[0]
        got = comfy_eps(patched, x, t, ctx, [0, 1])
        assert (got - plain).abs().max() > 1e-3
        # and it is exactly the trained state: same output as the trainer's weights applied directly
        from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention

        direct = comfy_eps(apply_residual_cross_attention(mp, trainer.weights(), wcodes[:1], 1.0, start_percent=0.0),
                           x, t, ctx, [0, 1])
        assert torch.equal(got, direct)
