"""FP_TrainPIDiff / FP_TrainWPlusAdapter refuse an init file that does not fit the chosen base model (an SD1.5 adapter
on an SDXL or SD2 base: other layers / another context width) or is not a W+ Adapter file at all, before any job
exists, with an error naming the file and what does not match; a fitting file passes. The base model's layers are
read from the checkpoint's tensor shapes: they equal what ComfyUI's loaded UNet has."""
import shutil

import pytest
import torch

# helpers and fixtures of the node tests (the e4e encoder, a folder of two face photos)
from test_train_nodes import FROM_UNET, _error, _inputs, _jobs, e4e_name, photo_dir  # noqa: F401


def _fit():
    from comfyui_face_personalization.models_loader.methods.wplus import fit

    return fit


@pytest.mark.parametrize("kind", ["sd15", "sd2", "sdxl"])
def test_checkpoint_layers_read_from_the_file_equal_the_loaded_unet(comfy, kind):
    import comfy.sd
    from fixtures import tiny

    from comfyui_face_personalization.models_loader.patch_engine import cross_attention_layers

    path = tiny.ensure(kind)
    mp = comfy.sd.load_checkpoint_guess_config(str(path), output_clip=False, output_vae=False)[0]
    want = [(l.inner_dim, l.context_dim) for l in cross_attention_layers(mp)]
    assert want and _fit().checkpoint_cross_attention(path) == want


def test_fitting_file_passes_and_mismatches_name_what_differs(comfy):
    from fixtures import tiny

    fit = _fit()
    adapter = tiny.ensure("wplus_adapter_sd15")
    w = fit.check_init_file(adapter, tiny.ensure("sd15"), "W+ Adapter")
    n = len(fit.checkpoint_cross_attention(tiny.ensure("sd15")))
    assert len(w.layers) == n and w.cross_dim == 768
    with pytest.raises(ValueError) as e:
        fit.check_init_file(adapter, tiny.ensure("sdxl"), "W+ Adapter")
    msg = str(e.value)
    assert adapter.name in msg and tiny.ensure("sdxl").name in msg
    assert f"it has {n} cross-attention layers" in msg and "768 wide" in msg and "2048" in msg and "SDXL" in msg
    with pytest.raises(ValueError) as e:  # same layers and widths, but an SD2 text context (1024)
        fit.check_init_file(adapter, tiny.ensure("sd2"), "PIDiff")
    msg = str(e.value)
    assert "PIDiff init file" in msg and "768 wide" in msg and "1024" in msg and "SD2.x" in msg
    assert "differ" not in msg and "the base model has" not in msg  # layers and widths fit: only the context is named
    with pytest.raises(ValueError) as e:  # a PIDiff safetensors is not a W+ Adapter file
        fit.check_init_file(tiny.ensure("pidiff_sd15"), tiny.ensure("sd15"), "W+ Adapter")
    assert tiny.ensure("pidiff_sd15").name in str(e.value) and "not a W+ Adapter checkpoint" in str(e.value)


@pytest.mark.parametrize("node", ["FP_TrainPIDiff", "FP_TrainWPlusAdapter"])
def test_node_refuses_an_init_file_for_another_base_before_a_job_exists(comfy, comfy_home, tiny_sd15, tiny_sdxl,
                                                                       tiny_sd2, install_model, e4e_name, photo_dir,
                                                                       node):
    from fixtures import tiny

    adapter = install_model("wplus_adapter_sd15", "wplus")
    other = comfy_home / "models" / "wplus" / "not_an_adapter_pidiff.safetensors"
    shutil.copyfile(tiny.ensure("pidiff_sd15"), other)
    before = _jobs(comfy)
    msg = _error(comfy, _inputs(node, tiny_sdxl, e4e_name, photo_dir, "fit_sdxl", init_from=adapter))
    assert "init file" in msg and adapter in msg and tiny_sdxl in msg and "layers" in msg and "SDXL" in msg, msg
    msg = _error(comfy, _inputs(node, tiny_sd2, e4e_name, photo_dir, "fit_sd2", init_from=adapter))
    assert adapter in msg and tiny_sd2 in msg and "768 wide" in msg and "1024" in msg, msg
    msg = _error(comfy, _inputs(node, tiny_sd15, e4e_name, photo_dir, "fit_kind", init_from=other.name))
    assert other.name in msg and "not a W+ Adapter checkpoint" in msg, msg
    assert _jobs(comfy) == before, "a refused init file must not leave a job behind"
    # the fitting case gets past the check: an export-only job is written with the file as its init
    import json
    import os

    comfy.run(_inputs(node, tiny_sd15, e4e_name, photo_dir, f"fit_ok_{node}", init_from=adapter,
                      mode="export job only"))
    new = [j for j in _jobs(comfy) if j not in before]
    assert len(new) == 1
    import folder_paths

    spec = json.load(open(os.path.join(folder_paths.get_user_directory(), "fp_training", "jobs", new[0], "config.json")))
    assert os.path.basename(spec["params"]["init_file"]) == adapter
