"""The worker's path for W+ Stage I and PIDiff: a job folder (spec.json, photos/, wplus_codes.safetensors) ->
``registry.method_module(m).build_trainer`` -> the generic Loop for 2 steps -> ``load_result`` of the written
outputs gives the trained tensors (what FP_TrainingResult returns)."""
import os

import pytest
import torch


def _job(tmp_path, method, photos, wcodes, params):
    from PIL import Image
    from safetensors.torch import save_file

    from comfyui_face_personalization.models_loader.training.spec import JobSpec

    job_dir = tmp_path / f"job_{method}"
    (job_dir / "photos").mkdir(parents=True)
    rels = []
    for i in range(3):
        arr = ((photos[0][i].permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        rel = os.path.join("photos", f"photo_{i:02d}.png")
        Image.fromarray(arr).save(job_dir / rel)
        rels.append(rel)
    save_file({"wplus": wcodes[:3].contiguous()}, str(job_dir / "wplus_codes.safetensors"))
    spec = JobSpec(job_id=f"j{method}", method=method, name=f"trained_{method}_job", base_model="", steps=2, seed=3,
                   batch=2, grad_accum=1, learning_rate=1e-4, resolution=64, checkpoint_every=10, photos=rels,
                   params=params, output_dirs={method: str(tmp_path / "out" / method)})
    return spec, str(job_dir)


@pytest.mark.parametrize("method,params", [("wplus", {"stage": 1}), ("pidiff", {})])
def test_job_folder_trains_two_steps_and_loads(sd15, photos, wcodes, tmp_path, method, params):
    from comfyui_face_personalization.models_loader.training import jobfiles, registry
    from comfyui_face_personalization.models_loader.training.loop import Loop
    from comfyui_face_personalization.models_loader.training.protocol import BaseModels

    mp, clip, vae = sd15
    spec, job_dir = _job(tmp_path, method, photos, wcodes, params)
    module = registry.method_module(method)
    trainer = module.build_trainer(spec, BaseModels(model=mp, clip=clip, vae=vae, device=torch.device("cpu")), job_dir)
    start = {k: v.detach().clone() for k, v in trainer.trainable().items()}
    assert Loop(trainer, spec, job_dir).run() == "done"
    st = jobfiles.read_status(job_dir)
    assert st["status"] == "done" and st["step"] == 2
    losses = [r["loss"] for r in jobfiles.read_jsonl(os.path.join(job_dir, "loss.jsonl"))]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    loaded = module.load_result(st["outputs"])
    assert loaded is not None
    trained = trainer.trainable()
    moved = [k for k in trained if not torch.equal(trained[k].detach(), start[k])]
    assert moved, "two AdamW steps changed no trainable tensor"
    # the file holds the trained mapping (same tensors the trainer ended with)
    mapping = loaded.mapping.state_dict() if hasattr(loaded, "mapping") else None
    if mapping is not None:
        for k, v in trained.items():
            if k.startswith("mapping."):
                assert torch.equal(mapping[k[len("mapping."):]].float(), v.detach().float()), k
