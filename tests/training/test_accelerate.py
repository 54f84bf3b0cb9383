"""The same job folder under `accelerate launch --num_processes 2 --cpu` (gloo) and as a single process:
the loss curves match and the output loads as an identity embedding."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import comfy_host

REPO = comfy_host.REPO


def _job(tmp, name, ckpt, photo):
    d = tmp / name
    (d / "photos").mkdir(parents=True)
    shutil.copyfile(photo, d / "photos" / "a.jpg")
    spec = {"job_id": name, "method": "crossinit", "name": name, "base_model": str(ckpt), "photos": ["photos/a.jpg"],
            "params": {"trigger_word": "<face>"}, "steps": 2, "seed": 3, "batch": 1, "grad_accum": 2,
            "learning_rate": 0.005, "resolution": 64, "checkpoint_every": 10, "cpu": True,
            "output_dirs": {"crossinit": str(tmp / name / "out_ci"), "embeddings": str(tmp / name / "out_emb")},
            "comfyui_path": str(comfy_host.comfy_dir())}
    (d / "config.json").write_text(json.dumps(spec))
    return d


def _losses(d):
    return [json.loads(l)["loss"] for l in (d / "loss.jsonl").read_text().splitlines() if l.strip()]


def test_accelerate_two_processes_match_single(tmp_path, shared_data):
    try:
        import accelerate  # noqa: F401
    except ImportError:
        pytest.skip("accelerate is not installed in this environment (it is on PyPI: pip install accelerate)")
    from fixtures import tiny

    ckpt = tiny.ensure("sd15")
    photo = shared_data / "faces" / "celebahq_28017.jpg"
    env = dict(os.environ, COMFYUI_PATH=str(comfy_host.comfy_dir()))
    single = _job(tmp_path, "single", ckpt, photo)
    subprocess.run([sys.executable, str(REPO / "train.py"), "--job", str(single)], check=True, env=env, timeout=1500)
    multi = _job(tmp_path, "multi", ckpt, photo)
    # `--cpu` would start ONE process (accelerate 1.x: simple launcher); `--multi_gpu` runs torchrun, the CPU job
    # ("cpu": true) makes the ranks join a gloo group
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    subprocess.run(launcher + [str(REPO / "train.py"), "--job", str(multi)], check=True, env=env, timeout=1500)
    for d in (single, multi):
        assert json.loads((d / "status.json").read_text())["status"] == "done"
    assert json.loads((multi / "status.json").read_text())["world"] == 2
    a, b = _losses(single), _losses(multi)
    assert len(a) == len(b) == 2
    assert a == pytest.approx(b, rel=1e-4)
    import torch

    ta = torch.load(single / "out_ci" / "single" / "learned_embeds.bin", weights_only=True)
    tb = torch.load(multi / "out_ci" / "multi" / "learned_embeds.bin", weights_only=True)
    for k in ("<face>_v0", "<face>_v1"):
        assert torch.allclose(ta[k], tb[k], atol=2e-2 * 0.005)
