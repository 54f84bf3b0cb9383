"""File-name inputs of every node, driven from the node registry: no escape from ComfyUI's folders, no
silent overwrite (issue 11, items 2-3).

Every STRING input of a pack node that names a file or folder (found from INPUT_TYPES: the input names
below, or a tooltip that speaks of a file name / path / folder) must have a case in SAVERS or READERS,
so a new node with a file input fails here until it is covered. Each node is called as the executor
calls it (its registered, guarded FUNCTION) with: ``../`` names, absolute paths inside and outside
ComfyUI's folders, a symlink inside the folder pointing out, and an existing file name. Refusals must say
why, and nothing may be created anywhere. Combo (dropdown) file inputs are checked through ComfyUI's
prompt validation, which only accepts listed names. Training nodes' ``name`` / ``photo_folder`` inputs
go through the trainers' shared helpers, tested at the end.
"""
import os

import pytest
import torch

FILE_INPUT_NAMES = {"filename", "name", "path", "names_file", "photo_folder", "file", "folder"}


def _identity():
    return {"vectors": torch.randn(2, 768, generator=torch.Generator().manual_seed(0)), "method": "file"}


# node id -> (file input, folder kind, other inputs (called with fixtures), extension written)
SAVERS = {
    "FP_SaveWPlus": ("filename", "wplus_codes", lambda fx: {"wplus": torch.zeros(1, 18, 512)}, ".pt"),
    "FP_SaveFaceEmbeds": ("filename", "face_embeds", lambda fx: {"face_embeds": torch.randn(1, 512)}, ".safetensors"),
    "FP_SaveIdentityEmbedding": ("name", "embeddings", lambda fx: {"identity_embedding": _identity()}, ".safetensors"),
    "FP_SavePersonaMagicMapper": ("filename", "personamagic", lambda fx: {"mapper": fx["mapper"]()}, ".safetensors"),
}

# node id -> (file input, folder kind the node reads, other inputs, file content writer, check of the result)
READERS = {
    "FP_LoadWPlus": ("path", "wplus_codes", lambda fx: {"code": "(use path below)"},
                     lambda p: torch.save(torch.full((1, 18, 512), 0.5), p), lambda out: float(out[0].mean()) == 0.5),
    "FP_LoadFaceEmbeds": ("path", "face_embeds", lambda fx: {"embeds_file": "none"},
                          lambda p: torch.save(torch.ones(1, 512), p), lambda out: tuple(out[0].shape) == (1, 512)),
    "CrossInitEmbedding": ("names_file", None, lambda fx: {"clip": fx["clip"](), "trigger_word": "<ci>"},
                           lambda p: open(p, "w").write("Alice Smith\nBob Jones\n"), lambda out: "vectors" in out[1]),
}
READ_EXT = {"FP_LoadWPlus": ".pt", "FP_LoadFaceEmbeds": ".pt", "CrossInitEmbedding": ".txt"}


def _is_training(cls):
    return ".training_nodes" in cls.__module__ or cls.__module__.startswith("training_nodes")


def _file_inputs(classes):
    """{(node id, input)} of STRING inputs that name a file or folder."""
    out = set()
    for node_id, cls in classes.items():
        for section in ("required", "optional"):
            for name, decl in (cls.INPUT_TYPES().get(section) or {}).items():
                if not (isinstance(decl, (tuple, list)) and decl and decl[0] == "STRING"):
                    continue
                tip = (decl[1].get("tooltip", "") if len(decl) > 1 and isinstance(decl[1], dict) else "").lower()
                if name in FILE_INPUT_NAMES or "file name" in tip or "path" in tip.split() or "folder of" in tip:
                    out.add((node_id, name))
    return out


@pytest.fixture(scope="module")
def fx(comfy, install_model, tiny_sd15):
    cache = {}

    def mapper():
        if "mapper" not in cache:
            name = install_model("personamagic_mapper", "personamagic")
            cache["mapper"] = comfy.node_classes["FP_LoadPersonaMagic"]().load(name)[0]
        return cache["mapper"]

    def clip():
        if "clip" not in cache:
            cache["clip"] = comfy.node_classes["CheckpointLoaderSimple"]().load_checkpoint(tiny_sd15)[1]
        return cache["clip"]
    return {"mapper": mapper, "clip": clip}


def _call(comfy, node_id, **kw):
    cls = comfy.pack.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**kw)


def _tree(root):
    return {os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs}


def test_every_file_input_has_a_case(comfy):
    classes = comfy.pack.NODE_CLASS_MAPPINGS
    found = {(n, i) for n, i in _file_inputs(classes) if not _is_training(classes[n])}
    covered = {(n, c[0]) for n, c in SAVERS.items()} | {(n, c[0]) for n, c in READERS.items()}
    assert found == covered, f"file inputs without a path test: {sorted(found - covered)}; stale cases: {sorted(covered - found)}"


@pytest.mark.parametrize("node_id", sorted(SAVERS))
def test_save_names_stay_inside(comfy, fx, node_id, tmp_path):
    files = comfy.pack.models_loader.files
    field, kind, others, ext = SAVERS[node_id]
    folder = files.target_dir(kind)
    os.makedirs(folder, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = os.path.join(folder, "link_out")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(outside, link)
    elsewhere = os.path.join(comfy.home, "input", "save_elsewhere")  # inside ComfyUI but not this folder
    try:
        extra = others(fx)  # before the snapshot: a fixture may install a model file
        save = lambda name, **kw: _call(comfy, node_id, **{field: name}, **extra, **kw)  # noqa: E731
        home_before = _tree(comfy.home.parent)
        refusals = {
            "../x": "climbs out", "../../x": "climbs out", "sub/../../x": "climbs out", "..\\..\\x": "climbs out",
            str(outside / "abs_out"): "absolute path outside", elsewhere: "absolute path outside",
            "link_out/x": "through a symlink", "": "empty",
        }
        for name, why in refusals.items():
            for overwrite in (False, True):
                with pytest.raises(Exception, match=why):
                    save(name, overwrite=overwrite)
        assert _tree(outside) == set()
        assert _tree(comfy.home.parent) == home_before, "a refused save created a file"

        stem = f"paths_{node_id}"
        out = save(os.path.join(folder, stem))  # absolute inside: a sub-path of the folder
        first = os.path.join(folder, stem + ext)
        assert out["result"][0] == first and os.path.isfile(first)
        data = open(first, "rb").read()
        again = save(stem)  # the same name again: a numbered file, the first untouched
        assert again["result"][0] == os.path.join(folder, f"{stem}_00001{ext}") and open(first, "rb").read() == data
        assert "saved" in again["ui"]["text"][0]
        replaced = save(stem, overwrite=True)  # replaced only when asked
        assert replaced["result"][0] == first
        sub = save(f"sub_{node_id}/inner")
        assert sub["result"][0] == os.path.join(folder, f"sub_{node_id}", "inner" + ext)
    finally:
        os.remove(link)


@pytest.mark.parametrize("node_id", sorted(READERS))
def test_read_names_confined(comfy, fx, node_id, tmp_path):
    field, kind, others, write, check = READERS[node_id]
    ext = READ_EXT[node_id]
    secret = tmp_path / f"secret{ext}"
    write(str(secret))
    fp = comfy.pack.models_loader.files._folder_paths()
    folder = fp.get_folder_paths(kind)[0] if kind else fp.get_input_directory()
    os.makedirs(folder, exist_ok=True)
    extra = others(fx)
    read = lambda name: _call(comfy, node_id, **{field: name}, **extra)  # noqa: E731
    before = _tree(comfy.home.parent)
    for name, why in {str(secret): "outside ComfyUI's folders", "/etc/passwd": "outside ComfyUI's folders",
                      "../" * 12 + str(secret).lstrip("/"): "climbs out|not found",
                      "../../" + secret.name: "climbs out|not found"}.items():
        with pytest.raises(Exception, match=why) as err:
            read(name)
        assert "alice" not in str(err.value).lower()
    inside = os.path.join(folder, f"paths_read{ext}")
    write(inside)
    link = os.path.join(folder, f"paths_link{ext}")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(secret, link)
    try:
        assert check(read(inside))  # absolute inside ComfyUI's folders
        assert check(read(os.path.basename(inside)))  # a plain name in the node's folder
        # A link the machine's owner placed inside ComfyUI's folders is followed on read, as ComfyUI core does
        # for models (shared model libraries; the tiny test models are links too). A prompt can name a link
        # but cannot create one, and no save follows a link out (test_save_names_stay_inside).
        assert check(read(os.path.basename(link)))
    finally:
        os.remove(link)
        os.remove(inside)
    assert _tree(comfy.home.parent) == before


def test_combo_file_inputs_accept_only_listed_names(comfy):
    """Dropdown file inputs of the loader nodes: ComfyUI's validation refuses any value not in the list,
    so '../' or absolute names never reach the node over /prompt."""
    classes = comfy.pack.NODE_CLASS_MAPPINGS
    checked = 0
    for node_id, cls in sorted(classes.items()):
        for section in ("required",):
            for name, decl in (cls.INPUT_TYPES().get(section) or {}).items():
                values = decl[0] if isinstance(decl, (tuple, list)) and decl else None
                if not (isinstance(values, list) and any(isinstance(v, str) and "." in v[-12:] for v in values)):
                    continue
                for bad in ("../../../../etc/passwd", "/etc/passwd"):
                    prompt = {"n": {"class_type": node_id, "inputs": {name: bad}},
                              "sink": {"class_type": "PreviewAny", "inputs": {"source": ["n", 0]}}}
                    valid, _, _, node_errors = comfy.validate(prompt)
                    errors = node_errors.get("n", {}).get("errors", [])
                    assert not valid and any(e.get("type") == "value_not_in_list"
                                             and e.get("extra_info", {}).get("input_name") == name for e in errors), \
                        (node_id, name, node_errors)
                checked += 1
    assert checked >= 5


def test_training_name_and_photo_folder(comfy, tmp_path):
    """The trainers' shared helpers: output names are plain names (no folders), never an existing target;
    photo folders only inside ComfyUI's folders."""
    from comfyui_face_personalization.training_nodes import nodes as tn

    for bad in ("../x", "a/b", "/abs", "..", ""):
        with pytest.raises(ValueError, match="invalid output name"):
            tn.check_output_name(bad, [], set())
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(FileExistsError, match="never overwrites"):
        tn.check_output_name("exists", [str(existing)], set())
    photos = tmp_path / "photos"
    photos.mkdir()
    for bad, why in ((str(photos), "outside ComfyUI's folders"), ("../../" + photos.name, "climbs out"),
                     ("/etc", "outside ComfyUI's folders")):
        with pytest.raises(Exception, match=why):
            tn.gather_photos(None, bad)
    inside = os.path.join(comfy.home, "input", "paths_photos")
    os.makedirs(inside, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(os.path.join(inside, "a.png"))
    for name in ("paths_photos", inside):
        got = tn.gather_photos(None, name)
        assert len(got) == 1 and tuple(got[0][1].shape) == (8, 8, 3)
