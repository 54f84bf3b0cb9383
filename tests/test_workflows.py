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


def test_there_are_workflows():
    assert WORKFLOWS, "workflows/ is empty"


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs(comfy, provision, path):
    ui = wf.load(path)
    prompt = wf.ui_to_api(ui, comfy.input_types)
    outputs = comfy.run(prompt)
    assert outputs, f"{path.name} produced no outputs"
    files = comfy.output_files(outputs)
    assert all(f.exists() for f in files)


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
