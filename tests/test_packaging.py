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


def _requirements():
    return [Requirement(ln) for ln in (REPO / "requirements.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


def _chosen(reqs, system, machine, prefix):
    return [r.name for r in reqs if r.name.startswith(prefix)
            and (r.marker is None or Marker(str(r.marker)).evaluate(_env(system, machine)))]


def test_exactly_one_onnxruntime_flavour_per_platform():
    reqs = _requirements()
    expected = {("linux", "x86_64"): "onnxruntime-gpu", ("win32", "AMD64"): "onnxruntime-gpu",
                ("darwin", "arm64"): "onnxruntime", ("darwin", "x86_64"): "onnxruntime",
                ("linux", "aarch64"): "onnxruntime", ("win32", "ARM64"): "onnxruntime",
                ("freebsd14", "amd64"): "onnxruntime", ("linux", "ppc64le"): "onnxruntime"}
    for (system, machine), flavour in expected.items():
        assert _chosen(reqs, system, machine, "onnxruntime") == [flavour], (system, machine)
    # and no platform at all gets both or neither
    for system in ("linux", "win32", "darwin", "cygwin", "freebsd14"):
        for machine in ("x86_64", "AMD64", "arm64", "aarch64", "i686", "riscv64"):
            assert len(_chosen(reqs, system, machine, "onnxruntime")) == 1, (system, machine)


def test_requirements_pull_no_opencv_and_no_insightface():
    names = {r.name.lower() for r in _requirements()}
    assert not {n for n in names if n.startswith("opencv")} and "insightface" not in names and "mediapipe" not in names
    product = [p for p in REPO.rglob("*.py") if not {"tests", "bench", ".git"} & set(p.relative_to(REPO).parts)]
    import re

    pattern = re.compile(r"^\s*(import|from)\s+(cv2|insightface)\b", re.M)
    offenders = [str(p) for p in product if pattern.search(p.read_text())]
    assert not offenders, offenders


def test_optional_extras_say_what_they_pull_in():
    text = (REPO / "pyproject.toml").read_text()
    extras = tomllib.loads(text)["project"]["optional-dependencies"]
    assert set(extras) == {"offline-detector", "dlib-alignment", "insightface"}
    assert extras["offline-detector"] == ["mediapipe==0.10.14"]
    lines = text.splitlines()

    def comment_above(name):  # the comment lines right above the extra: what it adds and pulls in
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"{name} = "))
        out = []
        while lines[i - 1].startswith("#"):
            i -= 1
            out.insert(0, lines[i])
        return " ".join(out)

    for name in extras:
        assert len(comment_above(name)) > 60, name
    assert "opencv-contrib-python" in comment_above("offline-detector")
    assert "onnxruntime" in comment_above("insightface") and "opencv-python" in comment_above("insightface")


def test_registry_metadata_complete():
    """The fields comfy-cli's ``comfy node validate`` / ``publish`` read (comfy_cli/registry/config_parser.py:
    project name/description/version/license/urls.Repository, tool.comfy PublisherId/DisplayName/Icon/includes)
    with the registry's rules: node id lowercase letters, digits, '-', '_' (<= 100 chars), a version
    PEP 440 parses, an https Repository URL and an Icon URL whose file exists in this repository."""
    import re

    from packaging.version import Version
    from PIL import Image

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,99}", project["name"])
    Version(project["version"])
    assert len(project["description"]) > 20
    assert (REPO / project["license"]["file"]).is_file()
    repo_url = project["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo_url)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,99}", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    assert isinstance(comfy["includes"], list)
    owner_repo = repo_url.split("github.com/")[1]
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert comfy["Icon"].startswith(prefix), comfy["Icon"]
    icon = REPO / comfy["Icon"][len(prefix):]
    with Image.open(icon) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] and 64 <= im.size[0] <= 1024
    assert "icon.png" in subprocess.run(["git", "-C", str(REPO), "ls-files", str(icon)],
                                        capture_output=True, text=True).stdout or not (REPO / ".git").exists()


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
