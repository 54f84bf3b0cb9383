"""Gradient checkpointing (the training nodes' default) gives the residual-attention trainers the same step as without
it: the backward pass re-runs the checkpointed UNet blocks, whose residual attention reads the micro-batch's W+ tokens
again, so they must still be the tokens of that forward (Stage II runs its no-grad forwards with other tokens in
between)."""
import pytest
import torch


def _build(kind, sd15, photos, wcodes, shared_data, ckpt):
    from fixtures import tiny

    from comfyui_face_personalization.models_loader.methods.pidiff import train as pt
    from comfyui_face_personalization.models_loader.methods.wplus import train as wt
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter

    mp, clip, vae = sd15
    pixels, masks, names = photos
    pixels = pixels[:2]
    if kind == "pidiff":
        return pt.PIDiffTrainer(mp, clip, vae, pixels, wcodes[:2], batch_size=2, drop_visual=0.0,
                                gradient_checkpointing=ckpt)
    ex = [wt.Example(wcodes[i], ["a person on a bench"], masks[i], names[i]) for i in range(2)]
    if kind == "wplus1":
        return wt.WPlusAdapterTrainer(mp, clip, vae, pixels, ex, stage=1, batch_size=2, gradient_checkpointing=ckpt)
    return wt.WPlusAdapterTrainer(mp, clip, vae, pixels, ex, stage=2, batch_size=2, directions=wt.DirectionBank.from_folder(
        str(shared_data / "wplus")), init=load_wplus_adapter(tiny.ensure("wplus_adapter_sd15")),
        gradient_checkpointing=ckpt)


@pytest.mark.parametrize("kind", ["pidiff", "wplus1", "wplus2"])
def test_checkpointed_step_equals_the_plain_step(kind, sd15, photos, wcodes, shared_data):
    from comfyui_face_personalization.models_loader.training import loop
    from comfyui_face_personalization.models_loader.training.protocol import step_generator

    runs = []
    for ckpt in (False, True):
        tr = _build(kind, sd15, photos, wcodes, shared_data, ckpt)
        opt = loop.make_optimizer(tr)
        micros = [tr.sample_inputs(0, m, step_generator(5, 0, m)) for m in range(2)]  # accumulation 2
        runs.append(loop.optimizer_step(tr, opt, micros, 2))
    plain, ckpt = runs
    for k, v in plain.terms.items():
        assert abs(ckpt.terms[k] - v) <= 1e-5 * max(abs(v), 1e-8), (k, v, ckpt.terms[k])
    for k, g in plain.grads.items():
        peak = float(g.abs().max())
        assert float((ckpt.grads[k] - g).abs().max()) <= 1e-4 * max(peak, 1e-12), k
    moving = [k for k, g in plain.grads.items() if float(g.abs().max()) > 0]
    if kind != "wplus2":  # Stage I / PIDiff: the mapping's gradient flows through the re-run residual attention
        assert any(k.startswith(("mapping.", "w_proj.")) for k in moving), moving
    assert any("to_k" in k for k in moving), moving
