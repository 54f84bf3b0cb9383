"""The job engine through a REAL ComfyUI server: submit returns at once, a prompt queued during training
finishes while the job runs, cancel leaves a loadable checkpoint, resume finishes, the output loads in
FP_LoadIdentityEmbedding, injected errors fail the job (server keeps serving), bad input, route contract."""
import json
import shutil
import urllib.request
import sys
import time

import pytest

from harness.graphs import txt2img
from harness.server import ComfyServer


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd15, comfy_home, monkeypatch_module):
    home = tmp_path_factory.mktemp("train_server")
    shutil.copytree(comfy_home / "models" / "checkpoints", home / "models" / "checkpoints", symlinks=True, dirs_exist_ok=True)
    monkeypatch_module.setenv("FP_TRAIN_FAIL_AT_STEP", "2")
    monkeypatch_module.setenv("FP_TRAIN_FAIL_NAME", "inject_fail")
    with ComfyServer(home, python=sys.executable, startup_timeout=900) as srv:
        yield srv


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def photo_dir(server, shared_data):
    d = server.home / "input" / "train_photos"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_data / "faces" / "celebahq_28017.jpg", d / "a.jpg")
    return d


def _train_prompt(ckpt, name, folder, steps=6, **over):
    inputs = {"ckpt_name": ckpt, "face_analysis": ["det", 0], "name": name, "trigger_word": "<face>", "preset": "custom",
              "steps": steps, "learning_rate": 0.005, "batch_size": 1, "grad_accum": 1, "resolution": 64, "seed": 7,
              "precision": "fp32", "gradient_checkpointing": False, "cache_latents": True, "checkpoint_every": 2,
              "preview_every": 0, "if_no_face": "error", "pause_while_generating": True, "mode": "run",
              "photo_folder": str(folder)}
    inputs.update(over)
    return {"det": {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}},
            "train": {"class_type": "FP_TrainCrossInit", "inputs": inputs}}


def _submit(server, prompt):
    entry = server.wait(server.queue(prompt), timeout=600)
    return entry


def _job_id(entry):
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry["outputs"]["train"]["text"][0].split()[2]


def _wait_status(server, job_id, statuses, timeout=900, min_step=0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.get_json(f"/fp/training/jobs/{job_id}")
        if job["status"] in statuses and (job.get("step") or 0) >= min_step:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} stayed {job['status']} (wanted {statuses}): {job.get('log_tail')}")


def test_train_cancel_resume_and_generate_while_training(server, tiny_sd15, photo_dir):
    job_id = _job_id(_submit(server, _train_prompt(tiny_sd15, "ci_server", photo_dir, steps=200)))
    _wait_status(server, job_id, ("running",), min_step=1)  # the worker is stepping
    # a prompt queued during training finishes while the job still runs
    server.run(txt2img(tiny_sd15, prefix="during_training"), timeout=600)
    job = server.get_json(f"/fp/training/jobs/{job_id}")
    assert job["status"] in ("running", "paused", "queued"), job["status"]
    assert any(j["id"] == job_id for j in server.get_json("/fp/training/jobs")["jobs"])
    # cancel: the worker saves a loadable checkpoint
    status, body = server.post_json(f"/fp/training/jobs/{job_id}/cancel", {})
    assert status == 200
    job = _wait_status(server, job_id, ("cancelled",))
    assert "last.pt" in job["checkpoints"]
    import torch

    ckpt = torch.load(f"{job['job_dir']}/checkpoints/last.pt", weights_only=True)
    assert ckpt["step"] == job["step"] and set(ckpt["trainable"]) == {"clip_l"}
    # resume with fewer total steps is not allowed to change the run: shorten via config for a quick finish
    cfg = json.loads(open(f"{job['job_dir']}/config.json").read())
    cfg["steps"] = ckpt["step"] + 2
    open(f"{job['job_dir']}/config.json", "w").write(json.dumps(cfg))
    status, body = server.post_json(f"/fp/training/jobs/{job_id}/resume", {})
    assert status == 200 and body["status"] in ("queued", "running"), body  # an idle queue may start it at once
    job = _wait_status(server, job_id, ("done", "failed"))
    assert job["status"] == "done", job
    steps = [r["step"] for r in job["loss_history"]]
    assert steps == list(range(1, cfg["steps"] + 1))
    # the written file loads in FP_LoadIdentityEmbedding and is listed without a restart
    load = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_sd15}},
            "load": {"class_type": "FP_LoadIdentityEmbedding", "inputs": {"clip": ["ckpt", 1], "embedding_file":
                     "crossinit/ci_server/learned_embeds.bin", "trigger_word": "<face>"}},
            "enc": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["load", 0], "text": "a photo of <face>"}},
            "save": {"class_type": "FP_SaveIdentityEmbedding", "inputs": {"identity_embedding": ["load", 1],
                     "name": "ci_server_copy", "overwrite": False}}}
    server.run(load, timeout=600)


def test_injected_error_fails_job_and_server_serves(server, tiny_sd15, photo_dir):
    job_id = _job_id(_submit(server, _train_prompt(tiny_sd15, "inject_fail", photo_dir, steps=5)))
    job = _wait_status(server, job_id, ("failed", "done"))
    assert job["status"] == "failed" and "injected training error at step 2" in job["error"]
    server.run(txt2img(tiny_sd15, prefix="after_fail"), timeout=600)


def test_bad_inputs(server, tiny_sd15, photo_dir):
    import numpy as np
    from PIL import Image

    def error_of(prompt):
        entry = _submit(server, prompt)
        assert entry["status"]["status_str"] == "error"
        return [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"][0]["exception_message"]

    empty = server.home / "input" / "empty_photos"
    empty.mkdir(exist_ok=True)
    assert "no training photos" in error_of(_train_prompt(tiny_sd15, "bad1", empty))
    noface = server.home / "input" / "noface_photos"
    noface.mkdir(exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(noface / "gray.png")
    msg = error_of(_train_prompt(tiny_sd15, "bad2", noface))
    assert "no face found in" in msg and "gray.png" in msg and "skip" in msg
    # the refused job is listed as failed with the same text (what the panel shows); it cannot be resumed
    refused = [j for j in server.get_json("/fp/training/jobs")["jobs"] if j["name"] == "bad2"]
    assert len(refused) == 1 and refused[0]["status"] == "failed" and refused[0]["error"].strip() == msg.strip(), refused
    status, body = server.post_json(f"/fp/training/jobs/{refused[0]['id']}/resume", {})
    assert status == 409 and "never started" in body["error"]
    corrupt = server.home / "input" / "corrupt_photos"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "broken.jpg").write_bytes(b"not an image")
    assert "broken.jpg" in error_of(_train_prompt(tiny_sd15, "bad3", corrupt))
    fake = server.home / "models" / "checkpoints" / "not_sd.safetensors"
    import safetensors.torch
    import torch

    safetensors.torch.save_file({"foo.weight": torch.zeros(2)}, str(fake))
    assert "SD1.x, SD2.x" in error_of(_train_prompt("not_sd.safetensors", "bad4", photo_dir))
    (server.home / "models" / "crossinit" / "ci_taken").mkdir(parents=True, exist_ok=True)  # an existing output
    assert "exists" in error_of(_train_prompt(tiny_sd15, "ci_taken", photo_dir))


def test_route_contract(server):
    import urllib.error

    for verb in ("cancel", "resume"):
        status, body = server.post_json(f"/fp/training/jobs/no-such-job/{verb}", {})
        assert status == 404 and "no training job 'no-such-job'" in body["error"], body
    for path in ("/fp/training/jobs/no-such-job", "/fp/training/jobs/no-such-job/files/log.txt"):
        with pytest.raises(urllib.error.HTTPError) as e:
            server.get_json(path)
        assert e.value.code == 404 and "no training job 'no-such-job'" in json.loads(e.value.read())["error"]
    req = urllib.request.Request(server.url + "/fp/training/jobs/no-such-job", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 404
    status, body = server.post_json("/fp/training/jobs/..%2F..%2Fetc/resume", {})
    assert status in (400, 404)

    with pytest.raises(urllib.error.HTTPError) as e:
        server.get_json("/fp/training/jobs/bad$id")
    assert e.value.code == 400
    jobs = server.get_json("/fp/training/jobs")["jobs"]
    if jobs:
        jid = jobs[0]["id"]
        for name in ("..%2Fconfig.json", ".hidden.png", "secret.txt"):
            with pytest.raises(urllib.error.HTTPError) as e:
                server.get_bytes(f"/fp/training/jobs/{jid}/files/{name}")
            assert e.value.code in (400, 404)
        assert server.get_bytes(f"/fp/training/jobs/{jid}/files/config.json")


def _learned(job_dir):
    import torch

    state = torch.load(f"{job_dir}/checkpoints/last.pt", weights_only=True)
    return state["step"], state["trainable"]


def test_server_killed_mid_run_resumes_at_its_checkpoint_with_the_same_final_weights(tmp_path_factory, tiny_sd15,
                                                                                   comfy_home, shared_data):
    """A hard kill (SIGKILL of the server's process group: server and worker) mid-run; a new server lists the job
    as resumable; resume continues from the last checkpoint and ends bit-for-bit where an uninterrupted run of
    the same seeded job ends (loss at every step and the trained tensors)."""
    import os
    import signal

    import torch

    home = tmp_path_factory.mktemp("train_kill")
    shutil.copytree(comfy_home / "models" / "checkpoints", home / "models" / "checkpoints", symlinks=True, dirs_exist_ok=True)
    photos = home / "input" / "photos"
    photos.mkdir(parents=True)
    shutil.copyfile(shared_data / "faces" / "celebahq_28017.jpg", photos / "a.jpg")
    steps = 16
    srv = ComfyServer(home, python=sys.executable, startup_timeout=900)
    srv.start()
    try:
        ref_id = _job_id(_submit(srv, _train_prompt(tiny_sd15, "ref_run", photos, steps=steps, checkpoint_every=3)))
        ref = _wait_status(srv, ref_id, ("done", "failed"))
        assert ref["status"] == "done", ref
        kill_id = _job_id(_submit(srv, _train_prompt(tiny_sd15, "kill_run", photos, steps=steps, checkpoint_every=3)))
        job = _wait_status(srv, kill_id, ("running", "done"), min_step=4)
        assert job["status"] == "running" and job["step"] < steps, job  # killed mid-run
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(timeout=30)
    finally:
        srv.stop()
    saved_step, _ = _learned(job["job_dir"])
    assert 3 <= saved_step < steps and saved_step % 3 == 0

    srv = ComfyServer(home, python=sys.executable, startup_timeout=900)
    srv.start()
    try:
        job = srv.get_json(f"/fp/training/jobs/{kill_id}")
        assert job["status"] == "resumable" and "server stopped" in job["message"], job
        status, body = srv.post_json(f"/fp/training/jobs/{kill_id}/resume", {})
        assert status == 200 and body["status"] in ("queued", "running"), body  # an idle queue may start it at once
        job = _wait_status(srv, kill_id, ("done", "failed"))
        assert job["status"] == "done", job
        assert f"resumed from checkpoint at step {saved_step}" in open(f"{job['job_dir']}/log.txt").read()
        ref = srv.get_json(f"/fp/training/jobs/{ref_id}")
    finally:
        srv.stop()
    assert [r["step"] for r in job["loss_history"]] == list(range(1, steps + 1))
    assert [r["loss"] for r in job["loss_history"]] == [r["loss"] for r in ref["loss_history"]]
    (ref_step, ref_w), (got_step, got_w) = _learned(ref["job_dir"]), _learned(job["job_dir"])
    assert ref_step == got_step == steps and set(ref_w) == set(got_w)
    for k in ref_w:
        assert torch.equal(ref_w[k], got_w[k]), k
