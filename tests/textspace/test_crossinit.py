"""Cross Initialization: oracle against HF transformers, official learned embeddings, files, bad input."""
import logging

import pytest
import torch

from hf_ref import comfy_clip_to_hf, hf_text_model, hidden_states


def _cfg(kind):
    # (encoder key, width, heads, mlp, activation, output layer index into the hidden-state list)
    return {"sd15": ("clip_l", 768, 12, 3072, "quick_gelu", -1), "sd2": ("clip_h", 1024, 16, 4096, "gelu", -2)}[kind]


def _reference_cross_init(hf, names, bos, eos, pad, layer):
    """Official celeb_names_cross_init, written against HF CLIPTextModel."""
    from transformers import CLIPTokenizer
    import comfy.sd1_clip, os

    tok = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
    w = hf.embeddings.token_embedding.weight.float()
    cols = [[], []]
    for name in names:
        ids = tok(name, padding="do_not_pad", truncation=True, max_length=77, return_tensors="pt").input_ids[0]
        e = w[ids]
        for i in range(1, min(e.shape[0] - 1, 3)):
            cols[i - 1].append(e[i][None])
    c = torch.cat([torch.cat(cols[0]).mean(0, keepdim=True), torch.cat(cols[1]).mean(0, keepdim=True)])
    x = torch.cat([w[bos][None], c, w[eos][None], w[pad][None].repeat(73, 1)])[None]
    hs = hidden_states(hf, x)
    return hf.final_layer_norm(hs[layer])[0, 1:3], [len(cols[0]), len(cols[1])]


@pytest.fixture(scope="module")
def names(comfy):
    from comfyui_face_personalization.models_loader.methods.crossinit import core

    return core.load_names()


def test_names_list_shipped(names, shared_data):
    """The shipped names file is the official wiki_names_v2.txt, byte for byte."""
    from comfyui_face_personalization.models_loader.methods.crossinit import core

    with open(core.NAMES_FILE, "rb") as f:
        shipped = f.read()
    assert shipped == (shared_data / "crossinit" / "wiki_names_v2.txt").read_bytes()
    assert len(names) == 691 and len(set(names)) == 646


@pytest.mark.parametrize("kind", ["sd15", "sd2"])
def test_init_matches_hf_reference(kind, request, load_ckpt, names):
    from comfyui_face_personalization.models_loader.methods.crossinit import core

    ckpt = request.getfixturevalue(f"tiny_{kind}")
    _, clip, _ = load_ckpt(ckpt)
    key, width, heads, inner, act, layer = _cfg(kind)
    ours = core.cross_init_vectors(clip, names)
    assert list(ours) == [key] and ours[key].shape == (2, width)
    hf = hf_text_model(comfy_clip_to_hf(clip, key), width, heads, inner, act)
    pad = 49407 if kind == "sd15" else 0
    ref, counts = _reference_cross_init(hf, names, 49406, 49407, pad, layer)
    assert counts == [691, 680]
    err = (ours[key] - ref).abs().max().item()
    assert err <= 1e-5, err
    # column means are not trivially zero / identical
    assert (ours[key][0] - ours[key][1]).abs().max() > 1e-3


def _manual_encode_sd2(clip, words_before, vectors, words_after):
    """Reference: assemble input embeddings myself ([BOS] words [v0 v1] words [EOS] pad 0 ...) and run the
    HF encoder: penultimate layer + final LayerNorm (SD2's conditioning)."""
    from transformers import CLIPTokenizer
    import comfy.sd1_clip, os

    tok = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
    hf = hf_text_model(comfy_clip_to_hf(clip, "clip_h"), 1024, 16, 4096, "gelu")
    w = hf.embeddings.token_embedding.weight
    before = tok(words_before, add_special_tokens=False).input_ids
    after = tok(words_after, add_special_tokens=False).input_ids
    rows = [w[[49406] + before], vectors.float(), w[after + [49407]]]
    x = torch.cat(rows)
    x = torch.cat([x, w[0][None].repeat(77 - x.shape[0], 1)])[None]
    return hf.final_layer_norm(hidden_states(hf, x)[-2])


def test_official_28017_in_sd2_equals_manual_insertion(comfy, tiny_sd2, load_ckpt, crossinit_files, shared_data):
    from comfyui_face_personalization.models_loader import textspace
    from comfyui_face_personalization.models_loader.methods.crossinit import core

    _, clip, _ = load_ckpt(tiny_sd2)
    out_clip, identity = comfy.node_classes["FP_LoadIdentityEmbedding"]().execute(clip, "crossinit/28017.bin", "<28017>")
    vec = identity["vectors"]
    raw = torch.load(shared_data / "crossinit" / "learned_embeddings" / "28017.bin", weights_only=True)
    assert torch.equal(vec, torch.stack([raw["28017_v0"], raw["28017_v1"]]).float())
    cond = out_clip.encode_from_tokens(out_clip.tokenize("a photo of <28017> person"))
    ref = _manual_encode_sd2(clip, "a photo of", vec, "person")
    assert cond.shape == ref.shape == (1, 77, 1024)
    err = (cond.float() - ref).abs().max().item()
    assert err <= 1e-4, err
    # the original CLIP is untouched (clone): the trigger is plain text there
    plain = clip.encode_from_tokens(clip.tokenize("a photo of <28017> person"))
    assert (plain - cond).abs().max() > 1e-2
    assert textspace.triggers_of(clip) == {}


def test_wrong_dimension_is_a_clear_error(comfy, tiny_sd15, crossinit_files):
    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15}},
        "load": {"class_type": "FP_LoadIdentityEmbedding", "inputs": {"clip": ["ckpt", 1], "embedding_file": "crossinit/28017.bin", "trigger_word": "<f>"}},
        "enc": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["load", 0], "text": "a photo of <f>"}},
        "out": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["enc", 0]}},
    }
    # ConditioningZeroOut is not an output node: add a preview-less output via SaveIdentity
    prompt["save"] = {"class_type": "FP_SaveIdentityEmbedding", "inputs": {"identity_embedding": ["load", 1], "name": "never", "overwrite": True}}
    err = comfy.run(prompt, expect_error=True)
    msg = str(err)
    assert "768" in msg and "1024" in msg and "clip_l" in msg


def test_missing_trigger_warns(load_ckpt, tiny_sd15, caplog):
    from comfyui_face_personalization.models_loader import textspace

    _, clip, _ = load_ckpt(tiny_sd15)
    patched = textspace.apply_trigger(clip, "<me>", torch.randn(2, 768))
    with caplog.at_level(logging.WARNING):
        patched.tokenize("a photo of a person")
    assert any("<me>" in r.getMessage() and "does not contain" in r.getMessage() for r in caplog.records)
    assert "does not contain" in textspace.check_prompt(patched, "a cat")
    assert textspace.check_prompt(patched, "a photo of <me>") == ""


def test_save_then_plain_embedding_syntax(comfy, comfy_home, load_ckpt, tiny_sd15):
    """CrossInit in a real graph, saved to models/embeddings; plain CLIPTextEncode with embedding:name
    gives exactly the trigger-word conditioning."""
    from pathlib import Path

    prompt = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15}},
        "ci": {"class_type": "CrossInitEmbedding", "inputs": {"clip": ["ckpt", 1], "trigger_word": "<v>", "names_file": ""}},
        "save": {"class_type": "FP_SaveIdentityEmbedding", "inputs": {"identity_embedding": ["ci", 1], "name": "fp_test_ci", "overwrite": True}},
    }
    out = comfy.run(prompt)
    path = Path(comfy_home) / "models" / "embeddings" / "fp_test_ci.safetensors"
    assert path.is_file() and "embedding:fp_test_ci" in out["save"]["text"][0]
    import safetensors.torch

    sd = safetensors.torch.load_file(str(path))
    assert list(sd) == ["emb_params"] and sd["emb_params"].shape == (2, 768)
    _, clip, _ = load_ckpt(tiny_sd15)
    cls = comfy.node_classes["CrossInitEmbedding"]()
    patched, ident = cls.execute(clip, "<v>")
    assert torch.equal(sd["emb_params"], ident["vectors"]["clip_l"])
    a = patched.encode_from_tokens(patched.tokenize("a photo of <v> person, (smiling:1.2)"))
    b = clip.encode_from_tokens(clip.tokenize("a photo of embedding:fp_test_ci person, (smiling:1.2)"))
    assert torch.equal(a, b)
    # the file loads back through the pack loader too
    _, ident2 = comfy.node_classes["FP_LoadIdentityEmbedding"]().execute(clip, "embeddings/fp_test_ci.safetensors", "<w>")
    assert torch.equal(ident2["vectors"], sd["emb_params"])


def test_sdxl_one_pair_per_encoder_through_core_embedding_syntax(comfy, comfy_home, load_ckpt, tiny_sdxl):
    """SDXL: CrossInit makes one token pair per text encoder (clip_l 768, clip_g 1280); Save Identity Embedding
    writes them as core's SDXL embedding file (keys clip_l / clip_g), and a plain CLIPTextEncode with
    embedding:name gives exactly the trigger-word conditioning on both encoders [1, 77, 2048]."""
    from pathlib import Path

    import safetensors.torch

    _, clip, _ = load_ckpt(tiny_sdxl)
    patched, ident = comfy.node_classes["CrossInitEmbedding"]().execute(clip, "<x>")
    vectors = ident["vectors"]
    assert {k: tuple(v.shape) for k, v in vectors.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    for v in vectors.values():
        assert torch.isfinite(v).all() and (v[0] - v[1]).abs().max() > 1e-3
    out = comfy.node_classes["FP_SaveIdentityEmbedding"]().execute(ident, "fp_test_ci_sdxl", True)
    path = Path(comfy_home) / "models" / "embeddings" / "fp_test_ci_sdxl.safetensors"
    assert path.is_file() and "embedding:fp_test_ci_sdxl" in out["ui"]["text"][0]
    sd = safetensors.torch.load_file(str(path))
    assert sorted(sd) == ["clip_g", "clip_l"]
    assert all(torch.equal(sd[k], vectors[k]) for k in sd)
    text = "a photo of {} person, (smiling:1.2)"
    a = patched.encode_from_tokens(patched.tokenize(text.format("<x>")))
    b = clip.encode_from_tokens(clip.tokenize(text.format("embedding:fp_test_ci_sdxl")))
    assert a.shape[-1] == 2048 and torch.equal(a, b)
    plain = clip.encode_from_tokens(clip.tokenize(text.format("someone")))
    assert (a - plain).abs().max() > 1e-3  # the tokens do reach both encoders' conditioning
    _, back = comfy.node_classes["FP_LoadIdentityEmbedding"]().execute(clip, "embeddings/fp_test_ci_sdxl.safetensors",
                                                                      "<y>")
    assert sorted(back["vectors"]) == ["clip_g", "clip_l"] and all(torch.equal(back["vectors"][k], sd[k]) for k in sd)


def test_custom_names_file(tmp_path, load_ckpt, tiny_sd15, names):
    """A custom names file gives the official initialisation over exactly those names (HF reference)."""
    from comfyui_face_personalization.models_loader.methods.crossinit import core

    f = tmp_path / "names.txt"
    f.write_text("\n".join(names[:50]))
    _, clip, _ = load_ckpt(tiny_sd15)
    a = core.cross_init_vectors(clip, core.load_names(str(f)))["clip_l"]
    key, width, heads, inner, act, layer = _cfg("sd15")
    hf = hf_text_model(comfy_clip_to_hf(clip, key), width, heads, inner, act)
    ref, counts = _reference_cross_init(hf, names[:50], 49406, 49407, 49407, layer)
    assert counts[0] == 50
    assert (a - ref).abs().max().item() <= 1e-5
    full = core.cross_init_vectors(clip, names)["clip_l"]
    assert (a - full).abs().max() > 1e-4  # the file's names are really the ones used
    with pytest.raises(FileNotFoundError):
        core.load_names(str(tmp_path / "nope.txt"))
