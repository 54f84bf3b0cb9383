"""Stage-regulated textual inversion (PersonaMagic inference, official ``prompt_manager.py``).

Per denoising timestep t (ComfyUI: ``model_sampling.timestep(sigma)``):

* t > 800: the prompt with the class word ("face") in place of the trigger;
* 400 <= t <= 800: the trigger becomes the mapper's N tokens for t, the prompt is encoded, and the
  V-only bypass context is built (mapper bypass added to the last hidden state at the token
  positions before the final LayerNorm, norm-preserving);
* t < 400: the last contexts computed in this sampling run (official: ``hidden_states[-1]``); if the
  run never visited [400, 800] (e.g. img2img with low denoise) the mapper at t = 400 is used.

It is applied as an ``attn2_patch`` on the MODEL (a list entry: chains with other patches). The
node's CONDITIONING holds the class-word context; in every UNet call the patch finds the *cond*
rows whose context equals it (``cond_or_uncond`` == 0; uncond and other conds are never touched),
replaces them by the stage context (keys) and gives the attention the bypass context as values.
Contexts are cached per timestep; the patch object is shared by MODEL clones (``__deepcopy__``).
"""
import collections
import logging

import torch
import torch.nn.functional as F

from ... import textspace

log = logging.getLogger(__name__)

_SENTINEL = 9173.0  # placeholder-slot marker values (never a real embedding value)


class PersonaMagicInputError(ValueError):
    pass


def _inner_text_model(clip):
    """The single SD text encoder (``SDClipModel``) of an SD1.x/SD2.x CLIP, with its token key."""
    from comfy import sd1_clip

    cm = clip.cond_stage_model
    name = getattr(cm, "clip", None)
    inner = getattr(cm, name, None) if isinstance(name, str) else None
    if not isinstance(inner, sd1_clip.SDClipModel):
        raise PersonaMagicInputError(
            f"StageRegulatedTI needs a CLIP with one CLIP-style text encoder (SD1.x: 768-d, as PersonaMagic was "
            f"trained); this CLIP is {type(cm).__name__} "
            f"(encoders: {textspace.encoder_specs(clip) or 'unknown'}).")
    return inner, cm.clip_name


def text_width(clip):
    inner, _ = _inner_text_model(clip)
    return int(inner.transformer.get_input_embeddings().weight.shape[-1])


def class_word_embedding(clip, word):
    """Input (token) embedding of the class word: the official ``token_embeds[tokenizer.encode(word)[0]]``."""
    inner, key = _inner_text_model(clip)
    toks = clip.tokenize(word)[key][0]
    ids = [t[0] for t in toks if isinstance(t[0], int) and t[0] not in inner.special_tokens.values()]
    if not ids:
        raise PersonaMagicInputError(f"the class word {word!r} produced no tokens")
    if len(ids) > 1:
        log.warning("PersonaMagic: class word %r is %d tokens; using the first (official behaviour)", word, len(ids))
    emb = inner.transformer.get_input_embeddings().weight[ids[0]]
    return emb.detach().float().cpu().clone()


class _DualEncoder:
    """``ClipTokenWeightEncoder`` whose ``encode`` returns cat([context, bypass context], -1):
    ComfyUI's own chunking/weighting code then treats both identically."""

    def __init__(self, inner, slots, bypass):
        from comfy import sd1_clip

        self.inner = inner
        self.special_tokens = inner.special_tokens
        self.slots = slots  # id(tensor) -> token index k
        self.bypass = bypass  # [N, D] float32 or None
        self._base = sd1_clip.ClipTokenWeightEncoder

    def encode_token_weights(self, token_weight_pairs):
        return self._base.encode_token_weights(self, token_weight_pairs)

    def gen_empty_tokens(self, special_tokens, length):
        from comfy import sd1_clip

        if hasattr(self.inner, "gen_empty_tokens"):
            return self.inner.gen_empty_tokens(special_tokens, length)
        return sd1_clip.gen_empty_tokens(special_tokens, length)

    def encode(self, tokens):
        inner = self.inner
        device = inner.transformer.get_input_embeddings().weight.device
        embeds, attention_mask, num_tokens, embeds_info = inner.process_tokens(tokens, device)
        if inner.layer == "last":
            io, use_ln = -1, True
        elif inner.layer == "hidden":
            io, use_ln = inner.layer_idx, inner.layer_norm_hidden_state
        else:
            raise PersonaMagicInputError(f"StageRegulatedTI: CLIP output layer mode {inner.layer!r} is not supported")
        mask = attention_mask if inner.enable_attention_masks else None
        outs = inner.transformer(None, mask, embeds=embeds, num_tokens=num_tokens, intermediate_output=io,
                                 final_layer_norm_intermediate=False, dtype=torch.float32, embeds_info=embeds_info)
        pre = outs[1].float()
        ln = inner.transformer.text_model.final_layer_norm

        def finish(h):
            z = ln(h).float() if use_ln else h
            if inner.zero_out_masked:
                z = z * attention_mask.unsqueeze(-1).float()
            return z

        z = finish(pre)
        zb = z
        if self.bypass is not None:
            pre_b = pre.clone()
            hit = False
            for b, seq in enumerate(tokens):
                for p, y in enumerate(seq):
                    k = self.slots.get(id(y))
                    if k is None:
                        continue
                    e = pre[b, p]
                    bp = self.bypass[k].to(e.device, e.dtype)
                    pre_b[b, p] = F.normalize(bp + e, dim=-1) * e.norm()
                    hit = True
            if hit:
                zb = finish(pre_b)
        pooled = outs[2].float() if len(outs) > 2 and outs[2] is not None else None
        return torch.cat([z, zb], dim=-1), pooled


class StagedPrompt:
    """Everything needed to produce the per-timestep contexts of one prompt."""

    def __init__(self, clip, text, trigger, bundle, image_embedding=None, class_word=None, t_high=800.0,
                 t_low=400.0):
        width = text_width(clip)
        if width != bundle.output_dim:
            raise PersonaMagicInputError(
                f"this PersonaMagic mapper makes {bundle.output_dim}-d tokens but the CLIP's text encoder is "
                f"{width}-d. PersonaMagic mappers are trained for one text encoder (the official ones for "
                f"SD1.x, 768-d); use the checkpoint/CLIP family the mapper was trained with.")
        if t_low > t_high:
            raise PersonaMagicInputError(f"stage boundaries: t_low ({t_low}) must be <= t_high ({t_high})")
        self.clip = clip
        self.bundle = bundle
        self.text = text
        self.trigger = trigger
        self.class_word = (class_word or bundle.class_word or "face").strip()
        self.t_high, self.t_low = float(t_high), float(t_low)
        self.inner, self.key = _inner_text_model(clip)
        self.word_embedding = class_word_embedding(clip, self.class_word)
        self.norm_scale = float(bundle.target_norm) if bundle.target_norm is not None else float(self.word_embedding.norm())
        self.image_embedding = None
        if image_embedding is not None:
            img = image_embedding.detach().float().cpu()
            img = img.reshape(-1, img.shape[-1])
            if img.shape[-1] != bundle.mapper.image_dim:
                raise PersonaMagicInputError(
                    f"the bypass needs a {bundle.mapper.image_dim}-d CLIP ViT-B/32 image embedding (image_embeds of "
                    f"CLIPVisionEncode); got {img.shape[-1]}-d (a different CLIP vision model?)")
            self.image_embedding = img.mean(0)  # one reference image as the official; several: mean
            if not bundle.mapper.output_bypass:
                log.warning("PersonaMagic: this mapper has no bypass head; the image embedding is ignored")

        # tokenization: the trigger becomes N sentinel rows; remember where they went
        n, d = bundle.token_num, width
        sentinel = (_SENTINEL + torch.arange(n, dtype=torch.float32))[:, None].expand(n, d).contiguous()
        tclip = textspace.apply_trigger(clip, trigger, sentinel, what="PersonaMagic placeholder")
        ok, _ = textspace.prompt_has_trigger(tclip, text)
        self.has_trigger = ok
        if not ok:
            log.warning(textspace.missing_trigger_message([trigger], text)
                        + " StageRegulatedTI then only encodes the prompt as written.")
        tokens = tclip.tokenize(text)
        self.template = {}
        for key, chunks in tokens.items():
            out = []
            for chunk in chunks:
                row = []
                for item in chunk:
                    y = item[0]
                    if torch.is_tensor(y):
                        k = int(round(float(y.reshape(-1)[0]) - _SENTINEL))
                        if 0 <= k < n and bool((y == _SENTINEL + k).all()):
                            row.append(("slot", k) + tuple(item[1:]))
                            continue
                    row.append(item)
                out.append(row)
            self.template[key] = out
        class_text = textspace.replace_trigger(text, trigger, self.class_word)
        self.class_text = class_text
        self.class_tokens = clip.tokenize(class_text)
        self.cache = collections.OrderedDict()
        self.cache_size = 128
        self._class = None

    # -- encoding -------------------------------------------------------------------------------
    def _tokens_with(self, rows):
        ids = {}
        toks = {}
        for key, chunks in self.template.items():
            out = []
            for chunk in chunks:
                row = []
                for item in chunk:
                    if item[0] == "slot":
                        vec = rows[item[1]].clone()
                        ids[id(vec)] = item[1]
                        row.append((vec,) + tuple(item[2:]))
                    else:
                        row.append(item)
                out.append(row)
            toks[key] = out
        return toks, ids

    def _prepare_clip(self):
        cm = self.clip.cond_stage_model
        cm.reset_clip_options()
        if self.clip.layer_idx is not None:
            cm.set_clip_options({"layer": self.clip.layer_idx})
        self.clip.load_model()

    def class_context(self):
        """(context [1, L, D], pooled) of the class-word prompt, encoded exactly like CLIPTextEncode."""
        if self._class is None:
            cond, pooled = self.clip.encode_from_tokens(self.class_tokens, return_pooled=True)
            self._class = (cond.float().cpu(), None if pooled is None else pooled.float().cpu())
        return self._class

    def mapper_outputs(self, t):
        return self.bundle.mapper(float(t), self.word_embedding, self.norm_scale,
                                  self.image_embedding if self.bundle.mapper.output_bypass else None)

    def encode_mapper_stage(self, t):
        """(context, bypass context) [1, L, D] float32 for a stage-2 timestep (cached)."""
        key = float(t)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        tokens_vec, bypass = self.mapper_outputs(t)
        toks, ids = self._tokens_with(tokens_vec)
        self._prepare_clip()
        enc = _DualEncoder(self.inner, ids, bypass)
        with torch.no_grad():
            out, _ = enc.encode_token_weights(toks[self.key])
        out = out.float().cpu()
        d = out.shape[-1] // 2
        ctx, ctx_b = out[..., :d].contiguous(), out[..., d:].contiguous()
        res = (ctx, ctx_b if bypass is not None else None)
        self.cache[key] = res
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return res

    def stage(self, t):
        if t > self.t_high:
            return "class"
        if t >= self.t_low:
            return "mapper"
        return "reuse"


class StageRegulatedPatch:
    """``attn2_patch``: swaps the cond rows' context by the timestep's stage context, V from bypass."""

    def __init__(self, prompt, model_sampling):
        self.prompt = prompt
        self.model_sampling = model_sampling
        self._run = None  # sample_sigmas tensor of the current sampling run
        self._last_mapper_t = None  # last stage-2 timestep computed in this run
        self._last_call = None  # (context object, sigma value) -> result, reused across layers
        self._cast = {}
        self._warned_run = None
        self.enabled = True

    def __deepcopy__(self, memo):
        return self  # shared by MODEL clones (holds no per-clone state that must differ)

    def timestep(self, sigmas):
        s = sigmas.reshape(-1)[:1]
        return float(self.model_sampling.timestep(s.float()).reshape(-1)[0])

    def contexts_for(self, t, run=None):
        """(context, bypass context or None, stage) for timestep ``t`` with the run's reuse state."""
        if run is not None and run is not self._run:
            self._run = run
            self._last_mapper_t = None
        st = self.prompt.stage(t)
        if st == "class":
            ctx, _ = self.prompt.class_context()
            return ctx, None, st
        if st == "mapper":
            self._last_mapper_t = t
            ctx, ctx_b = self.prompt.encode_mapper_stage(t)
            return ctx, ctx_b, st
        t_reuse = self._last_mapper_t if self._last_mapper_t is not None else self.prompt.t_low
        ctx, ctx_b = self.prompt.encode_mapper_stage(t_reuse)
        return ctx, ctx_b, st

    def _marker(self, dtype, device):
        key = (dtype, str(device))
        m = self._cast.get(key)
        if m is None:
            m = self.prompt.class_context()[0][0].to(device=device, dtype=dtype)
            self._cast[key] = m
        return m

    def __call__(self, n, context, value, extra_options):
        cou = extra_options.get("cond_or_uncond") or []
        sigmas = extra_options.get("sigmas")
        if not self.enabled or 0 not in cou or sigmas is None or context is None:
            return n, context, value
        sig_key = float(sigmas.reshape(-1)[0])
        last = self._last_call
        if last is not None and last[0] is context and last[1] == sig_key and last[2] is value:
            return n, last[3], last[4]
        new_ctx, new_val = self._apply(context, value, cou, sigmas, extra_options)
        self._last_call = (context, sig_key, value, new_ctx, new_val)
        return n, new_ctx, new_val

    def _apply(self, context, value, cou, sigmas, extra_options):
        B, L = context.shape[0], context.shape[1]
        if B % len(cou):
            return context, value
        per = B // len(cou)
        marker = self._marker(context.dtype, context.device)
        Lm = marker.shape[0]
        if L % Lm or marker.shape[-1] != context.shape[-1]:
            return context, value
        rep = L // Lm
        marker_rep = marker.repeat(rep, 1) if rep > 1 else marker
        cand = [r for r in range(B) if cou[r // per] == 0]
        eq = (context[cand] == marker_rep.unsqueeze(0)).flatten(1).all(dim=1).tolist()
        rows = [r for r, ok in zip(cand, eq) if ok]
        run = (extra_options.get("sample_sigmas"))
        if not rows:
            if run is not self._run and self._warned_run is not run:
                self._warned_run = run
                log.warning("StageRegulatedTI: a positive conditioning reaching the patched MODEL is not the one "
                            "StageRegulatedTI made (modified or combined?); the identity is not applied to it.")
            return context, value
        t = self.timestep(sigmas)
        ctx, ctx_b, _ = self.contexts_for(t, run)
        ctx = ctx[0].to(device=context.device, dtype=context.dtype)
        ctx_v = ctx if ctx_b is None else ctx_b[0].to(device=context.device, dtype=context.dtype)
        if rep > 1:
            ctx, ctx_v = ctx.repeat(rep, 1), ctx_v.repeat(rep, 1)
        idx = torch.tensor(rows, device=context.device)
        new_ctx = context.clone()
        new_ctx[idx] = ctx.unsqueeze(0).expand(len(rows), -1, -1)
        base_v = context if value is None or value is context else value
        new_val = new_ctx if (ctx_b is None and base_v is context) else base_v.clone()
        if new_val is not new_ctx:
            if base_v is context:
                new_val[:] = new_ctx
            new_val[idx] = ctx_v.unsqueeze(0).expand(len(rows), -1, -1)
        return new_ctx, new_val


def apply_stage_regulated_ti(model, clip, bundle, text, trigger="<persona>", clip_vision_output=None,
                             class_word="", t_high=800.0, t_low=400.0):
    """-> (patched MODEL clone, CONDITIONING). See module docstring."""
    image = None
    if clip_vision_output is not None:
        image = getattr(clip_vision_output, "image_embeds", None)
        if image is None:
            raise PersonaMagicInputError("the CLIP_VISION_OUTPUT has no image_embeds (projected embedding); "
                                         "use CLIPVisionEncode with a CLIP ViT-B/32 vision model")
    prompt = StagedPrompt(clip, text, trigger, bundle, image, class_word or None, t_high, t_low)
    ctx, pooled = prompt.class_context()
    if prompt.has_trigger:
        probe, _ = prompt.encode_mapper_stage((prompt.t_low + prompt.t_high) / 2.0)
        if probe.shape != ctx.shape:
            raise PersonaMagicInputError(
                f"the prompt encodes to {probe.shape[1]} tokens with the {bundle.token_num} identity tokens but "
                f"{ctx.shape[1]} with the class word (it crosses a 77-token chunk boundary): shorten the prompt.")
    m = model.clone()
    patch = StageRegulatedPatch(prompt, m.get_model_object("model_sampling"))
    if prompt.has_trigger:
        m.set_model_attn2_patch(patch)
    cond = {"pooled_output": pooled} if pooled is not None else {}
    return m, [[ctx.clone(), cond]], patch
