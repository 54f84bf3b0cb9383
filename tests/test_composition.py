"""Methods stacked on one MODEL: PersonaMagic's ``attn2_patch`` (stage context, V-only bypass) feeds the
W+ RCA ``attn2`` replace, so the stack must equal the RCA model run on PersonaMagic's context for that
timestep (the oracle: contexts substituted by hand, no PersonaMagic patch)."""
import pytest
import torch

from harness.unet import comfy_eps

TOL = 1e-5


@pytest.fixture(scope="module")
def stack(comfy, tiny_sd15, shared_data):
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.personamagic import apply_stage_regulated_ti
    from comfyui_face_personalization.models_loader.methods.personamagic.checkpoint import load_mapper
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter
    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention

    model, clip = comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(tiny_sd15)[:2]
    w = torch.load(str(sorted((shared_data / "wplus" / "wcodes").glob("*.pth"))[0]), weights_only=True,
                   map_location="cpu").float()
    rca = apply_residual_cross_attention(model, load_wplus_adapter(str(tiny.ensure("wplus_adapter_sd15"))), w, 1.0,
                                         start_percent=0.0)
    bundle = load_mapper(str(tiny.ensure("personamagic_mapper")))
    return dict(model=model, clip=clip, rca=rca, bundle=bundle, apply_pm=apply_stage_regulated_ti)


def _eps(mp, ctx, t, value=None):
    """One cond-only denoise call at timestep t; ``value`` replaces the V context of every attn2 layer."""
    ms = mp.get_model_object("model_sampling")
    sigma = ms.sigma(torch.tensor([float(t)]))
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 4, 8, 8, generator=g)
    m = mp.clone()
    if value is not None:
        m.set_model_attn2_patch(lambda n, c, v, extra: (n, c, value.to(c.dtype)))
    return comfy_eps(m, x, torch.tensor([float(t)]), ctx, [0], sigma=float(sigma))


@pytest.mark.parametrize("bypass", [False, True])
@pytest.mark.parametrize("t", [900.0, 600.0])
def test_personamagic_then_rca_equals_rca_on_stage_context(stack, bypass, t):
    from comfy.clip_vision import Output

    cvo = None
    if bypass:
        cvo = Output()
        cvo["image_embeds"] = torch.randn(1, 512, generator=torch.Generator().manual_seed(3))
    both, cond, patch = stack["apply_pm"](stack["rca"], stack["clip"], stack["bundle"], "a photo of <persona>",
                                          "<persona>", cvo)
    got = _eps(both, cond[0][0], t)
    ctx, ctx_b, stage = patch.contexts_for(t)
    assert stage == ("class" if t > 800 else "mapper")
    want = _eps(stack["rca"], ctx, t, value=ctx_b)
    assert (got - want).abs().max() <= TOL
    # and both methods act: neither alone gives this
    assert not torch.allclose(got, _eps(stack["rca"], cond[0][0], t), atol=1e-4) or stage == "class"
    assert not torch.allclose(got, _eps(stack["model"], ctx, t, value=ctx_b), atol=1e-4)
