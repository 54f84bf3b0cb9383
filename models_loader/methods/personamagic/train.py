"""PersonaMagic training (official xzhe-Vision/PersonaMagic ``training/coach_2.py``), on the generic loop.

Per micro-batch (official batch 1, gradient accumulation 2, AdamW lr 5e-5 x 2 = 1e-4, wd 1e-2, 1000 steps):

* a training photo (PIL bicubic to the resolution, no flip, [-1, 1]), its VAE posterior sample x0 (eps an
  input), DDPM noise at ``t ~ randint(400, 800)`` (400..799), its face mask (official: CLIPSeg "face" map;
  here the face pipeline's or the user's mask) resized NEAREST to the latent grid, soft (/255), 4 channels;
* the photo's CLIP ViT-B/32 image embedding (precomputed by the node from the training pixels, exactly as
  the official ``MultiCLIP.encode_image``: kornia bicubic to 224, aligned corners, no antialias);
* **TE loss**: the mapper runs on a random "open" prompt (``constants.PROMPTS``); the text encoder's last
  layer attention probabilities (all 77 query rows) over the prompt-token columns pick the most-attended
  placeholder column and the most-attended other column (sums over heads/rows/batch; first maximum wins);
  a pair softmax at temperature x100 gives p = mean placeholder share, q = 1 - p; term ``-0.001 p q``;
* **ε-MSE**: the mapper runs again (own bypass-dropout draw) on a template prompt
  (``IMAGENET_TEMPLATES_SMALL``); K context = the encoded prompt, V context = the bypass context (bypass added
  to the last hidden state at the token positions, norm-preserving, then the final LayerNorm); loss
  ``sum(err·m) / sum(m)`` per sample, mean over the batch.
* bypass dropout: one ``random() < 0.5`` per mapper call zeroes the whole batch's bypass (the official
  in-place zeroing: the bypass head still gets a zero gradient, so AdamW steps it with its momentum/decay).

The mapper (:class:`.mapper.PersonaMagicMapper`, all of its parameters, official names) is the only
trainable; the stage-regulated inference (:mod:`.staged`) runs the same module and :func:`.mapper.apply_bypass`.
The text encoder is :class:`...textspace.TextEncoder` (ComfyUI's weights, out of place) with
``attentions=True`` for the last layer's probabilities.
"""
import json
import logging
import os

import torch
import torch.nn.functional as F

from ... import textspace
from ...textspace import trigger as text_trigger
from ...training import diffusion, jobfiles
from ...training.protocol import adamw_config
from .mapper import PersonaMagicMapper, anchor_weights, apply_bypass

log = logging.getLogger(__name__)

RESULT_TYPE = "PERSONAMAGIC_MAPPER"

# official constants.IMAGENET_TEMPLATES_SMALL (27) and constants.PROMPTS (20, the uncommented list)
TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]
OPEN_PROMPTS = [
    "A {} is giving a speech on the podium",
    "A {} is walking on the red carpet at the evening gala",
    "A {} is holding a Halloween pumpkin lantern",
    "A {} is reading a book",
    "A {} wearing winter camo military gear in the snow",
    "A {} sitting in a hammock",
    "A photo of {} as an knight in armor",
    "A {} as a police officer",
    "A photo of {} in the lab",
    "A {} sitting a leather sofa",
    "A {} is reading newspaper, sitting in a busy train",
    "A {} in a jungle",
    "A {} is playing the piano",
    "A {} is doing a skateboard",
    "A {} is riding a motorcycle, road background",
    "{} is working on a beautiful design project, creating design projects, in a beautiful workspace",
    "{} driving a racing car",
    "{} floats on a raft along the street of a flooded city",
    "{} baking pizza in front of a wood-fired oven",
    "{} plays bass guitar on stage",
]
OFFICIAL = {"steps": 1000, "batch": 1, "grad_accum": 2, "learning_rate": 1e-4, "weight_decay": 1e-2,
            "t_min": 400, "t_max": 800, "te_weight": 1e-3, "te_temperature": 100.0, "bypass_drop": 0.5,
            "class_word": "face", "token_num": 4, "num_anchors": 200}
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"  # the official inference negative
PLACEHOLDER = "<persona>"  # stands for the N tokens in the training prompts (official "<new1> ... <new4>")


def fresh_mapper(seed=0, output_dim=768, token_num=4, num_anchors=200):
    """The official initial mapper: torch's default Linear/LayerNorm init (seeded here), ``input_layer.weight`` =
    the 200 anchor features (t = 400, 402, ..., 798) and its bias drawn as the official ``nn.Linear(1024, 200)``
    does (U(-1/32, 1/32): the layer is built for 1024 inputs, then given 2048-wide anchor weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        m = PersonaMagicMapper(output_dim=output_dim, token_num=token_num, num_anchors=num_anchors)
        with torch.no_grad():
            m.input_layer.weight.copy_(anchor_weights(num_anchors))
            m.input_layer.bias.uniform_(-1.0 / 32.0, 1.0 / 32.0)
    return m.float()


def te_loss(probs, n_prompt, placeholder_cols, weight=1e-3, temperature=100.0):
    """Official ``get_maximum_attention`` + ``- 0.001 * p * q`` for one sample.

    ``probs`` [1, H, L, L] last-layer attention probabilities; ``n_prompt`` prompt tokens (no BOS/EOS);
    ``placeholder_cols`` the token positions of placeholders 0..N-1 in the sequence (BOS = 0).
    Returns (term, p)."""
    att = probs[:, :, :, 1:n_prompt + 1].float()
    learn = [int(c) - 1 for c in placeholder_cols]
    sums = att.detach().sum(dim=(0, 1, 2)).tolist()
    s_col, best = None, 0.0
    for c in learn:  # first maximum wins, as the official strict ">" from 0
        if sums[c] > best:
            s_col, best = c, sums[c]
    o_col, best = None, 0.0
    for c in range(n_prompt):
        if c not in learn and sums[c] > best:
            o_col, best = c, sums[c]
    if s_col is None or o_col is None:
        raise ValueError("TE loss: the prompt needs placeholder and other tokens with non-zero attention")
    pair = torch.softmax(torch.stack([att[..., s_col], att[..., o_col]], dim=-1) * temperature, dim=-1)
    total = pair.sum()
    p, q = pair[..., 0].sum() / total, pair[..., 1].sum() / total
    return -weight * (p * q), p


class PersonaMagicTrainer:
    method = "personamagic"

    def __init__(self, model_patcher, clip, vae, photos, masks, image_embeds, mapper=None, lr=1e-4,
                 weight_decay=1e-2, batch=1, class_word="face", seed=0, device="cpu", output_dirs=None,
                 gradient_checkpointing=False, te_weight=1e-3, te_temperature=100.0, bypass_drop=0.5,
                 t_min=400, t_max=800, preview_prompt=None, preview_steps=20, preview_seed=0, resolution=None):
        from . import staged
        from ..wplus.train import LatentSource

        self.patcher = model_patcher
        self.model = model_patcher.model
        self.clip, self.vae = clip, vae
        self.device = torch.device(device)
        self.output_dirs = dict(output_dirs or {})
        self.checkpointing = bool(gradient_checkpointing)
        self.lr, self.weight_decay, self.batch = float(lr), float(weight_decay), int(batch)
        self.te_weight, self.te_temperature, self.bypass_drop = float(te_weight), float(te_temperature), float(bypass_drop)
        self.t_min, self.t_max = int(t_min), int(t_max)
        self.resolution = int(resolution or photos.shape[-1])
        self.preview_prompt = preview_prompt or f"a photo of {PLACEHOLDER}"
        self.preview_steps, self.preview_seed = int(preview_steps), int(preview_seed)
        n = photos.shape[0]
        if masks.shape[0] != n or image_embeds.shape[0] != n:
            raise ValueError(f"{n} photos, {masks.shape[0]} masks and {image_embeds.shape[0]} image embeddings: "
                             "one of each per photo")
        self.source = LatentSource(vae, self.model, photos, self.device)
        c, h, w = self.source.shape
        if tuple(masks.shape[-2:]) != (h, w):
            raise ValueError(f"masks must be on the latent grid {h}x{w}, got {tuple(masks.shape[-2:])}")
        if bool((masks.flatten(1).sum(1) <= 0).any()):
            raise ValueError("a face mask is empty (all zero): the masked loss would divide by zero")
        self.masks = masks.float().to(self.device)
        self.image_embeds = image_embeds.float().to(self.device)
        self.acp = diffusion.alphas_cumprod(self.model).to(self.device)
        self.kind = diffusion.prediction_type(self.model)

        self.class_word = class_word
        inner, key = staged._inner_text_model(clip)
        self.key = f"clip_{key}"
        self.encoder = textspace.TextEncoder.of_clip(clip)[self.key]
        self.end_token = inner.special_tokens["end"]
        self.word = staged.class_word_embedding(clip, class_word).to(self.device)
        self.norm_scale = float(self.word.norm())  # official target_norm = |e_face|
        m = mapper if mapper is not None else fresh_mapper(seed, output_dim=self.encoder.width)
        if m.output_dim != self.encoder.width:
            raise ValueError(f"the mapper makes {m.output_dim}-d tokens but the text encoder is {self.encoder.width}-d")
        if not m.output_bypass or m.image_dim != self.image_embeds.shape[-1]:
            raise ValueError(f"the mapper's bypass takes {m.image_dim}-d image embeddings, got "
                             f"{self.image_embeds.shape[-1]}-d (use a CLIP ViT-B/32 vision model)")
        self.mapper = m.to(self.device).float().train().requires_grad_(True)
        self._layouts = {}

    # -- protocol ---------------------------------------------------------------------------------
    def trainable(self):
        """All mapper parameters under the official state-dict names (``input_layer.*``, ``timestep_proj.*``,
        ``output_layer.0.*``, ``image_proj.*``, ``image_output_layer.0.*``)."""
        return dict(self.mapper.named_parameters())

    def optimizer_config(self):
        return adamw_config(self.lr, self.weight_decay)

    def sample_inputs(self, step, micro, generator):
        g, b = generator, self.batch
        c, h, w = self.source.shape
        return {
            "index": torch.randint(0, self.masks.shape[0], (b,), generator=g),
            "vae_eps": torch.randn((b, c, h, w), generator=g),
            "noise": torch.randn((b, c, h, w), generator=g),
            "timesteps": torch.randint(self.t_min, self.t_max, (b,), generator=g),
            "prompts": [TEMPLATES[int(i)].format(PLACEHOLDER) for i in torch.randint(0, len(TEMPLATES), (b,), generator=g)],
            "open_prompts": [OPEN_PROMPTS[int(i)].format(PLACEHOLDER)
                             for i in torch.randint(0, len(OPEN_PROMPTS), (b,), generator=g)],
            # one draw per mapper call (official random() < 0.5): [open-prompt call, UNet-prompt call]
            "drop_bypass": (torch.rand(2, generator=g, dtype=torch.float64) < self.bypass_drop).tolist(),
        }

    def loss_terms(self, inputs):
        dev = self.device
        idx = inputs["index"].to(dev)
        t = inputs["timesteps"].to(dev).long()
        x0 = self.source.latents(inputs["index"], inputs["vae_eps"])
        noise = inputs["noise"].to(dev)
        noisy = diffusion.add_noise(self.acp, x0, noise, t)
        image = self.image_embeds[idx]
        drop_open, drop_unet = (bool(d) for d in inputs["drop_bypass"])

        # TE loss: open prompt; the bypass does not reach the attention probabilities (official: computed, unused)
        tokens, _ = self.mapper_call(t, image, drop_open)
        out, layout = self.encode(inputs["open_prompts"], tokens, attentions=True)
        te_terms, ps = [], []
        for i, (n_prompt, cols) in enumerate(layout):
            term, p = te_loss(out.attention[i:i + 1], n_prompt, cols, self.te_weight, self.te_temperature)
            te_terms.append(term)
            ps.append(p)
        te = torch.stack(te_terms).mean()

        # ε-MSE on the template prompt, K = context, V = bypass context
        tokens, bypass = self.mapper_call(t, image, drop_unet)
        out, layout = self.encode(inputs["prompts"], tokens)
        ctx, ctx_v = out.context, self.bypass_context(out, layout, bypass)
        pred = self.unet(noisy, t, ctx, ctx_v)
        tgt = diffusion.target(self.kind, self.acp, x0, noise, t)
        m = self.masks[idx].unsqueeze(1).expand(-1, pred.shape[1], -1, -1)
        err = F.mse_loss(pred.float(), tgt.float(), reduction="none")
        mse = ((err * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3))).mean()
        return {"loss": mse + te, "mse": mse, "te": te, "te_p": torch.stack(ps).mean().detach()}

    # -- pieces -----------------------------------------------------------------------------------
    def mapper_call(self, t, image, drop):
        """(tokens [B, N, D], bypass [B, N, D]) from the inference mapper forward, one sample at a time (each
        with its own photo's embedding); ``drop`` zeroes the batch's bypass (x 0: a zero gradient reaches the
        bypass head, as with the official in-place zeroing)."""
        outs = [self.mapper(t[i:i + 1].float(), self.word, self.norm_scale, image[i]) for i in range(t.shape[0])]
        tokens = torch.cat([o[0] for o in outs])
        bypass = torch.cat([o[1] for o in outs])
        if drop:
            bypass = bypass * 0.0
        return tokens, bypass

    def layout(self, prompt):
        """(ids [1, L], slot positions in token order, number of prompt tokens without BOS/EOS), cached."""
        if prompt not in self._layouts:
            chunks = text_trigger.trigger_slots(self.clip, prompt, PLACEHOLDER, self.mapper.token_num)[self.key]
            if len(chunks) != 1:
                raise ValueError(f"training prompts must fit one 77-token chunk: {prompt!r}")
            ids, _, slots, inline = text_trigger.slot_layout(chunks)
            if inline or len(slots) != self.mapper.token_num:
                raise ValueError(f"training prompt {prompt!r} must hold the placeholder once and nothing else inline")
            cols = [p for _, p, _ in sorted(slots, key=lambda s: s[2])]
            row = ids[0].tolist()
            n_prompt = row.index(self.end_token, 1) - 1
            self._layouts[prompt] = (ids, cols, n_prompt)
        return self._layouts[prompt]

    def encode(self, prompts, tokens, attentions=False):
        """Text-encoder output of ``prompts`` with ``tokens`` [B, N, D] at the placeholder rows."""
        lays = [self.layout(p) for p in prompts]
        ids = torch.cat([l[0] for l in lays])
        pos = [(b, c) for b, l in enumerate(lays) for c in l[1]]
        embeds = textspace.insert_rows(self.encoder.token_embeddings(ids), pos, tokens.reshape(-1, tokens.shape[-1]))
        out = self.encoder(embeds, attentions=attentions)
        return out, [(l[2], l[1]) for l in lays]

    def bypass_context(self, out, layout, bypass):
        """The official V context: ``normalize(e + bypass) · |e|`` at the placeholder rows of the last hidden
        state, then the final LayerNorm (when this CLIP's context has one)."""
        pos = [(b, c) for b, (_, cols) in enumerate(layout) for c in cols]
        flat = torch.tensor([b * out.hidden.shape[1] + c for b, c in pos], device=out.hidden.device)
        rows = apply_bypass(out.hidden.reshape(-1, out.hidden.shape[-1])[flat], bypass.reshape(-1, bypass.shape[-1]))
        if out.context is not out.hidden:
            ln = self.encoder.text_model.final_layer_norm
            rows = self.encoder._norm(ln, rows)
        return textspace.insert_rows(out.context, pos, rows)

    def unet(self, noisy, t, ctx, ctx_v):
        dm = self.model.diffusion_model
        dtype = next(dm.parameters()).dtype
        value = ctx_v.to(dtype)

        def value_patch(n, context, _value, extra_options):  # MyAttenProc: K from context, V from bypass context
            return n, context, value.to(context.dtype)

        opts = {"patches": {"attn2_patch": [value_patch]}}
        with diffusion.checkpointed(dm, self.checkpointing):
            out = diffusion.unet_forward(self.model, noisy.to(dtype), t, ctx.to(dtype), transformer_options=opts)
        return out.float()

    # -- outputs ----------------------------------------------------------------------------------
    def bundle(self):
        import copy

        from .checkpoint import PersonaMagicBundle

        m = copy.deepcopy(self.mapper).cpu().float().eval().requires_grad_(False)
        return PersonaMagicBundle(m, self.norm_scale, self.class_word,
                                  [f"<new{i + 1}>" for i in range(m.token_num)], source="training")

    def export(self, name, meta):
        from .checkpoint import save_mapper

        path, meta_path = jobfiles.fresh_output_paths(self.output_dirs["personamagic"], name, (".safetensors", ".json"))
        md = jobfiles.string_metadata(meta)
        save_mapper(self.bundle(), path, metadata=md)
        with open(meta_path, "w", encoding="utf-8") as f:
            json.dump(dict(meta or {}), f, indent=1)
        return [{"path": path, "folder": "personamagic", "name": f"{name}.safetensors", "kind": "safetensors"},
                {"path": meta_path, "folder": "personamagic", "name": None, "kind": "metadata"}]

    @torch.no_grad()
    def preview(self, step, out_dir):
        """One image with the stage-regulated inference of the current mapper (bypass from photo 0)."""
        import types

        import comfy.sample

        from ...training.preview import save_png
        from .staged import apply_stage_regulated_ti

        ref = types.SimpleNamespace(image_embeds=self.image_embeds[:1].cpu())
        model, positive, _ = apply_stage_regulated_ti(self.patcher, self.clip, self.bundle(), self.preview_prompt,
                                                      PLACEHOLDER, ref, self.class_word)
        negative = [[self.clip.encode_from_tokens(self.clip.tokenize(NEGATIVE), return_pooled=True)[0], {}]]
        h = self.resolution // 8
        latent = torch.zeros(1, 4, h, h)
        noise = comfy.sample.prepare_noise(latent, self.preview_seed, None)
        samples = comfy.sample.sample(model, noise, self.preview_steps, 8.0, "dpmpp_2m", "karras", positive, negative,
                                      latent, denoise=1.0, disable_pbar=True, seed=self.preview_seed)
        image = self.vae.decode(samples).clamp(0, 1).reshape(-1, self.resolution, self.resolution, 3)[:1].float().cpu()
        return [save_png(image, os.path.join(out_dir, f"step_{step:06d}.png"))]


# ------------------------------------------------------------------------------------------ job files

def load_mask(path, latent_size):
    """Official mask preprocessing: L, PIL NEAREST to the latent grid, /255 (soft) -> [h, w] float32."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L").resize((latent_size, latent_size), Image.NEAREST), dtype=np.float32)
    return torch.from_numpy(arr / 255.0)


def build_trainer(spec, base, job_dir):
    from ... import safe_load
    from ...training.spec import photo_paths
    from ..crossinit.train import load_photo

    p = spec.params
    files = photo_paths(spec, job_dir)
    photos = torch.stack([load_photo(f, spec.resolution) for f in files])
    masks = torch.stack([load_mask(m if os.path.isabs(m) else os.path.join(job_dir, m), spec.resolution // 8)
                         for m in spec.masks])
    embeds = safe_load.load_file(os.path.join(job_dir, p["image_embeds_file"]))["image_embeds"]
    mapper = None
    if p.get("init_mapper"):
        from .checkpoint import load_mapper

        mapper = load_mapper(p["init_mapper"]).mapper
    return PersonaMagicTrainer(base.model, base.clip, base.vae, photos, masks, embeds, mapper=mapper,
                               lr=spec.learning_rate, weight_decay=float(p.get("weight_decay", OFFICIAL["weight_decay"])),
                               batch=spec.batch, class_word=p.get("class_word", "face"), seed=spec.seed,
                               device=base.device, output_dirs=spec.output_dirs,
                               gradient_checkpointing=spec.gradient_checkpointing,
                               preview_prompt=p.get("preview_prompt"), preview_steps=spec.preview_steps,
                               preview_seed=spec.seed, resolution=spec.resolution)


def load_result(outputs):
    """PERSONAMAGIC_MAPPER of a finished job (what FP_LoadPersonaMagic returns for the written file)."""
    from .checkpoint import load_mapper

    return load_mapper(jobfiles.written_safetensors(outputs, "PersonaMagic mapper"))
