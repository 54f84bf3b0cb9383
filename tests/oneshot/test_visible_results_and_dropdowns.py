"""Text results shown on the node (the ui payload the frontend hands to web/js/text_results.js) and loader
dropdowns that only offer files of their own kind."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PHOTO = "celebahq_28017.jpg"


@pytest.fixture(scope="module")
def provisioned(comfy, comfy_home):
    from harness import provision

    provision.provision(comfy_home)
    return comfy_home


def test_diagnostics_report_is_in_the_ui_payload(comfy):
    out = comfy.run({"diag": {"class_type": "FP_Diagnostics", "inputs": {}}})
    text = out["diag"]["text"]
    assert len(text) == 1 and "onnxruntime" in text[0] and "torch" in text[0]


def test_face_similarity_scores_each_image_in_the_ui_payload(comfy, provisioned):
    """A real graph: the photo and a blank image (ImageBatch resizes it to the photo) scored against the photo's
    own identity: one readable line per image, the photo itself scoring 1."""
    if not (provisioned / "input" / PHOTO).exists():
        pytest.skip(f"shared photo {PHOTO} not available")
    p = {
        "photo": {"class_type": "LoadImage", "inputs": {"image": PHOTO}},
        "fa": {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": "antelopev2", "provider": "CPU",
                                                                 "det_size": 640}},
        "detect": {"class_type": "FP_FaceDetect", "inputs": {"image": ["photo", 0], "face_analysis": ["fa", 0],
                   "select": "largest", "index": 0, "if_no_face": "error", "det_thresh": 0.5}},
        "embed": {"class_type": "FP_FaceEmbed", "inputs": {"faces": ["detect", 0], "mode": "mean"}},
        "blank": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0}},
        "batch": {"class_type": "ImageBatch", "inputs": {"image1": ["photo", 0], "image2": ["blank", 0]}},
        "score": {"class_type": "FP_FaceSimilarity", "inputs": {"image": ["batch", 0], "reference": ["embed", 0],
                  "face_analysis": ["fa", 0], "det_thresh": 0.5}},
    }
    out = comfy.run(p)
    lines = out["score"]["text"][0].splitlines()
    assert lines[0].startswith("image 1: ") and float(lines[0].split(": ")[1]) > 0.99
    assert lines[1] == "image 2: no face"
    assert lines[2].startswith("mean over 1 of 2 images with a face")


def test_text_widget_script_is_served_for_output_nodes():
    """The frontend script shows ui.text on the pack's output nodes (Diagnostics, Face Similarity)."""
    js = (REPO / "web" / "js" / "text_results.js").read_text()
    assert "onExecuted" in js and "message?.text" in js and "face_personalization" in js and "output_node" in js


def _choices(comfy, node, name):
    spec = comfy.node_classes[node].INPUT_TYPES()
    return (spec.get("required", {}) | spec.get("optional", {}))[name][0]


def test_each_loader_lists_only_its_own_files(comfy, provisioned):
    """models/wplus holds an adapter plus codes/ and directions/; models/adaface checkpoints and an Arc2Face
    encoder: every dropdown lists only its kind."""
    from fixtures import tiny

    adapters = _choices(comfy, "FP_LoadWPlusAdapter", "adapter_name")
    codes = _choices(comfy, "FP_LoadWPlus", "code")
    directions = _choices(comfy, "FP_LoadWPlusDirection", "direction")
    assert tiny.file_name("wplus_adapter_sd15") in adapters
    assert not [a for a in adapters if a.replace("\\", "/").startswith(("codes/", "directions/"))], adapters
    assert "e4e_1.pth" in codes and tiny.file_name("wplus_adapter_sd15") not in codes
    assert "age.pt" in directions and "e4e_1.pth" not in directions
    assert tiny.file_name("wplus_adapter_sd15") not in directions
    for node in ("FP_WPlusAdapterFromPhoto",):
        assert _choices(comfy, node, "adapter_name") == adapters

    ada_files = _choices(comfy, "FP_LoadAdaFace", "adaface_file")
    encoders = _choices(comfy, "FP_LoadAdaFace", "arc2face_encoder")
    assert tiny.file_name("adaface_pt") in ada_files
    assert tiny.file_name("adaface_arc2face") not in ada_files
    assert encoders[0] == "(none)" and tiny.file_name("adaface_arc2face") in encoders
    assert tiny.file_name("adaface_pt") not in encoders


def test_face_analysis_loader_lists_installed_packs_only(comfy, tmp_path, monkeypatch):
    from comfyui_face_personalization.models_loader.face import analysis
    from comfyui_face_personalization.nodes import face_nodes
    from fixtures.tiny import face as tiny_face

    monkeypatch.setattr(analysis, "insightface_roots", lambda: [str(tmp_path)])
    assert face_nodes.pack_choices() == [face_nodes.NO_PACK]
    assert "models/insightface/models/" in face_nodes.NO_PACK
    with pytest.raises(analysis.FaceModelError, match="no insightface model pack installed"):
        face_nodes.load_pack(face_nodes.NO_PACK, "CPU", 640)
    tiny_face.make_pack(tmp_path, "buffalo_l")
    assert face_nodes.pack_choices() == ["buffalo_l"]  # antelopev2 is not offered: it is not there
    tiny_face.make_pack(tmp_path, "antelopev2", nested=True)
    assert _choices(comfy, "FP_FaceAnalysisLoader", "model_pack") == ["antelopev2", "buffalo_l"]
