"""Inline tensor tokens for ComfyUI's CLIP: a trigger word in the prompt becomes N vectors.

ComfyUI's ``sd1_clip.SDTokenizer`` already turns ``embedding:name`` into tensor tokens, and
``SDClipModel.process_tokens`` inserts tensor tokens into the input-embedding sequence (no vocabulary
change). :func:`apply_trigger` clones a ``CLIP`` and wraps its tokenizer so that every occurrence of a
trigger word is rewritten to an internal ``embedding:`` reference that resolves to the given vectors.
Plain ``CLIPTextEncode`` (and every node that calls ``clip.tokenize``) then works with the trigger word,
weights like ``(trigger:1.2)`` included.

Per-encoder vectors: a model may have several text encoders (SDXL: ``clip_l`` 768 + ``clip_g`` 1280),
each SD tokenizer inside ``clip.tokenizer`` has an ``embedding_key`` and ``embedding_size``. Vectors are
given as ``{embedding_key: tensor[N, D]}`` or one tensor ``[N, D]`` (used for every encoder whose width is
D). Every encoder must get vectors of its own width, else :class:`TokenEmbeddingError`.

Public API (CrossInit, AdaFace and PersonaMagic import it through :mod:`..textspace`):

- :func:`apply_trigger(clip, trigger, vectors) -> CLIP`
- :func:`check_trigger`, :func:`trigger_regex`, :func:`replace_trigger`, :func:`sub_tokenizers`
- :func:`encoder_specs(clip) -> [(embedding_key, width)]`, :func:`resolve_vectors`
- :func:`prompt_has_trigger(clip, text)`, :func:`triggers_of(clip)`, :func:`check_prompt`
- :class:`TokenEmbeddingError`
"""
import copy
import logging
import re

import torch

log = logging.getLogger(__name__)

_INTERNAL_PREFIX = "__fp_tok"


class TokenEmbeddingError(ValueError):
    """The vectors do not fit this CLIP (wrong width, missing encoder, bad trigger word)."""


def sub_tokenizers(tokenizer):
    """(attribute name, SDTokenizer) pairs of a ComfyUI tokenizer object."""
    from comfy import sd1_clip

    if isinstance(tokenizer, TriggerTokenizer):
        tokenizer = tokenizer.base
    out = []
    for name, value in vars(tokenizer).items():
        if isinstance(value, sd1_clip.SDTokenizer):
            out.append((name, value))
    return out


def encoder_specs(clip):
    """``[(embedding_key, width), ...]`` of the CLIP's text encoders (e.g. ``[("clip_l", 768)]``)."""
    return [(tok.embedding_key, int(tok.embedding_size)) for _, tok in sub_tokenizers(clip.tokenizer)]


def _as_vectors(vectors):
    if isinstance(vectors, torch.Tensor):
        return vectors
    if isinstance(vectors, dict):
        return {k: v for k, v in vectors.items()}
    raise TokenEmbeddingError(f"vectors must be a tensor [N, D] or a dict {{encoder key: tensor}}, got {type(vectors).__name__}")


def resolve_vectors(clip, vectors, what="embedding"):
    """Map ``vectors`` onto this CLIP's encoders: ``{embedding_key: float32 tensor [N, D]}``.

    Raises :class:`TokenEmbeddingError` with what was expected when widths do not match."""
    specs = encoder_specs(clip)
    if not specs:
        raise TokenEmbeddingError("this CLIP has no CLIP-style (SD1/SD2/SDXL) tokenizer; inline identity tokens are not supported for it")
    vectors = _as_vectors(vectors)
    out = {}
    for key, width in specs:
        if isinstance(vectors, dict):
            t = vectors.get(key)
            if t is None:  # e.g. an SD2 file keyed clip_l? accept any single entry of the right width
                candidates = [v for v in vectors.values() if isinstance(v, torch.Tensor) and v.shape[-1] == width]
                t = candidates[0] if len(candidates) == 1 else None
        else:
            t = vectors if vectors.shape[-1] == width else None
        if t is None:
            have = ({k: list(v.shape) for k, v in vectors.items()} if isinstance(vectors, dict) else list(vectors.shape))
            raise TokenEmbeddingError(
                f"the {what} does not fit this CLIP: its text encoder '{key}' needs vectors of width {width}, "
                f"the {what} has {have}. (SD1.x: clip_l 768, SD2.x: clip_h 1024, SDXL: clip_l 768 + clip_g 1280; "
                "an embedding made for another model family cannot be used.)")
        t = t.float().reshape(-1, width).cpu()  # no detach: gradients reach trainable vectors
        if not torch.isfinite(t).all():
            raise TokenEmbeddingError(f"the {what} for '{key}' contains NaN/inf values")
        out[key] = t
    counts = {k: v.shape[0] for k, v in out.items()}
    if len(set(counts.values())) > 1:
        raise TokenEmbeddingError(f"every text encoder needs the same number of tokens, got {counts}")
    return out


def check_trigger(trigger):
    """The stripped trigger word, or :class:`TokenEmbeddingError` saying what is wrong with it."""
    if not isinstance(trigger, str) or not trigger.strip():
        raise TokenEmbeddingError("the trigger word must be a non-empty string")
    trigger = trigger.strip()
    if re.search(r"\s", trigger):
        raise TokenEmbeddingError(f"the trigger word must be one word without spaces, got {trigger!r}")
    if any(c in trigger for c in "():\\"):
        raise TokenEmbeddingError(f"the trigger word may not contain ( ) : or \\ (prompt-weight syntax), got {trigger!r}")
    if trigger.lower().startswith("embedding:"):
        raise TokenEmbeddingError("the trigger word may not start with 'embedding:'")
    return trigger


def trigger_regex(trigger):
    """Whole-word, case-insensitive match of the trigger (the CLIP tokenizer lower-cases the prompt anyway)."""
    return re.compile(r"(?<![\w<>])" + re.escape(trigger) + r"(?![\w<>])", re.IGNORECASE)


def replace_trigger(text, trigger, word):
    """``text`` with every whole-word occurrence of ``trigger`` replaced by ``word`` (e.g. the class word)."""
    return trigger_regex(trigger).sub(word, text)


class TriggerTokenizer:
    """Wraps a ComfyUI tokenizer: trigger words -> inline tensor tokens. Immutable once built; any
    attribute not defined here is looked up on the wrapped tokenizer."""

    def __init__(self, base, triggers):
        # base: a shallow copy of the original tokenizer whose SD tokenizers are copies that know our
        # internal embedding names. triggers: {trigger: {"name": internal, "vectors": {key: tensor}}}
        self.base = base
        self.triggers = triggers
        self._regexes = sorted(((t, trigger_regex(t)) for t in triggers), key=lambda x: -len(x[0]))
        self._warned = set()

    def __getattr__(self, name):
        if name in ("base", "base_original", "triggers", "_regexes", "_warned") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def rewrite(self, text):
        """(rewritten text, [trigger words found])"""
        found = []
        for trig, rx in self._regexes:
            name = self.triggers[trig]["name"]
            text, n = rx.subn(f" embedding:{name} ", text)
            if n:
                found.append(trig)
        return text, found

    def tokenize_with_weights(self, text, return_word_ids=False, **kwargs):
        new_text, found = self.rewrite(text)
        missing = [t for t in self.triggers if t not in found]
        if missing and text.strip():
            key = (text, tuple(missing))
            if key not in self._warned:
                self._warned.add(key)
                log.warning(missing_trigger_message(missing, text))
        return self.base.tokenize_with_weights(new_text, return_word_ids, **kwargs)

    def untokenize(self, token_weight_pair):
        return self.base.untokenize(token_weight_pair)

    def state_dict(self):
        return self.base.state_dict()


def missing_trigger_message(missing, text):
    words = ", ".join(repr(m) for m in missing)
    short = text if len(text) <= 80 else text[:77] + "..."
    return (f"face-personalization: the prompt {short!r} does not contain the trigger word {words}; "
            "the identity tokens are not used in it (fine for a negative prompt, otherwise add the word).")


def _patched_sd_tokenizer(tok, names):
    """Copy of an SDTokenizer whose embedding lookup also knows ``names`` ({internal: tensor[N,D]})."""
    new = copy.copy(tok)
    original = tok._try_get_embedding  # bound to the original: keeps its own lookup (models/embeddings)

    def _try_get_embedding(embedding_name, _names=names, _orig=original):
        parts = embedding_name.split()
        first = parts[0] if parts else ""
        leftover = " ".join(parts[1:])
        if first in _names:
            return _names[first], leftover
        stripped = first.rstrip(",.;!?")
        if stripped in _names:
            return _names[stripped], (first[len(stripped):] + " " + leftover).strip()
        return _orig(embedding_name)

    new._try_get_embedding = _try_get_embedding
    if new.embedding_directory is None:
        new.embedding_directory = []  # the embedding path only runs when a directory is set
    return new


def apply_trigger(clip, trigger, vectors, what="identity embedding"):
    """Clone ``clip`` so the word ``trigger`` in any prompt becomes the given vectors (inline tokens).

    ``vectors``: tensor [N, D] or ``{embedding_key: tensor [N, D]}`` (see module doc). Applying to a
    CLIP that already has triggers keeps them (a trigger of the same name is replaced)."""
    trigger = check_trigger(trigger)
    resolved = resolve_vectors(clip, vectors, what=what)
    old = clip.tokenizer
    if isinstance(old, TriggerTokenizer):
        triggers = {t: v for t, v in old.triggers.items() if t.lower() != trigger.lower()}
        original = old.base_original
    else:
        triggers = {}
        original = old
    idx = 0
    used = {v["name"] for v in triggers.values()}
    while f"{_INTERNAL_PREFIX}{idx}__" in used:
        idx += 1
    triggers[trigger] = {"name": f"{_INTERNAL_PREFIX}{idx}__", "vectors": resolved}

    base = copy.copy(original)
    for attr, tok in sub_tokenizers(original):
        names = {v["name"]: v["vectors"][tok.embedding_key] for v in triggers.values()}
        setattr(base, attr, _patched_sd_tokenizer(tok, names))
    wrapper = TriggerTokenizer(base, triggers)
    wrapper.__dict__["base_original"] = original
    out = clip.clone()
    out.tokenizer = wrapper
    return out


def triggers_of(clip):
    """{trigger word: {embedding_key: tensor}} installed on this CLIP."""
    tok = clip.tokenizer
    if not isinstance(tok, TriggerTokenizer):
        return {}
    return {t: dict(v["vectors"]) for t, v in tok.triggers.items()}


def prompt_has_trigger(clip, text):
    """(all present, [missing trigger words]) for a prompt text."""
    tok = clip.tokenizer
    if not isinstance(tok, TriggerTokenizer):
        return True, []
    _, found = tok.rewrite(text)
    missing = [t for t in tok.triggers if t not in found]
    return not missing, missing


def check_prompt(clip, text):
    """A user-facing message ('' when fine) about trigger words missing from ``text``; also logged."""
    ok, missing = prompt_has_trigger(clip, text)
    if ok:
        return ""
    msg = missing_trigger_message(missing, text)
    log.warning(msg)
    return msg


def token_key(embedding_key):
    """Key of ``clip.tokenize()``'s dict for an encoder's embedding key ("clip_l" -> "l")."""
    return embedding_key.split("_", 1)[1] if embedding_key.startswith("clip_") else embedding_key


def trigger_slots(clip, text, trigger, n):
    """Tokenize ``text`` with ``trigger`` standing for ``n`` vectors (ComfyUI's own tokenizer, weights and
    chunking included). Returns ``{embedding_key: chunks}``, each chunk a list of ``(token, weight)`` where
    the trigger's rows are ``(("slot", k), weight)`` instead of a tensor. The rows are found by tensor
    identity (views of a placeholder tensor), never by value."""
    trigger = check_trigger(trigger)
    placeholders = {key: torch.zeros(n, width) for key, width in encoder_specs(clip)}
    tclip = apply_trigger(clip, trigger, placeholders, what="placeholder")
    resolved = triggers_of(tclip)[trigger]
    tokens = tclip.tokenize(text)
    out = {}
    for key, ph in resolved.items():
        ptr, width = ph.untyped_storage().data_ptr(), ph.shape[-1]
        chunks = []
        for chunk in tokens[token_key(key)]:
            row = []
            for item in chunk:
                y = item[0]
                if torch.is_tensor(y) and y.untyped_storage().data_ptr() == ptr:
                    row.append((("slot", y.storage_offset() // width),) + tuple(item[1:]))
                else:
                    row.append(tuple(item))
            chunks.append(row)
        out[key] = chunks
    return out


def slot_layout(chunks, fill=0):
    """(ids [C, L] long, weights [C, L] float, slots [(chunk, position, k)], inline [(chunk, position, tensor)])
    of :func:`trigger_slots`' chunks for one encoder: ``slots`` are the trigger's rows, ``inline`` other tensor
    tokens already in the prompt (another method's trigger, ``embedding:`` files); both hold ``fill`` in ``ids``."""
    ids, weights, slots, inline = [], [], [], []
    for c, chunk in enumerate(chunks):
        row_ids, row_w = [], []
        for p, item in enumerate(chunk):
            y = item[0]
            if isinstance(y, tuple) and y and y[0] == "slot":
                slots.append((c, p, int(y[1])))
                row_ids.append(fill)
            elif torch.is_tensor(y):
                inline.append((c, p, y))
                row_ids.append(fill)
            elif isinstance(y, dict):
                raise TokenEmbeddingError("the prompt holds a special embedding this method cannot encode")
            else:
                row_ids.append(int(y))
            row_w.append(float(item[1]) if len(item) > 1 else 1.0)
        ids.append(row_ids)
        weights.append(row_w)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(weights, dtype=torch.float32), slots, inline
