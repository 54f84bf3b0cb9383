"""Crafted checkpoints through the loader nodes in real ComfyUI graphs (issue 11, item 1).

Each attack is written opcode by opcode here and placed in both torch containers: a zip file's
``data.pkl`` and a legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) file's data pickle, which
goes through the same scan, allowlist and unpickler. After every attack the process must be unchanged: a known official-layout mapper loads bit-identically before and
after, torch's rebuild helpers / dtypes / storages keep their attributes, and no file appears anywhere
in the ComfyUI home or the test folder (beyond the attack file itself).
"""
import os
import struct
import zipfile

import pytest
import torch

from harness.comfy_host import PromptFailed

ATTACKS = {}  # name -> (loader node, pickle bytes builder, expected message fragment)


def _s(text):  # BINUNICODE
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _g(module, name):  # GLOBAL
    return f"c{module}\n{name}\n".encode()


P2, STOP, DICT, TUPLE0, MARK = b"\x80\x02", b".", b"}", b")", b"("


def _state(**kv):  # a dict built with SETITEM
    out = DICT
    for k, v in kv.items():
        out += _s(k) + v + b"s"
    return out


def attack(name, node, expect):
    def deco(fn):
        ATTACKS[name] = (node, fn, expect)
        return fn
    return deco


@attack("build_on_allowlisted_function", "FP_LoadPersonaMagic", "refused for safety")
def _build_fn():  # the finding: __defaults__ of torch's own rebuild helper
    return P2 + _g("torch._utils", "_rebuild_tensor_v2") + _state(__defaults__=b"K\x01\x85") + b"b" + STOP


@attack("build_on_function_via_memo", "FP_LoadPersonaMagic", "refused for safety")
def _build_memo():
    return (P2 + _g("torch._utils", "_rebuild_parameter") + b"q\x00" + b"h\x00"
            + _state(__defaults__=TUPLE0) + b"b" + STOP)


@attack("build_on_class_ordereddict", "FP_LoadPersonaMagic", "refused for safety")
def _build_cls():
    return P2 + _g("collections", "OrderedDict") + _state(__init__=_g("collections", "OrderedDict")) + b"b" + STOP


@attack("build_on_allowlisted_standin_class", "FP_LoadPersonaMagic", "refused for safety")
def _build_standin_cls():
    return P2 + _g("models.positional_encoding", "TimePositionalEncoding") + _state(class_path=_s("x")) + b"b" + STOP


@attack("build_on_module_level_dtype", "FP_LoadPersonaMagic", "refused for safety")
def _build_dtype():
    return P2 + _g("torch", "float32") + _state(is_floating_point=b"\x89") + b"b" + STOP


@attack("build_on_module_level_storage_type", "FP_LoadPersonaMagic", "refused for safety")
def _build_storage():
    return P2 + _g("torch", "FloatStorage") + _state(_dtype=_g("torch", "int64")) + b"b" + STOP


@attack("os_system_reduce", "FP_LoadPersonaMagic", "not on this loader's allowlist")
def _os_system():
    return P2 + _g("os", "system") + _s("touch PWNED") + b"\x85R" + STOP


@attack("builtins_getattr_chain", "FP_LoadAdaFace", "not on this loader's allowlist")
def _getattr_chain():  # getattr(torch._utils, "_rebuild_tensor_v2") would hand out the real function
    return (P2 + _g("builtins", "getattr") + _g("torch", "_utils") + _s("_rebuild_tensor_v2") + b"\x86R" + STOP)


@attack("reduce_chain_rebuild_from_type", "FP_LoadPersonaMagic", "could not be read")
def _rebuild_from_type():  # torch's subclass rebuild asked to call OrderedDict and retag it as a class
    args = (MARK + _g("collections", "OrderedDict") + _g("models.positional_encoding", "TimePositionalEncoding")
            + TUPLE0 + _state(__class__=_g("collections", "OrderedDict")) + b"t")
    return P2 + _g("torch._tensor", "_rebuild_from_type_v2") + args + b"R" + STOP


@attack("reduce_standin_then_class_swap_state", "FP_LoadPersonaMagic", "is not a PersonaMagic mapper checkpoint")
def _standin_state():  # allowed: the stand-in only records the state as data; the loader then says what is wrong
    obj = (_g("models.positional_encoding", "TimePositionalEncoding") + MARK + _g("torch._utils", "_rebuild_tensor_v2")
           + b"t" + b"R" + _state(__class__=_g("collections", "OrderedDict"), __setstate__=_g("torch._utils", "_rebuild_parameter"))
           + b"b")
    return P2 + DICT + _s("encoder") + obj + b"s" + STOP


@attack("deep_nesting_bomb", "FP_LoadPersonaMagic", "is not a PersonaMagic mapper checkpoint")
def _deep():
    return P2 + MARK * 200_000 + b"t" * 200_000 + STOP


def _generator(modules):
    return (_g("adaface.subj_basis_generator", "SubjBasisGenerator") + TUPLE0 + b"\x81"
            + _state(_modules=modules) + b"b")


def _adaface_ckpt(gen):
    return P2 + DICT + _s("string_to_subj_basis_generator_dict") + DICT + _s("z") + gen + b"s" + b"s" + STOP


@attack("module_tree_depth_bomb", "FP_LoadAdaFace", "deeper than")
def _tree_deep():
    gen = _generator(DICT)
    for _ in range(200):
        gen = _generator(DICT + _s("m") + gen + b"s")
    return _adaface_ckpt(gen)


@attack("module_tree_cycle", "FP_LoadAdaFace", "loops back")
def _tree_cycle():  # the generator's own _modules refers back to itself (memo)
    gen = (_g("adaface.subj_basis_generator", "SubjBasisGenerator") + TUPLE0 + b"\x81" + b"q\x01"
           + _state(_modules=DICT + _s("self") + b"h\x01" + b"s") + b"b")
    return _adaface_ckpt(gen)


@attack("module_tree_exponential_sharing", "FP_LoadAdaFace", "more than")
def _tree_dag():
    body, memo = _generator(DICT) + b"q\x02", 2
    for _ in range(40):
        body = _generator(DICT + _s("a") + body + b"s" + _s("b") + b"h" + bytes([memo]) + b"s") + b"q" + bytes([memo + 1])
        memo += 1
    return _adaface_ckpt(body)


@attack("storage_size_bomb", "FP_LoadPersonaMagic", ("could not be read", "malformed storage reference"))
def _storage_bomb():  # a storage record claiming 10^12 floats backed by 16 bytes
    pid = MARK + _s("storage") + _g("torch", "FloatStorage") + _s("0") + _s("cpu") + b"\x8a\x05\x00\x10\xa5\xd4\xe8" + b"t"
    tensor = (_g("torch._utils", "_rebuild_tensor_v2") + MARK + pid + b"Q" + b"K\x00" + b"\x8a\x05\x00\x10\xa5\xd4\xe8"
              + b"\x85" + b"K\x01" + b"\x85" + b"\x89" + _g("collections", "OrderedDict") + TUPLE0 + b"R" + b"t" + b"R")
    return P2 + DICT + _s("state_dict") + DICT + _s("w") + tensor + b"s" + b"s" + STOP


def _write_torch_zip(path, pkl, compress=False, extra=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data/0", b"\x00" * 16)
        for name, data in (extra or {}).items():
            z.writestr(name, data)


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER, PROTOCOL_VERSION 1001
_SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _write_torch_legacy(path, pkl, sys_info=None):
    """The legacy layout: magic, protocol and system-info pickles, the data pickle, the storage-key list."""
    import pickle

    with open(path, "wb") as f:
        f.write(pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2))
        f.write(sys_info if sys_info is not None else pickle.dumps(_SYS_INFO, protocol=2))
        f.write(pkl + pickle.dumps([], protocol=2))


WRITERS = {"zip": _write_torch_zip, "legacy": _write_torch_legacy}


def _snapshot(*roots):
    out = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                out[p] = os.path.getsize(p) if os.path.isfile(p) else -1
    return out


def _process_fingerprint():
    import collections

    fns = [torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, torch._tensor._rebuild_from_type_v2]
    return ([(f.__defaults__, f.__kwdefaults__, f.__code__) for f in fns],
            dict(vars(collections.OrderedDict)), torch.float32.is_floating_point, torch.FloatStorage.dtype)


@pytest.fixture(scope="module")
def known(comfy, comfy_home, install_model):
    return known_loader(comfy, comfy_home, install_model)


def known_loader(comfy, comfy_home, install_model):
    """Installs the tiny official mapper and the AdaFace files; returns a loader of the known mapper."""
    for sub in ("personamagic", "adaface"):
        (comfy_home / "models" / sub).mkdir(parents=True, exist_ok=True)
    name = install_model("personamagic_mapper", "personamagic")
    install_model("adaface_arc2face", "adaface")

    def load():
        cls = comfy.node_classes["FP_LoadPersonaMagic"]
        sd = cls().load(name)[0].mapper.state_dict()
        return {k: v.clone() for k, v in sd.items()}
    return load


def _graph(node, file_name):
    if node == "FP_LoadPersonaMagic":
        inputs = {"mapper_name": file_name}
    else:
        inputs = {"adaface_file": file_name, "arc2face_encoder": "(none)", "layer_weights": "checkpoint"}
    return {"load": {"class_type": node, "inputs": inputs},
            "sink": {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}}


def attack_outcome(comfy, comfy_home, known, name, container, scratch):
    """Runs one attack through its loader node in a graph; returns (problems, refusal message)."""
    node, build, expect = ATTACKS[name]
    folder = comfy_home / "models" / ("personamagic" if node == "FP_LoadPersonaMagic" else "adaface")
    evil = folder / f"attack_{name}_{container}.pt"
    WRITERS[container](evil, build())
    problems, msg = [], ""
    try:
        before_sd, before_fp = known(), _process_fingerprint()
        files_before = _snapshot(comfy_home, scratch)
        try:
            comfy.run(_graph(node, evil.name))
            problems.append("the prompt succeeded")
        except PromptFailed as err:
            msg = str(err)
        if not any(e in msg for e in ((expect,) if isinstance(expect, str) else expect)):
            problems.append(f"expected {expect!r}")
        if "weights_only" in msg or "will likely succeed" in msg:
            problems.append("torch's advice to disable weights_only")
        if _process_fingerprint() != before_fp:
            problems.append("torch/collections objects changed")
        after = known()
        if set(after) != set(before_sd) or not all(torch.equal(after[k], before_sd[k]) for k in after):
            problems.append("the known mapper reloads differently")
        if _snapshot(comfy_home, scratch) != files_before:
            problems.append("a file was created or changed")
        if (scratch / "PWNED").exists() or (comfy_home / "PWNED").exists():
            problems.append("code ran")
    finally:
        evil.unlink()
    return problems, msg


@pytest.mark.parametrize("container", sorted(WRITERS))
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_refused_and_process_unchanged(name, container, comfy, comfy_home, known, tmp_path):
    problems, msg = attack_outcome(comfy, comfy_home, known, name, container, tmp_path)
    assert not problems, f"{problems}: {msg}"


def test_zip_bomb_refused(comfy, known, comfy_home):
    from comfyui_face_personalization.models_loader import safe_load

    evil = comfy_home / "models" / "personamagic" / "attack_zipbomb.pt"
    _write_torch_zip(evil, P2 + _s("0" * (64 << 20)) + STOP, compress=True)
    try:
        assert os.path.getsize(evil) < (1 << 20)
        with pytest.raises(PromptFailed, match="zip bomb"):
            comfy.run(_graph("FP_LoadPersonaMagic", evil.name))
        with pytest.raises(safe_load.UnsafeCheckpointError, match="zip bomb"):
            safe_load.load_file(evil)
    finally:
        evil.unlink()


def _tar_bytes():  # torch's oldest (tar) container: refused as unknown content
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        t.addfile(info, io.BytesIO(b"K\x01."))
    return buf.getvalue()


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", b"PK\x03\x04garbage", b"\x80\x02K\x01.", _tar_bytes(),
                                     b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"],
                         ids=["text", "bad_zip", "raw_pickle", "tar", "legacy_truncated"])
def test_non_torch_files_clear_message(comfy, known, comfy_home, content):
    evil = comfy_home / "models" / "personamagic" / "not_torch.pt"
    evil.write_bytes(content)
    try:
        with pytest.raises(PromptFailed) as err:
            comfy.run(_graph("FP_LoadPersonaMagic", evil.name))
        msg = str(err.value)
        assert "not_torch.pt" in msg and ("torch checkpoint" in msg or "refused for safety" in msg), msg
        assert "IndexError" not in msg and "KeyError" not in msg
    finally:
        evil.unlink()


def test_official_layouts_still_load_exactly(comfy, known, install_model):
    """The stand-ins load the official pickled layouts to the same tensors as the pack's safetensors."""
    from comfyui_face_personalization.models_loader.methods.adaface import load as ada_load
    from fixtures import tiny

    inv_pt = ada_load.load_inverter_state(str(tiny.ensure("adaface_pt")))
    inv_st = ada_load.load_inverter_state(str(tiny.ensure("adaface_safetensors")))
    weights = [k for k in inv_pt[0] if k.endswith((".weight", ".bias"))]
    assert len(weights) > 20 and set(weights) <= set(inv_st[0])
    for k in weights:
        assert torch.equal(inv_pt[0][k].float(), inv_st[0][k].float()), k
    from comfyui_face_personalization.models_loader.methods.personamagic.checkpoint import load_mapper

    a = load_mapper(str(tiny.ensure("personamagic_mapper"))).mapper.state_dict()
    b = load_mapper(str(tiny.ensure("personamagic_mapper_st"))).mapper.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_legacy_header_pickle_with_a_global_is_refused(comfy, comfy_home, known, tmp_path):
    """A global hidden in a legacy header pickle (system info) is found by the scan and refused before any
    of the file is unpickled."""
    evil = comfy_home / "models" / "personamagic" / "attack_legacy_header.pt"
    _write_torch_legacy(evil, P2 + DICT + STOP, sys_info=P2 + _g("os", "system") + _s("touch PWNED") + b"\x85R" + STOP)
    try:
        before = known()
        with pytest.raises(PromptFailed, match="'os.system', which is not on this loader's allowlist"):
            comfy.run(_graph("FP_LoadPersonaMagic", evil.name))
        after = known()
        assert all(torch.equal(after[k], before[k]) for k in before)
        assert not (tmp_path / "PWNED").exists() and not (comfy_home / "PWNED").exists()
    finally:
        evil.unlink()


def test_legacy_files_tensors_load_module_pickles_refused(comfy, comfy_home, known, monkeypatch):
    """Legacy (pre-1.6) files: tensor-only ones load bit for bit (through load_file and through the Load W+ Code
    node); one that pickles a whole module (the official PersonaMagic layout saved by the legacy serializer records
    TimePositionalEncoding as a 'module' reference) is refused by torch's weights-only rule, with a message saying
    what would load, through the loader node in a graph, and the process is unchanged."""
    import functools

    from comfyui_face_personalization.models_loader import safe_load
    from fixtures.tiny import personamagic as pm

    folder = comfy_home / "models" / "personamagic"
    codes = comfy_home / "models" / "wplus" / "codes"
    codes.mkdir(parents=True, exist_ok=True)
    legacy, plain, code_file = folder / "official_legacy.pt", folder / "tensors_legacy.pt", codes / "legacy_code.pt"
    monkeypatch.setattr(torch, "save", functools.partial(torch.save, _use_new_zipfile_serialization=False))
    pm.save_official_layout(pm.build_mapper(), legacy, pm.official_cfg(target_norm=0.5),
                            pm.seeded_generator("personamagic_encoder"))
    monkeypatch.undo()
    try:
        assert legacy.read_bytes()[:2] != b"PK"
        before = known()
        with pytest.raises(PromptFailed, match="pickles a module class by reference") as err:
            comfy.run(_graph("FP_LoadPersonaMagic", legacy.name))
        assert "official_legacy.pt" in str(err.value) and "weights_only" not in str(err.value)
        after = known()
        assert all(torch.equal(after[k], before[k]) for k in before)

        tensors = {"w": torch.randn(3, 4, dtype=torch.float64), "i": torch.arange(7), "h": torch.randn(2).half(),
                   "view": torch.randn(4, 4)[1:3]}
        torch.save(tensors, plain, _use_new_zipfile_serialization=False)
        loaded = safe_load.load_file(plain)
        assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())
        code = torch.randn(1, 18, 512)
        torch.save(code, code_file, _use_new_zipfile_serialization=False)
        got = comfy.node_classes["FP_LoadWPlus"]().load(code_file.name)[0]
        assert torch.equal(got, code)
    finally:
        for p in (legacy, plain, code_file):
            if p.exists():
                p.unlink()


def _legacy_tensor(numel, key="0"):
    """A legacy storage reference ('storage', FloatStorage, key, 'cpu', numel, None) and its rebuild."""
    n = b"J" + struct.pack("<i", numel)
    pid = MARK + _s("storage") + _g("torch", "FloatStorage") + _s(key) + _s("cpu") + n + b"N" + b"t"
    return (_g("torch._utils", "_rebuild_tensor_v2") + MARK + pid + b"Q" + b"K\x00" + n + b"\x85" + b"K\x01\x85"
            + b"\x89" + _g("collections", "OrderedDict") + TUPLE0 + b"R" + b"t" + b"R")


@pytest.mark.parametrize("case", ["storage_without_data", "storage_larger_than_file"])
def test_legacy_storage_records_checked(comfy, comfy_home, known, tmp_path, case):
    """Legacy only: torch allocates each declared storage and fills the ones the key list names. A storage
    left out of that list would come back as uninitialised process memory (plain torch.load returns it);
    a declared size beyond the file would be allocated. Both are refused before torch.load runs."""
    import pickle

    from comfyui_face_personalization.models_loader import safe_load

    numel = 64 if case == "storage_without_data" else 50_000_000
    evil = comfy_home / "models" / "personamagic" / f"attack_legacy_{case}.pt"
    body = P2 + DICT + _s("state_dict") + DICT + _s("w") + _legacy_tensor(numel) + b"s" + b"s" + STOP
    with open(evil, "wb") as f:
        f.write(pickle.dumps(LEGACY_MAGIC, protocol=2) + pickle.dumps(1001, protocol=2) + pickle.dumps(_SYS_INFO, protocol=2))
        f.write(body + pickle.dumps([] if case == "storage_without_data" else ["0"], protocol=2))
    try:
        if case == "storage_without_data":
            leaked = torch.load(evil, weights_only=True)["state_dict"]["w"]
            assert leaked.numel() == numel  # what torch alone hands out: memory nobody initialised
        before = known()
        want = "without data" if case == "storage_without_data" else "claim 200000000 bytes"
        with pytest.raises(PromptFailed, match=want):
            comfy.run(_graph("FP_LoadPersonaMagic", evil.name))
        with pytest.raises(safe_load.UnsafeCheckpointError, match=want):
            safe_load.load_file(evil)
        after = known()
        assert all(torch.equal(after[k], before[k]) for k in before)
    finally:
        evil.unlink()
