"""What the text-space nodes share (Cross Initialization, identity files, AdaFace): a CLIP and a trigger word
in, the CLIP with the trigger mapped to identity tokens (and that IDENTITY_EMBEDDING) out."""
from ..models_loader.methods.registry import method

IDENTITY = "IDENTITY_EMBEDDING"
TRIGGER_TIP = ("Word to type in your prompts (e.g. 'a photo of <face> person'); it is replaced by the identity "
               "vectors as inline tokens. One word, no spaces; matched case-insensitively as a whole word.")


class TriggerNode:
    """Base of the nodes that return (patched CLIP, IDENTITY_EMBEDDING) from ``execute``."""
    RETURN_TYPES = ("CLIP", IDENTITY)
    RETURN_NAMES = ("clip", "identity_embedding")
    FUNCTION = "execute"


def trigger_inputs(clip_tip, between=None, default="<face>", tip=TRIGGER_TIP):
    """The required inputs ``clip``, then ``between`` (in its order), then ``trigger_word``."""
    return {
        "clip": ("CLIP", {"tooltip": clip_tip}),
        **(between or {}),
        "trigger_word": ("STRING", {"default": default, "tooltip": tip}),
    }


def build_tokens(name, clip, asset, trigger_word, *options):
    """(patched CLIP, IDENTITY_EMBEDDING) of the text-token method ``name`` (registry ``build``; the CLIP is cloned)."""
    patched = method(name).build(None, clip, asset, trigger_word, *options)
    return patched.clip, patched.identity
