"""PersonaMagic mapper files: the official pickled layout (read with torch's weights_only unpickler, its one pickled
class allowlisted as an inert stand-in: models_loader/safe_load.py), safetensors, bad files."""
import json
import os
import pickle

import pytest
import torch


def _pm():
    from comfyui_face_personalization.models_loader.methods import personamagic

    return personamagic


def test_official_layout_is_pickled_and_loads_restricted(pm_official_path, pm_bundle):
    import zipfile

    from fixtures.tiny.personamagic import build_mapper

    z = zipfile.ZipFile(pm_official_path)
    data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"models.positional_encoding" in data and b"TimePositionalEncoding" in data
    assert b"cuda:0" in data  # storages tagged like the official files
    with pytest.raises(pickle.UnpicklingError):
        torch.load(pm_official_path, map_location="cpu", weights_only=True)
    ref = build_mapper().state_dict()
    got = pm_bundle.mapper.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert tuple(got["input_layer.weight"].shape) == (200, 2048)
    assert pm_bundle.target_norm == 0.5 and pm_bundle.class_word == "face"
    assert pm_bundle.placeholder_tokens == ["<new1>", "<new2>", "<new3>", "<new4>"]
    assert pm_bundle.token_num == 4 and pm_bundle.output_dim == 768 and pm_bundle.mapper.output_bypass


def test_safetensors_variant_and_roundtrip(pm_official_path, pm_st_path, pm_bundle, tmp_path):
    from safetensors import safe_open

    pm = _pm()
    st = pm.load_mapper(pm_st_path)
    assert st.target_norm is None  # -> the class word's own norm at apply time
    for k, v in pm_bundle.mapper.state_dict().items():
        assert torch.equal(v, st.mapper.state_dict()[k]), k
    out = tmp_path / "rt.safetensors"
    pm.save_mapper(pm_bundle, out)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "comfyui-face-personalization/personamagic-mapper"
    assert meta["token_num"] == "4" and meta["output_dim"] == "768" and float(meta["target_norm"]) == 0.5
    assert json.loads(meta["placeholder_tokens"]) == pm_bundle.placeholder_tokens
    rt = pm.load_mapper(str(out))
    assert rt.target_norm == 0.5 and rt.class_word == "face"
    for k, v in pm_bundle.mapper.state_dict().items():
        assert torch.equal(v, rt.mapper.state_dict()[k]), k


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_executing(tmp_path, pm_bundle):
    from comfyui_face_personalization.models_loader.safe_load import UnsafeCheckpointError

    marker = tmp_path / "PWNED"
    bad = tmp_path / "mapper-steps-666.pt"
    torch.save({"state_dict": pm_bundle.mapper.state_dict(), "cfg": {}, "encoder": _Evil(marker)}, str(bad))
    assert b"system" in open(bad, "rb").read()
    with pytest.raises(UnsafeCheckpointError, match="not on this loader's allowlist"):
        _pm().load_mapper(str(bad))
    assert not marker.exists()


def test_not_a_mapper_files(tmp_path):
    import safetensors.torch

    p = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"foo.weight": torch.zeros(3, 3)}, str(p))
    with pytest.raises(ValueError, match="not a PersonaMagic mapper"):
        _pm().load_mapper(str(p))
    q = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, str(q))
    with pytest.raises(ValueError, match="state_dict"):
        _pm().load_mapper(str(q))
