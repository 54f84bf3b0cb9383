"""PersonaMagic area fixtures: tiny mappers (official pickled layout + safetensors)."""
import pytest


@pytest.fixture(scope="module")
def pm_official_path(comfy):
    from fixtures import tiny

    return str(tiny.ensure("personamagic_mapper"))


@pytest.fixture(scope="module")
def pm_st_path(comfy):
    from fixtures import tiny

    return str(tiny.ensure("personamagic_mapper_st"))


@pytest.fixture(scope="module")
def pm_bundle(pm_official_path):
    from comfyui_face_personalization.models_loader.methods.personamagic.checkpoint import load_mapper

    return load_mapper(pm_official_path)


@pytest.fixture(scope="module")
def sd15_loaded(comfy):
    """(MODEL, CLIP) of the tiny SD1.5 checkpoint, loaded once."""
    import comfy.sd
    from fixtures import tiny

    out = comfy.sd.load_checkpoint_guess_config(str(tiny.ensure("sd15")), output_vae=False, output_clipvision=False)
    return out[0], out[1]


@pytest.fixture(scope="module")
def pm_install(comfy_home, install_model):
    """pm_install(kind) -> file name in models/personamagic (the folder is created if missing)."""
    (comfy_home / "models" / "personamagic").mkdir(parents=True, exist_ok=True)
    return lambda kind: install_model(kind, "personamagic")
