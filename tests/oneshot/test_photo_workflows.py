"""The photo-in workflows: in sync with their builder, and what they promise (a photo goes in, AnimateDiff-
Evolved's real nodes, a Canny hint). That they run on tiny models is tests/test_workflows.py's job."""
import json
from pathlib import Path

import pytest

from harness import workflow as wf

WF = Path(__file__).resolve().parents[2] / "workflows"


def _builders():
    import photo_workflows  # this folder is on sys.path (pytest rootdir-relative import)

    return photo_workflows


@pytest.mark.parametrize("name", ["wplus_quickstart", "wplus_from_photo", "pidiff_from_photo", "adaface_controlnet",
                                  "adaface_animatediff"])
def test_workflow_matches_its_builder(comfy, name):
    built = json.loads(json.dumps(_builders().build_ui(name, comfy)))
    assert wf.load(WF / f"{name}.json") == built, f"workflows/{name}.json is stale: run tests/oneshot/photo_workflows.py"


def _types(name):
    return [n["type"] for n in wf.load(WF / f"{name}.json")["nodes"]]


def test_photo_in_workflows_start_from_a_photo():
    for name, apply in (("wplus_from_photo", "ApplyResidualCrossAttention"),
                        ("pidiff_from_photo", "FP_ApplyStyleCrossAttention")):
        kinds = _types(name)
        for kind in ("LoadImage", "FP_FaceDetect", "FP_FaceAlign", "LoadE4EEncoder", "WPlusEncode", apply,
                     "FP_FaceSimilarity"):
            assert kind in kinds, (name, kind)
        assert "FP_LoadWPlus" not in kinds  # no baked code
    assert {"LoadImage", "FP_WPlusAdapterFromPhoto"} <= set(_types("wplus_quickstart"))


def test_animatediff_workflow_uses_the_real_pack_nodes():
    ui = wf.load(WF / "adaface_animatediff.json")
    kinds = [n["type"] for n in ui["nodes"]]
    assert {"ADE_AnimateDiffLoaderGen1", "ADE_StandardUniformContextOptions", "SaveAnimatedWEBP"} <= set(kinds)
    loader = next(n for n in ui["nodes"] if n["type"] == "ADE_AnimateDiffLoaderGen1")
    assert loader["widgets_values"] == ["mm_sd_v15_v2.ckpt", "autoselect"]
    sampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    model_link = next(i["link"] for i in sampler["inputs"] if i["name"] == "model")
    assert next(lk for lk in ui["links"] if lk[0] == model_link)[1] == loader["id"]
    note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    assert "ComfyUI-AnimateDiff-Evolved" in note and "animatediff_models" in note


def test_missing_pack_is_left_out_and_rewired(comfy):
    """Without AnimateDiff-Evolved the loader is left out and the sampler takes the checkpoint's MODEL."""
    ui, left_out = wf.without_missing_packs(wf.load(WF / "adaface_animatediff.json"), {"KSampler"})
    assert sorted(k for _, k, _ in left_out) == ["ADE_AnimateDiffLoaderGen1", "ADE_StandardUniformContextOptions"]
    prompt = wf.ui_to_api(ui, comfy.input_types)
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    assert prompt[sampler["inputs"]["model"][0]]["class_type"] == "CheckpointLoaderSimple"
    assert not any(n["class_type"].startswith("ADE_") for n in prompt.values())


def test_controlnet_hint_is_an_edge_map():
    ui = wf.load(WF / "adaface_controlnet.json")
    nodes = {n["id"]: n for n in ui["nodes"]}
    apply = next(n for n in ui["nodes"] if n["type"] == "ControlNetApplyAdvanced")
    hint = next(i["link"] for i in apply["inputs"] if i["name"] == "image")
    assert nodes[next(lk for lk in ui["links"] if lk[0] == hint)[1]]["type"] == "Canny"
