"""Cross Initialization training (official ``train_cross_init.py``), on the generic loop.

Per sample: a training photo (PIL bicubic to the resolution, flip p=0.5, [-1, 1]), its VAE posterior
sample ``(mean + std·eps)·scale`` (cached posterior = same values), DDPM noise at ``t ~ randint(0, 1000)``,
a prompt ``random.choice(imagenet_templates_small).format("face of <t>_v0 <t>_v1 person")`` (81
templates). Loss ``mse(unet(x_t, t, text(prompt)), ε) + reg_weight · pairwise_distance(learned, init).mean()``
(``F.pairwise_distance`` with its eps=1e-6). AdamW(lr 0.000625×8 = 0.005, betas 0.9/0.999, eps 1e-8,
wd 1e-2) on the two token rows only (the official restores every other row of the embedding matrix).

The two rows are placed where inference places them: ComfyUI's tokenizer reads the prompt with the
trigger word standing for the rows (:func:`...textspace.trigger.trigger_slots`, rows found by tensor
identity), they are inserted into the token embeddings out of place and the text encoder runs over
ComfyUI's weights out of place (:class:`...textspace.TextEncoder`, the forward inference and every
text-space trainer use).
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from ... import textspace
from ...textspace import trigger as clip_tokens
from ...training import diffusion, jobfiles
from ...training.protocol import adamw_config
from . import core

RESULT_TYPE = "IDENTITY_EMBEDDING"

# official textual_inversion_dataset.imagenet_templates_small: 81 entries (57 distinct)
TEMPLATES = [
    'a photo of a {}',
    'a rendering of a {}',
    'a cropped photo of the {}',
    'the photo of a {}',
    'a photo of a clean {}',
    'a photo of a dirty {}',
    'a dark photo of the {}',
    'a photo of my {}',
    'a photo of the cool {}',
    'a close-up photo of a {}',
    'a bright photo of the {}',
    'a cropped photo of a {}',
    'a photo of the {}',
    'a good photo of the {}',
    'a photo of one {}',
    'a close-up photo of the {}',
    'a rendition of the {}',
    'a photo of the clean {}',
    'a rendition of a {}',
    'a photo of a nice {}',
    'a good photo of a {}',
    'a photo of the nice {}',
    'a photo of the small {}',
    'a photo of the weird {}',
    'a photo of the large {}',
    'a photo of a cool {}',
    'a photo of a small {}',
    'an illustration of a {}',
    'a rendering of a {}',
    'a cropped photo of the {}',
    'the photo of a {}',
    'an illustration of a clean {}',
    'an illustration of a dirty {}',
    'a dark photo of the {}',
    'an illustration of my {}',
    'an illustration of the cool {}',
    'a close-up photo of a {}',
    'a bright photo of the {}',
    'a cropped photo of a {}',
    'an illustration of the {}',
    'a good photo of the {}',
    'an illustration of one {}',
    'a close-up photo of the {}',
    'a rendition of the {}',
    'an illustration of the clean {}',
    'a rendition of a {}',
    'an illustration of a nice {}',
    'a good photo of a {}',
    'an illustration of the nice {}',
    'an illustration of the small {}',
    'an illustration of the weird {}',
    'an illustration of the large {}',
    'an illustration of a cool {}',
    'an illustration of a small {}',
    'a depiction of a {}',
    'a rendering of a {}',
    'a cropped photo of the {}',
    'the photo of a {}',
    'a depiction of a clean {}',
    'a depiction of a dirty {}',
    'a dark photo of the {}',
    'a depiction of my {}',
    'a depiction of the cool {}',
    'a close-up photo of a {}',
    'a bright photo of the {}',
    'a cropped photo of a {}',
    'a depiction of the {}',
    'a good photo of the {}',
    'a depiction of one {}',
    'a close-up photo of the {}',
    'a rendition of the {}',
    'a depiction of the clean {}',
    'a rendition of a {}',
    'a depiction of a nice {}',
    'a good photo of a {}',
    'a depiction of the nice {}',
    'a depiction of the small {}',
    'a depiction of the weird {}',
    'a depiction of the large {}',
    'a depiction of a cool {}',
    'a depiction of a small {}',
]
PHRASE = "face of {} person"

PRESETS = {
    "full": {"steps": 320, "learning_rate": 0.005, "batch": 8, "grad_accum": 1},
    "fast": {"steps": 25, "learning_rate": 0.08, "batch": 8, "grad_accum": 1},
}
REG_WEIGHT = 1e-5


def load_photo(path, resolution):
    """Official preprocessing: RGB, PIL bicubic resize to resolution², uint8 -> [-1, 1], CHW float32."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((resolution, resolution), resample=Image.BICUBIC)
        arr = np.array(im).astype(np.uint8)
    return torch.from_numpy((arr / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1)


class CrossInitTrainer:
    method = "crossinit"

    def __init__(self, model, clip, vae, photos, trigger="<face>", init=None, lr=0.005, reg_weight=REG_WEIGHT,
                 batch=8, resolution=512, cache_latents=True, gradient_checkpointing=False, device="cpu",
                 output_dirs=None, preview_prompt=None, preview_steps=20, preview_seed=0):
        self.model_patcher = model
        self.model = getattr(model, "model", model)        # BaseModel
        self.clip, self.vae = clip, vae
        self.device = torch.device(device)
        self.photos = photos                               # [N, 3, H, W] in [-1, 1]
        self.trigger = trigger
        self.lr, self.reg_weight, self.batch, self.resolution = float(lr), float(reg_weight), int(batch), int(resolution)
        self.cache_latents, self.gradient_checkpointing = bool(cache_latents), bool(gradient_checkpointing)
        self.output_dirs = dict(output_dirs or {})
        self.preview_prompt = preview_prompt or f"a photo of {trigger} person"
        self.preview_steps, self.preview_seed = int(preview_steps), int(preview_seed)
        init = init if init is not None else core.cross_init_vectors(clip)
        self.init = {k: v.detach().float().to(self.device).clone() for k, v in init.items()}
        self.params = {k: torch.nn.Parameter(v.clone()) for k, v in self.init.items()}
        self.acp = diffusion.alphas_cumprod(self.model)
        self.kind = diffusion.prediction_type(self.model)
        self.scale = diffusion.scale_factor(self.model)
        self.n_tokens = next(iter(self.init.values())).shape[0]
        self.encoders = textspace.TextEncoder.of_clip(clip)  # SDXL: clip_l then clip_g, as ComfyUI concatenates
        self._layouts = {}
        self._posterior = {}

    # -- protocol ---------------------------------------------------------------------------------
    def trainable(self):
        return self.params

    def optimizer_config(self):
        return adamw_config(self.lr)

    def prompt(self, template_index):
        return TEMPLATES[template_index].format(PHRASE.format(self.trigger))

    def sample_inputs(self, step, micro, generator):
        b, h = self.batch, self.resolution // 8
        return {
            "photo": torch.randint(0, self.photos.shape[0], (b,), generator=generator),
            "flip": torch.rand(b, generator=generator) < 0.5,
            "posterior_eps": torch.randn(b, 4, h, h, generator=generator),
            "noise": torch.randn(b, 4, h, h, generator=generator),
            "timesteps": torch.randint(0, 1000, (b,), generator=generator),
            "prompts": [self.prompt(int(i)) for i in torch.randint(0, len(TEMPLATES), (b,), generator=generator)],
        }

    def loss_terms(self, inputs):
        dev = self.device
        x0 = self.latents(inputs["photo"], inputs["flip"], inputs["posterior_eps"].to(dev))
        noise, t = inputs["noise"].to(dev), inputs["timesteps"].to(dev).long()
        noisy = diffusion.add_noise(self.acp, x0, noise, t)
        cond, pooled = self.encode(inputs["prompts"])
        y = None
        if diffusion.needs_y(self.model):
            y = diffusion.sdxl_y(self.model, pooled, self.resolution, self.resolution)
        with diffusion.checkpointed(self.model.diffusion_model, self.gradient_checkpointing):
            pred = diffusion.unet_forward(self.model, noisy, t, cond, y)
        tgt = diffusion.target(self.kind, self.acp, x0, noise, t)
        mse = F.mse_loss(pred.float(), tgt.float(), reduction="mean")
        reg = sum(F.pairwise_distance(self.params[k], self.init[k], p=2).mean() for k in self.params) * self.reg_weight
        return {"loss": mse + reg, "mse": mse, "reg": reg}

    # -- pieces -----------------------------------------------------------------------------------
    def layout(self, prompt):
        """{encoder key: (token ids [L], end-token position, [(position, trainable row)])} of one prompt."""
        if prompt not in self._layouts:
            chunks = clip_tokens.trigger_slots(self.clip, prompt, self.trigger, self.n_tokens)
            out = {}
            for key, enc in self.encoders.items():
                if len(chunks[key]) != 1:
                    raise ValueError(f"training prompts must fit one 77-token chunk, {prompt!r} needs {len(chunks[key])}")
                ids, weights, slots, inline = clip_tokens.slot_layout(chunks[key])
                if not bool(torch.all(weights == 1.0)) or inline:
                    raise ValueError(f"training prompts may not use prompt weights or embeddings, got {prompt!r}")
                end = int((ids[0] == enc.special_tokens["end"]).int().argmax())
                out[key] = (ids[0], end, [(p, k) for _, p, k in slots])
            self._layouts[prompt] = out
        return self._layouts[prompt]

    def encode(self, prompts):
        """(cond [B, 77, D_total], pooled [B, D] of the last encoder) of the prompts with the current trainable
        rows, differentiable w.r.t. them; equal to ComfyUI's encoding of the same prompt with those rows."""
        layouts = [self.layout(p) for p in prompts]
        contexts, pooled = [], None
        for key, enc in self.encoders.items():
            ids = torch.stack([lay[key][0] for lay in layouts])
            positions = [(b, p) for b, lay in enumerate(layouts) for p, _ in lay[key][2]]
            rows = torch.tensor([k for lay in layouts for _, k in lay[key][2]], dtype=torch.long)
            embeds = textspace.insert_rows(enc.token_embeddings(ids), positions,
                                           self.params[key][rows.to(self.params[key].device)])
            out = enc(embeds, eos_index=torch.tensor([lay[key][1] for lay in layouts]),
                      checkpointing=self.gradient_checkpointing)
            contexts.append(out.context)
            pooled = out.pooled
        return torch.cat(contexts, dim=-1), pooled

    def _posterior_of(self, idx, flip):
        key = (idx, flip)
        if key in self._posterior:
            return self._posterior[key]
        px = self.photos[idx:idx + 1]
        if flip:
            px = torch.flip(px, dims=[-1])
        mean, std = diffusion.vae_posterior(self.vae, px)
        if self.cache_latents:
            self._posterior[key] = (mean, std)
        return mean, std

    def latents(self, photo, flip, eps):
        rows = []
        for i in range(len(photo)):
            mean, std = self._posterior_of(int(photo[i]), bool(flip[i]))
            rows.append(mean.to(eps.device) + std.to(eps.device) * eps[i:i + 1])
        return torch.cat(rows) * self.scale

    def vectors(self):
        return {k: p.detach().float().cpu().clone() for k, p in self.params.items()}

    # -- outputs ----------------------------------------------------------------------------------
    def export(self, name, meta):
        return export_files(self.vectors(), self.trigger, name, meta, self.output_dirs)

    @torch.no_grad()
    def preview(self, step, out_dir):
        from ...training.preview import generate, save_png

        clip = clip_tokens.apply_trigger(self.clip, self.trigger, self.vectors(), what="training preview")
        image = generate(self.model_patcher, clip, self.vae, self.preview_prompt, self.preview_seed,
                         self.preview_steps, self.resolution)
        return [save_png(image, os.path.join(out_dir, f"step_{step:06d}.png"))]


def official_state(vectors, trigger):
    """The official learned_embeds.bin layout {"<t>_v0": [D], "<t>_v1": [D]}; SDXL: {"clip_l": [2, 768], "clip_g": [2, 1280]}."""
    if len(vectors) == 1:
        v = next(iter(vectors.values()))
        return {f"{trigger}_v{i}": v[i].clone().contiguous() for i in range(v.shape[0])}
    return {k: v.clone().contiguous() for k, v in vectors.items()}


def export_files(vectors, trigger, name, meta, output_dirs):
    import safetensors.torch

    (ci_dir,) = jobfiles.fresh_output_paths(output_dirs["crossinit"], name, ("",))  # a folder: <name>/
    emb_path, emb_meta = jobfiles.fresh_output_paths(output_dirs["embeddings"], name, (".safetensors", ".json"))
    os.makedirs(ci_dir)
    bin_path = os.path.join(ci_dir, "learned_embeds.bin")
    torch.save(official_state(vectors, trigger), bin_path)
    with open(os.path.join(ci_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"placeholder_token": trigger, "n_persudo_tokens": next(iter(vectors.values())).shape[0],
                   **{k: v for k, v in meta.items() if k in ("steps", "learning_rate", "params", "base_model")}}, f, indent=1)
    meta_text = jobfiles.string_metadata(meta)
    with open(os.path.join(ci_dir, "metadata.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    sd = ({"emb_params": next(iter(vectors.values())).contiguous()} if len(vectors) == 1
          else {k: v.contiguous() for k, v in vectors.items()})
    safetensors.torch.save_file(sd, emb_path, metadata=dict(meta_text, trigger_word=trigger,
                                                             format="face-personalization identity embedding"))
    with open(emb_meta, "w", encoding="utf-8") as f:
        json.dump(dict(meta, trigger_word=trigger), f, indent=1)
    return [
        {"path": bin_path, "folder": "crossinit", "name": f"{name}/learned_embeds.bin", "kind": "official"},
        {"path": emb_path, "folder": "embeddings", "name": f"{name}.safetensors", "kind": "safetensors"},
    ]


def build_trainer(spec, base, job_dir):
    from ...training.spec import photo_paths

    p = spec.params
    photos = torch.stack([load_photo(f, spec.resolution) for f in photo_paths(spec, job_dir)])
    return CrossInitTrainer(base.model, base.clip, base.vae, photos, trigger=p.get("trigger_word", "<face>"),
                            lr=spec.learning_rate, reg_weight=p.get("reg_weight", REG_WEIGHT), batch=spec.batch,
                            resolution=spec.resolution, cache_latents=spec.cache_latents,
                            gradient_checkpointing=spec.gradient_checkpointing, device=base.device,
                            output_dirs=spec.output_dirs, preview_prompt=p.get("preview_prompt"),
                            preview_steps=spec.preview_steps, preview_seed=spec.seed)


def load_result(outputs):
    """IDENTITY_EMBEDDING of a finished job (from its embedding: safetensors)."""
    from ...textspace.identity import load_identity_file

    path = jobfiles.written_safetensors(outputs, "embedding")
    identity = load_identity_file(path)
    with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
        identity["name"] = json.load(f).get("trigger_word", identity["name"])
    identity["method"] = "crossinit"
    return identity
