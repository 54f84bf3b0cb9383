"""AdaFace: oracle against HF transformers, checkpoint formats, restricted unpickling, composition."""
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_ref import hf_text_model, hidden_states


@pytest.fixture(scope="module")
def ada(comfy, adaface_files):
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.adaface import load

    out = {lw: load.load_adaface(str(tiny.ensure("adaface_pt")), str(tiny.ensure("adaface_arc2face")), layer_weights=lw)
           for lw in ("reset_1_2_4", "checkpoint")}
    out["default"] = load.load_adaface(str(tiny.ensure("adaface_pt")), str(tiny.ensure("adaface_arc2face")))
    return out


_REF = {}


def _reference_tokens(face, layer_weights, cfg_scale=1.0):
    """Independent forward: HF CLIPTextModel for Arc2Face and the inverter (official MKV attention)."""
    if "models" not in _REF:
        _REF["models"] = _reference_models()
    tok, arc, inv, gen, gsd = _REF["models"]
    return _reference_forward(tok, arc, inv, gen, gsd, face, layer_weights, cfg_scale)


def _reference_models():
    from comfyui_face_personalization.models_loader import safe_load
    from fixtures import tiny
    from comfyui_face_personalization.models_loader.methods.adaface.load import ALLOWED_CLASSES, ALLOWED_PREFIXES, INERT_FUNCTIONS
    from transformers import CLIPTokenizer
    import comfy.sd1_clip

    tok = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
    arc_sd = safe_load.load_file(str(tiny.ensure("adaface_arc2face")))
    arc = hf_text_model(arc_sd, 768, 12, 256, "quick_gelu")
    ckpt = safe_load.load_file(str(tiny.ensure("adaface_pt")), allowed_classes=ALLOWED_CLASSES,
                               allowed_prefixes=ALLOWED_PREFIXES, inert_functions=INERT_FUNCTIONS)
    gen = ckpt["string_to_subj_basis_generator_dict"]["z"]
    gsd = safe_load.module_state_dict(gen)
    inv = hf_text_model({k[len("prompt2token_proj."):]: v for k, v in gsd.items() if k.startswith("prompt2token_proj.")},
                        768, 12, 256, "quick_gelu")
    return tok, arc, inv, gen, gsd


@torch.no_grad()
def _reference_forward(tok, arc, inv, gen, gsd, face, layer_weights, cfg_scale):
    # Arc2Face: "photo of a id person", max_length 22 padded with EOS; id token -> face embedding
    ids = tok("photo of a id person", padding="max_length", max_length=22).input_ids
    assert ids[4] == 1014 and ids[-1] == 49407
    ids = torch.tensor([ids])
    emb = arc.embeddings.token_embedding(ids).clone()
    face = F.normalize(face.float(), dim=-1)
    emb[ids == 1014] = F.pad(face, (0, 768 - 512))
    id_embs = arc.final_layer_norm(hidden_states(arc, emb)[-1])[:, 4:20]
    # inverter: "photo of a " + ", " * 18, 77 tokens; rows 4:20 <- id_embs; weighted last-3 layers
    ids2 = torch.tensor([tok("photo of a " + ", " * 18, padding="max_length", max_length=77).input_ids])
    e2 = inv.embeddings.token_embedding(ids2).clone()
    e2[:, 4:20] = id_embs
    hs = hidden_states(inv, e2)
    w = layer_weights / layer_weights.sum(0, keepdim=True)
    mixed = sum(hs[-3 + j] * w[j] for j in range(3))
    out = inv.final_layer_norm(mixed)[0, 4:20]
    if cfg_scale != 1:
        pad = gen.state["pad_embeddings"][4:20].float()
        out = out * cfg_scale + pad * (1 - cfg_scale)
    return out, gsd["hidden_state_layer_weights"]


def test_default_is_the_checkpoints_own_layer_weights(ada, face_embed):
    """Official joint loader: strict load_state_dict keeps the learned hidden-state layer weights. The
    [1, 2, 4] reset (single-encoder patch path) moves the tokens, so a reset default fails here."""
    from fixtures.tiny.textspace import CKPT_LAYER_WEIGHTS

    ref, _ = _reference_tokens(face_embed, torch.tensor(CKPT_LAYER_WEIGHTS))
    reset, _ = _reference_tokens(face_embed, torch.tensor([[1.0], [2.0], [4.0]]))
    ours = ada["default"].encode(face_embed)
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (ours - reset).abs().max().item() > 1e-3  # the reset is distinguishable on this checkpoint
    from comfyui_face_personalization.nodes.adaface_nodes import FP_LoadAdaFace

    assert FP_LoadAdaFace.INPUT_TYPES()["required"]["layer_weights"][1]["default"] == "checkpoint"


@pytest.mark.parametrize("lw", ["reset_1_2_4", "checkpoint"])
def test_tokens_match_reference(ada, face_embed, lw):
    from fixtures.tiny.textspace import CKPT_LAYER_WEIGHTS

    weights = torch.tensor([[1.0], [2.0], [4.0]]) if lw == "reset_1_2_4" else torch.tensor(CKPT_LAYER_WEIGHTS)
    ref, stored = _reference_tokens(face_embed, weights)
    assert torch.equal(stored.float(), torch.tensor(CKPT_LAYER_WEIGHTS))
    ours = ada[lw].encode(face_embed)
    assert ours.shape == (16, 768)
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4, err
    # pad blend (official out_id_embs_cfg_scale)
    ref6, _ = _reference_tokens(face_embed, weights, cfg_scale=6.0)
    assert (ada[lw].encode(face_embed, cfg_scale=6.0) - ref6).abs().max().item() <= 6e-4


def test_safetensors_equals_pickled(ada, face_embed):
    from fixtures import tiny
    from fixtures.tiny.textspace import CKPT_LAYER_WEIGHTS
    from comfyui_face_personalization.models_loader.methods.adaface import load

    st = load.load_adaface(str(tiny.ensure("adaface_safetensors")), layer_weights="checkpoint")
    ref, _ = _reference_tokens(face_embed, torch.tensor(CKPT_LAYER_WEIGHTS))
    assert (st.encode(face_embed) - ref).abs().max().item() <= 1e-4
    assert torch.equal(st.encode(face_embed), ada["checkpoint"].encode(face_embed))


def test_averaging_of_several_faces(ada, face_embed, shared_data):
    """Several faces -> the tokens of their normalised mean identity (reference forward of that mean)."""
    other = torch.load(shared_data / "adaface" / "mean_emb_jenniferlawrence.pt", map_location="cpu", weights_only=True).float()
    both = torch.cat([face_embed, other])
    mean = F.normalize(F.normalize(both, dim=-1).mean(0, keepdim=True), dim=-1)
    from fixtures.tiny.textspace import CKPT_LAYER_WEIGHTS

    ref, _ = _reference_tokens(mean, torch.tensor(CKPT_LAYER_WEIGHTS))
    ours = ada["default"].encode(both)
    assert (ours - ref).abs().max().item() <= 1e-4
    single, _ = _reference_tokens(face_embed, torch.tensor(CKPT_LAYER_WEIGHTS))
    assert (ours - single).abs().max().item() > 1e-3  # the second face really takes part


class _Evil:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_refused(tmp_path, comfy):
    from comfyui_face_personalization.models_loader import safe_load
    from comfyui_face_personalization.models_loader.methods.adaface import load

    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "adaface_evil.pt"
    torch.save({"string_to_subj_basis_generator_dict": {"z": evil}}, str(path))
    with pytest.raises(safe_load.UnsafeCheckpointError, match="allowlist"):
        load.load_adaface(str(path), None)
    # also hidden inside an otherwise plausible module tree
    with open(tmp_path / "evil2.pt", "wb") as f:
        pickle.dump({"string_to_subj_basis_generator_dict": {"z": evil}}, f, protocol=2)
    with pytest.raises(safe_load.UnsafeCheckpointError):
        load.load_adaface(str(tmp_path / "evil2.pt"), None)
    assert not marker.exists()


def test_wrong_inputs(ada, load_ckpt, tiny_sd2, comfy):
    from comfyui_face_personalization.models_loader import textspace
    from comfyui_face_personalization.models_loader.face import embed

    with pytest.raises(ValueError, match="512"):
        embed.as_face_embeds(torch.randn(1, 768))
    _, clip2, _ = load_ckpt(tiny_sd2)
    with pytest.raises(textspace.TokenEmbeddingError, match="1024"):
        comfy.node_classes["AdaFaceInvert"]().execute(clip2, ada["default"], "<ada>", 1.0, face_embeds=torch.randn(1, 512))


def _graph(ckpt, text, extra=None, batch=1, controlnet=None, image=None, prefix="fp_ada"):
    from harness.graphs import txt2img

    p = txt2img(ckpt, text=text, negative="blurry", batch=batch, prefix=prefix)
    from fixtures import tiny

    p["la"] = {"class_type": "FP_LoadAdaFace", "inputs": {"adaface_file": tiny.file_name("adaface_pt"),
                                                         "arc2face_encoder": tiny.file_name("adaface_arc2face"),
                                                         "layer_weights": "checkpoint"}}
    p["inv"] = {"class_type": "AdaFaceInvert", "inputs": {"clip": ["ckpt", 1], "adaface": ["la", 0], "trigger_word": "<ada>",
                                                          "id_cfg_scale": 1.0, "embeds_file": "mean_emb_keanureeves.pt"}}
    p["pos"]["inputs"]["clip"] = ["inv", 0]
    if controlnet:
        p["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet}}
        p["img"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        p["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {"positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0],
                                                                          "image": ["img", 0], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        p["sample"]["inputs"]["positive"] = ["apply", 0]
        p["sample"]["inputs"]["negative"] = ["apply", 1]
    return p


def _img(comfy, outputs):
    from PIL import Image

    return np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in comfy.output_files(outputs)])


def test_graph_changes_image_and_controlnet_composes(comfy, tiny_sd15, tiny_controlnet, adaface_files, tmp_path, input_image):
    """Smoke test (the numerical oracles live in the method tests): AdaFace changes the image, ControlNet composes."""
    from PIL import Image
    from harness.graphs import txt2img

    plain = _img(comfy, comfy.run(txt2img(tiny_sd15, text="<ada> in a forest", negative="blurry", prefix="fp_plain")))
    ada_img = _img(comfy, comfy.run(_graph(tiny_sd15, "<ada> in a forest")))
    assert np.abs(plain - ada_img).max() > 0
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "fp_hint.png")
    name = input_image(tmp_path / "fp_hint.png")
    with_cn = _img(comfy, comfy.run(_graph(tiny_sd15, "<ada> in a forest", controlnet=tiny_controlnet, image=name, prefix="fp_cn")))
    assert np.abs(with_cn - ada_img).max() > 0


def _first_unet_context(model, pos, neg, frames):
    """One euler step of a KSampler on a clone of ``model`` (``frames`` 64 px latents): the cross-attention context
    and cond_or_uncond of the first UNet call."""
    import nodes

    seen = []

    def wrapper(apply_model, args):
        seen.append((args["c"]["c_crossattn"].clone(), list(args["cond_or_uncond"])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m = model.clone()
    m.set_model_unet_function_wrapper(wrapper)
    latent = nodes.EmptyLatentImage().generate(64, 64, frames)[0]
    nodes.common_ksampler(m, 0, 1, 5.0, "euler", "normal", pos, neg, latent)
    return seen[0]


def test_zero_unet_cost_and_identical_frames(comfy, load_ckpt, tiny_sd15, ada, face_embed):
    """Text-space identity leaves the MODEL untouched (no patches, same model_options) and a multi-frame
    batch (as AnimateDiff samples it) gets identical identity conditioning on every frame."""
    import nodes

    model, clip, _ = load_ckpt(tiny_sd15)
    for cls in ("AdaFaceInvert", "FP_LoadAdaFace", "CrossInitEmbedding"):
        spec = comfy.node_classes[cls]
        assert "MODEL" not in spec.RETURN_TYPES
        assert all(v[0] != "MODEL" for g in spec.INPUT_TYPES().values() for v in g.values())
    opts_before = repr(model.model_options)
    patched, ident = comfy.node_classes["AdaFaceInvert"]().execute(clip, ada["default"], "<ada>", 1.0, face_embeds=face_embed)
    pos = nodes.CLIPTextEncode().encode(patched, "<ada> in a forest")[0]
    neg = nodes.CLIPTextEncode().encode(patched, "blurry")[0]
    # the inline tokens are exactly the AdaFace output, placed at the trigger position (after BOS)
    expect_rows = ada["default"].encode(face_embed)
    assert torch.equal(ident["vectors"]["clip_l"], expect_rows)
    toks = [t for t, _ in patched.tokenize("<ada> in a forest")["l"][0]]
    assert all(torch.is_tensor(t) for t in toks[1:17]) and not torch.is_tensor(toks[17])
    assert torch.equal(torch.stack(toks[1:17]).float(), expect_rows)
    assert not any(torch.is_tensor(t) for t in [t for t, _ in patched.tokenize("blurry")["l"][0]])
    c, order = _first_unet_context(model, pos, neg, frames=4)
    assert repr(model.model_options) == opts_before
    assert not model.model_options.get("transformer_options", {}).get("patches")
    frames = c.shape[0] // len(order)
    assert frames == 4
    for chunk, kind in enumerate(order):
        rows = c[chunk * frames:(chunk + 1) * frames]
        assert all(torch.equal(rows[0], rows[i]) for i in range(frames))
        expect = pos[0][0] if kind == 0 else neg[0][0]
        assert torch.equal(rows[0], expect[0].to(rows.dtype))


def test_id_cfg_scale_reaches_adaface_in_a_ksampler_run(comfy, load_ckpt, tiny_sd15, ada, face_embed):
    """AdaFaceInvert's id_cfg_scale (node default and 6, the ConsistentID value) is the official pad blend of the
    tokens (reference forward), and the sampler's cross-attention context is the blended prompt."""
    import nodes

    model, clip, _ = load_ckpt(tiny_sd15)
    node = comfy.node_classes["AdaFaceInvert"]
    default = node.INPUT_TYPES()["required"]["id_cfg_scale"][1]["default"]
    contexts = {}
    for scale in (default, 6.0):
        patched, ident = node().execute(clip, ada["reset_1_2_4"], "<ada>", scale, face_embeds=face_embed)
        ref, _ = _reference_tokens(face_embed, torch.tensor([[1.0], [2.0], [4.0]]), cfg_scale=scale)
        assert (ident["vectors"]["clip_l"] - ref).abs().max().item() <= 1e-4 * max(1.0, scale), scale
        pos = nodes.CLIPTextEncode().encode(patched, "<ada> in a forest")[0]
        c, order = _first_unet_context(model, pos, nodes.CLIPTextEncode().encode(clip, "blurry")[0], frames=1)
        contexts[scale] = c[order.index(0)]
        assert torch.equal(contexts[scale], pos[0][0][0].to(c.dtype))
    assert (contexts[default] - contexts[6.0]).abs().max() > 1e-3
