"""FP_Diagnostics: a report that names versions, providers, insightface packs and model files."""


def test_report_lists_environment_and_model_files(comfy, comfy_home, install_model):
    import importlib.metadata

    import torch

    name = install_model("personamagic_mapper", "personamagic")
    out = comfy.node_classes["FP_Diagnostics"]().execute()
    text = out["result"][0]
    assert out["ui"]["text"] == [text]
    assert f"torch: {importlib.metadata.version('torch')}" in text
    assert f"torch device: {'cuda' if torch.cuda.is_available() else 'cpu'}" in text
    assert "onnxruntime providers: [" in text and "CPUExecutionProvider" in text
    personamagic = next(line for line in text.splitlines() if line.strip().startswith("personamagic ["))
    assert str(comfy_home / "models" / "personamagic") in personamagic and name in personamagic
    assert "antelopev2:" in text and "buffalo_l:" in text


def test_missing_insightface_pack_is_reported_not_raised(comfy, tmp_path):
    from comfyui_face_personalization.models_loader import diagnostics

    lines = diagnostics.insightface_lines(roots=[str(tmp_path)])
    assert len(lines) == 2 and all("not usable" in line and str(tmp_path) in line for line in lines)


def test_runs_in_a_graph(comfy):
    """As an output node of a real prompt; it re-runs every time (IS_CHANGED is NaN). A fresh prompt dict per
    run, as the server parses one per request (ComfyUI stores the IS_CHANGED value in the prompt's node)."""
    for _ in range(2):
        out = comfy.run({"diag": {"class_type": "FP_Diagnostics", "inputs": {}}})
        assert out["diag"]["text"][0].startswith("Face Personalization diagnostics")
