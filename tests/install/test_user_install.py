"""The ComfyUI-Manager path, as a user takes it: a fresh venv, torch, ComfyUI's own requirements.txt,
then the pack's requirements.txt (what the Manager runs), with nothing else. Then: ``pip check``
is clean; the modules ``onnxruntime`` and ``cv2`` each come from at most one installed
distribution (onnxruntime from exactly one, the right build for this platform); the pack imports
there and registers every node; a face-detection graph runs there on the tiny ONNX models.

The venv is cached under ``$FP_CACHE`` (default ``~/.cache/comfyui-face-personalization``), keyed
by a hash of the torch spec, both requirement files and the Python version, so a cached run takes
seconds; the first build downloads a few GB (torch, onnxruntime-gpu). Skipped only when the
package registry cannot be reached and no cached venv exists.
"""
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # first run builds the venv (minutes); cached runs take seconds
HERE = Path(__file__).resolve().parent
TORCH_SPEC = ["torch==2.12.*", "torchvision==0.27.*"]   # as .ci/bootstrap.sh (ComfyUI: install torch first)


def _comfy():
    return Path(os.environ["FP_COMFY"])


def _cache():
    return Path(os.environ.get("FP_CACHE", Path.home() / ".cache" / "comfyui-face-personalization"))


def _key():
    h = hashlib.sha256()
    h.update(" ".join(TORCH_SPEC).encode())
    h.update((_comfy() / "requirements.txt").read_bytes())
    h.update((REPO / "requirements.txt").read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()[:12]


def _pip(py, *args, timeout=3600):
    out = subprocess.run([str(py), "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def _freeze(py):
    return dict(line.split("==", 1) for line in _pip(py, "list", "--format=freeze").split() if "==" in line)


def _registry_reachable():
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "onnxruntime"], capture_output=True,
                         text=True, timeout=180)
    return out.returncode == 0


def build_user_venv(venv: Path) -> dict:
    """python -m venv; pip install torch; -r ComfyUI/requirements.txt; -r pack/requirements.txt."""
    import shutil

    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    stats = {}
    t = time.monotonic()
    _pip(py, "install", "-q", "--upgrade", "pip")
    _pip(py, "install", "-q", *TORCH_SPEC)
    _pip(py, "install", "-q", "-r", str(_comfy() / "requirements.txt"))
    stats["comfy_seconds"] = round(time.monotonic() - t, 1)
    before = _freeze(py)
    size_before = _du(venv)
    t = time.monotonic()
    _pip(py, "install", "-r", str(REPO / "requirements.txt"))     # the Manager's step
    stats["pack_seconds"] = round(time.monotonic() - t, 1)
    after = _freeze(py)
    stats["added"] = {k: v for k, v in after.items() if k not in before}
    stats["changed"] = {k: [before[k], v] for k, v in after.items() if k in before and before[k] != v}
    stats["pack_added_mb"] = round((_du(venv) - size_before) / 2 ** 20, 1)
    stats["venv_mb"] = round(_du(venv) / 2 ** 20, 1)
    (venv / "install_report.json").write_text(json.dumps(stats, indent=1))
    (venv / ".complete").touch()
    return stats


def _du(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture(scope="module")
def user_venv():
    venv = _cache() / f"user-venv-{_key()}"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"user-venv-{_key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # parallel sessions build it once
        if not (venv / ".complete").exists():
            if not _registry_reachable():
                pytest.skip("the package registry is unreachable and no cached user venv exists")
            build_user_venv(venv)
    return venv


@pytest.fixture(scope="module")
def user_report(user_venv, tmp_path_factory):
    """Boot ComfyUI + the pack inside the user venv and run the face graph there (one subprocess)."""
    sys.path.insert(0, str(REPO / "tests"))
    from fixtures.tiny import face as tiny_face
    from harness import comfy_host

    home = comfy_host.setup_home(tmp_path_factory.mktemp("user_home"))
    tiny_face.make_pack(home / "models" / "insightface", "antelopev2", link=False)
    env = dict(os.environ, FP_COMFY=str(_comfy()))
    env.pop("PYTHONPATH", None)
    out = subprocess.run([str(user_venv / "bin" / "python"), str(HERE / "user_env_check.py"), str(home)],
                         capture_output=True, text=True, timeout=900, env=env, cwd=str(home))
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("USER_ENV_REPORT ")), None)
    assert out.returncode == 0 and line, f"rc={out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    report = json.loads(line.split(" ", 1)[1])
    (tmp_path_factory.getbasetemp() / "user_env_report.json").write_text(json.dumps(report, indent=1))
    return report


def test_pip_check_clean(user_venv):
    out = subprocess.run([str(user_venv / "bin" / "python"), "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_requirements_add_only_what_the_pack_needs(user_venv):
    """The pack's step adds ONNX Runtime (one build), onnx and their small dependencies: no OpenCV,
    no insightface, nothing ComfyUI already has changes version."""
    report = json.loads((user_venv / "install_report.json").read_text())
    added = {k.lower() for k in report["added"]}
    assert not any(k.startswith("opencv") for k in added), added
    assert "insightface" not in added and "mediapipe" not in added
    assert len({"onnxruntime", "onnxruntime-gpu"} & added) == 1, added
    assert not {k.lower() for k in report["changed"]} & {"torch", "numpy", "torchvision", "pillow", "kornia"}, \
        report["changed"]


def test_one_distribution_per_module(user_report):
    expected = "onnxruntime-gpu" if sys.platform in ("linux", "win32") and os.uname().machine in ("x86_64", "AMD64") \
        else "onnxruntime"
    assert [d.lower() for d in user_report["onnxruntime_dists"]] == [expected]
    assert len(user_report["cv2_dists"]) <= 1 and user_report["cv2_dists"] == []   # the pack needs no OpenCV
    assert user_report["insightface_dists"] == []


def test_pack_registers_every_node(user_report):
    assert user_report["registered"] == user_report["pack_nodes"]
    assert len(user_report["pack_nodes"]) >= 35
    assert {"FP_FaceAnalysisLoader", "FP_FaceDetect", "FP_FaceEmbed", "AdaFaceInvert"} <= set(user_report["pack_nodes"])


@pytest.mark.parametrize("provider", ["auto", "CPU"])
def test_face_detection_graph_runs_there(user_report, provider):
    r = user_report["graph"][provider]
    assert r["mask_at_face"] == 1.0 and r["mask_far"] == 0.0 and 0.01 < r["mask_mean"] < 0.5, r
    assert not user_report["cv2_imported"] and not user_report["insightface_imported"]
    assert all(p[-1] == "CPUExecutionProvider" for p in user_report["session_providers"].values())
