"""Boot ComfyUI in this process with the pack loaded, and run API-format prompts through
ComfyUI's own validator and executor (the same code path as the server's prompt worker)."""
import asyncio
import importlib.abc
import importlib.util
import logging
import os
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_MODULE = "comfyui_face_personalization"  # name of the pack's folder inside custom_nodes/

_booted = None


def comfy_dir() -> Path:
    """ComfyUI source: $FP_COMFY (set by .ci/bootstrap.sh) or $COMFYUI_PATH."""
    path = os.environ.get("FP_COMFY") or os.environ.get("COMFYUI_PATH")
    if not path:
        raise RuntimeError("set FP_COMFY or COMFYUI_PATH to a ComfyUI checkout (run .ci/bootstrap.sh)")
    return Path(path).resolve()


def setup_home(home: Path) -> Path:
    """A ComfyUI base directory (``--base-directory``) with only this pack in custom_nodes/.

    The ComfyUI source stays untouched and shared; each test session / demo gets its own home.
    """
    home = Path(home)
    for sub in ("custom_nodes", "models/checkpoints", "models/controlnet", "models/embeddings",
                "models/insightface/models", "input", "output", "temp", "user"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    link = home / "custom_nodes" / PACK_MODULE
    if link.is_symlink() or link.exists():
        if link.resolve() != REPO:
            link.unlink()
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return home


class _StubServer:
    """What PromptExecutor needs of PromptServer when there is no server."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class ComfyHost:
    """ComfyUI booted in-process. ``run(prompt)`` returns the history outputs dict."""

    def __init__(self, home: Path):
        self.home = Path(home)
        import execution
        import nodes

        self.nodes = nodes
        self.execution = execution
        self.server = _StubServer()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})

    @property
    def node_classes(self):
        return self.nodes.NODE_CLASS_MAPPINGS

    def input_types(self, class_type):
        return self.nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()

    def validate(self, prompt):
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt, expect_error=False):
        """Validate and execute. Raises PromptFailed with ComfyUI's own error text on failure."""
        valid, err, outputs, node_errors = self.validate(prompt)
        if not valid:
            if expect_error:
                return {"validation_error": err, "node_errors": node_errors}
            raise PromptFailed(f"prompt invalid: {err} {node_errors}")
        self.server.messages.clear()
        pid = str(uuid.uuid4())
        self.executor.execute(prompt, pid, {}, outputs)
        if not self.executor.success:
            errors = [d for ev, d in self.executor.status_messages if ev == "execution_error"]
            if expect_error:
                return {"execution_error": errors[0] if errors else self.executor.status_messages}
            msg = errors[0]["exception_message"] if errors else str(self.executor.status_messages)
            raise PromptFailed(msg, errors)
        if expect_error:
            raise PromptFailed("expected the prompt to fail, but it succeeded")
        return self.executor.history_result["outputs"]

    def output_files(self, outputs, key="images"):
        """Absolute paths of files a prompt's output nodes wrote (SaveImage & co)."""
        import folder_paths

        files = []
        for node_out in outputs.values():
            for item in node_out.get(key, []):
                base = folder_paths.get_directory_by_type(item.get("type", "output"))
                files.append(Path(base) / item.get("subfolder", "") / item["filename"])
        return files


class PromptFailed(RuntimeError):
    def __init__(self, msg, details=None):
        super().__init__(msg)
        self.details = details


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import comfyui_face_personalization.x`` return the very module objects ComfyUI
    loaded (under its path-based name), so tests never get a second copy of a pack module."""

    def __init__(self, alias, real):
        self.alias, self.real = alias, real

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.alias or fullname.startswith(self.alias + "."):
            importlib.import_module(self.real + fullname[len(self.alias):])
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return sys.modules[self.real + spec.name[len(self.alias):]]

    def exec_module(self, module):
        pass


def _alias_package(alias, real):
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder(alias, real))


def boot(home: Path) -> ComfyHost:
    """Import ComfyUI (CPU) from comfy_dir() with base directory ``home`` and load the pack.

    Idempotent within a process. Fails loudly if the pack (or any of its node modules) fails
    to import.
    """
    global _booted
    if _booted is not None:
        return _booted
    root = comfy_dir()
    setup_home(home)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    # cli_args parses no argv unless asked; set the flags before folder_paths/model_management load.
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(home)
    logging.getLogger().setLevel(logging.WARNING)
    import folder_paths  # noqa: F401  (applies base_directory)
    import utils.extra_config  # noqa: F401  as main.py: before nodes.py puts comfy/ first on sys.path
    import nodes

    # core comfy_extras nodes (custom sampling, model merging, ...) as the server would have them
    asyncio.run(nodes.init_public_apis())
    asyncio.run(nodes.init_builtin_extra_nodes())
    ok = asyncio.run(nodes.load_custom_node(str(home / "custom_nodes" / PACK_MODULE)))
    if not ok:
        raise RuntimeError("the face-personalization pack failed to import into ComfyUI (see log above)")
    real_name = str(home / "custom_nodes" / PACK_MODULE).replace(".", "_x_")  # load_custom_node's name
    _alias_package(PACK_MODULE, real_name)
    pack = sys.modules[real_name]
    failed = sys.modules[real_name + ".nodes"].FAILED_MODULES
    if failed:
        raise RuntimeError(f"pack node modules failed to import: {failed}")
    _booted = ComfyHost(home)
    _booted.pack = pack
    return _booted
