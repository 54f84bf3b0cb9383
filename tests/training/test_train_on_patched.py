"""Training on what the user sees: a LoRA on the graph's MODEL and CLIP given to FP_TrainCrossInit is baked into
the base the worker trains on (in-process, tiny SD1.5). Reference: the LoRA rule W + s·(alpha/r)·up@down by hand,
and ComfyUI's own encoding through the LoRA'd CLIP; everything the LoRA does not touch stays bit-identical."""
import shutil
from pathlib import Path

import torch

RANK, ALPHA = 4, 2.0
CLIP_KEY = "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"


def _tiny_lora(model, clip, strengths):
    """A generic-format LoRA on one CLIP and one UNet weight, and the patched weights computed by hand."""
    g = torch.Generator().manual_seed(0)
    unet_sd, clip_sd = model.model.state_dict(), clip.cond_stage_model.state_dict()
    unet_key = next(k for k in unet_sd if k.startswith("diffusion_model.") and k.endswith("attn2.to_k.weight"))
    lora, expected = {}, {}
    for prefix, key, sd, s in (("text_encoders.", CLIP_KEY, clip_sd, strengths["clip"]),
                               ("", unet_key, unet_sd, strengths["model"])):
        w = sd[key].float()
        up = torch.randn(w.shape[0], RANK, generator=g) * 0.2
        down = torch.randn(RANK, w.shape[1], generator=g) * 0.2
        stem = prefix + key[: -len(".weight")]
        lora.update({f"{stem}.lora_up.weight": up, f"{stem}.lora_down.weight": down, f"{stem}.alpha": torch.tensor(ALPHA)})
        expected[key] = w + s * (ALPHA / RANK) * (up @ down)
    return lora, expected, unet_key


def _load(run, path, job_dir=None, overrides=""):
    from comfyui_face_personalization.models_loader.training.spec import JobSpec

    return run.load_base(JobSpec(job_id="p", method="crossinit", name="p", base_model=path, base_overrides=overrides),
                         job_dir)


def test_a_lora_on_the_graph_is_baked_into_the_trained_base(comfy, comfy_home, tiny_sd15, shared_data, tmp_path):
    import comfy.sd
    import folder_paths

    from comfyui_face_personalization.models_loader.training import run
    from comfyui_face_personalization.models_loader.training.spec import JobSpec
    from comfyui_face_personalization.nodes.face_nodes import FP_OfflineFaceDetector
    from comfyui_face_personalization.training_nodes.nodes import FP_TrainCrossInit

    path = folder_paths.get_full_path("checkpoints", tiny_sd15)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                              embedding_directory=None)
    lora, expected, unet_key = _tiny_lora(model, clip, {"model": 0.7, "clip": 0.9})
    model_l, clip_l = comfy.sd.load_lora_for_models(model, clip, lora, 0.7, 0.9)

    photos = Path(comfy_home) / "input" / "fp_patched_base_photos"  # photo folders are read inside ComfyUI's folders only
    photos.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_data / "faces" / "celebahq_28017.jpg", photos / "a.jpg")
    det = FP_OfflineFaceDetector().execute(0.5, 10)[0]
    out = FP_TrainCrossInit().execute(tiny_sd15, det, "patched_base_test", "<face>", "custom", 2, 0.005, 1, 1, 64, 0,
                                      "fp32", False, True, 1, 0, "error", False, "export job only",
                                      photo_folder=str(photos), model=model_l, clip=clip_l)
    job_dir = out["result"][0]["job_dir"]
    spec = JobSpec.load(job_dir)
    assert spec.base_overrides == "base_weights.safetensors"
    assert spec.params["base_patched"] == {"model": 1, "clip": 1}

    patched = run.load_base(spec, job_dir)  # what the worker trains on
    plain = _load(run, path)
    got = {CLIP_KEY: patched.clip.cond_stage_model.state_dict()[CLIP_KEY],
           unet_key: patched.model.model.state_dict()[unet_key]}
    ref = {CLIP_KEY: plain.clip.cond_stage_model.state_dict()[CLIP_KEY], unet_key: plain.model.model.state_dict()[unet_key]}
    for key in expected:  # stored in the checkpoint's weight dtype (ComfyUI keeps CLIP in fp16 on CPU too)
        torch.testing.assert_close(got[key], expected[key].to(got[key].dtype))
        assert (got[key].float() - ref[key].float()).abs().max() > 1e-3  # the LoRA really changes the base
    for part, a, b in (("clip", patched.clip.cond_stage_model, plain.clip.cond_stage_model),
                       ("model", patched.model.model, plain.model.model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        # text_projection: not in SD1.x files, ComfyUI fills it at load (not from the checkpoint): left out
        untouched = [k for k in sa if k not in expected and "text_projection" not in k and not torch.equal(sa[k], sb[k])]
        assert not untouched, (part, untouched[:5])

    # the text the worker trains through is the text ComfyUI encodes with the LoRA'd CLIP (what the user sees)
    tokens = clip_l.tokenize("a photo of a person")
    want = clip_l.encode_from_tokens(tokens)
    with torch.no_grad():
        have = patched.clip.encode_from_tokens(patched.clip.tokenize("a photo of a person"))
        unpatched = plain.clip.encode_from_tokens(plain.clip.tokenize("a photo of a person"))
    # ComfyUI rounds its patched fp16 weights stochastically, the baked ones to nearest: equal up to that rounding,
    # i.e. far closer to the LoRA'd encoding than the unpatched base is
    effect = (unpatched - want).abs().max()
    assert effect > 1e-3, effect
    assert (have - want).abs().max() < 0.05 * effect, ((have - want).abs().max(), effect)


def test_without_model_or_clip_nothing_is_baked(comfy, tmp_path):
    from comfyui_face_personalization.models_loader.training import baked

    assert baked.write_overrides(str(tmp_path)) == ("", {})
    assert not (tmp_path / baked.OVERRIDES_FILE).exists()


def test_a_model_of_another_checkpoint_is_refused_with_a_clear_error(comfy, tiny_sd15, tmp_path):
    import comfy.sd
    import folder_paths
    import pytest
    import safetensors.torch

    from comfyui_face_personalization.models_loader.training import baked, run

    path = folder_paths.get_full_path("checkpoints", tiny_sd15)
    safetensors.torch.save_file({"model/diffusion_model.input_blocks.0.0.weight": torch.zeros(3, 3)},
                                str(tmp_path / baked.OVERRIDES_FILE))
    with pytest.raises(ValueError, match="does not match the checkpoint picked in ckpt_name"):
        _load(run, path, str(tmp_path), baked.OVERRIDES_FILE)
