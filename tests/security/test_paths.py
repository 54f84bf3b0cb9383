"""File-name inputs of the save and load nodes: no escape from ComfyUI's folders, no silent overwrite.

The nodes are called directly (as the executor does) with '../' names, absolute paths inside and
outside their folder, a symlink leading out, and an existing file name. Refusals must say why, and
nothing may be created outside the folder.
"""
import os

import pytest
import torch

SAVERS = {  # node id -> (folder kind, inputs besides the file name, extension written)
    "FP_SaveWPlus": ("wplus_codes", lambda: {"wplus": torch.zeros(1, 18, 512)}, ".pt"),
    "FP_SaveFaceEmbeds": ("face_embeds", lambda: {"face_embeds": torch.randn(1, 512)}, ".safetensors"),
}


def _tree(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def _save(comfy, node_id, name):
    cls = comfy.pack.NODE_CLASS_MAPPINGS[node_id]
    _, inputs, _ = SAVERS[node_id]
    return getattr(cls(), cls.FUNCTION)(filename=name, **inputs())


@pytest.mark.parametrize("node_id", sorted(SAVERS))
def test_save_names_stay_inside(comfy, node_id, tmp_path):
    files = comfy.pack.models_loader.files
    folder = files.target_dir(SAVERS[node_id][0])
    os.makedirs(folder, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = os.path.join(folder, "link_out")
    if not os.path.lexists(link):
        os.symlink(outside, link)
    home_before, outside_before = _tree(comfy.home.parent), _tree(outside)
    refusals = {
        "../x": "climbs out",
        "../../x": "climbs out",
        "sub/../../x": "climbs out",
        str(outside / "abs_out"): "absolute path outside",
        "link_out/x": "through a symlink",
    }
    for name, why in refusals.items():
        with pytest.raises(Exception, match=why):
            _save(comfy, node_id, name)
    assert _tree(outside) == outside_before == set()
    assert _tree(comfy.home.parent) == home_before, "a refused save created a file"

    ext = SAVERS[node_id][2]
    _save(comfy, node_id, os.path.join(folder, "abs_in"))  # absolute inside: a sub-path of the folder
    first = os.path.join(folder, "abs_in" + ext)
    assert os.path.isfile(first)
    data = open(first, "rb").read()
    _save(comfy, node_id, "abs_in")  # same name again: a numbered file, the first untouched
    assert open(first, "rb").read() == data
    assert os.path.isfile(os.path.join(folder, "abs_in_00001" + ext))


def test_read_paths_confined(comfy, tmp_path):
    files = comfy.pack.models_loader.files
    secret = tmp_path / "secret.txt"
    secret.write_text("alice\n")
    for raw in (str(secret), "../../" + secret.name, "../" * 12 + str(secret).lstrip("/")):
        with pytest.raises(Exception, match="outside ComfyUI's folders|not found|climbs out"):
            files.confined_read_path(raw, what="names_file")
    inside = os.path.join(comfy.home, "input", "names_ok.txt")
    os.makedirs(os.path.dirname(inside), exist_ok=True)
    open(inside, "w").write("alice\n")
    assert os.path.realpath(files.confined_read_path(inside, what="names_file")) == os.path.realpath(inside)
    link = os.path.join(comfy.home, "input", "names_link.txt")
    if not os.path.lexists(link):
        os.symlink(secret, link)
    # A link a user placed inside ComfyUI's folders is followed on read, as ComfyUI does for models
    # (the tiny test models are installed as links too); a prompt can name it but cannot create it.
    assert files.confined_read_path("names_link.txt", what="names_file")
