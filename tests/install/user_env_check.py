"""Run inside the user-path venv (not under pytest): boot ComfyUI with the pack, list its nodes, run a
face-detection graph on the tiny ONNX pack already placed in the home, and print one JSON report.

    <venv>/bin/python user_env_check.py <comfyui home>      (FP_COMFY = ComfyUI source)
"""
import json
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))


def distributions_providing(module):
    """Installed distributions whose files include top-level ``module`` (package dir or .py/.so)."""
    from importlib import metadata

    out = []
    for dist in metadata.distributions():
        tops = set()
        for f in dist.files or ():
            parts = Path(str(f)).parts
            if not parts or parts[0].endswith((".dist-info", ".egg-info", ".data")) or parts[0] == "..":
                continue
            tops.add(parts[0].split(".")[0] if len(parts) == 1 else parts[0])
        top_txt = dist.read_text("top_level.txt") or ""
        tops.update(t.strip() for t in top_txt.splitlines() if t.strip())
        if module in tops:
            out.append(dist.metadata["Name"])
    return sorted(set(out))


def main(home):
    import numpy as np
    from PIL import Image

    from harness import comfy_host

    report = {"onnxruntime_dists": distributions_providing("onnxruntime"),
              "cv2_dists": distributions_providing("cv2"),
              "insightface_dists": distributions_providing("insightface")}
    host = comfy_host.boot(Path(home))
    pack_nodes = sorted(host.pack.NODE_CLASS_MAPPINGS)
    registered = sorted(n for n in pack_nodes if n in host.node_classes)
    report.update(pack_nodes=pack_nodes, registered=registered)

    yy, xx = np.mgrid[:256, :320]
    img = np.zeros((256, 320, 3), np.uint8)
    img[((xx - 170) ** 2 + (yy - 120) ** 2) < 60 ** 2] = 255
    Image.fromarray(img).save(os.path.join(home, "input", "user_env_blob.png"))
    results = {}
    for provider in ("auto", "CPU"):
        prompt = {
            "load": {"class_type": "LoadImage", "inputs": {"image": "user_env_blob.png"}},
            "fa": {"class_type": "FP_FaceAnalysisLoader", "inputs": {"model_pack": "antelopev2", "provider": provider,
                                                                    "det_size": 640}},
            "detect": {"class_type": "FP_FaceDetect", "inputs": {"image": ["load", 0], "face_analysis": ["fa", 0],
                       "select": "largest", "index": 0, "if_no_face": "error", "det_thresh": 0.5}},
            "mask": {"class_type": "FP_FaceMask", "inputs": {"faces": ["detect", 0], "image": ["load", 0],
                     "shape": "bbox", "grow": 1.0, "feather": 0.0}},
            "mask_img": {"class_type": "MaskToImage", "inputs": {"mask": ["mask", 0]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["mask_img", 0], "filename_prefix": f"user_{provider}"}},
            "embed": {"class_type": "FP_FaceEmbed", "inputs": {"faces": ["detect", 0], "mode": "mean"}},
            "save_e": {"class_type": "FP_SaveFaceEmbeds", "inputs": {"face_embeds": ["embed", 0],
                       "filename": f"user_env_{provider}.safetensors"}},
        }
        outputs = host.run(prompt)
        mask = np.asarray(Image.open(host.output_files({"save": outputs["save"]})[0]).convert("L"), np.float32) / 255
        results[provider] = {"mask_at_face": float(mask[120, 170]), "mask_far": float(mask[240, 10]),
                             "mask_mean": float(mask.mean())}
    from comfyui_face_personalization.models_loader.face import analysis

    fa = analysis.load_face_analysis("antelopev2", "auto")
    report.update(graph=results, session_providers=analysis.session_providers(fa),
                  cv2_imported="cv2" in sys.modules, insightface_imported="insightface" in sys.modules)
    print("USER_ENV_REPORT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
