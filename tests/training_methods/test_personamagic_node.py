"""FP_TrainPersonaMagic (export mode, no worker): validation errors name the input, the job folder holds the photos,
their face masks and the official-preprocessing CLIP embeddings; the worker's build_trainer + Loop train 2 steps
from that folder and FP_TrainingResult's load_result gives the mapper FP_LoadPersonaMagic would."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def pm_inputs(comfy, install_model, shared_data):
    ckpt = install_model("sd15", "checkpoints")
    cv = comfy.node_classes["FP_LoadCLIPVisionAnySize"]().load(install_model("clip_vision_vitb32", "clip_vision"),
                                                            "quick_gelu", "fp32")[0]
    det = comfy.node_classes["FP_OfflineFaceDetector"]().execute(0.5, 10)[0]
    arr = np.asarray(Image.open(shared_data / "faces" / "celebahq_28017.jpg").convert("RGB"), dtype=np.float32) / 255.0
    return ckpt, cv, det, torch.from_numpy(arr)[None]


def _run(comfy, pm_inputs, **kw):
    ckpt, cv, det, image = pm_inputs
    args = dict(ckpt_name=ckpt, face_analysis=det, clip_vision=cv, name="pm_node_test", steps=2, learning_rate=1e-4,
                grad_accum=2, resolution=64, framing="whole photo (official)", mask_source="face pipeline",
                class_word="face", seed=1, precision="fp32", gradient_checkpointing=False, checkpoint_every=10,
                preview_every=0, if_no_face="error", pause_while_generating=True, mode="export job only", images=image)
    args.update(kw)
    return comfy.node_classes["FP_TrainPersonaMagic"]().execute(**args)


def _refused(comfy, pm_inputs, **kw):
    """_run under an output name no other test writes (an existing output is refused before anything else)."""
    return _run(comfy, pm_inputs, **{"name": "pm_bad_inputs", **kw})


def test_bad_inputs_name_the_problem(comfy, pm_inputs):
    image = pm_inputs[3]
    with pytest.raises(ValueError, match="mask_source"):
        _refused(comfy, pm_inputs, masks=torch.ones(1, 64, 64))
    with pytest.raises(ValueError, match="1 masks for 2 images"):
        _refused(comfy, pm_inputs, images=torch.cat([image, image]), masks=torch.ones(1, 64, 64),
                 mask_source="mask input / <photo>_mask.png")
    with pytest.raises(ValueError, match="class_word"):
        _refused(comfy, pm_inputs, class_word="two words")
    with pytest.raises(ValueError, match="no face found in image 1"):
        _refused(comfy, pm_inputs, images=torch.full((1, 128, 128, 3), 0.5))
    with pytest.raises(ValueError, match="invalid output name"):
        _refused(comfy, pm_inputs, name="../x")


def test_job_folder_trains_and_loads(comfy, pm_inputs, comfy_home):
    from comfyui_face_personalization.models_loader.methods.personamagic.reference import encode_reference
    from comfyui_face_personalization.models_loader.training import jobfiles, registry, run
    from comfyui_face_personalization.models_loader.training.loop import Loop
    from comfyui_face_personalization.models_loader.training.spec import JobSpec
    from comfyui_face_personalization.training_nodes.personamagic_node import _resize

    out = _run(comfy, pm_inputs, mask_source="mask input / <photo>_mask.png", masks=torch.ones(1, 100, 80))
    job, job_id, out_path, cmd = out["result"]
    assert out_path.endswith(os.path.join("personamagic", "pm_node_test.safetensors")) and "accelerate launch" in cmd
    job_dir = job["job_dir"]
    spec = JobSpec.load(job_dir)
    assert (spec.method, spec.batch, spec.grad_accum, spec.family) == ("personamagic", 1, 2, "SD15")
    assert spec.masks == ["photos/photo_00_mask.png"] and spec.params["class_word"] == "face"
    mask = np.asarray(Image.open(os.path.join(job_dir, spec.masks[0])))
    assert mask.min() == 255  # the all-white user mask
    # the bypass embedding: official training preprocessing of the training pixels (PIL bicubic to the resolution)
    from safetensors.torch import load_file

    emb = load_file(os.path.join(job_dir, "image_embeds.safetensors"))["image_embeds"]
    want = encode_reference(pm_inputs[1], _resize(pm_inputs[3][0], 64)[None], load_size=64)["image_embeds"]
    assert emb.shape == (1, 512) and torch.allclose(emb, want.float().cpu(), atol=1e-6)

    # face-pipeline masks are soft, inside the photo, not empty
    out2 = _run(comfy, pm_inputs, name="pm_node_test2")
    d2 = out2["result"][0]["job_dir"]
    m2 = np.asarray(Image.open(os.path.join(d2, "photos", "photo_00_mask.png")).convert("L"), dtype=np.float32)
    assert 0.05 < (m2 / 255).mean() < 0.9 and m2.max() == 255

    base = run.load_base(spec)
    module = registry.method_module("personamagic")
    assert module.RESULT_TYPE == "PERSONAMAGIC_MAPPER"
    trainer = module.build_trainer(spec, base, job_dir)
    assert torch.equal(trainer.image_embeds.cpu(), emb)
    assert float(trainer.masks.min()) == 1.0 and tuple(trainer.masks.shape) == (1, 8, 8)
    assert Loop(trainer, spec, job_dir).run() == "done"
    st = jobfiles.read_status(job_dir)
    rows = jobfiles.read_jsonl(os.path.join(job_dir, jobfiles.LOSS_FILE))
    assert len(rows) == 2 and all(set(r["terms"]) >= {"mse", "te", "te_p"} for r in rows)
    bundle = module.load_result(st["outputs"])
    (loaded,) = comfy.node_classes["FP_LoadPersonaMagic"]().load("pm_node_test.safetensors")
    for k, v in trainer.trainable().items():
        assert torch.equal(bundle.mapper.state_dict()[k], v.detach().cpu())
        assert torch.equal(loaded.mapper.state_dict()[k], v.detach().cpu())
    with open(os.path.splitext(out_path)[0] + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["method"] == "personamagic" and meta["steps"] == 2
