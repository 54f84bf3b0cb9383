"""Our residual methods under AnimateDiff-Evolved's context windows (its ``transformer_options["ad_params"]``
layout and window schedules: peers.py), with per-frame W+ codes and per-frame region masks, alone and
stacked with an IPAdapter (unfold_batch, per-frame image tokens and masks): every window's frames equal a
run of those frames alone (the model built for exactly those frames, no ad_params)."""
import pytest
import torch

from harness.unet import comfy_eps
from peers import ADE_WINDOWS, ade_transformer_options, ade_window_batch, apply_ipadapter

FRAMES, HW = 6, 8


@pytest.fixture(scope="module")
def video():
    g = torch.Generator().manual_seed(21)
    masks = torch.rand(FRAMES, 16, 16, generator=g).round()  # a different region per frame
    return dict(w=torch.randn(FRAMES, 18, 512, generator=g), masks=masks,
                x=torch.randn(FRAMES, 4, HW, HW, generator=g), ctx_c=torch.randn(FRAMES, 77, 768, generator=g),
                ctx_u=torch.randn(FRAMES, 77, 768, generator=g), ip=torch.randn(FRAMES, 4, 768, generator=g))


def _build(model, weights, ip_layers, v, frames, with_ipa):
    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention

    m = apply_residual_cross_attention(model, weights, v["w"][frames], 0.9, start_percent=0.0,
                                       mask=v["masks"][frames])
    if with_ipa:
        m = apply_ipadapter(m, ip_layers, v["ip"][frames], weight=0.7, mask=v["masks"][frames], unfold_batch=True)
    return m


# Every schedule once with the richest setup (RCA + IPAdapter unfold_batch, cond and uncond chunks); SCA, a
# cond-only batch and RCA without IPAdapter on one schedule each: RCA and SCA share the engine's per-frame
# path, so the full product (32 cases, ~80 s on 2 cores) added time, not coverage.
CASES = [(schedule, "rca", True, [1, 0]) for schedule in ADE_WINDOWS] + [
    ("batched", "sca", True, [1, 0]),
    ("standard_static", "rca", True, [0]),
    ("looped_uniform_stride2", "rca", True, [0]),
    ("standard_static", "rca", False, [1, 0]),
]


@pytest.mark.parametrize("schedule,method,with_ipa,cou", CASES, ids=[
    f"{s}-{m}-{'with_ipadapter' if i else 'alone'}-{'uncond_cond' if len(c) == 2 else 'cond_only'}" for s, m, i, c in CASES])
def test_each_window_equals_its_frames_alone(tiny_unet, ip_layers, residual_methods, video, schedule, method,
                                             with_ipa, cou):
    weights, _ = residual_methods[method]
    everything = list(range(FRAMES))
    full = _build(tiny_unet, weights, ip_layers, video, everything, with_ipa)
    for window in ADE_WINDOWS[schedule]:
        x, ctx = ade_window_batch(video["x"], video["ctx_c"], video["ctx_u"], window, cou)
        t = torch.full((x.shape[0],), 500.0)
        got = comfy_eps(full, x, t, ctx, cou, **ade_transformer_options(FRAMES, window))
        alone = comfy_eps(_build(tiny_unet, weights, ip_layers, video, window, with_ipa), x, t, ctx, cou)
        assert (got - alone).abs().max() <= 1e-5 * alone.abs().max(), window
        # and the window's frames did not get another window's codes: frame 0's codes everywhere differ
        wrong = comfy_eps(_build(tiny_unet, weights, ip_layers, video, [0] * len(window), with_ipa), x, t, ctx, cou)
        if window != [0] * len(window):
            assert (got - wrong).abs().max() > 1e-3 * alone.abs().max()


def test_no_sliding_context_uses_the_whole_batch(tiny_unet, residual_methods, ip_layers, video):
    """ADE without sliding context: ad_params present with sub_idxs None; per-frame codes follow the batch."""
    weights, _ = residual_methods["rca"]
    full = _build(tiny_unet, weights, ip_layers, video, list(range(FRAMES)), True)
    x, ctx = ade_window_batch(video["x"], video["ctx_c"], video["ctx_u"], list(range(FRAMES)), [1, 0])
    t = torch.full((x.shape[0],), 500.0)
    assert torch.equal(comfy_eps(full, x, t, ctx, [1, 0], **ade_transformer_options(FRAMES, None)),
                       comfy_eps(full, x, t, ctx, [1, 0]))


def test_window_beyond_the_codes_is_a_clear_error(tiny_unet, residual_methods, video):
    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention

    weights, _ = residual_methods["rca"]
    m = apply_residual_cross_attention(tiny_unet, weights, video["w"][:4], 1.0, start_percent=0.0)
    window = [4, 5]
    x, ctx = ade_window_batch(video["x"], video["ctx_c"], video["ctx_u"], window, [1, 0])
    with pytest.raises(ValueError, match="WPLUS holds 4 codes"):
        comfy_eps(m, x, torch.full((4,), 500.0), ctx, [1, 0], **ade_transformer_options(FRAMES, window))
