"""Training worker entrypoint (ComfyUI's job engine and `accelerate launch` both run this file):

    python train.py --job <job folder>
    accelerate launch --num_processes 2 --cpu train.py --job <job folder>

Loads the pack's training package without importing its ComfyUI node modules, then runs
models_loader.training.run.main.
"""
import importlib
import os
import sys
import types

PACK_ALIAS = "fp_training_pack"


def _pack():
    here = os.path.dirname(os.path.abspath(__file__))
    if PACK_ALIAS not in sys.modules:
        pkg = types.ModuleType(PACK_ALIAS)  # the pack folder as a package, without running its __init__ (nodes)
        pkg.__path__ = [here]
        sys.modules[PACK_ALIAS] = pkg
    return importlib.import_module(PACK_ALIAS + ".models_loader.training.run")


if __name__ == "__main__":
    sys.exit(_pack().main())
