"""StageRegulatedTI: per-timestep contexts vs an independent reference mapper, V-only bypass,
real KSampler runs (contexts recorded at attn2), uncond untouched, bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F

PROMPT = "a photo of <persona> reading a book"
CLASS_PROMPT = "a photo of face reading a book"
NEG = "blurry, lowres"


# ---------------------------------------------------------------- independent reference (plain torch)
def ref_mapper(sd, t, word, norm, image=None):
    """Official Mapper.forward re-implemented from the paper/official formula."""
    half = 1024
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = torch.tensor([float(t)])[:, None] * freqs[None]
    feat = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # cos then sin
    h = feat @ sd["input_layer.weight"].T + sd["input_layer.bias"]  # anchors from the checkpoint

    def block(x, p):
        x = x @ sd[f"{p}.0.weight"].T + sd[f"{p}.0.bias"]
        x = F.leaky_relu(F.layer_norm(x, (128,), sd[f"{p}.1.weight"], sd[f"{p}.1.bias"]), 0.01)
        x = x @ sd[f"{p}.3.weight"].T + sd[f"{p}.3.bias"]
        return F.leaky_relu(F.layer_norm(x, (128,), sd[f"{p}.4.weight"], sd[f"{p}.4.bias"]), 0.01)

    e = block(h, "timestep_proj")
    out = (e @ sd["output_layer.0.weight"].T + sd["output_layer.0.bias"]).view(-1, 768)
    tokens = out + word.view(1, -1)
    tokens = tokens / tokens.norm(dim=-1, keepdim=True) * norm
    bypass = None
    if image is not None:
        b = block(torch.cat([e, image.view(1, -1)], dim=-1), "image_proj")
        bypass = (b @ sd["image_output_layer.0.weight"].T + sd["image_output_layer.0.bias"]).view(-1, 768)
    return tokens, bypass


def ref_contexts(clip, tokens, bypass):
    """Prompt context with the 4 vectors inline (ComfyUI's own encode path), and the bypass context
    computed by hand: last hidden state (pre final LayerNorm) + bypass at the 4 positions."""
    from comfyui_face_personalization.models_loader import textspace

    c2 = textspace.apply_trigger(clip, "<persona>", tokens)
    toks = c2.tokenize(PROMPT)
    ctx = c2.encode_from_tokens(toks).float()
    if bypass is None:
        return ctx, None
    inner = clip.cond_stage_model.clip_l
    seq = toks["l"][0]
    pos = [i for i, it in enumerate(seq) if torch.is_tensor(it[0])]
    assert len(pos) == 4
    emb_layer = inner.transformer.get_input_embeddings()
    rows = []
    for it in seq:
        if torch.is_tensor(it[0]):
            rows.append(it[0].float().view(1, -1))
        else:
            rows.append(emb_layer.weight[it[0]].float().view(1, -1))
    x = torch.cat(rows)[None]
    tm = inner.transformer.text_model
    _, pre, _ = tm(None, None, embeds=x, num_tokens=[77], intermediate_output=-1,
                   final_layer_norm_intermediate=False, dtype=torch.float32)
    pre = pre.float().clone()
    for k, p in enumerate(pos):
        e = pre[0, p].clone()
        v = bypass[k] + e
        pre[0, p] = v / v.norm() * e.norm()
    w, b = tm.final_layer_norm.weight.float(), tm.final_layer_norm.bias.float()
    ctx_b = F.layer_norm(pre, (pre.shape[-1],), w, b)
    return ctx, ctx_b


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pm_env(sd15_loaded, pm_bundle):
    from comfy.clip_vision import Output

    from comfyui_face_personalization.models_loader.methods.personamagic import apply_stage_regulated_ti

    model, clip = sd15_loaded
    g = torch.Generator().manual_seed(7)
    cvo = Output()
    cvo["image_embeds"] = torch.randn(1, 512, generator=g)
    m, cond, patch = apply_stage_regulated_ti(model, clip, pm_bundle, PROMPT, "<persona>", cvo)
    sd = {k: v.float() for k, v in pm_bundle.mapper.state_dict().items()}
    inner = clip.cond_stage_model.clip_l
    face_id = clip.tokenize("face")["l"][0][1][0]
    word = inner.transformer.get_input_embeddings().weight[face_id].float()
    return dict(model=model, clip=clip, patched=m, cond=cond, patch=patch, sd=sd, word=word,
                image=cvo["image_embeds"][0], cvo=cvo, ms=model.get_model_object("model_sampling"))


_REF = {}


def _ref_at(env, t, norm=0.5):
    key = (float(t), norm)
    if key not in _REF:
        toks, byp = ref_mapper(env["sd"], t, env["word"], norm, env["image"])
        _REF[key] = ref_contexts(env["clip"], toks, byp)
    return _REF[key]


def _sigma(env, t):
    return env["ms"].sigma(torch.tensor([float(t)]))


# ---------------------------------------------------------------- oracle tests
def test_class_stage_conditioning_is_plain_encode(pm_env):
    ref = pm_env["clip"].encode_from_tokens(pm_env["clip"].tokenize(CLASS_PROMPT), return_pooled=True)
    assert torch.equal(pm_env["cond"][0][0], ref[0].float())
    assert torch.equal(pm_env["cond"][0][1]["pooled_output"], ref[1].float())


def test_tokens_fed_to_attention_follow_stages(pm_env):
    env = pm_env
    patch = env["patch"]
    marker = env["cond"][0][0]
    neg = env["clip"].encode_from_tokens(env["clip"].tokenize(NEG)).float()
    run = torch.tensor([14.6, 0.03])  # a fresh sampling run (its sigma schedule object)
    n = torch.randn(2, 16, 320)
    ref400 = _ref_at(env, 400)
    expected = {950: None, 800: _ref_at(env, 800), 600: _ref_at(env, 600), 400: ref400, 399: ref400, 100: ref400}
    seen = {}
    for t in (950, 800, 600, 400, 399, 100):
        sig = _sigma(env, t)
        assert float(env["ms"].timestep(sig)) == t
        ctx = torch.cat([neg, marker])  # uncond first: order must not matter
        _, k_ctx, v_ctx = patch(n, ctx, ctx, {"cond_or_uncond": [1, 0], "sigmas": sig, "sample_sigmas": run})
        assert torch.equal(k_ctx[0], neg[0]) and torch.equal(v_ctx[0], neg[0])  # uncond untouched
        if t == 950:
            assert torch.equal(k_ctx[1], marker[0]) and torch.equal(v_ctx[1], marker[0])
        else:
            rk, rv = expected[t]
            assert (k_ctx[1] - rk[0]).abs().max() <= 1e-5, t
            assert (v_ctx[1] - rv[0]).abs().max() <= 1e-5, t
            assert (k_ctx[1] - v_ctx[1]).abs().max() > 1e-3  # V really comes from the bypass context
        seen[t] = k_ctx[1].clone()
    assert not torch.equal(seen[800], seen[600]) and not torch.equal(seen[600], seen[400])
    assert torch.equal(seen[399], seen[400]) and torch.equal(seen[100], seen[400])


def test_reuse_is_last_computed_not_fixed_400(pm_env):
    env = pm_env
    patch = env["patch"]
    marker = env["cond"][0][0]
    run = torch.tensor([1.0])
    ref600 = _ref_at(env, 600)
    for t in (950, 600, 200):
        _, k, v = patch(None, marker.clone(), None, {"cond_or_uncond": [0], "sigmas": _sigma(env, t), "sample_sigmas": run})
    assert (k[0] - ref600[0][0]).abs().max() <= 1e-5 and (v[0] - ref600[1][0]).abs().max() <= 1e-5
    # a new run that starts below t_low (img2img) has computed nothing yet: mapper at t = 400
    _, k2, _ = patch(None, marker.clone(), None, {"cond_or_uncond": [0], "sigmas": _sigma(env, 150),
                                                  "sample_sigmas": torch.tensor([0.5])})
    assert (k2[0] - _ref_at(env, 400)[0][0]).abs().max() <= 1e-5


def test_v_only_bypass_attention_oracle(pm_env):
    """Real UNet cross-attention with the patch's outputs: K from the plain context, V from the bypass."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    env = pm_env
    dm = env["model"].model.diffusion_model
    block = next(m for m in dm.modules() if isinstance(m, BasicTransformerBlock))
    attn = block.attn2
    marker = env["cond"][0][0]
    g = torch.Generator().manual_seed(3)
    n = torch.randn(1, 16, attn.to_q.weight.shape[1], generator=g)
    _, k_ctx, v_ctx = env["patch"](n, marker.clone(), marker.clone(), {"cond_or_uncond": [0], "sigmas": _sigma(env, 600),
                                                                       "sample_sigmas": torch.tensor([2.0])})
    with torch.no_grad():
        out = attn(n, context=k_ctx, value=v_ctx)
        rk, rv = _ref_at(env, 600)
        W = lambda lin: (lin.weight.float(), lin.bias.float() if lin.bias is not None else None)  # noqa: E731
        q = F.linear(n, *W(attn.to_q))
        k = F.linear(rk, *W(attn.to_k))
        v = F.linear(rv, *W(attn.to_v))
        h = attn.heads
        sp = lambda x: x.view(1, x.shape[1], h, -1).transpose(1, 2)  # noqa: E731
        a = torch.softmax(sp(q) @ sp(k).transpose(-1, -2) / math.sqrt(q.shape[-1] // h), dim=-1) @ sp(v)
        ref = F.linear(a.transpose(1, 2).reshape(1, 16, -1), *W(attn.to_out[0]))
    assert (out - ref).abs().max() <= 1e-4
    # the plain and bypass contexts differ exactly at the 4 placeholder positions
    diff = (rk[0] - rv[0]).abs().amax(dim=-1)
    assert int((diff > 0).sum()) == 4


def _record(model):
    """Clone with an extra attn2_patch (after ours) that records what the first attn2 layer sees."""
    rec = []
    m = model.clone()

    def recorder(n, context, value, extra):
        if extra.get("block") == ("input", 1) and extra.get("transformer_index", 0) == 0:
            rec.append((extra["sigmas"].reshape(-1)[0].item(), list(extra["cond_or_uncond"]),
                        context.detach().float().clone(), value.detach().float().clone()))
        return n, context, value

    m.set_model_attn2_patch(recorder)
    return m, rec


@pytest.mark.parametrize("sampler,scheduler", [("euler", "simple"), ("dpmpp_2m", "karras")])
def test_real_ksampler_conditioning_changes_per_step(pm_env, sampler, scheduler):
    import nodes

    env = pm_env
    clip = env["clip"]
    neg = clip.encode_from_tokens(clip.tokenize(NEG), return_pooled=True)
    negative = [[neg[0], {"pooled_output": neg[1]}]]
    model, rec = _record(env["patched"])
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    nodes.common_ksampler(model, 1, 4, 5.0, sampler, scheduler, env["cond"], negative, latent, denoise=1.0)
    assert rec, "attn2 never called"
    ms = env["ms"]
    cond_ctxs, last_mapper_t, stages = [], None, set()
    for sigma, cou, ctx, val in rec:
        t = float(ms.timestep(torch.tensor([sigma])))
        per = ctx.shape[0] // len(cou)
        for j, c in enumerate(cou):
            rows = slice(j * per, (j + 1) * per)
            if c == 1:  # uncond untouched, K and V
                assert torch.equal(ctx[rows], neg[0].float().expand(per, -1, -1))
                assert torch.equal(val[rows], neg[0].float().expand(per, -1, -1))
                continue
            if t > 800:
                stages.add("class")
                assert torch.equal(ctx[rows][0], env["cond"][0][0][0])
                cond_ctxs.append(ctx[rows][0])
                continue
            if t >= 400:
                stages.add("mapper")
                last_mapper_t = t
                rk, rv = _ref_at(env, t)
            else:
                stages.add("reuse")
                rk, rv = _ref_at(env, last_mapper_t)
            assert (ctx[rows][0] - rk[0]).abs().max() <= 1e-5, (sampler, t)
            assert (val[rows][0] - rv[0]).abs().max() <= 1e-5, (sampler, t)
            cond_ctxs.append(ctx[rows][0])
    assert stages == {"class", "mapper", "reuse"}, stages
    distinct = {tuple(c[5, :4].tolist()) for c in cond_ctxs}
    assert len(distinct) >= 2 + (sampler == "euler")  # the conditioning changes between steps


def test_uncond_and_foreign_cond_untouched(pm_env):
    env = pm_env
    other = env["clip"].encode_from_tokens(env["clip"].tokenize("a red car")).float()
    ctx = torch.cat([other, other])
    _, k, v = env["patch"](None, ctx, ctx, {"cond_or_uncond": [0, 1], "sigmas": _sigma(env, 600),
                                           "sample_sigmas": torch.tensor([3.0])})
    assert k is ctx and v is ctx


def test_wrong_text_width_is_a_clear_error(pm_env):
    from comfyui_face_personalization.models_loader.methods.personamagic import (
        PersonaMagicBundle, PersonaMagicInputError, PersonaMagicMapper, apply_stage_regulated_ti)

    wide = PersonaMagicBundle(PersonaMagicMapper(output_dim=1024), None, "face")
    with pytest.raises(PersonaMagicInputError, match=r"1024-d tokens but the CLIP's text encoder is 768-d"):
        apply_stage_regulated_ti(pm_env["model"], pm_env["clip"], wide, PROMPT)
    from comfy.clip_vision import Output

    bad = Output()
    bad["image_embeds"] = torch.zeros(1, 1024)
    with pytest.raises(PersonaMagicInputError, match="512-d CLIP ViT-B/32"):
        apply_stage_regulated_ti(pm_env["model"], pm_env["clip"], wide.__class__(pm_env["patch"].prompt.bundle.mapper),
                                 PROMPT, clip_vision_output=bad)


def test_missing_trigger_warns_and_does_not_patch(pm_env, pm_bundle, caplog):
    from comfyui_face_personalization.models_loader.methods.personamagic import apply_stage_regulated_ti

    with caplog.at_level("WARNING"):
        m, cond, _ = apply_stage_regulated_ti(pm_env["model"], pm_env["clip"], pm_bundle, "a photo of a man")
    assert "does not contain the trigger word" in caplog.text
    assert not m.model_options.get("transformer_options", {}).get("patches", {}).get("attn2_patch")
