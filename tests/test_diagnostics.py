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
