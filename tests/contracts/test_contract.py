"""One contract, every method (W+ RCA, PIDiff SCA, CrossInit, PersonaMagic, AdaFace), in the spirit of peft's
common tester: each test is parametrised over the method registry, so a new method gets the whole suite.

Properties: off state bit-identical to the unpatched model; a non-zero effect; stacking with every other
method (both effects present; MODEL-side patches commute); a foreign attn2 occupant (IPAdapter convention)
installed before and after; clone isolation (source MODEL/CLIP unchanged bit for bit); every cross-attention
key visited (UNet methods); cond/uncond chosen per chunk; batch > 1 and context-window frames; fp16/bf16
within tolerance of fp32; no trace after a graph run (the plain graph afterwards gives the plain output)."""
import copy
import itertools

import pytest
import torch

from conftest import NEG, PROMPT, TRIGGERS, eps
from foreign import apply_foreign

_RUNS = itertools.count()
NAMES = ["wplus_rca", "pidiff_sca", "crossinit", "personamagic", "adaface"]
UNET_SIDE = {"wplus_rca", "pidiff_sca", "personamagic"}


def _kind(name):
    from comfyui_face_personalization.models_loader.methods.registry import METHODS

    return METHODS[name].kind


def _differs(a, b, atol=1e-4):
    return (a - b).abs().max().item() > atol


def test_registry_lists_the_five_methods(comfy):
    from comfyui_face_personalization.models_loader.methods.registry import METHODS

    assert sorted(METHODS) == sorted(NAMES)
    for m in METHODS.values():
        assert m.kind in ("attention_patch", "text_tokens", "staged_context") and m.nodes


@pytest.mark.parametrize("name", NAMES)
def test_off_state_is_bit_identical(name, stack):
    plain = eps(*stack().context())
    assert torch.equal(eps(*stack().apply(name, on=False).context()), plain)


@pytest.mark.parametrize("name", NAMES)
def test_effect_is_non_zero(name, stack):
    plain = eps(*stack().context())
    on = eps(*stack().apply(name).context())
    assert torch.isfinite(on).all() and _differs(on, plain)


@pytest.mark.parametrize("a,b", list(itertools.combinations(NAMES, 2)))
def test_stacking_with_each_other_method(a, b, stack):
    alone_a = eps(*stack().apply(a).context())
    alone_b = eps(*stack().apply(b).context())
    ab = eps(*stack().apply(a).apply(b).context())
    assert torch.isfinite(ab).all() and _differs(ab, alone_a) and _differs(ab, alone_b)
    ba = eps(*stack().apply(b).apply(a).context())
    if a in UNET_SIDE and b in UNET_SIDE:  # both on the MODEL: the order does not matter
        assert (ab - ba).abs().max().item() <= 1e-5
    else:  # a CLIP-side method: order-free by construction (the prompt is encoded after both)
        assert torch.equal(ab, ba)


@pytest.mark.parametrize("order", ["foreign_first", "foreign_after"])
@pytest.mark.parametrize("name", NAMES)
def test_foreign_attn2_occupant(name, order, stack):
    s_plain, s_method = stack(), stack().apply(name)
    plain_model, cond, uncond = s_plain.context()
    foreign_only = eps(apply_foreign(plain_model), cond, uncond)
    method_model, mcond, muncond = s_method.context()
    method_only = eps(method_model, mcond, muncond)
    if order == "foreign_first":
        s = stack()
        s.model = apply_foreign(s.model)
        s.apply(name)
        both = eps(*s.context())
    else:
        both = eps(apply_foreign(method_model), mcond, muncond)
    assert _differs(both, foreign_only) and _differs(both, method_only)
    if _kind(name) == "attention_patch":  # residuals add: foreign + method - plain (one UNet layer deep: close)
        assert (both - method_only).abs().max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_clone_isolation(name, base, stack):
    model, clip = base
    opts = copy.copy(model.model_options)
    opts_repr = repr(model.model_options)
    tok = clip.tokenizer
    text = PROMPT.format(TRIGGERS.get(name, "a"))
    import nodes

    before_clip = nodes.CLIPTextEncode().encode(clip, text)[0][0][0]
    before = eps(*stack().context())
    s = stack().apply(name)
    eps(*s.context())
    assert repr(model.model_options) == opts_repr and model.model_options.keys() == opts.keys()
    assert clip.tokenizer is tok
    assert torch.equal(nodes.CLIPTextEncode().encode(clip, text)[0][0][0], before_clip)
    assert torch.equal(eps(*stack().context()), before)


@pytest.mark.parametrize("name", NAMES)
def test_every_cross_attention_key_visited(name, stack):
    from comfyui_face_personalization.models_loader import patch_engine

    if name not in UNET_SIDE:
        pytest.skip("text-token method: no UNet patch (its tokens reach every layer through the context)")
    model, cond, uncond = stack().apply(name).context()
    seen = set()
    m = model.clone()
    m.set_model_attn2_patch(lambda n, c, v, extra: (seen.add((extra["block"][0], extra["block"][1],
                                                              extra.get("block_index", 0))), (n, c, v))[1])
    want = {l.key for l in patch_engine.cross_attention_layers(model)}
    if _kind(name) == "attention_patch":
        chains = patch_engine.installed_chains(model)
        covered = {k if len(k) == 3 else (k[0], k[1], 0) for k in chains}
        assert covered == want
    before = eps(m, cond, uncond)
    assert seen == want and torch.isfinite(before).all()


@pytest.mark.parametrize("name", NAMES)
def test_cond_uncond_chosen_per_chunk(name, stack):
    model, cond, uncond = stack().apply(name).context()
    cu = eps(model, cond, uncond, cou=(0, 1))
    uc = eps(model, cond, uncond, cou=(1, 0))
    assert (cu[0] - uc[1]).abs().max() <= 1e-5 and (cu[1] - uc[0]).abs().max() <= 1e-5
    pm, pc, pu = stack().context()
    if name in ("crossinit", "adaface", "personamagic"):  # the negative branch is never touched
        assert torch.equal(cu[1], eps(pm, pc, pu, cou=(0, 1))[1])


@pytest.mark.parametrize("name", NAMES)
def test_batch_and_context_window_frames(name, stack):
    model, cond, uncond = stack().apply(name).context()
    two = eps(model, cond, uncond, batch=2)  # chunks [cond x2, uncond x2]; row i has noise seed 11 + i
    for row in (0, 1):
        one = eps(model, cond, uncond, batch=1, seed=11 + row)
        assert (two[[row, 2 + row]] - one).abs().max() <= 1e-5
    windowed = eps(model, cond, uncond, batch=2, sub_idxs=[3, 4])  # two frames of a longer animation
    assert (windowed - two).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_close_to_fp32(name, dtype, stack):
    """The method's effect (patched - plain) in half precision matches fp32 up to the precision's own noise:
    its error is at most a few times the error half precision makes on the plain model alone (the effect is the
    difference of two rounded outputs), so a patch computed in the wrong dtype, or scaled differently, fails
    while bf16's 8-bit mantissa on a tiny model does not."""
    model, cond, uncond = stack().apply(name).context()
    pm, pc, pu = stack().context()
    low_dm = copy.deepcopy(model.model.diffusion_model).to(dtype)
    plain32, plain16 = eps(pm, pc, pu), eps(pm, pc, pu, dm=low_dm, dtype=dtype)
    effect32 = eps(model, cond, uncond) - plain32
    effect16 = eps(model, cond, uncond, dm=low_dm, dtype=dtype) - plain16
    noise = (plain16 - plain32).norm().item()
    err = (effect16 - effect32).norm().item()
    cos = torch.nn.functional.cosine_similarity(effect32.flatten(), effect16.flatten(), dim=0).item()
    assert bool(torch.isfinite(effect16).all())
    # fp16 resolves every method's effect ~30x above its noise; bf16 on the tiny text-side effects only 2-3x,
    # hence the direction check as well
    assert err <= 3 * noise and cos >= 0.9, dict(err=err, noise=noise, effect=effect32.norm().item(), cos=cos)


def _graph(name, tiny_names, seed):
    from harness.graphs import txt2img

    g = txt2img(tiny_names["sd15"], text=PROMPT.format("a"), steps=2, seed=seed, width=64, height=64)
    g.pop("decode"), g.pop("save")
    # a fresh prefix per graph: ComfyUI caches an output node whose inputs did not change, and it then writes nothing
    g["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0],
                                                        "filename_prefix": f"contract_{name}_{seed}_{next(_RUNS)}"}}
    if name is None:
        return g
    if name in ("wplus_rca", "pidiff_sca"):
        load, apply = ("FP_LoadWPlusAdapter", "ApplyResidualCrossAttention") if name == "wplus_rca" else \
            ("FP_LoadPIDiff", "FP_ApplyStyleCrossAttention")
        key = "adapter_name" if name == "wplus_rca" else "pidiff_name"
        g["w"] = {"class_type": "FP_LoadWPlus", "inputs": {"code": tiny_names["wcode"]}}
        g["l"] = {"class_type": load, "inputs": {key: tiny_names[name]}}
        g["p"] = {"class_type": apply, "inputs": {"model": ["ckpt", 0], list(_inputs(apply))[1]: ["l", 0],
                                                  "wplus": ["w", 0], "strength": 1.0, "start_percent": 0.0,
                                                  "end_percent": 1.0}}
        g["sample"]["inputs"]["model"] = ["p", 0]
    elif name == "crossinit":
        g["p"] = {"class_type": "CrossInitEmbedding", "inputs": {"clip": ["ckpt", 1], "trigger_word": "<ci>"}}
        g["pos"]["inputs"].update(clip=["p", 0], text=PROMPT.format("<ci>"))
    elif name == "adaface":
        g["l"] = {"class_type": "FP_LoadAdaFace", "inputs": {"adaface_file": tiny_names["adaface"],
                                                             "arc2face_encoder": tiny_names["arc2face"],
                                                             "layer_weights": "checkpoint"}}
        g["p"] = {"class_type": "AdaFaceInvert", "inputs": {"clip": ["ckpt", 1], "adaface": ["l", 0], "trigger_word": "<ada>",
                                                            "id_cfg_scale": 1.0, "embeds_file": "mean_emb_keanureeves.pt"}}
        g["pos"]["inputs"].update(clip=["p", 0], text=PROMPT.format("<ada>"))
    else:
        g["l"] = {"class_type": "FP_LoadPersonaMagic", "inputs": {"mapper_name": tiny_names["personamagic"]}}
        g["p"] = {"class_type": "StageRegulatedTI", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "mapper": ["l", 0],
                                                               "text": PROMPT.format("<persona>"), "trigger": "<persona>"}}
        g["sample"]["inputs"].update(model=["p", 0], positive=["p", 1])
    return g


def _inputs(class_type):
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()["required"]


@pytest.fixture(scope="module")
def tiny_names(comfy, comfy_home, install_model, shared_data):
    import shutil
    from pathlib import Path

    from fixtures import tiny

    names = {"sd15": install_model("sd15", "checkpoints")}
    for kind, folder, key in (("wplus_adapter_sd15", "wplus", "wplus_rca"), ("pidiff_sd15", "pidiff", "pidiff_sca"),
                              ("adaface_pt", "adaface", "adaface"), ("adaface_arc2face", "adaface", "arc2face"),
                              ("personamagic_mapper", "personamagic", "personamagic")):
        names[key] = install_model(kind, folder)
    for sub, src in (("face_embeds", shared_data / "adaface" / "mean_emb_keanureeves.pt"),
                     ("wplus/codes", sorted((shared_data / "wplus" / "wcodes").glob("*.pth"))[0])):
        d = Path(comfy_home) / "models" / sub
        d.mkdir(parents=True, exist_ok=True)
        if not (d / src.name).exists():
            shutil.copyfile(src, d / src.name)
    names["wcode"] = sorted((shared_data / "wplus" / "wcodes").glob("*.pth"))[0].name
    assert names["sd15"] == tiny.file_name("sd15")
    return names


def _latent(comfy, outputs):
    import safetensors.torch

    return safetensors.torch.load_file(str(comfy.output_files(outputs, key="latents")[0]))["latent_tensor"]


@pytest.mark.parametrize("name", NAMES)
def test_no_trace_after_the_patched_graph(name, comfy, tiny_names):
    """plain(seed 0) -> patched -> plain(seed 1) -> plain(seed 0): the last equals the first bit for bit, and
    the patched run differs (the shared, cached checkpoint outputs carry nothing of the patch)."""
    first = _latent(comfy, comfy.run(_graph(None, tiny_names, 0)))
    patched = _latent(comfy, comfy.run(_graph(name, tiny_names, 0)))
    comfy.run(_graph(None, tiny_names, 1))  # evicts the cached seed-0 sampler result
    again = _latent(comfy, comfy.run(_graph(None, tiny_names, 0)))
    assert torch.equal(first, again)
    assert _differs(patched, first, atol=1e-6)
