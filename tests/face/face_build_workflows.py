"""Build workflows/faces_detect_align.json (UI format) from an API prompt.

Run: cd tests && $FP_PY -m pytest -q face/test_face_graphs.py -k workflow_file  (the test rebuilds and
compares), or call ``write()`` with the booted ComfyHost.
"""
from pathlib import Path

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "faces_detect_align.json"


def faces_detect_align_prompt(image="wplus_in_the_wild_1.jpg", prefix="faces_detect_align"):
    return {
        "load": {"class_type": "LoadImage", "inputs": {"image": image}},
        "detector": {"class_type": "FP_OfflineFaceDetector", "inputs": {"det_thresh": 0.5, "max_faces": 10}},
        "detect": {"class_type": "FP_FaceDetect", "inputs": {
            "image": ["load", 0], "face_analysis": ["detector", 0], "select": "largest", "index": 0,
            "if_no_face": "error", "det_thresh": 0.5}},
        "align": {"class_type": "FP_FaceAlign", "inputs": {
            "image": ["load", 0], "faces": ["detect", 0], "template": "ffhq", "size": 512, "padding": "reflect"}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["align", 0], "filename_prefix": prefix}},
        "mask": {"class_type": "FP_FaceMask", "inputs": {
            "faces": ["detect", 0], "image": ["load", 0], "shape": "convex_hull", "grow": 1.1, "feather": 8.0}},
        "mask_img": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
        "preview": {"class_type": "PreviewImage", "inputs": {"images": ["mask_img", 0]}},
        # what the pack sees (versions, providers, model files): the first thing to run on a new install
        "diagnostics": {"class_type": "FP_Diagnostics", "inputs": {}},
    }


def build(comfy):
    from harness import workflow as wf

    return wf.api_to_ui(faces_detect_align_prompt(), comfy.input_types,
                        title="Faces: detect (offline) -> FFHQ align 512 + face mask",
                        output_types=lambda c: comfy.node_classes[c].RETURN_TYPES,
                        note="# Faces: detect, align, mask\nPut your photo in *Load Image*. The offline detector needs no "
                             "downloads; for ArcFace embeddings use *Face Analysis Loader* with antelopev2 or buffalo_l in "
                             "`models/insightface/models/`.\n\n*Face Personalization Diagnostics* reports what the pack "
                             "sees (versions, providers, model files): run it first on a new install.")


def write(comfy, path=WORKFLOW):
    from harness import workflow as wf

    path.parent.mkdir(parents=True, exist_ok=True)
    wf.save(build(comfy), path)
    return path
