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
rows whose context equals it (``cond_or_uncond`` == 0, read per chunk with ``patch_engine.chunk_layout``;
uncond and other conds are never touched), replaces them by the stage context (keys) and gives the
attention the bypass context as values. The sigma is read once per model call
(``patch_engine.current_sigma``).

Encoding uses the shared text-space module: ``textspace.trigger_slots`` says where the N tokens go,
``textspace.TextEncoder`` (the differentiable forward training uses too) encodes, and the mapper tokens of
*all* the run's stage-2 timesteps are encoded in one batched text-encoder call on the run's first model call
(``sample_sigmas``); other timesteps (e.g. a sampler's intermediate sigmas) are encoded on demand. Contexts
are cached per timestep; the patch object is shared by MODEL clones (``__deepcopy__``).
"""
import collections
import logging

import torch

from ... import patch_engine, textspace
from ...textspace import trigger as text_trigger
from .mapper import apply_bypass

log = logging.getLogger(__name__)


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
        self.key_embedding = f"clip_{self.key}"
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

        # tokenization: where the trigger's N rows go (ComfyUI's tokenizer; found by identity, not value)
        n = bundle.token_num
        tclip = textspace.apply_trigger(clip, trigger, torch.zeros(n, width), what="PersonaMagic placeholder")
        ok, _ = textspace.prompt_has_trigger(tclip, text)
        self.has_trigger = ok
        if not ok:
            log.warning(textspace.missing_trigger_message([trigger], text)
                        + " StageRegulatedTI then only encodes the prompt as written.")
        chunks = text_trigger.trigger_slots(clip, text, trigger, n)[self.key_embedding]
        self.ids, self.weights, self.slots, self.inline = text_trigger.slot_layout(chunks)
        self.class_text = textspace.replace_trigger(text, trigger, self.class_word)
        self.class_tokens = clip.tokenize(self.class_text)
        self.cache = collections.OrderedDict()
        self.cache_size = 1024
        self._class = None
        self._text_encoder = None
        self._empty_ctx = None

    # -- encoding -------------------------------------------------------------------------------
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

    def mapper_outputs(self, ts):
        """Mapper (tokens [T, N, D], bypass [T, N, D] or None) for timesteps ``ts`` (one batched pass)."""
        return self.bundle.mapper(torch.tensor([float(t) for t in ts]), self.word_embedding, self.norm_scale,
                                  self.image_embedding if self.bundle.mapper.output_bypass else None)

    def _encoder(self):
        if self._text_encoder is None:
            self._prepare_clip()
            enc = textspace.TextEncoder.of_clip(self.clip)[self.key_embedding]
            if enc.model.zero_out_masked or enc.model.enable_attention_masks:
                raise PersonaMagicInputError("StageRegulatedTI: this text encoder uses attention masks; "
                                             "only SD1.x-style CLIP text encoders are supported")
            self._text_encoder = enc
        return self._text_encoder

    def _weighted(self, out, empty):
        """ComfyUI's prompt weights: z = (z - z_empty) * w + z_empty where w != 1 (per chunk row)."""
        w = self.weights.to(out.device).unsqueeze(-1)  # [C, L, 1]
        if bool((w == 1).all()):
            return out
        return torch.where(w != 1, (out - empty) * w + empty, out)

    def _empty(self, enc):
        if self._empty_ctx is None:
            from comfy import sd1_clip

            gen = getattr(self.inner, "gen_empty_tokens", None) or sd1_clip.gen_empty_tokens
            ids = torch.tensor([[int(t) for t in gen(self.inner.special_tokens, self.ids.shape[1])]])
            self._empty_ctx = enc(enc.token_embeddings(ids)).context[0]
        return self._empty_ctx

    @torch.no_grad()
    def encode_mapper_stages(self, ts):
        """{t: (context, bypass context or None) [1, C*L, D] float32} for stage-2 timesteps ``ts``, in one
        batched text-encoder call (cached)."""
        ts = [float(t) for t in ts]
        todo = list(dict.fromkeys(t for t in ts if t not in self.cache))
        if todo:
            tokens, bypass = self.mapper_outputs(todo)  # [T, N, D]
            enc = self._encoder()
            n_t, (n_c, length) = len(todo), self.ids.shape
            embeds = enc.token_embeddings(self.ids)
            if self.inline:  # other inline tokens of the prompt (e.g. a CrossInit trigger): same for every t
                embeds = textspace.insert_rows(embeds, [(c, p) for c, p, _ in self.inline],
                                               torch.stack([y.reshape(-1).float() for _, _, y in self.inline]))
            embeds = embeds.unsqueeze(0).expand(n_t, -1, -1, -1).reshape(n_t * n_c, length, -1)
            pos = [(ti * n_c + c, p) for ti in range(n_t) for c, p, _ in self.slots]
            ks = [k for _, _, k in self.slots]
            if pos:
                embeds = textspace.insert_rows(embeds, pos, tokens[:, ks].reshape(-1, tokens.shape[-1]))
            out = enc(embeds)
            ctx = out.context
            ctx_b = None
            if bypass is not None and pos:
                flat_i = torch.tensor([b * length + p for b, p in pos])
                hid = out.hidden.reshape(-1, out.hidden.shape[-1])[flat_i]
                rows = apply_bypass(hid, bypass[:, ks].reshape(-1, bypass.shape[-1]))
                if ctx is not out.hidden:  # the context is LayerNorm(hidden): per row, so only these rows change
                    ln = enc.text_model.final_layer_norm
                    rows = torch.nn.functional.layer_norm(rows, (rows.shape[-1],), ln.weight.float(), ln.bias.float(), ln.eps)
                ctx_b = textspace.insert_rows(ctx, pos, rows)
            empty = self._empty(enc) if not bool((self.weights == 1).all()) else None
            for ti, t in enumerate(todo):
                sl = slice(ti * n_c, (ti + 1) * n_c)
                c = self._weighted(ctx[sl], empty).reshape(1, n_c * length, -1).float().cpu()
                cb = None if ctx_b is None else self._weighted(ctx_b[sl], empty).reshape(1, n_c * length, -1).float().cpu()
                self.cache[t] = (c, cb)
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return {t: self.cache[t] for t in ts}

    def encode_mapper_stage(self, t):
        """(context, bypass context or None) [1, L, D] float32 for one stage-2 timestep (cached)."""
        key = float(t)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.move_to_end(key)
            return hit
        return self.encode_mapper_stages([key])[key]

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
        self._last_call = None  # (context object, sigma value, value object) -> result, reused across layers
        self._timesteps = {}  # sigma value -> timestep
        self._marker_cast = {}
        self._warned_run = None

    def __deepcopy__(self, memo):
        return self  # shared by MODEL clones (holds no per-clone state that must differ)

    def timestep(self, sigma):
        """Model timestep of a sigma value (float), memoised."""
        t = self._timesteps.get(sigma)
        if t is None:
            t = float(self.model_sampling.timestep(torch.tensor([sigma], dtype=torch.float32)).reshape(-1)[0])
            if len(self._timesteps) > 4096:
                self._timesteps.clear()
            self._timesteps[sigma] = t
        return t

    def _start_run(self, run):
        """New sampling run: forget the reuse state, encode every stage-2 timestep of its schedule at once."""
        self._run = run
        self._last_mapper_t = None
        if run is None or not torch.is_tensor(run):
            return
        sig = run.detach().float().reshape(-1).cpu()
        ts = self.model_sampling.timestep(sig).reshape(-1).tolist() if sig.numel() else []
        stage2 = [float(t) for t in ts if self.prompt.stage(float(t)) == "mapper"]
        if stage2:
            self.prompt.encode_mapper_stages(stage2)

    def contexts_for(self, t, run=None):
        """(context, bypass context or None, stage) for timestep ``t`` with the run's reuse state."""
        if run is not None and run is not self._run:
            self._start_run(run)
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
        m = self._marker_cast.get(key)
        if m is None:
            m = self.prompt.class_context()[0][0].to(device=device, dtype=dtype)
            self._marker_cast[key] = m
        return m

    def __call__(self, n, context, value, extra_options):
        cou = extra_options.get("cond_or_uncond") or []
        if 0 not in cou or context is None:
            return n, context, value
        sigma = patch_engine.current_sigma(extra_options)
        if sigma is None:
            return n, context, value
        last = self._last_call
        if last is not None and last[0] is context and last[1] == sigma and last[2] is value:
            return n, last[3], last[4]
        new_ctx, new_val = self._apply(context, value, sigma, extra_options)
        self._last_call = (context, sigma, value, new_ctx, new_val)
        return n, new_ctx, new_val

    def _apply(self, context, value, sigma, extra_options):
        B, L = context.shape[0], context.shape[1]
        cou, per = patch_engine.chunk_layout(B, extra_options)
        marker = self._marker(context.dtype, context.device)
        Lm = marker.shape[0]
        if L % Lm or marker.shape[-1] != context.shape[-1]:
            return context, value
        rep = L // Lm
        marker_rep = marker.repeat(rep, 1) if rep > 1 else marker
        cand = [r for r in range(B) if cou[r // per] == 0]
        eq = (context[cand] == marker_rep.unsqueeze(0)).flatten(1).all(dim=1).tolist()
        rows = [r for r, ok in zip(cand, eq) if ok]
        run = extra_options.get("sample_sigmas")
        if not rows:
            if run is not self._run and self._warned_run is not run:
                self._warned_run = run
                log.warning("StageRegulatedTI: a positive conditioning reaching the patched MODEL is not the one "
                            "StageRegulatedTI made (modified or combined?); the identity is not applied to it.")
            return context, value
        ctx, ctx_b, _ = self.contexts_for(self.timestep(sigma), run)
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
