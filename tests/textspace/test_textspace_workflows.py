"""The text-space workflows (UI JSON) convert and run on tiny models, mix_identities composes both methods."""
from pathlib import Path

import pytest

WF = Path(__file__).resolve().parents[2] / "workflows"


@pytest.mark.parametrize("name", ["mix_identities", "adaface_animatediff"])
def test_workflow_runs(comfy, name, tiny_sd15, adaface_files):
    from harness import workflow

    prompt = workflow.ui_to_api(workflow.load(WF / f"{name}.json"), comfy.input_types)
    out = comfy.run(prompt)
    files = comfy.output_files(out)
    assert len(files) == (4 if name == "adaface_animatediff" else 1)
