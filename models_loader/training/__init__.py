"""Training: one implementation for the ComfyUI worker process and ``accelerate launch``.

Pure PyTorch + ComfyUI model code only: nothing here imports ``server`` / ``PromptServer``
(the ComfyUI side lives in ``training_nodes/``). See :mod:`.protocol` for the method contract.
"""
