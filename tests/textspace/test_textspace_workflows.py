"""The text-space workflows (UI JSON) convert and run on tiny models, mix_identities composes both methods."""
from pathlib import Path

import pytest

WF = Path(__file__).resolve().parents[2] / "workflows"


@pytest.mark.parametrize("name", ["mix_identities", "adaface_animatediff"])
def test_workflow_runs(comfy, name, tiny_sd15, adaface_files):
    """Smoke test: it runs end to end (the numerical oracles live in the method tests)."""
    from harness import workflow

    ui, left_out = workflow.without_missing_packs(workflow.load(WF / f"{name}.json"), comfy.node_classes)
    prompt = workflow.ui_to_api(ui, comfy.input_types)
    out = comfy.run(prompt)
    files = comfy.output_files(out)
    assert len(files) == 1  # one PNG, or one animated WEBP of the 16 frames
    if name == "adaface_animatediff":
        from PIL import Image

        assert Image.open(files[0]).n_frames == 16
        if "ADE_AnimateDiffLoaderGen1" not in comfy.node_classes:  # AnimateDiff-Evolved is not installed here
            assert sorted(k for _, k, _ in left_out) == ["ADE_AnimateDiffLoaderGen1", "ADE_StandardUniformContextOptions"]


def test_adaface_from_photo_scores_the_result(comfy, comfy_home, tiny_sd15, adaface_files):
    """Photo -> antelopev2 -> ArcFace -> AdaFace -> image -> ID score. The score node is also given the input
    photo itself (ImageBatch in front of it): that image scores ~1 against the identity taken from it, so the
    report is a real score, not just text (the tiny model's generated image has no face: 'no face')."""
    from harness import provision, workflow

    provision.provision(comfy_home)  # the tiny antelopev2 pack and the shared photos
    prompt = workflow.ui_to_api(workflow.load(WF / "adaface_from_photo.json"), comfy.input_types)
    photo = next(k for k, n in prompt.items() if n["class_type"] == "LoadImage")
    score_id = next(k for k, n in prompt.items() if n["class_type"] == "FP_FaceSimilarity")
    score = prompt[score_id]["inputs"]
    prompt["fp_batch"] = {"class_type": "ImageBatch", "inputs": {"image1": [photo, 0], "image2": score["image"]}}
    score["image"] = ["fp_batch", 0]
    out = comfy.run(prompt)
    assert len(comfy.output_files(out)) == 1
    report = out[score_id]["text"][0]
    lines = report.splitlines()
    assert lines[0].startswith("image 1: ") and float(lines[0].split(": ")[1]) > 0.99, report
    assert lines[1].startswith("image 2: ") and "of 2 images" in lines[-1], report
