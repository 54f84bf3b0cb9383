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
    """Photo -> antelopev2 -> ArcFace -> AdaFace -> image -> ID score: the score node reports on the image."""
    from harness import provision, workflow

    provision.provision(comfy_home)  # the tiny antelopev2 pack and the shared photos
    prompt = workflow.ui_to_api(workflow.load(WF / "adaface_from_photo.json"), comfy.input_types)
    out = comfy.run(prompt)
    assert len(comfy.output_files(out)) == 1
    score = next(v for k, v in out.items() if prompt[k]["class_type"] == "FP_FaceSimilarity")
    report = score["text"][0]
    assert report.splitlines()[0].startswith("image 1: ") and "images with a face" in report
