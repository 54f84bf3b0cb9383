"""workflows/wplus_edit.json runs on tiny models with the shared code/directions, and matches the builder."""
import json
from pathlib import Path

from harness import workflow as wf

REPO = Path(__file__).resolve().parents[2]


def test_wplus_edit_workflow_runs(comfy, install_model, wplus_dirs):
    """Smoke test, plus one real check: each DeltaWEdit of the graph moves the code by strength x the direction
    file's vector (read here with torch/numpy) on the rows it edits, and nothing else; -3 and +3 are opposite."""
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
    import numpy as np
    import torch

    import nodes

    prompt = wf.ui_to_api(ui, comfy.input_types)
    load = next(n for n in prompt.values() if n["class_type"] == "FP_LoadWPlus")["inputs"]
    code = nodes.NODE_CLASS_MAPPINGS["FP_LoadWPlus"]().load(**load)[0]
    deltas = {}
    for node in (n for n in prompt.values() if n["class_type"] == "DeltaWEdit"):
        args = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        edited = nodes.NODE_CLASS_MAPPINGS["DeltaWEdit"]().edit(code, **args)[0]
        file = wplus_dirs[1] / args["direction"]
        d = torch.from_numpy(np.load(file)) if file.suffix == ".npy" else torch.load(file, weights_only=True)
        d = torch.as_tensor(d, dtype=torch.float32).reshape(-1, 512)
        delta = (edited - code)[0]
        moved = [r for r in range(18) if delta[r].abs().max() > 0]
        assert moved, args
        for r in moved:
            torch.testing.assert_close(delta[r], args["strength"] * d[r % d.shape[0]], rtol=1e-5, atol=1e-5)
        deltas[(args["direction"], args["strength"])] = delta
    torch.testing.assert_close(deltas[("age.pt", 3.0)], -deltas[("age.pt", -3.0)])
