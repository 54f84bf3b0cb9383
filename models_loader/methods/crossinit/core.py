"""Cross Initialization on ComfyUI's CLIP, and identity-embedding files.

Initialisation (official ``utils.celeb_names_cross_init``): tokenize every line of the names list
(691 celebrity names, duplicates included); c0 = fp32 mean of the input-embedding rows at BPE position 1,
c1 = mean at position 2 (a single-token name only counts towards c0). Then run
``[BOS, c0, c1, EOS, PAD x 73]`` (position embeddings added, causal mask) through the text encoder and
take rows 1..2 of the output after the final LayerNorm. Output = the layer this CLIP conditions the
diffusion model with (ComfyUI default / ``CLIPSetLastLayer``), always followed by the final LayerNorm:
SD1.x last layer + LN, SD2.x penultimate + LN (what the official SD 2.1 diffusers encoder computes),
SDXL penultimate + LN for each encoder. These output-space vectors become the two token embeddings.
Identity-embedding values and files: :mod:`...textspace.identity`.
"""
import logging
import os

import torch

from ...progress import progress
from ...textspace.trigger import sub_tokenizers

log = logging.getLogger(__name__)

NAMES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wiki_names_v2.txt")
N_COLUMNS = 2


def load_names(path=None):
    """Lines of a names file (official: ``f.read().splitlines()``, every line kept)."""
    path = path or NAMES_FILE
    if not os.path.isfile(path):
        raise FileNotFoundError(f"names file not found: {path} (expected one name per line, e.g. 'First Last')")
    with open(path, "r", encoding="utf-8") as f:
        names = f.read().splitlines()
    if not any(n.strip() for n in names):
        raise ValueError(f"names file {path} contains no names")
    return names


def _encoder_pairs(clip):
    """[(embedding_key, SDTokenizer, SDClipModel)] for each CLIP-style text encoder."""
    pairs = []
    for _, tok in sub_tokenizers(clip.tokenizer):
        enc = getattr(clip.cond_stage_model, tok.embedding_key, None)
        if enc is None or not hasattr(enc, "transformer"):
            raise ValueError(f"CLIP encoder '{tok.embedding_key}' not found in this CLIP model; "
                             "Cross Initialization supports SD1.x, SD2.x and SDXL text encoders")
        pairs.append((tok.embedding_key, tok, enc))
    if not pairs:
        raise ValueError("this CLIP has no CLIP-style text encoder (SD1.x/SD2.x/SDXL expected)")
    return pairs


def column_means(token_embedding, hf_tokenizer, names, n_column=N_COLUMNS, device="cpu", bar=None):
    """fp32 means of the input-embedding rows at BPE positions 1..n_column over all names
    (``bar``: a progress bar advanced once per name)."""
    sums = [None] * n_column
    counts = [0] * n_column
    for name in names:
        ids = hf_tokenizer(name)["input_ids"][:77]
        if bar is not None:
            bar.update(1)
        n = len(ids)
        cols = list(range(1, min(n - 1, n_column + 1)))
        if not cols:
            continue
        rows = token_embedding(torch.tensor([ids[c] for c in cols], device=device), out_dtype=torch.float32)
        for j, c in enumerate(cols):
            sums[c - 1] = rows[j] if sums[c - 1] is None else sums[c - 1] + rows[j]
            counts[c - 1] += 1
    if any(c == 0 for c in counts):
        raise ValueError(f"the names list yields no tokens for some columns (counts {counts}); give names of at least {n_column} tokens")
    return torch.stack([s / c for s, c in zip(sums, counts)]), counts


def _output_layer(clip, enc):
    """(layer, layer_idx) the CLIP conditions with (respects CLIPSetLastLayer)."""
    enc.reset_clip_options()
    if clip.layer_idx is not None:
        enc.set_clip_options({"layer": clip.layer_idx})
    layer, layer_idx = enc.layer, enc.layer_idx
    enc.reset_clip_options()
    return layer, layer_idx


@torch.no_grad()
def cross_init_vectors(clip, names=None):
    """{embedding_key: fp32 tensor [2, D]}: the Cross Initialization of two tokens for every encoder."""
    names = names if names is not None else load_names()
    clip.load_model()
    out = {}
    pairs = _encoder_pairs(clip)
    bar = progress(len(pairs) * (len(names) + 1))  # every name tokenised per encoder, then one forward each
    for key, tok, enc in pairs:
        transformer = enc.transformer
        emb = transformer.get_input_embeddings()
        device = emb.weight.device
        cols, counts = column_means(emb, tok.tokenizer, names, device=device, bar=bar)
        special = enc.special_tokens
        bos, eos = special["start"], special["end"]
        pad = special.get("pad", eos)
        length = int(transformer.text_model.embeddings.position_embedding.weight.shape[0])
        ids = torch.tensor([bos, eos] + [pad] * (length - 2 - N_COLUMNS), device=device)
        rows = emb(ids, out_dtype=torch.float32)
        embeds = torch.cat([rows[:1], cols.to(device), rows[1:]], dim=0).unsqueeze(0)
        layer, layer_idx = _output_layer(clip, enc)
        outputs = transformer(None, None, embeds=embeds, num_tokens=[N_COLUMNS + 2],
                              intermediate_output=None if layer == "last" else layer_idx,
                              final_layer_norm_intermediate=True, dtype=torch.float32)
        hidden = outputs[0] if layer == "last" else outputs[1]
        out[key] = hidden[0, 1:1 + N_COLUMNS].float().cpu()
        bar.update(1)
        log.info("cross-init %s: columns averaged over %s names, output layer %s", key, counts,
                 "last" if layer == "last" else layer_idx)
    return out
