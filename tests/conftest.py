"""Test session on real ComfyUI: ComfyUI is booted once in-process with the pack loaded
(``comfy`` fixture); tiny real-architecture models come from the pack's factory."""
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/harness importable

from harness import comfy_host  # noqa: E402

REPO = comfy_host.REPO
SHARED = Path(os.environ.get("FP_SHARED", REPO.parent / "shared")).resolve()
SHARED_DATA = SHARED / "data"


def pytest_addoption(parser):
    parser.addoption("--shuffle", metavar="SEED", type=int, default=None,
                     help="run the modules, and the tests within each, in a random order drawn from SEED (order-independence check)")


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle")
    if seed is not None:  # modules in a random order, and the tests of each module in a random order
        import random

        rng = random.Random(seed)
        by_module = {}
        for item in items:
            by_module.setdefault(item.nodeid.split("::")[0], []).append(item)
        groups = list(by_module.values())
        rng.shuffle(groups)
        for group in groups:
            rng.shuffle(group)
        items[:] = [item for group in groups for item in group]
    # browser tests last: Playwright's sync API keeps an asyncio loop running in this thread for the rest of
    # the session, and the in-process executor (asyncio.run) cannot run after it
    items.sort(key=lambda item: item.nodeid.startswith("web/"))


def pytest_report_header(config):
    seed = config.getoption("--shuffle")
    return f"test order shuffled with seed {seed}" if seed is not None else None


@pytest.fixture(scope="session")
def comfy_home(tmp_path_factory):
    return comfy_host.setup_home(tmp_path_factory.mktemp("comfy_home"))


@pytest.fixture(scope="session")
def comfy(comfy_home):
    """ComfyHost: ComfyUI booted in this process (CPU) with the pack loaded."""
    return comfy_host.boot(comfy_home)


@pytest.fixture(scope="session")
def pack(comfy):
    """The pack's package module (``pack.models_loader...``) as ComfyUI loaded it."""
    return comfy.pack


def _install_model(comfy_home, kind, folder):
    from fixtures import tiny

    from harness.provision import link

    src = tiny.ensure(kind)
    link(src, Path(comfy_home) / "models" / folder / src.name)
    return src.name


def _tiny_model_fixture(name, kind, folder):
    """A session fixture ``name``: the file name (in models/<folder>) of the tiny model ``kind``, installed there."""
    def fixture(comfy, comfy_home):
        return _install_model(comfy_home, kind, folder)

    fixture.__name__ = name
    fixture.__doc__ = f"File name (in models/{folder}) of the tiny {kind} model."
    return pytest.fixture(scope="session", name=name)(fixture)


tiny_sd15 = _tiny_model_fixture("tiny_sd15", "sd15", "checkpoints")
tiny_sd2 = _tiny_model_fixture("tiny_sd2", "sd2", "checkpoints")
tiny_sdxl = _tiny_model_fixture("tiny_sdxl", "sdxl", "checkpoints")
tiny_controlnet = _tiny_model_fixture("tiny_controlnet", "controlnet_sd15", "controlnet")


@pytest.fixture(scope="session")
def install_model(comfy, comfy_home):
    """install_model(kind, folder) -> file name: put a tiny model into ComfyUI's models/<folder>."""
    return lambda kind, folder: _install_model(comfy_home, kind, folder)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def input_image(comfy_home):
    """copy a file into ComfyUI's input/ folder; returns the name LoadImage takes."""

    def put(src):
        src = Path(src)
        dst = Path(comfy_home) / "input" / src.name
        shutil.copyfile(src, dst)
        return src.name

    return put


def _rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return -1


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_module():
    """The whole suite runs in one process (ComfyUI booted once): after each module drop what its fixtures
    held, unload ComfyUI's models and hand freed heap back to the OS, so memory does not pile up across
    modules (a 2-core, 24 GB CI machine). For the same reason fixtures that hold models are module-scoped
    (only ComfyUI itself, file names and the browser are session-wide)."""
    yield
    import gc

    gc.collect()
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.soft_empty_cache()
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def pytest_runtest_logfinish(nodeid, location):
    """FP_RSS_LOG=<file>: append each test's resident memory after it ran (to find what holds memory)."""
    log = os.environ.get("FP_RSS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{_rss_mb()} {nodeid}\n")
