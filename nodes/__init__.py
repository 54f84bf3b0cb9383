"""Node registry: every ``nodes/<feature>.py`` module (not starting with ``_``) exports
``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``; this collects them.

Every registered class's ``FUNCTION`` is wrapped with the boundary checks of ``_validate.py``
(finite, in-range FLOAT widgets; finite, non-empty tensors of the right shape; finite tensor outputs),
and placed in the Add Node menu by task with search aliases (``_findability.py``).

Node IDs are public API (saved workflows refer to them): a changed contract gets a new
``_v2`` ID and the old class moves to ``deprecated.py``.
"""
import importlib
import logging
import pkgutil

from ._findability import place
from ._validate import guard

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
FAILED_MODULES = {}  # module name -> error text; the test suite asserts this stays empty

log = logging.getLogger(__name__)


def _register(module):
    for node_id, cls in getattr(module, "NODE_CLASS_MAPPINGS", {}).items():
        if node_id in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"duplicate node id {node_id!r} in {module.__name__}")
        NODE_CLASS_MAPPINGS[node_id] = cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    for node_id in getattr(module, "NODE_CLASS_MAPPINGS", {}):
        place(node_id, NODE_CLASS_MAPPINGS[node_id])  # menu category by task, search aliases (_findability.py)
        guard(NODE_CLASS_MAPPINGS[node_id], NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id))


def _discover():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            _register(importlib.import_module(f".{info.name}", __name__))
        except Exception as exc:  # one broken feature must not hide the others
            FAILED_MODULES[info.name] = repr(exc)
            log.exception("face-personalization: node module %s failed to import", info.name)


_discover()
