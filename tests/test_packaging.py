"""Installability and start-up hygiene: Manager metadata, dependency markers, lazy heavy imports."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("insightface", "onnxruntime", "onnx", "diffusers", "mediapipe", "cv2", "jax", "kornia")


def test_pyproject_has_manager_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["name"] and project["version"] and project["description"]
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy)
    req_txt = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    assert sorted(map(str, map(Requirement, req_txt))) == sorted(map(str, map(Requirement, project["dependencies"])))


def _env(system, machine):
    return {"sys_platform": system, "platform_machine": machine, "python_version": "3.11",
            "platform_system": system, "os_name": "posix", "implementation_name": "cpython"}


def test_exactly_one_onnxruntime_flavour_per_platform():
    reqs = [Requirement(ln) for ln in (REPO / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    expected = {("linux", "x86_64"): "onnxruntime-gpu", ("win32", "AMD64"): "onnxruntime-gpu",
                ("darwin", "arm64"): "onnxruntime", ("linux", "aarch64"): "onnxruntime"}
    for (system, machine), flavour in expected.items():
        chosen = [r.name for r in reqs if r.name.startswith("onnxruntime")
                  and (r.marker is None or Marker(str(r.marker)).evaluate(_env(system, machine)))]
        assert chosen == [flavour], (system, machine, chosen)


CHILD = r"""
import asyncio, json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from harness import comfy_host
home = comfy_host.setup_home(Path({home!r}))
sys.path.insert(0, str(comfy_host.comfy_dir()))
from comfy.cli_args import args
args.cpu = True; args.base_directory = str(home)
import folder_paths, utils.extra_config, nodes
asyncio.run(nodes.init_public_apis()); asyncio.run(nodes.init_builtin_extra_nodes())
before = set(sys.modules)
assert asyncio.run(nodes.load_custom_node(str(home / "custom_nodes" / comfy_host.PACK_MODULE)))
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_pack_import_is_lazy(tmp_path):
    """Loading the pack into ComfyUI imports none of the heavy libraries (they load on first use)."""
    code = CHILD.format(tests=str(REPO / "tests"), home=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    new = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = sorted({m.split(".")[0] for m in new} & set(HEAVY))
    assert not heavy, f"importing the pack pulled in heavy modules: {heavy}"


def test_readme_documents_every_node(pack):
    """README's node table (tests/harness/readme_nodes.py regenerates it) lists every node."""
    readme = (REPO / "README.md").read_text()
    missing = [n for n in pack.NODE_CLASS_MAPPINGS if f"`{n}`" not in readme]
    assert not missing, f"README lacks nodes {missing}: run tests/harness/readme_nodes.py"


def test_readme_commands_are_the_ci_commands():
    readme = (REPO / "README.md").read_text()
    assert "bash .ci/demo.sh" in readme and "bash .ci/test.sh" in readme
    assert "bash .ci/test.sh" in (REPO / ".ci" / "run").read_text()
