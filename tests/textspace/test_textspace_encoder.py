"""The out-of-place text-encoder forward (textspace.encoder) equals ComfyUI's own encoding, for SD1 (last
layer), SD2 (penultimate + final LayerNorm) and SDXL (both encoders), with and without inline trigger
tokens, and lets gradients reach inserted vectors (ComfyUI's in-place CLIPLayer cannot)."""
import pytest
import torch

KINDS = ["sd15", "sd2", "sdxl"]


def _ours(clip, text, trigger=None, vectors=None):
    from comfyui_face_personalization.models_loader import textspace
    from comfyui_face_personalization.models_loader.textspace import trigger as trig

    encs = textspace.TextEncoder.of_clip(clip)
    if trigger is None:
        tokens = clip.tokenize(text)
        layouts = {k: [[(t, w) for t, w in chunk] for chunk in tokens[trig.token_key(k)]] for k in encs}
    else:
        n = next(iter(vectors.values())).shape[0]
        layouts = trig.trigger_slots(clip, text, trigger, n)
    ctx, pooled = [], None
    for key, enc in encs.items():
        ids, weights, slots, _ = trig.slot_layout(layouts[key])
        assert torch.all(weights == 1)
        embeds = enc.token_embeddings(ids)
        if slots:
            embeds = textspace.insert_rows(embeds, [(c, p) for c, p, _ in slots],
                                           torch.stack([vectors[key][k] for _, _, k in slots]))
        eos = (ids == enc.special_tokens["end"]).int().argmax(dim=-1)
        out = enc(embeds, eos_index=eos)
        ctx.append(out.context)
        pooled = out.pooled
    return torch.cat(ctx, dim=-1), pooled[:1]


@pytest.mark.parametrize("kind", KINDS)
def test_plain_prompt_equals_comfy(kind, request, load_ckpt):
    _, clip, _ = load_ckpt(request.getfixturevalue(f"tiny_{kind}"))
    text = "a photo of a person reading a book"
    ref, ref_pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    ours, pooled = _ours(clip, text)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_trigger_insertion_equals_comfy_inline_tokens(kind, request, load_ckpt):
    from comfyui_face_personalization.models_loader import textspace

    _, clip, _ = load_ckpt(request.getfixturevalue(f"tiny_{kind}"))
    g = torch.Generator().manual_seed(0)
    vectors = {k: torch.randn(2, w, generator=g) * 0.02 for k, w in textspace.encoder_specs(clip)}
    patched = textspace.apply_trigger(clip, "<me>", vectors)
    text = "a photo of <me> person, smiling"
    ref = patched.encode_from_tokens(patched.tokenize(text))
    ours, _ = _ours(clip, text, "<me>", vectors)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4)


def test_clip_set_last_layer_is_respected(load_ckpt, tiny_sd15):
    _, clip, _ = load_ckpt(tiny_sd15)
    c = clip.clone()
    c.clip_layer(-2)
    text = "a photo of a person"
    ref = c.encode_from_tokens(c.tokenize(text))
    ours, _ = _ours(c, text)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4)


def test_gradients_reach_inserted_vectors(load_ckpt, tiny_sd15):
    from comfyui_face_personalization.models_loader import textspace
    from comfyui_face_personalization.models_loader.textspace import trigger as trig

    _, clip, _ = load_ckpt(tiny_sd15)
    enc = textspace.TextEncoder.of_clip(clip)["clip_l"]
    vec = torch.nn.Parameter(torch.randn(2, enc.width) * 0.02)
    ids, _, slots, _ = trig.slot_layout(trig.trigger_slots(clip, "a photo of <me>", "<me>", 2)["clip_l"])
    embeds = textspace.insert_rows(enc.token_embeddings(ids), [(c, p) for c, p, _ in slots],
                                   vec[[k for _, _, k in slots]])
    enc(embeds).context.square().mean().backward()
    assert vec.grad is not None and torch.isfinite(vec.grad).all() and vec.grad.abs().sum() > 0
