"""The W+ example workflows convert (UI -> API) and run on tiny models; ControlNet + RCA together."""
import shutil
from pathlib import Path

import pytest

from harness import workflow as wf

WF_DIR = Path(__file__).resolve().parents[2] / "workflows"


@pytest.fixture(scope="module")
def provisioned(comfy, comfy_home, shared_data, tiny_sd15, tiny_controlnet, install_model):
    home = Path(comfy_home)
    (home / "models" / "wplus" / "codes").mkdir(parents=True, exist_ok=True)
    (home / "models" / "pidiff").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared_data / "wplus" / "wcodes" / "e4e_1.pth", home / "models" / "wplus" / "codes" / "e4e_1.pth")
    shutil.copyfile(shared_data / "faces" / "wplus_aligned_1.png", home / "input" / "wplus_aligned_1.png")
    shutil.copyfile(shared_data / "faces" / "celebahq_28017.jpg", home / "input" / "celebahq_28017.jpg")  # Canny hint
    install_model("wplus_adapter_sd15", "wplus")
    install_model("pidiff_sd15", "pidiff")


@pytest.mark.parametrize("name", ["wplus_controlnet"])
def test_workflow_runs(comfy, provisioned, name):
    """Smoke test: it runs end to end (the numerical oracles live in the method tests)."""
    prompt = wf.ui_to_api(wf.load(WF_DIR / f"{name}.json"), comfy.input_types)
    kinds = {n["class_type"] for n in prompt.values()}
    assert {"ApplyResidualCrossAttention", "ControlNetApplyAdvanced"} <= kinds
    outputs = comfy.run(prompt)
    assert all(f.exists() for f in comfy.output_files(outputs))


def test_workflow_builders_are_in_sync(comfy):
    """The shipped JSON equals what build_workflows.py produces now."""
    import json
    import tempfile

    from build_workflows import WORKFLOWS, build

    with tempfile.TemporaryDirectory() as d:
        build(comfy, d)
        for name in WORKFLOWS:
            assert json.loads((Path(d) / f"{name}.json").read_text()) == json.loads((WF_DIR / f"{name}.json").read_text())
