"""Video-style sampling with context windows: every method gives each frame the same result whether the
sampler sees the whole frame batch or overlapping windows of it.

AnimateDiff-Evolved is not installable from a registry, so the windows here are core ComfyUI's own
(``ContextWindowsManual``, comfy/context_windows.py: it sets ``transformer_options["context_window"]``).
AnimateDiff-Evolved's ``sub_idxs`` path is covered in tests/wplus_adapter/test_rca_oracle.py. The tiny
SD1.5 has no motion module, so frames are independent and a windowed run must equal the plain run
(up to float summation order); with per-frame W+ codes a window that picked the wrong rows would not.

Core 0.3.75's handler finds the step with ``isclose(sample_sigmas, timestep)``, which broadcasts the
per-frame timestep [frames] against [steps + 1] sigmas: on dim 0 (SD1.5 frames in the batch) it only works
when frames == steps + 1, hence 3 steps for 4 frames below (a core limitation, not the pack's).
"""
import pytest
import torch

from harness.unet import comfy_eps

REL_TOL = 1e-4  # of the latent's magnitude (the tiny random UNet's latents reach ~1e2; fusing divides)
FRAMES = 4
WINDOWS = {  # (context_length, overlap, schedule, fuse)
    "static_2": (2, 0, "standard_static", "flat"),
    "uniform_3_overlap_1": (3, 1, "standard_uniform", "pyramid"),
}


@pytest.fixture(scope="module")
def sd15(comfy, tiny_sd15):
    return comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(tiny_sd15)[:2]


def _windowed(comfy, model, spec):
    length, overlap, schedule, fuse = spec
    node = comfy.node_classes["ContextWindowsManual"]
    out = node.execute(model, context_length=length, context_overlap=overlap, context_schedule=schedule,
                       context_stride=1, closed_loop=False, fuse_method=fuse, dim=0)
    return out.result[0] if hasattr(out, "result") else out[0]


def _sample(model, pos, neg, seen=None):
    import nodes

    if seen is not None:
        model = model.clone()

        def wrapper(apply_model, args):
            seen.append(args["input"].shape[0])
            return apply_model(args["input"], args["timestep"], **args["c"])

        model.set_model_unet_function_wrapper(wrapper)
    latent = nodes.EmptyLatentImage().generate(64, 64, FRAMES)[0]
    return nodes.common_ksampler(model, 3, FRAMES - 1, 5.0, "euler", "normal", pos, neg, latent)[0]["samples"]


def _encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def _check(comfy, model, pos, neg, spec):
    plain = _sample(model, pos, neg)
    seen = []
    win = _sample(_windowed(comfy, model, spec), pos, neg, seen)
    assert seen and max(seen) < 2 * FRAMES  # the sampler really ran windows (cond+uncond of < FRAMES frames)
    assert (win - plain).abs().max() <= REL_TOL * plain.abs().max()


@pytest.mark.parametrize("window", list(WINDOWS))
def test_rca_per_frame_wplus_under_context_windows(comfy, sd15, window, shared_data):
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter
    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention

    model, clip = sd15
    codes = sorted((shared_data / "wplus" / "wcodes").glob("*.pth"))
    w = torch.cat([torch.load(str(codes[i % len(codes)]), weights_only=True, map_location="cpu").float()
                   for i in range(FRAMES)])
    w[2:] = w[2:] * -1.0  # four distinct frames even with two shared codes
    patched = apply_residual_cross_attention(model, load_wplus_adapter(str(tiny.ensure("wplus_adapter_sd15"))),
                                             w, 1.0, start_percent=0.0)
    _check(comfy, patched, _encode(clip, "a photo of a person"), _encode(clip, "blurry"), WINDOWS[window])


def test_adaface_tokens_under_context_windows(comfy, sd15):
    from comfyui_face_personalization.models_loader import textspace
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.adaface.load import load_adaface

    model, clip = sd15
    ada = load_adaface(str(tiny.ensure("adaface_pt")), str(tiny.ensure("adaface_arc2face")))
    tclip = textspace.apply_trigger(clip, "<ada>", {"clip_l": ada.encode(torch.randn(1, 512))})
    _check(comfy, model, _encode(tclip, "<ada> walking in a forest"), _encode(clip, "blurry"),
           WINDOWS["uniform_3_overlap_1"])


def test_personamagic_staged_tokens_under_context_windows(comfy, sd15):
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.personamagic import apply_stage_regulated_ti
    from comfyui_face_personalization.models_loader.methods.personamagic.checkpoint import load_mapper

    model, clip = sd15
    bundle = load_mapper(str(tiny.ensure("personamagic_mapper")))
    patched, pos, _ = apply_stage_regulated_ti(model, clip, bundle, "a photo of <persona>", "<persona>")
    _check(comfy, patched, pos, _encode(clip, "blurry"), WINDOWS["static_2"])


def test_rca_reads_core_context_window_rows(comfy, shared_data):
    """Model level: a core IndexListContextWindow over frames [1, 3] == RCA built for those two codes."""
    import comfy.model_patcher
    from comfy.context_windows import IndexListContextWindow

    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.wplus.adapter import load_wplus_adapter
    from comfyui_face_personalization.models_loader.methods.wplus.attention import apply_residual_cross_attention
    from fixtures.tiny.sd import build_model

    mp = comfy.model_patcher.ModelPatcher(build_model("sd15"), load_device=torch.device("cpu"),
                                          offload_device=torch.device("cpu"))
    weights = load_wplus_adapter(str(tiny.ensure("wplus_adapter_sd15")))
    g = torch.Generator().manual_seed(5)
    w = torch.randn(FRAMES, 18, 512, generator=g)
    x, ctx = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 77, 768, generator=g)
    t = torch.full((4,), 500.0)

    def eps(model, **extra):
        return comfy_eps(model, x, t, ctx, [0, 1], **extra)

    windowed = eps(apply_residual_cross_attention(mp, weights, w, 1.0, start_percent=0.0),
                   context_window=IndexListContextWindow([1, 3]))
    direct = eps(apply_residual_cross_attention(mp, weights, w[[1, 3]], 1.0, start_percent=0.0))
    assert (windowed - direct).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="4 codes but each cond chunk"):  # a window on another dim: no slicing
        eps(apply_residual_cross_attention(mp, weights, w, 1.0, start_percent=0.0),
            context_window=IndexListContextWindow([1, 3], dim=2))
