"""Method name -> trainer module (relative to the pack's ``models_loader`` package).

Each module defines ``RESULT_TYPE``, ``build_trainer(spec, base, job_dir)`` and ``load_result(outputs)``
(see :mod:`.protocol`). Imported lazily: only the job's own method is imported by a worker.
"""
import importlib

METHODS = {
    "crossinit": "..methods.crossinit.train",
    "personamagic": "..methods.personamagic.train",
    "pidiff": "..methods.pidiff.train",
    "wplus": "..methods.wplus.train",
}


def method_module(method):
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; known: {sorted(METHODS)}")
    return importlib.import_module(METHODS[method], __package__)
