"""One sub-package per method: checkpoint detection/loading, modules, and patch callbacks."""
