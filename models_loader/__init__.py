"""Method implementations, checkpoint loaders and the shared engines (attention patches,
face pipeline). Nodes in ``nodes/`` are thin wrappers over this package."""
