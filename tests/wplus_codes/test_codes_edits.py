"""W+ codes (load / save / interpolate / style mix) and DeltaWEdit with every shared official
direction file, against the official formulas written out independently here:

- InterFaceGAN (e4e LatentEditor.apply_interfacegan): latent + f * direction, direction [1,512] on all rows.
- Latent directions (W+ Adapter test_demo.ipynb): (w + f * d)[:, :8] for d [18,512] float64.
- GANSpace (e4e editings/ganspace.py get_delta + edit): coordinate from row 0, delta padded into start:end.
"""
import csv
import re
import shutil

import numpy as np
import pytest
import torch

from harness.comfy_host import PromptFailed

CODES = ["e4e_1.pth", "e4e_2.pth", "e4e_3.pth", "e4e_4.pth", "e4e_5.pth", "stage1_1.pth", "stage1_2.pth"]


@pytest.fixture
def tmp_path(wplus_dirs, request):
    """Saves stay inside models/wplus/codes (the pack refuses other places): each test gets a sub-folder."""
    d = wplus_dirs[0] / "_tests" / re.sub(r"\W", "_", request.node.name)[:80]
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def _mods():
    from comfyui_face_personalization.models_loader.methods.wplus import codes, edits

    return codes, edits


@pytest.fixture(scope="module")
def two_codes(shared_data):
    w = [_tload(shared_data / "wplus" / "wcodes" / n) for n in ("e4e_1.pth", "e4e_2.pth")]
    return torch.cat(w)  # [2,18,512]


def _tload(path):
    """torch.load for reference values (the shared codes were saved on CUDA with requires_grad)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    return obj.detach() if torch.is_tensor(obj) else obj


def _saved(path):
    import safetensors.torch

    return safetensors.torch.load_file(str(path))["wplus"]


# ------------------------------------------------------------------ official reference formulas

def ref_interfacegan(w, d, f):
    return w + f * d  # d [1,512] broadcasts over the 18 rows (and the batch)


def ref_latent_direction(w, d_np, f):
    edited = w + f * torch.from_numpy(d_np).unsqueeze(0)  # float64, as in the demo
    out = w.clone()
    out[:, :8] = edited[:, :8].float()
    return out


def ref_ganspace(w, pca, idx, start, end, strength):
    outs = []
    for latent in w:  # each [18,512]
        w_centered = latent - pca["mean"]
        lat_comp, lat_std = pca["comp"], pca["std"]
        w_coord = torch.sum(w_centered[0].reshape(-1) * lat_comp[idx].reshape(-1)) / lat_std[idx]
        delta = (strength - w_coord) * lat_comp[idx] * lat_std[idx]
        padded = torch.zeros(latent.shape)
        padded[start:end] += delta.repeat(end - start, 1)
        outs.append(latent + padded)
    return torch.stack(outs)


def _csv_rows(shared_data):
    with open(shared_data / "wplus" / "ganspace" / "ganspace_configs.csv") as f:
        return [(r[0], *map(int, r[1:])) for r in csv.reader(f, delimiter="\t") if r]


# ------------------------------------------------------------------ codes

def test_shared_codes_load_as_wplus(comfy, shared_data):
    codes, _ = _mods()
    for name in CODES:
        path = shared_data / "wplus" / "wcodes" / name
        w = codes.load_wplus(str(path))
        assert w.shape == (1, 18, 512) and w.dtype == torch.float32
        assert torch.equal(w, _tload(path))


def test_graph_load_save_roundtrip_all_formats(comfy, wplus_dirs, shared_data, tmp_path):
    ref = _tload(shared_data / "wplus" / "wcodes" / "e4e_3.pth")
    prompt = {"load": {"class_type": "FP_LoadWPlus", "inputs": {"code": "e4e_3.pth"}}}
    for fmt in ("pt", "pth", "npy", "safetensors"):
        prompt[f"save_{fmt}"] = {"class_type": "FP_SaveWPlus", "inputs": {
            "wplus": ["load", 0], "filename": str(tmp_path / f"code_{fmt}"), "format": fmt, "overwrite": True}}
    out = comfy.run(prompt)
    codes, _ = _mods()
    for fmt in ("pt", "pth", "npy", "safetensors"):
        path = tmp_path / f"code_{fmt}.{fmt}"
        assert out[f"save_{fmt}"]["text"] == [f"saved {path}"]
        assert torch.equal(codes.load_wplus(str(path)), ref), fmt
    # the .pt is the official format: a plain tensor [1,18,512]
    assert torch.equal(_tload(tmp_path / "code_pt.pt"), ref)
    assert np.array_equal(np.load(tmp_path / "code_npy.npy"), ref.numpy())


def test_save_numbering_and_absolute_path_load(comfy, wplus_dirs, shared_data, tmp_path):
    save = comfy.node_classes["FP_SaveWPlus"]()
    w = torch.zeros(1, 18, 512)
    p1 = save.save(w, str(tmp_path / "same"), "pt")["result"][0]
    p2 = save.save(w + 1, str(tmp_path / "same.pt"), "pt")["result"][0]
    assert p1.endswith("same.pt") and p2.endswith("same_00001.pt")
    # default folder: models/wplus/codes
    p3 = save.save(w + 2, "saved_by_test", "npy", overwrite=True)["result"][0]
    assert p3.startswith(str(wplus_dirs[0])) and p3.endswith("saved_by_test.npy")

    load_cls = comfy.node_classes["FP_LoadWPlus"]
    src = wplus_dirs[0] / "stage1_2.pth"  # absolute, inside ComfyUI's folders
    prompt = {
        "load": {"class_type": "FP_LoadWPlus", "inputs": {"code": "(use path below)", "path": str(src)}},
        "load2": {"class_type": "FP_LoadWPlus", "inputs": {"code": "saved_by_test.npy"}},
        "mix": {"class_type": "FP_WPlusInterpolate", "inputs": {"wplus_a": ["load", 0], "wplus_b": ["load2", 0], "t": 0.0}},
        "save": {"class_type": "FP_SaveWPlus", "inputs": {"wplus": ["mix", 0], "filename": str(tmp_path / "abs"),
                                                         "format": "safetensors", "overwrite": True}},
    }
    comfy.run(prompt)
    assert torch.equal(_saved(tmp_path / "abs.safetensors"), _tload(src))
    with pytest.raises(ValueError, match="path is empty"):
        load_cls().load("(use path below)", "")


def test_graph_interpolate_and_style_mix(comfy, wplus_dirs, shared_data, tmp_path):
    a = _tload(shared_data / "wplus" / "wcodes" / "e4e_1.pth")
    b = _tload(shared_data / "wplus" / "wcodes" / "e4e_4.pth")
    prompt = {
        "a": {"class_type": "FP_LoadWPlus", "inputs": {"code": "e4e_1.pth"}},
        "b": {"class_type": "FP_LoadWPlus", "inputs": {"code": "e4e_4.pth"}},
        "lerp": {"class_type": "FP_WPlusInterpolate", "inputs": {"wplus_a": ["a", 0], "wplus_b": ["b", 0], "t": 0.3}},
        "mix": {"class_type": "FP_WPlusStyleMix", "inputs": {"wplus_a": ["a", 0], "wplus_b": ["b", 0],
                                                            "start_row": 4, "end_row": 8}},
        "s1": {"class_type": "FP_SaveWPlus", "inputs": {"wplus": ["lerp", 0], "filename": str(tmp_path / "lerp"),
                                                       "format": "safetensors", "overwrite": True}},
        "s2": {"class_type": "FP_SaveWPlus", "inputs": {"wplus": ["mix", 0], "filename": str(tmp_path / "mix"),
                                                       "format": "safetensors", "overwrite": True}},
    }
    comfy.run(prompt)
    torch.testing.assert_close(_saved(tmp_path / "lerp.safetensors"), 0.7 * a + 0.3 * b, rtol=0, atol=1e-6)
    mix = _saved(tmp_path / "mix.safetensors")
    assert torch.equal(mix[:, :4], a[:, :4]) and torch.equal(mix[:, 4:8], b[:, 4:8]) and torch.equal(mix[:, 8:], a[:, 8:])

    codes, _ = _mods()
    batch = torch.cat([a, b])  # batch 2 against batch 1 broadcasts
    torch.testing.assert_close(codes.interpolate(batch, a, 1.5), -0.5 * batch + 1.5 * a)
    with pytest.raises(ValueError, match="batch sizes 2 and 3"):
        codes.interpolate(batch, torch.zeros(3, 18, 512), 0.5)
    with pytest.raises(ValueError, match="0 <= start < end <= 18"):
        codes.style_mix(a, b, 8, 8)


# ------------------------------------------------------------------ DeltaWEdit, every shared direction

def test_delta_edit_every_interfacegan_and_latent_direction(comfy, wplus_dirs, shared_data, two_codes):
    node = comfy.node_classes["DeltaWEdit"]()
    files = sorted((shared_data / "wplus" / "interfacegan").glob("*.pt")) + sorted(
        (shared_data / "wplus" / "latent_directions").glob("*.npy"))
    assert len(files) == 23
    choices = comfy.node_classes["DeltaWEdit"].INPUT_TYPES()["required"]["direction"][0]
    for path in files:
        assert path.name in choices
        for f in (-2.5, 3.0):
            out = node.edit(two_codes, path.name, f)[0]
            if path.suffix == ".pt":
                ref = ref_interfacegan(two_codes, _tload(path), f)
            else:
                ref = ref_latent_direction(two_codes, np.load(path), f)
                assert torch.equal(out[:, 8:], two_codes[:, 8:])  # rows 8.. untouched
            assert out.shape == (2, 18, 512) and out.dtype == torch.float32
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6, msg=f"{path.name} f={f}")
            assert (out - two_codes).abs().max() > 1e-3
        # strength 0 is bit-identical
        assert torch.equal(node.edit(two_codes, path.name, 0.0)[0], two_codes)
    # custom rows: latent direction on rows 4..12
    d = np.load(shared_data / "wplus" / "latent_directions" / "smile.npy")
    out = node.edit(two_codes, "smile.npy", 2.0, "custom", 4, 12)[0]
    ref = two_codes.clone()
    ref[:, 4:12] = (two_codes + 2.0 * torch.from_numpy(d))[:, 4:12].float()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_delta_edit_every_ganspace_preset(comfy, wplus_dirs, shared_data, two_codes):
    node = comfy.node_classes["DeltaWEdit"]()
    pca = _tload(shared_data / "wplus" / "ganspace" / "ffhq_pca.pt")
    rows = _csv_rows(shared_data)
    assert len(rows) == 42
    choices = comfy.node_classes["DeltaWEdit"].INPUT_TYPES()["required"]["direction"][0]
    for name, idx, start, end, csv_strength in rows:
        assert f"ganspace:{name}" in choices
        for s in (float(csv_strength), 7.0):
            out = node.edit(two_codes, f"ganspace:{name}", s)[0]
            ref = ref_ganspace(two_codes, pca, idx, start, end, s)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6, msg=f"{name} s={s}")
            assert torch.equal(out[:, :start], two_codes[:, :start]) and torch.equal(out[:, end:], two_codes[:, end:])
            if start == 0:  # get_delta *sets* the row-0 coordinate to s std
                comp = pca["comp"][idx].reshape(-1)
                coord = ((out[:, 0] - pca["mean"]) * comp).sum(-1) / pca["std"][idx]
                torch.testing.assert_close(coord, torch.full((2,), s), rtol=0, atol=1e-3)
    # custom rows override the preset's start/end
    name, idx, start, end, _ = rows[0]
    out = node.edit(two_codes, f"ganspace:{name}", -5.0, "custom", 0, 18)[0]
    torch.testing.assert_close(out, ref_ganspace(two_codes, pca, idx, 0, 18, -5.0), rtol=0, atol=1e-6)


def test_graph_delta_edit_and_direction_override(comfy, wplus_dirs, shared_data, tmp_path):
    w = _tload(shared_data / "wplus" / "wcodes" / "e4e_2.pth")
    pca = _tload(shared_data / "wplus" / "ganspace" / "ffhq_pca.pt")
    prompt = {"code": {"class_type": "FP_LoadWPlus", "inputs": {"code": "e4e_2.pth"}},
              "dir": {"class_type": "FP_LoadWPlusDirection", "inputs": {"direction": "ganspace:lipstick"}}}
    edits = {"ig": ("age.pt", -3.0, None), "ld": ("age.npy", 1.5, None),
             "gs": ("ganspace:lipstick", 12.0, None), "ov": ("(use direction_override)", 4.0, ["dir", 0])}
    for key, (choice, s, override) in edits.items():
        inputs = {"wplus": ["code", 0], "direction": choice, "strength": s, "rows": "preset", "start_row": 0, "end_row": 18}
        if override:
            inputs["direction_override"] = override
        prompt[key] = {"class_type": "DeltaWEdit", "inputs": inputs}
        prompt[f"save_{key}"] = {"class_type": "FP_SaveWPlus", "inputs": {
            "wplus": [key, 0], "filename": str(tmp_path / key), "format": "safetensors", "overwrite": True}}
    comfy.run(prompt)
    ig = _tload(shared_data / "wplus" / "interfacegan" / "age.pt")
    ld = np.load(shared_data / "wplus" / "latent_directions" / "age.npy")
    lip = next(r for r in _csv_rows(shared_data) if r[0] == "lipstick")
    torch.testing.assert_close(_saved(tmp_path / "ig.safetensors"), ref_interfacegan(w, ig, -3.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(_saved(tmp_path / "ld.safetensors"), ref_latent_direction(w, ld, 1.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(_saved(tmp_path / "gs.safetensors"), ref_ganspace(w, pca, *lip[1:4], 12.0), rtol=0, atol=1e-6)
    torch.testing.assert_close(_saved(tmp_path / "ov.safetensors"), ref_ganspace(w, pca, *lip[1:4], 4.0), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ bad input

def test_bad_wplus_and_direction_inputs(comfy, wplus_dirs, shared_data, two_codes, tmp_path):
    codes_dir, dirs_dir = wplus_dirs
    node = comfy.node_classes["DeltaWEdit"]()
    with pytest.raises(ValueError, match=r"expected shape \[B,18,512\].*got \[1, 512\].*W code or an InterFaceGAN"):
        node.edit(torch.zeros(1, 512), "age.pt", 1.0)
    with pytest.raises(ValueError, match=r"got \[2, 16, 512\]"):
        node.edit(torch.zeros(2, 16, 512), "age.pt", 1.0)
    with pytest.raises(ValueError, match="0 <= start < end <= 18"):
        node.edit(two_codes, "age.pt", 1.0, "custom", 10, 5)
    with pytest.raises(ValueError, match="nothing is connected"):
        node.edit(two_codes, "(use direction_override)", 1.0)

    # a direction file of the wrong shape, through a real graph
    torch.save(torch.zeros(3, 512), dirs_dir / "bad_shape.pt")
    torch.save(torch.zeros(1, 18, 512), codes_dir / "ok_code.pt")
    prompt = {
        "code": {"class_type": "FP_LoadWPlus", "inputs": {"code": "ok_code.pt"}},
        "edit": {"class_type": "DeltaWEdit", "inputs": {"wplus": ["code", 0], "direction": "bad_shape.pt", "strength": 1.0,
                                                        "rows": "preset", "start_row": 0, "end_row": 18}},
        "save": {"class_type": "FP_SaveWPlus", "inputs": {"wplus": ["edit", 0], "filename": str(tmp_path / "x"),
                                                         "format": "pt", "overwrite": True}},
    }
    with pytest.raises(PromptFailed, match=r"bad_shape\.pt: direction has shape \[3, 512\]; expected \[1,512\]"):
        comfy.run(prompt)

    # a direction file loaded as a W+ code, through a real graph
    torch.save(torch.zeros(1, 512), codes_dir / "a_direction.pt")
    prompt["code"]["inputs"]["code"] = "a_direction.pt"
    prompt["edit"]["inputs"]["direction"] = "age.pt"
    with pytest.raises(PromptFailed, match=r"a_direction\.pt: expected shape \[B,18,512\]"):
        comfy.run(prompt)

    _, edits = _mods()
    with pytest.raises(ValueError, match="GANSpace PCA file"):
        edits.load_direction_file(str(shared_data / "wplus" / "ganspace" / "ffhq_pca.pt"))
    with pytest.raises(ValueError, match="not in ganspace"):
        edits.resolve_choice("ganspace:no_such_edit")
    codes, _ = _mods()
    with pytest.raises(ValueError, match="list of 17"):
        codes.load_wplus(str(shared_data / "wplus" / "att_direction_scale.pth"))
    with pytest.raises(ValueError, match="NaN"):
        codes.as_wplus(torch.full((1, 18, 512), float("nan")))
