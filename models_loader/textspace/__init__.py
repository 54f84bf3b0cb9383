"""The pack's one text-space module (CrossInit, AdaFace, PersonaMagic and their training import it).

- :mod:`.trigger`: trigger word -> inline tensor tokens on a ComfyUI ``CLIP`` (``apply_trigger``), the
  trigger regex / sub-tokenizer helpers, and :func:`.trigger.trigger_slots` (where a trigger's vectors
  go in the token sequence: no sentinel values).
- :mod:`.identity`: ``IDENTITY_EMBEDDING`` values and files, :func:`.identity.apply_identity`.
- :mod:`.encoder`: differentiable out-of-place text-encoder forward over ComfyUI's CLIP weights,
  :func:`.encoder.insert_rows` (ids + trainable vectors -> input embeddings).
"""
from .encoder import EncoderOutput, TextEncoder, insert_rows  # noqa: F401
from .identity import (apply_identity, load_identity_file, make_identity, save_identity_file,  # noqa: F401
                       vectors_from_state)
from .trigger import (TokenEmbeddingError, apply_trigger, check_prompt, check_trigger, encoder_specs,  # noqa: F401
                      missing_trigger_message, prompt_has_trigger, replace_trigger, resolve_vectors,
                      sub_tokenizers, trigger_regex, triggers_of)
