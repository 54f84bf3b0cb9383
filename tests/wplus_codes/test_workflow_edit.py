"""workflows/wplus_edit.json runs on tiny models with the shared code/directions, and matches the builder."""
import json
from pathlib import Path

from harness import workflow as wf

REPO = Path(__file__).resolve().parents[2]


def test_wplus_edit_workflow_runs(comfy, install_model, wplus_dirs):
    """Smoke test: it runs end to end (the numerical oracles live in the method tests)."""
    from wplus_build_workflows import build  # this folder is on sys.path (pytest rootdir-relative import)

    path = REPO / "workflows" / "wplus_edit.json"
    ui = wf.load(path)
    assert json.dumps(ui, sort_keys=True) == json.dumps(json.loads(json.dumps(build(comfy))), sort_keys=True), \
        "workflows/wplus_edit.json is stale: run tests/wplus_codes/wplus_build_workflows.py"
    install_model("sd15", "checkpoints")
    install_model("wplus_adapter_sd15", "wplus")
    outputs = comfy.run(wf.ui_to_api(ui, comfy.input_types))
    files = comfy.output_files(outputs)
    assert len(files) == 4 and all(f.exists() for f in files)
