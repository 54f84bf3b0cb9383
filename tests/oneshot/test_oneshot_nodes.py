"""One-node apply (W+ Adapter / PIDiff / AdaFace from Photo): the same result, bit for bit, as the
fine-grained chain with the same settings, in a real graph and at the tensor level; presets map to the
documented strength / start."""
import numpy as np
import pytest
import torch
from PIL import Image

from harness.graphs import txt2img

PHOTO = "celebahq_28017.jpg"  # the tiny SCRFD finds a face in it (the adaface_from_photo workflow uses it)


@pytest.fixture(scope="module")
def names(comfy, comfy_home):
    from fixtures import tiny
    from harness import provision

    provision.provision(comfy_home)  # tiny models in their folders, the tiny antelopev2 pack, shared photos
    if not (comfy_home / "input" / PHOTO).exists():
        pytest.skip(f"shared photo {PHOTO} not available")
    return {k: tiny.file_name(k) for k in ("sd15", "e4e", "wplus_adapter_sd15", "pidiff_sd15", "adaface_pt",
                                           "adaface_arc2face")}


def _chain_wplus(p, prefix=""):
    """photo -> Face Analysis Loader -> Face Detect -> Face Align -> Load e4e -> W+ Encode (averaged)."""
    p[prefix + "photo"] = {"class_type": "LoadImage", "inputs": {"image": PHOTO}}
    p[prefix + "fa"] = {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": "antelopev2", "provider": "auto",
                                                                         "det_size": 640}}
    p[prefix + "detect"] = {"class_type": "FP_FaceDetect", "inputs": {
        "image": [prefix + "photo", 0], "face_analysis": [prefix + "fa", 0], "select": "largest", "index": 0,
        "if_no_face": "error", "det_thresh": 0.5}}
    p[prefix + "align"] = {"class_type": "FP_FaceAlign", "inputs": {
        "image": [prefix + "photo", 0], "faces": [prefix + "detect", 0], "template": "ffhq", "size": 512,
        "padding": "reflect"}}
    return p


def _image(comfy, outputs, node_id):
    files = comfy.output_files({node_id: outputs[node_id]})
    assert len(files) == 1
    return np.asarray(Image.open(files[0]))


def _wplus_graph(names, method, preset, strength, start):
    """Both paths in one prompt, each with its own sampler and SaveImage (same seed)."""
    tag = f"{method}_{preset}_{strength}_{start}"  # unique save prefixes: no output node is served from the cache
    p = txt2img(names["sd15"], steps=2, prefix=f"oneshot_chain_{tag}")
    _chain_wplus(p)
    p["e4e"] = {"class_type": "LoadE4EEncoder", "inputs": {"encoder_name": names["e4e"]}}
    p["enc"] = {"class_type": "WPlusEncode", "inputs": {"e4e": ["e4e", 0], "image": ["align", 0],
                                                        "average_batch": True}}
    if method == "wplus":
        p["w"] = {"class_type": "FP_LoadWPlusAdapter", "inputs": {"adapter_name": names["wplus_adapter_sd15"]}}
        p["apply"] = {"class_type": "ApplyResidualCrossAttention", "inputs": {
            "model": ["ckpt", 0], "wplus_adapter": ["w", 0], "wplus": ["enc", 0], "strength": strength,
            "start_percent": start, "end_percent": 1.0}}
        one = {"class_type": "FP_WPlusAdapterFromPhoto", "inputs": {"adapter_name": names["wplus_adapter_sd15"]}}
    else:
        p["w"] = {"class_type": "FP_LoadPIDiff", "inputs": {"pidiff_name": names["pidiff_sd15"]}}
        p["apply"] = {"class_type": "FP_ApplyStyleCrossAttention", "inputs": {
            "model": ["ckpt", 0], "pidiff": ["w", 0], "wplus": ["enc", 0], "strength": strength,
            "start_percent": start, "end_percent": 1.0}}
        one = {"class_type": "FP_PIDiffFromPhoto", "inputs": {"pidiff_name": names["pidiff_sd15"]}}
    p["sample"]["inputs"]["model"] = ["apply", 0]
    one["inputs"].update(model=["ckpt", 0], image=["photo", 0], preset=preset, e4e_encoder=names["e4e"],
                         model_pack="antelopev2", strength=0.123, start_percent=0.456)  # ignored unless custom
    if preset == "custom":
        one["inputs"].update(strength=strength, start_percent=start)
    p["one"] = one
    p["sample1"] = dict(p["sample"], inputs=dict(p["sample"]["inputs"], model=["one", 0]))
    p["decode1"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample1", 0], "vae": ["ckpt", 2]}}
    p["save1"] = {"class_type": "SaveImage", "inputs": {"images": ["decode1", 0], "filename_prefix": f"oneshot_one_{tag}"}}
    p["plain"] = dict(p["sample"], inputs=dict(p["sample"]["inputs"], model=["ckpt", 0]))
    p["decode0"] = {"class_type": "VAEDecode", "inputs": {"samples": ["plain", 0], "vae": ["ckpt", 2]}}
    p["save0"] = {"class_type": "SaveImage", "inputs": {"images": ["decode0", 0], "filename_prefix": f"oneshot_plain_{tag}"}}
    return p


@pytest.mark.parametrize("method,preset,strength,start", [
    ("wplus", "balanced", 1.0, 0.2),   # the preset's documented values = the official demo
    ("wplus", "custom", 0.7, 0.0),
    ("pidiff", "faithful", 0.6, 0.0),
])
def test_wplus_methods_one_node_equals_chain_in_a_graph(comfy, names, method, preset, strength, start):
    out = comfy.run(_wplus_graph(names, method, preset, strength, start))
    chain, one, plain = (_image(comfy, out, k) for k in ("save", "save1", "save0"))
    assert np.array_equal(one, chain)
    assert not np.array_equal(one, plain)  # the face did change the image


def _call(comfy, node, **kw):
    cls = comfy.node_classes[node]
    out = getattr(cls(), cls.FUNCTION)(**kw)
    return out["result"] if isinstance(out, dict) else out


def _photo(comfy):
    return _call(comfy, "LoadImage", image=PHOTO)[0]


def test_wplus_code_and_patched_model_are_bit_identical(comfy, names):
    """Tensor level: the W+ code, the aligned crops and the sampled latent of the patched model."""
    photo = _photo(comfy)
    model, clip, vae = _call(comfy, "CheckpointLoaderSimple", ckpt_name=names["sd15"])[:3]
    fa = _call(comfy, "FP_FaceAnalysisLoader", model_pack="antelopev2", provider="auto", det_size=640)[0]
    faces = _call(comfy, "FP_FaceDetect", image=photo, face_analysis=fa, select="largest", index=0,
                  if_no_face="error", det_thresh=0.5)[0]
    aligned = _call(comfy, "FP_FaceAlign", image=photo, faces=faces, template="ffhq", size=512, padding="reflect")[0]
    e4e = _call(comfy, "LoadE4EEncoder", encoder_name=names["e4e"])[0]
    code = _call(comfy, "WPlusEncode", e4e=e4e, image=aligned, average_batch=True)[0]
    adapter = _call(comfy, "FP_LoadWPlusAdapter", adapter_name=names["wplus_adapter_sd15"])[0]
    chain_model = _call(comfy, "ApplyResidualCrossAttention", model=model, wplus_adapter=adapter, wplus=code,
                        strength=1.0, start_percent=0.0, end_percent=1.0)[0]
    one_model, one_code, one_aligned = _call(
        comfy, "FP_WPlusAdapterFromPhoto", model=model, image=photo, preset="faithful",
        adapter_name=names["wplus_adapter_sd15"], e4e_encoder=names["e4e"], model_pack="antelopev2",
        strength=0.0, start_percent=0.5)
    assert torch.equal(one_code, code) and torch.equal(one_aligned, aligned)
    pos = _call(comfy, "CLIPTextEncode", clip=clip, text="a photo of a person")[0]
    neg = _call(comfy, "CLIPTextEncode", clip=clip, text="blurry")[0]
    latent = _call(comfy, "EmptyLatentImage", width=64, height=64, batch_size=1)[0]

    def sample(m):
        return _call(comfy, "KSampler", model=m, seed=3, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                     positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]["samples"]

    a, b = sample(chain_model), sample(one_model)
    assert torch.equal(a, b) and not torch.equal(a, sample(model))


def test_adaface_one_node_equals_chain(comfy, names):
    """AdaFace from Photo = Face Detect -> Face Embed (mean) -> Load AdaFace -> AdaFace Invert: the same
    embeddings and the same prompt conditioning, bit for bit."""
    photo = _photo(comfy)
    clip = _call(comfy, "CheckpointLoaderSimple", ckpt_name=names["sd15"])[1]
    fa = _call(comfy, "FP_FaceAnalysisLoader", model_pack="antelopev2", provider="auto", det_size=640)[0]
    faces = _call(comfy, "FP_FaceDetect", image=photo, face_analysis=fa, select="largest", index=0,
                  if_no_face="error", det_thresh=0.5)[0]
    embeds = _call(comfy, "FP_FaceEmbed", faces=faces, mode="mean")[0]
    ada = _call(comfy, "FP_LoadAdaFace", adaface_file=names["adaface_pt"], arc2face_encoder=names["adaface_arc2face"],
                layer_weights="checkpoint")[0]
    chain_clip = _call(comfy, "AdaFaceInvert", clip=clip, adaface=ada, trigger_word="<ada>", id_cfg_scale=1.0,
                       face_embeds=embeds)[0]
    one_clip, one_embeds = _call(comfy, "FP_AdaFaceFromPhoto", clip=clip, image=photo, trigger_word="<ada>",
                                 adaface_file=names["adaface_pt"], arc2face_encoder=names["adaface_arc2face"],
                                 model_pack="antelopev2", id_cfg_scale=1.0)
    assert torch.equal(one_embeds, embeds)
    text = "a photo of <ada> in a forest"
    a = _call(comfy, "CLIPTextEncode", clip=chain_clip, text=text)[0]
    b = _call(comfy, "CLIPTextEncode", clip=one_clip, text=text)[0]
    plain = _call(comfy, "CLIPTextEncode", clip=clip, text=text)[0]
    assert torch.equal(a[0][0], b[0][0]) and not torch.equal(a[0][0], plain[0][0])


def test_presets_are_documented_and_custom_passes_through(comfy):
    from comfyui_face_personalization.nodes import oneshot_nodes as one

    assert one.resolve_preset(one.WPLUS_PRESETS, "balanced", 9.0, 0.9) == (1.0, 0.2)  # official demo setting
    assert one.resolve_preset(one.PIDIFF_PRESETS, "balanced", 9.0, 0.9) == (0.4, 0.0)  # the paper's lambda
    assert one.resolve_preset(one.WPLUS_PRESETS, "custom", 0.3, 0.1) == (0.3, 0.1)
    for node, presets in (("FP_WPlusAdapterFromPhoto", one.WPLUS_PRESETS), ("FP_PIDiffFromPhoto", one.PIDIFF_PRESETS)):
        spec = comfy.node_classes[node].INPUT_TYPES()["required"]
        assert spec["preset"][0] == list(presets) + ["custom"]
        for name, (s, p) in presets.items():
            assert f"{name}: strength {s}, start {p}" in spec["preset"][1]["tooltip"]
