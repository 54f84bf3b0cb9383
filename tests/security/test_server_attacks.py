"""Crafted checkpoints posted to every loader of a real ComfyUI server over HTTP (issue 11, item 1).

One server (``main.py --cpu``, the pack in custom_nodes/). For each loader node that reads torch files,
three attacks are placed in its folder and queued through ``/prompt``: an ``os.system`` REDUCE (zip), a
BUILD setting ``__defaults__`` on torch's own tensor-rebuild helper (the issue's corruption, zip), and
the ``os.system`` REDUCE in a legacy (pre-1.6) container. Each must fail with the refusal text naming
the file, and leave the server process unchanged: a known W+ code (.pt, read through torch's rebuild
helper) and the official-layout PersonaMagic mapper reload bit-identically after all attacks, no file
appears in the server's home or ComfyUI's folder, and the server keeps serving.
"""
import os
import shutil
import sys

import pytest
import torch

from harness.server import ComfyServer
from test_pickle_attacks import ATTACKS, _write_torch_legacy, _write_torch_zip

# loader -> (model folder under models/, file input, other inputs, how the file is named in the dropdown)
LOADERS = {
    "FP_LoadPersonaMagic": ("personamagic", "mapper_name", {}, "{}"),
    "FP_LoadAdaFace": ("adaface", "adaface_file", {"arc2face_encoder": "(none)", "layer_weights": "checkpoint"}, "{}"),
    "FP_LoadWPlus": ("wplus/codes", "code", {"path": ""}, "{}"),
    "FP_LoadFaceEmbeds": ("face_embeds", "embeds_file", {"path": ""}, "{}"),
    "FP_LoadIdentityEmbedding": ("crossinit", "embedding_file", {"clip": ["ckpt", 1], "trigger_word": "<ci>"},
                                 "crossinit/{}"),
    "LoadE4EEncoder": ("e4e", "encoder_name", {}, "{}"),
    "FP_LoadWPlusAdapter": ("wplus", "adapter_name", {}, "{}"),
    "FP_LoadPIDiff": ("pidiff", "pidiff_name", {}, "{}"),
}
SERVER_ATTACKS = {  # name -> (container writer, pickle attack from test_pickle_attacks, expected text)
    "os_system_zip": (_write_torch_zip, "os_system_reduce", "not on this loader's allowlist"),
    "build_rebuild_helper_zip": (_write_torch_zip, "build_on_allowlisted_function", "refused for safety"),
    "os_system_legacy": (_write_torch_legacy, "os_system_reduce", "not on this loader's allowlist"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfy_home, tiny_sd15, install_model):
    mapper_name = install_model("personamagic_mapper", "personamagic")
    home = tmp_path_factory.mktemp("attack_server_home")
    for sub in ("checkpoints", "personamagic"):
        shutil.copytree(comfy_home / "models" / sub, home / "models" / sub, symlinks=True, dirs_exist_ok=True)
    for folder, *_ in LOADERS.values():
        (home / "models" / folder).mkdir(parents=True, exist_ok=True)
    known = torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(3))
    torch.save(known, home / "models" / "wplus" / "codes" / "known_code.pt")
    with ComfyServer(home, python=sys.executable) as srv:
        srv.known_code, srv.mapper_name = known, mapper_name
        yield srv


def _snapshot(*roots):
    out = {}
    for root in roots:
        for d, dirs, names in os.walk(root):
            dirs[:] = [x for x in dirs if x != "__pycache__"]
            for n in names:
                p = os.path.join(d, n)
                if n != "server.log" and os.path.isfile(p):
                    out[p] = os.path.getsize(p)
    return out


def _reload_known(srv, tag):
    """Known W+ code and official mapper through their loaders, written back as safetensors (no pickle on
    the way out); returns the tensors."""
    from safetensors.torch import load_file

    # fresh copies under new names, so ComfyUI's output cache cannot answer instead of the loaders
    codes, pm = srv.home / "models" / "wplus" / "codes", srv.home / "models" / "personamagic"
    shutil.copyfile(codes / "known_code.pt", codes / f"known_code_{tag}.pt")
    shutil.copyfile(pm / srv.mapper_name, pm / f"known_mapper_{tag}.pt")
    prompt = {
        "code": {"class_type": "FP_LoadWPlus", "inputs": {"code": f"known_code_{tag}.pt", "path": ""}},
        "save_code": {"class_type": "FP_SaveWPlus", "inputs": {"wplus": ["code", 0], "filename": f"reload_{tag}",
                                                               "format": "safetensors", "overwrite": True}},
        "mapper": {"class_type": "FP_LoadPersonaMagic", "inputs": {"mapper_name": f"known_mapper_{tag}.pt"}},
        "save_mapper": {"class_type": "FP_SavePersonaMagicMapper", "inputs": {"mapper": ["mapper", 0],
                                                                              "filename": f"reload_{tag}", "overwrite": True}},
    }
    srv.run(prompt)
    code = load_file(codes / f"reload_{tag}.safetensors")["wplus"]
    mapper_sd = load_file(pm / f"reload_{tag}.safetensors")
    return code, mapper_sd


def test_attacks_over_http_refused_and_server_unchanged(server, tmp_path):
    from harness import comfy_host

    code_before, mapper_before = _reload_known(server, "before")
    assert torch.equal(code_before, server.known_code)
    roots = (str(server.home), str(comfy_host.comfy_dir()), str(tmp_path))
    files_before = _snapshot(*roots)
    results = []
    for node, (folder, field, others, shown) in sorted(LOADERS.items()):
        for attack, (write, pickle_name, expect) in sorted(SERVER_ATTACKS.items()):
            name = f"attack_{attack}.pt"
            evil = server.home / "models" / folder / name
            write(evil, ATTACKS[pickle_name][1]())
            prompt = {"load": {"class_type": node, "inputs": {field: shown.format(name), **others}},
                      "sink": {"class_type": "PreviewAny", "inputs": {"source": ["load", 0]}}}
            if node == "FP_LoadIdentityEmbedding":
                ckpt = server.input_types("CheckpointLoaderSimple")["required"]["ckpt_name"][0][0]
                prompt["ckpt"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}
            try:
                entry = server.wait(server.queue(prompt))
            finally:
                evil.unlink()
            errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
            msg = errors[0]["exception_message"] if errors else ""
            ok = (entry["status"]["status_str"] == "error" and name in msg and expect in msg
                  and "weights_only" not in msg and "will likely succeed" not in msg)
            results.append((node, attack, "refused" if ok else f"NOT REFUSED as expected: {msg[:200]}"))
    print("\nattack x loader over HTTP (/prompt on a real server):")
    for node, attack, outcome in results:
        print(f"  {node:26} {attack:26} {outcome}")
    assert all(r[2] == "refused" for r in results), [r for r in results if r[2] != "refused"]
    assert _snapshot(*roots) == files_before, "an attack left a file behind"
    assert not any(os.path.exists(os.path.join(root, "PWNED")) for root in roots)
    code_after, mapper_after = _reload_known(server, "after")
    assert torch.equal(code_after, code_before)
    assert set(mapper_after) == set(mapper_before) and all(torch.equal(mapper_after[k], mapper_before[k]) for k in mapper_before)
