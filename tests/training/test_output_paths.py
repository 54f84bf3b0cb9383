"""Training exports never overwrite: ``jobfiles.fresh_output_paths`` (PersonaMagic, PIDiff, W+ and CrossInit
exports) refuses a file that exists, naming it, before anything is written; ``string_metadata`` is what goes into
their safetensors metadata."""
import json

import pytest
import torch


def test_fresh_output_paths_refuse_any_existing_file(pack, tmp_path):
    from comfyui_face_personalization.models_loader.training import jobfiles

    out = tmp_path / "models" / "pidiff"
    paths = jobfiles.fresh_output_paths(str(out), "me", (".safetensors", ".json"))
    assert paths == [str(out / "me.safetensors"), str(out / "me.json")] and out.is_dir()
    (out / "me.json").write_text("keep me")
    with pytest.raises(FileExistsError, match="never overwrites") as err:
        jobfiles.fresh_output_paths(str(out), "me", (".safetensors", ".json"))
    assert "me.json" in str(err.value) and (out / "me.json").read_text() == "keep me"
    assert jobfiles.string_metadata({"a": "x", "b": 2, "c": [1, "y"]}) == {"a": "x", "b": "2", "c": '[1, "y"]'}
    assert jobfiles.string_metadata(None) == {}


@pytest.mark.parametrize("taken", ["crossinit/me", "embeddings/me.safetensors", "embeddings/me.json"])
def test_crossinit_export_refuses_each_of_its_files(pack, tmp_path, taken):
    from comfyui_face_personalization.models_loader.methods.crossinit import train as ci

    dirs = {"crossinit": str(tmp_path / "crossinit"), "embeddings": str(tmp_path / "embeddings")}
    path = tmp_path / taken
    path.parent.mkdir(parents=True, exist_ok=True)
    if taken == "crossinit/me":
        path.mkdir()
    else:
        path.write_text("keep me")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(FileExistsError, match="never overwrites"):
        ci.export_files({"clip_l": torch.zeros(2, 8)}, "<face>", "me", {"method": "crossinit"}, dirs)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == before
    if taken != "crossinit/me":
        assert path.read_text() == "keep me"
    out = ci.export_files({"clip_l": torch.zeros(2, 8)}, "<face>", "other", {"method": "crossinit"}, dirs)
    assert [o["kind"] for o in out] == ["official", "safetensors"]
    assert json.loads((tmp_path / "embeddings" / "other.json").read_text())["trigger_word"] == "<face>"
