"""Every shipped workflow (UI format) converts to an API prompt and executes on tiny models.

New workflows are covered automatically; what they need (tiny models in which folder, input
images) is provisioned by harness.provision.
"""
from pathlib import Path

import pytest

from harness import workflow as wf

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def provision(comfy, comfy_home):
    from harness.provision import provision as install_all

    install_all(comfy_home)


def test_every_workflow_is_documented():
    """workflows/ is not empty, and each workflow carries a note saying what to set and is named in the README
    (a workflow nobody can find or read is not an example)."""
    assert WORKFLOWS, "workflows/ is empty"
    readme = (WORKFLOWS[0].parents[1] / "README.md").read_text(encoding="utf-8")
    for path in WORKFLOWS:
        ui = wf.load(path)
        notes = [n for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note")]
        assert notes and any(len(str(n.get("widgets_values", ""))) > 40 for n in notes), f"{path.name}: no note"
        assert path.stem in readme, f"{path.name} is not mentioned in README.md"


def _shrink_training(prompt):
    """Training nodes ship real presets (hundreds of 512 px steps); on tiny models one 64 px step shows the graph works."""
    wf.shrink_training(prompt)


def _load_installed(path, comfy):
    """The workflow with other packs' nodes that are not installed here left out (harness.workflow.SUBSTITUTABLE,
    e.g. AnimateDiff-Evolved's loader: the frames then run as a plain batch); a workflow that uses such a pack
    must say so in its note."""
    ui, left_out = wf.without_missing_packs(wf.load(path), comfy.node_classes)
    notes = " ".join(str(v) for n in ui["nodes"] if n["type"] in wf.SKIP_NODE_TYPES for v in n.get("widgets_values", []))
    for _nid, kind, pack in left_out:
        assert pack in notes, f"{path.name} uses {kind} from {pack} but its note does not say it needs that pack"
    return ui


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs(comfy, provision, path):
    """Smoke test (the numerical oracles live in the method tests), plus: no saved image is flat."""
    ui = _load_installed(path, comfy)
    prompt = wf.ui_to_api(ui, comfy.input_types)
    _shrink_training(prompt)
    outputs = comfy.run(prompt)
    assert outputs, f"{path.name} produced no outputs"
    files = comfy.output_files(outputs)
    assert all(f.exists() for f in files)
    import numpy as np
    from PIL import Image

    for f in (f for f in files if f.suffix == ".png"):  # a NaN anywhere upstream saves a flat (black) image
        img = np.asarray(Image.open(f), dtype=np.float32)
        assert img.std() > 0, f"{path.name}: {f.name} is a flat image"


def test_round_trip_matches(comfy):
    """api_to_ui -> ui_to_api reproduces the prompt (the converter the workflow builders use)."""
    from harness.graphs import txt2img

    prompt = txt2img("x.safetensors")
    ui = wf.api_to_ui(prompt, comfy.input_types, output_types=lambda c: comfy.node_classes[c].RETURN_TYPES)
    back = wf.ui_to_api(ui, comfy.input_types)
    ids = {key: str(i + 1) for i, key in enumerate(prompt)}
    for key, node in prompt.items():
        got = back[ids[key]]
        assert got["class_type"] == node["class_type"]
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                assert got["inputs"][name] == [ids[value[0]], value[1]]
            else:
                assert got["inputs"][name] == value, (key, name)


def test_real_models_replace_tiny_ones(comfy, comfy_home, provision, tmp_path):
    """The demo's --models: a real file in models/<folder> takes the place of that folder's tiny model."""
    from fixtures import tiny
    from harness import provision as prov

    installed = prov.provision(comfy_home)  # already installed: only returns the map
    real_dir = tmp_path / "models" / "checkpoints"
    real_dir.mkdir(parents=True)
    (real_dir / "my_sd15.safetensors").symlink_to(tiny.ensure("sd15"))  # stands in for a real SD1.5 file
    real = prov.link_real_models(comfy_home, tmp_path / "models")
    assert real == {"checkpoints": ["my_sd15.safetensors"]}
    prompt = wf.ui_to_api(wf.load(WORKFLOWS[0].parent / "crossinit_basic.json"), comfy.input_types)
    swaps = prov.prefer_real_models(prompt, installed, real)
    assert [s[1:] for s in swaps] == [(tiny.ensure("sd15").name, "my_sd15.safetensors")]
    assert comfy.output_files(comfy.run(prompt))


def _pass_through_nodes(ui, comfy):
    """Pack nodes of ``ui`` that hand a MODEL or CLIP through (the patch nodes a user bypasses)."""
    out = []
    for n in ui["nodes"]:
        cls = comfy.node_classes.get(n["type"])
        if cls is None or n["type"] not in comfy.pack.NODE_CLASS_MAPPINGS:  # only the pack's own nodes
            continue
        ins = {i.get("type") for i in n.get("inputs", []) if i.get("link") is not None}
        if ({"MODEL", "CLIP"} & ins) & set(cls.RETURN_TYPES):
            out.append(n["id"])
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_bypassed_patch_nodes_are_rerouted(comfy, path):
    """Bypassing (mode 4) the pack's patch nodes gives a prompt whose MODEL/CLIP consumers are fed from
    the bypassed node's own MODEL/CLIP input, as the frontend does, and nothing refers to a bypassed node."""
    ui = _load_installed(path, comfy)
    bypass = _pass_through_nodes(ui, comfy)
    if not bypass:
        pytest.skip("no MODEL/CLIP patch node in this workflow")
    for n in ui["nodes"]:
        if n["id"] in bypass:
            n["mode"] = 4
    prompt = wf.ui_to_api(ui, comfy.input_types)
    for key, node in prompt.items():
        assert int(key) not in bypass
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                assert int(value[0]) not in bypass, (path.name, key, name)
                assert value[0] in prompt, (path.name, key, name)


def test_bypassed_rca_is_the_plain_graph(comfy):
    """wplus_basic with Apply W+ Residual Cross-Attention bypassed converts to exactly the graph with that node
    removed and the sampler wired to the checkpoint (the leak-free run of such a graph is checked by the
    contract suite's no-trace test)."""
    ui = wf.load(WORKFLOWS[0].parent / "wplus_basic.json")
    rca = next(n for n in ui["nodes"] if n["type"] == "ApplyResidualCrossAttention")
    rca["mode"] = 4
    bypassed = wf.ui_to_api(ui, comfy.input_types)
    rca["mode"] = 0
    plain = wf.ui_to_api(ui, comfy.input_types)
    model_src = plain.pop(str(rca["id"]))["inputs"]["model"]
    for node in plain.values():
        for name, value in node["inputs"].items():
            if value == [str(rca["id"]), 0]:
                node["inputs"][name] = model_src
    assert bypassed == plain
