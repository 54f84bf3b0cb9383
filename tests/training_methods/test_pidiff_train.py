"""PIDiff trainer == an independent reference step (diffusers UNet/VAE/DDPM, transformers CLIP, hand-written SCA
processors, mapping F and AdamW) on the six identity_set_a photos and W+ codes."""
import torch
import torch.nn.functional as F

from common import (AdamWReplay, assert_bit_identical, assert_official_adamw, compare_step, eps_band_fraction,
                    snapshot, update_peak)
from reference import AdamW, w_proj

SEED = 11


def _gen(step):
    from comfyui_face_personalization.models_loader.training.protocol import step_generator

    return step_generator(SEED, step, 0)


def ref_loss(ref, params, inputs, pixels):
    idx, t = inputs["index"], inputs["timesteps"]
    x_t = ref.noisy(ref.latents(pixels[idx], inputs["vae_eps"]), inputs["noise"], t)
    ctx = ref.encode_text(inputs["prompts"])
    f = {k[len("mapping."):]: v for k, v in params.items() if k.startswith("mapping.")}
    w = inputs["wplus"] + inputs["wplus_noise"]
    w[inputs["drop_wplus"]] = 0.0
    holder = {"tokens": w_proj(f, w), "scale": 1.0}
    n_layers = len(ref.unet_attn2())
    ref.set_rca([(params[f"sca.{n}.to_q.weight"], params[f"sca.{n}.to_k.weight"], params[f"sca.{n}.to_v.weight"])
                 for n in range(n_layers)], holder)
    pred = ref.unet(x_t, t, encoder_hidden_states=ctx).sample
    mse = F.mse_loss(pred.float(), inputs["noise"].float())
    return {"loss": mse, "mse": mse}


def test_pidiff_step_matches_reference(sd15, ref, photos, wcodes):
    from comfyui_face_personalization.models_loader.methods.pidiff.train import PIDiffTrainer
    from comfyui_face_personalization.models_loader.training import loop

    mp, clip, vae = sd15
    pixels = photos[0]
    codes = torch.stack([wcodes[i % len(wcodes)] for i in range(6)])
    trainer = PIDiffTrainer(mp, clip, vae, pixels, codes, batch_size=4)
    tr = trainer.trainable()
    n_layers = len(ref.unet_attn2())
    assert set(tr) == {f"mapping.{k}" for k in ("proj_0.weight", "proj_1.weight", "proj_2.weight", "proj_3.weight",
                                               "norm.weight", "norm.bias")} | \
        {f"sca.{n}.to_{p}.weight" for n in range(n_layers) for p in "qkv"}
    for n, a in enumerate(ref.unet_attn2()):  # W_q', W_k', W_v' start as the layer's own W_q, W_k, W_v
        for p, lin in (("q", a.to_q), ("k", a.to_k), ("v", a.to_v)):
            assert torch.equal(tr[f"sca.{n}.to_{p}.weight"].detach(), lin.weight.float())
    opt = loop.make_optimizer(trainer)
    assert_official_adamw(opt, trainer.optimizer_config(), 1e-4, 1e-2)
    own = {k: v.detach().clone() for k, v in tr.items()}
    ropt = AdamW(own, lr=1e-4)
    replay = AdamWReplay(own, 1e-4)
    frozen = [mp.model.diffusion_model, clip.cond_stage_model]
    before = snapshot(*frozen)
    current = {k: v.detach().clone() for k, v in tr.items()}
    peak = {}
    drops = []
    for s in range(3):
        inputs = trainer.sample_inputs(s, 0, _gen(s))
        assert inputs["timesteps"].shape == (4,) and inputs["wplus_noise"].abs().max() > 0
        drops.append((inputs["drop_text"].tolist(), inputs["drop_wplus"].tolist()))
        r = loop.optimizer_step(trainer, opt, [inputs])
        at = {k: current[k].clone().requires_grad_(True) for k in tr}
        rterms = ref_loss(ref, at, inputs, pixels)
        rterms["loss"].backward()
        rgrads = {k: at[k].grad.detach().clone() for k in tr}
        ropt.step(rgrads)
        update_peak(peak, rgrads)
        compare_step(s, r.terms, {k: v.detach() for k, v in rterms.items()}, r.grads, rgrads, r.after, own, 1e-4,
                     grad_peak=peak)
        replay.check(s, r.grads, r.after)
        current = r.after
    assert_bit_identical(before, frozen, "PIDiff training")
    assert eps_band_fraction(peak) < 0.01


def test_pidiff_drop_rates_and_export(sd15, photos, wcodes, comfy, comfy_home):
    from harness.unet import comfy_eps

    from comfyui_face_personalization.models_loader.methods.pidiff.train import PIDiffTrainer
    from comfyui_face_personalization.models_loader.training import loop

    mp, clip, vae = sd15
    codes = torch.stack([wcodes[i % len(wcodes)] for i in range(6)])
    trainer = PIDiffTrainer(mp, clip, vae, photos[0], codes, batch_size=4,
                            output_dirs={"pidiff": str(comfy_home / "models" / "pidiff")})
    # drop rates 0.3 (text) / 0.5 (visual), independent, over many draws
    dt, dv = [], []
    for s in range(300):
        inp = trainer.sample_inputs(s, 0, _gen(s))
        dt += inp["drop_text"].tolist()
        dv += inp["drop_wplus"].tolist()
        assert all(p == "" for p, d in zip(inp["prompts"], inp["drop_text"].tolist()) if d)
    assert abs(sum(dt) / len(dt) - 0.3) < 0.03 and abs(sum(dv) / len(dv) - 0.5) < 0.03
    opt = loop.make_optimizer(trainer)
    loop.optimizer_step(trainer, opt, [trainer.sample_inputs(0, 0, _gen(0))])
    outs = trainer.export("trained_pidiff_test", {"steps": 1})
    name = outs[0]["name"]
    (weights,) = comfy.node_classes["FP_LoadPIDiff"]().load(name)[:1]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 77, 768, generator=torch.Generator().manual_seed(1))
    t = torch.full((2,), 500.0)
    patched = comfy.node_classes["FP_ApplyStyleCrossAttention"]().apply(mp, weights, codes[:1], 0.4, 0.0, 1.0)[0]
    assert (comfy_eps(patched, x, t, ctx, [0, 1]) - comfy_eps(mp, x, t, ctx, [0, 1])).abs().max() > 1e-4
    for k, p in trainer.trainable().items():
        assert torch.equal(weights.mapping.state_dict()[k[len("mapping."):]], p.detach()) if k.startswith("mapping.") \
            else True
