"""W+ Adapter training (csxmli2016/w-plus-adapter ``train_face.py`` = Stage I, ``train_wild.py`` = Stage II).

The training forward is ComfyUI's own UNet with the pack's attention engine entry whose callback is the
inference callback :func:`.attention.residual_attention`, running the trainable
:class:`.rca.ResidualCrossAttention` modules themselves (inference runs frozen copies of the same class).

Official recipe (read in the scripts; defaults here):

* Stage I: trains ``w_proj`` + the per-layer ``to_q/k/v_wplus`` (initialised as copies of the layer's own
  ``attn2.to_q/k/v``); plain ε-MSE (``F.mse_loss(pred, noise)``), t ~ randint(0, 1000); one draw
  ``u = random()`` per sample: u < 0.05 drops W+ (zeros through ``w_proj``), u < 0.10 drops the text
  (""), u < 0.15 drops both; prompts = 13 templates filled with "face"; AdamW lr 1e-4, wd 1e-2.
* Stage II: starts from a Stage-I file, ``w_proj`` frozen (only the adapter layers train);
  loss = ε-MSE + 2.0·disentangle + 1.0·preserve, where disentangle = ``F.mse_loss(aug·m, pred·m)`` over all
  elements (m = 1 − the eroded, blurred face mask, bilinear to the latent grid), aug = the λ=1 forward on the
  augmented W+ (no grad) and preserve = ``F.mse_loss(pred_λ0, pred)`` over the whole latent (λ=0 = the UNet
  without the residual, no grad); captions per image.

Everything random for one micro-batch is drawn in :meth:`sample_inputs` and passed to :meth:`loss_terms`
(see ``models_loader/training/protocol.py``).
"""
import json
import os

import torch
import torch.nn.functional as F

from ... import patch_engine
from ...training import diffusion, jobfiles
from ...training.protocol import adamw_config

# ----------------------------------------------------------------------------------------------
# pieces shared by the residual-attention trainers (W+ Adapter, PIDiff); diffusion math: training.diffusion
# ----------------------------------------------------------------------------------------------
class LatentSource:
    """VAE posterior (mean, std) of the training pixels, computed once (latent caching); a latent is
    ``scale · (mean + std · eps)`` with ``eps`` an input (the official ``latent_dist.sample()``)."""

    def __init__(self, vae, model, pixels, device="cpu"):
        """``pixels``: [N, 3, H, W] in [-1, 1] (float)."""
        means, stds = [], []
        for i in range(pixels.shape[0]):
            mean, std = diffusion.vae_posterior(vae, pixels[i:i + 1])
            means.append(mean.float().to(device))
            stds.append(std.float().to(device))
        self.mean = torch.cat(means)
        self.std = torch.cat(stds)
        self.scale = diffusion.scale_factor(model)

    @property
    def shape(self):
        return tuple(self.mean.shape[1:])

    def latents(self, idx, eps):
        idx = idx.to(self.mean.device)
        return (self.mean[idx] + self.std[idx] * eps.to(self.mean.device)) * self.scale


class PromptEncoder:
    """Frozen text conditioning of prompt strings through ComfyUI's CLIP (exactly CLIPTextEncode), cached."""

    def __init__(self, clip, model=None, size=None, device="cpu"):
        self.clip = clip
        self.model = model
        self.size = size  # (H, W) in pixels: SDXL size conditioning
        self.device = torch.device(device)
        self.cache = {}

    def __call__(self, texts):
        """-> (context [B, L, D], y [B, adm] or None) float32 on the trainer's device."""
        ctx, ys = [], []
        for text in texts:
            hit = self.cache.get(text)
            if hit is None:
                with torch.no_grad():
                    tokens = self.clip.tokenize(text)
                    if any(len(chunks) != 1 for chunks in tokens.values()):
                        raise ValueError(f"training prompt {text[:60]!r}... is longer than one 77-token chunk; shorten it")
                    cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
                    y = None
                    if self.model is not None and diffusion.needs_y(self.model):
                        h, w = self.size or (1024, 1024)
                        y = diffusion.sdxl_y(self.model, pooled, h, w)
                hit = (cond.float().to(self.device), None if y is None else y.float().to(self.device))
                self.cache[text] = hit
            ctx.append(hit[0])
            ys.append(hit[1])
        y = torch.cat(ys) if ys and ys[0] is not None else None
        return torch.cat(ctx), y


def unet_forward(model, x_t, t, context, transformer_options, y=None, checkpointing=False):
    """One ComfyUI UNet call on raw noisy latents and integer timesteps (= diffusers ``unet(x_t, t, c).sample``),
    with the given transformer_options (the residual entries) and no step window."""
    to = dict(transformer_options)
    to.pop("sigmas", None)
    dm = model.diffusion_model
    dtype = next(dm.parameters()).dtype
    with diffusion.checkpointed(dm, checkpointing):
        out = diffusion.unet_forward(model, x_t.to(dtype), t.to(x_t.device), context.to(x_t.device, dtype),
                                     y=None if y is None else y.to(x_t.device, dtype), transformer_options=to)
    return out.float()


def base_transformer_options(model_patcher):
    mo = getattr(model_patcher, "model_options", None) or {}
    return dict(mo.get("transformer_options", {}))


def attn2_modules(model):
    """The UNet's attn2 CrossAttention modules in :func:`patch_engine.cross_attention_layers` order."""
    dm = model.diffusion_model if hasattr(model, "diffusion_model") else model
    groups = list(dm.input_blocks) + list(dm.output_blocks)
    if getattr(dm, "middle_block", None) is not None:
        groups.append(dm.middle_block)
    out = []
    for mod in groups:
        for st in patch_engine._spatial_transformers(mod):
            for tb in st.transformer_blocks:
                if getattr(tb, "attn2", None) is not None:
                    out.append(tb.attn2)
    return out


def masked_resize(mask, hw):
    """[B, H, W] or [B, 1, H, W] -> [B, 1, h, w] bilinear (align_corners False, torch default)."""
    m = mask if mask.dim() == 4 else mask[:, None]
    return F.interpolate(m.float(), size=hw, mode="bilinear", align_corners=False)


@torch.no_grad()
def residual_preview(trainer, registry_name, wplus, prompt, step, out_dir):
    """One preview image of a residual-attention trainer's *current* state, sampled through the inference patch
    the Apply node runs (``methods.registry`` ``registry_name``: ``wplus_rca`` / ``pidiff_sca``, with that node's
    default strength and step window) on the unpatched base MODEL, with ``wplus`` [1, 18, 512] (a training photo's
    code) and ComfyUI's sampler (:func:`...training.preview.generate`); saved as ``out_dir/step_<step>.png``.
    -> [that path]"""
    from ...training.preview import generate, save_png
    from ..registry import method

    model = method(registry_name).build(trainer.patcher, None, trainer.weights(), wplus.detach().float().cpu()).model
    image = generate(model, trainer.clip, trainer.vae, prompt, trainer.preview_seed, trainer.preview_steps,
                     trainer.resolution)
    return [save_png(image, os.path.join(out_dir, f"step_{step:06d}.png"))]


# ----------------------------------------------------------------------------------------------
# residual cross-attention in training
# ----------------------------------------------------------------------------------------------
class TrainingResidual:
    """What :func:`.attention.residual_attention` reads from ``entry.params.shared`` (the inference
    callback): the *live* trainable layer modules, the tokens of the current micro-batch and λ."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.tokens = None
        self.strength = 1.0
        self.mask = None

    def layer(self, n, device, dtype):
        return self.adapter.layer(n)

    def context(self, batch, extra_options, device, dtype):
        e = self.tokens
        if e.shape[0] != batch:
            raise ValueError(f"training tokens for {e.shape[0]} samples, UNet batch {batch}")
        return e.to(device=device, dtype=dtype)

    def to(self, device):
        return self


def residual_training_options(model_patcher, adapter, method):
    """(transformer_options with the residual entries, TrainingResidual holder)."""
    from .attention import LayerParams, residual_attention

    holder = TrainingResidual(adapter)
    layers = patch_engine.cross_attention_layers(model_patcher)
    if len(layers) != len(adapter) or any(l.inner_dim != w for l, w in zip(layers, adapter.widths())):
        raise ValueError(f"the adapter has {len(adapter)} layers of widths {adapter.widths()}, the model "
                         f"{len(layers)} of widths {[l.inner_dim for l in layers]}")
    by_key = {l.key: n for n, l in enumerate(layers)}

    def make_entry(layer):
        return patch_engine.Entry(method=method, callback=residual_attention,
                                  params=LayerParams(holder, by_key[layer.key]))

    patched = patch_engine.add_entry(model_patcher, layers, make_entry)
    return base_transformer_options(patched), holder


def adapter_from_unet(model):
    """A :class:`.rca.ResidualAdapter` whose layers are copies of each attn2's to_q/to_k/to_v (official init)."""
    from .rca import ResidualAdapter

    return ResidualAdapter.from_attention(attn2_modules(model))


def fresh_mapping(cross_dim, generator=None):
    """A freshly initialised WProjModel (torch default Linear/LayerNorm init, as the official script)."""
    from .adapter import WProjModel

    if generator is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))
            return WProjModel(cross_dim).float()
    return WProjModel(cross_dim).float()


def initial_modules(model, init, seed, device, train_mapping=True):
    """The trainable (mapping, adapter) of a residual-attention trainer (W+ Adapter, PIDiff): fp32 copies of ``init``
    (loaded ResidualAttnWeights) or, without one, a fresh mapping (seeded) and adapter layers copied from the UNet's
    own attn2 to_q/k/v; on ``device``, in train mode, the mapping trainable only when ``train_mapping``."""
    if init is not None:
        mapping, adapter = trainable_copy(init)
    else:
        cross = attn2_modules(model)[0].to_k.weight.shape[1]
        mapping = fresh_mapping(cross, torch.Generator().manual_seed(int(seed)))
        adapter = adapter_from_unet(model)
    mapping.to(device).train().requires_grad_(bool(train_mapping))
    adapter.to(device).train().requires_grad_(True)
    return mapping, adapter


def trainable_copy(weights):
    """(mapping, adapter) trainable fp32 copies of loaded ResidualAttnWeights."""
    import copy

    from .rca import ResidualAdapter

    mapping = copy.deepcopy(weights.mapping).float().train().requires_grad_(True)
    adapter = ResidualAdapter.from_weights([tuple(t.detach() for t in l) for l in weights.layers])
    return mapping, adapter.train().requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# Stage II W+ augmentation (train_wild.py: get_w_direction + the five disturbance branches)
# ----------------------------------------------------------------------------------------------
class DirectionBank:
    """``att_direction_scale.pth`` (a list of [1,18,512] directions) + GANSpace ``ffhq_pca.pt`` and configs."""

    def __init__(self, directions, pca, configs):
        self.directions = [d.reshape(18, 512).float() for d in directions]
        self.pca = pca
        self.configs = list(configs.values())
        if not self.directions or not self.configs:
            raise ValueError("Stage II needs the W+ direction bank: att_direction_scale.pth and GANSpace "
                             "ffhq_pca.pt + ganspace_configs.csv (models/wplus/directions)")

    @classmethod
    def from_folder(cls, folder):
        from ...safe_load import load_file
        from .edits import load_pca, read_ganspace_configs

        def find(name):
            for root, _, files in os.walk(folder):
                if name in files:
                    return os.path.join(root, name)
            raise FileNotFoundError(f"Stage II: {name} not found under {folder} (the official w_direction files: "
                                    "att_direction_scale.pth, gan_space/ffhq_pca.pt, ganspace_configs.csv)")

        dirs = load_file(find("att_direction_scale.pth"))
        return cls(list(dirs), load_pca(find("ffhq_pca.pt")), read_ganspace_configs(find("ganspace_configs.csv")))


def _u(g, a=0.0, b=1.0):
    return a + (b - a) * float(torch.rand((), generator=g, dtype=torch.float64))


def _randint(g, a, b):
    """python ``random.randint(a, b)`` (inclusive)."""
    return int(torch.randint(a, b + 1, (), generator=g))


def w_direction(w_ori, bank, g, max_strength=60.0):
    """``get_w_direction``: per sample an offline direction × U(−s, s) (p 0.6) or a GANSpace delta."""
    from .edits import ganspace_delta

    out = []
    for w in w_ori:
        kind = _u(g)
        strength = _u(g, -max_strength, max_strength)
        if kind > 0.4:
            d = bank.directions[_randint(g, 0, len(bank.directions) - 1)] * strength
        else:
            idx, start, end, _ = bank.configs[_randint(g, 0, len(bank.configs) - 1)]
            delta = ganspace_delta(w[None], bank.pca, idx, strength)[0]  # [1,512]
            d = torch.zeros_like(w)
            d[start:end] += delta.expand(end - start, -1)
        out.append(d.to(w))
    return torch.stack(out)


def augment_wplus(w, drop, bank, g):
    """The official Stage II disturbance of a batch of (already drop-zeroed) W+ codes ``w`` [B,18,512]."""
    perm = torch.randperm(w.shape[0], generator=g)
    shuf = w[perm].clone()
    ori = w
    u = _u(g)
    if u > 0.55:
        aug = shuf + (ori - shuf) * _u(g, -40, 40)
    elif u > 0.48:
        aug = shuf + ori * (_randint(g, -60, 60) / 10.0)
    elif u > 0.35:
        noise = torch.randn(w.shape, generator=g, dtype=torch.float32) * w.std() + w.mean()
        aug = shuf + noise * (_randint(g, -80, 80) / 10.0)
    elif u > 0.2:
        aug = ori + w_direction(ori, bank, g)
    else:
        d1 = w_direction(ori, bank, g)
        d2 = w_direction(ori, bank, g)
        a = _u(g)
        aug = ori + a * d1 + (1 - a) * d2
    return torch.where(drop.view(-1, 1, 1), torch.zeros_like(aug), aug)


def erode_blur(mask, g):
    """train_wild.py's face-mask preparation: erode by a random square whose size depends on the face area,
    then Gaussian-blur with a random odd kernel (sizes in pixels of a 512 px crop, scaled to the mask)."""
    m = mask.float()
    scale = m.shape[-1] / 512.0
    area = float(m.mean()) * 255.0
    table = ((200, (150, 180), (60, 80)), (120, (110, 160), (60, 80)), (80, (100, 120), (40, 60)),
             (50, (80, 110), (30, 50)), (30, (40, 80), (20, 40)), (20, (20, 50), (10, 20)))
    erode, kernel = (10, 30), (10, 20)
    for thr, e, k in table:
        if area > thr:
            erode, kernel = e, k
            break
    e = max(1, int(round(_randint(g, *erode) * scale)))
    k = int(round(_randint(g, *kernel) * scale))
    k = k + 1 if k % 2 == 0 else k
    x = m[None, None]
    # cv2.erode with an e×e box anchored at its centre = min-pool (pad with 1: border does not erode)
    lo, hi = (e - 1) // 2, e // 2
    x = -F.max_pool2d(F.pad(-x, (lo, hi, lo, hi), value=-1.0), e, stride=1)
    if k > 1:
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel's sigma for sigma=0
        ax = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        ker = torch.exp(-ax ** 2 / (2 * sigma ** 2))
        ker = ker / ker.sum()
        x = F.pad(x, (k // 2,) * 4, mode="reflect") if k // 2 < min(x.shape[-2:]) else x
        x = F.conv2d(x, ker.view(1, 1, 1, k))
        x = F.conv2d(x, ker.view(1, 1, k, 1))
    return x[0, 0].clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# the trainers
# ----------------------------------------------------------------------------------------------
STAGE1_TEMPLATES = ("{}", "a {}", "a photo of a {}", "a cropped photo of a {}", "the photo of a {}",
                    "a depiction of a {}", "a close-up photo of a {}", "a good photo of a {}", "a photography of a {}",
                    "a cropped photography of a {}", "a close-up photography of a {}", "a bright photography of a {}",
                    "a good photography of a {}")
OFFICIAL = {
    1: {"steps": 1_000_000, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-2, "drop_w": 0.05, "drop_text": 0.05,
        "drop_both": 0.05},
    2: {"steps": 1_000_000, "batch_size": 16, "lr": 1e-4, "weight_decay": 1e-2, "drop_w": 0.05, "drop_text": 0.05,
        "drop_both": 0.05, "lambda_disen": 2.0, "lambda_preserve": 1.0},
}


class Example:
    """One training image: W+ code [18,512], captions (Stage II), face mask [H, W] in [0,1] (Stage II)."""

    def __init__(self, wplus, captions=(), mask=None, name=""):
        self.wplus = wplus.detach().float().reshape(18, 512)
        self.captions = [c for c in captions if c.strip()]
        self.mask = mask
        self.name = name


def draw_drops(u, p_w, p_t, p_both):
    """Official single-draw drop rule -> (drop_w [B] bool, drop_text [B] bool)."""
    drop_w = (u < p_w) | ((u >= p_w + p_t) & (u < p_w + p_t + p_both))
    drop_t = (u >= p_w) & (u < p_w + p_t + p_both)
    return drop_w, drop_t


class ResidualTrainerBase:
    """What the W+ Adapter's and PIDiff's trainers share (both set ``cfg`` with ``lr``, ``weight_decay`` and
    ``batch_size``, ``source``, ``acp``, ``kind``, ``prompts`` and ``device``): AdamW, the draws every step starts
    with and the noised inputs of the loss."""

    def optimizer_config(self):
        return adamw_config(self.cfg["lr"], self.cfg["weight_decay"])

    def first_draws(self, n, g):
        """In this order: ``index`` (which of the ``n`` examples), ``vae_eps`` (the VAE posterior sample), ``noise``
        and ``timesteps``, for a micro-batch of ``cfg["batch_size"]``."""
        b = self.cfg["batch_size"]
        c, h, w = self.source.shape
        return {
            "index": torch.randint(0, n, (b,), generator=g),
            "vae_eps": torch.randn((b, c, h, w), generator=g),
            "noise": torch.randn((b, c, h, w), generator=g),
            "timesteps": torch.randint(0, self.acp.shape[0], (b,), generator=g),
        }

    def noised(self, inputs):
        """(x_t, t, target, context, y) of a micro-batch (:meth:`first_draws` + ``prompts``): the noised latents,
        their timesteps, the ε / v target and the encoded prompts."""
        dev = self.device
        x0 = self.source.latents(inputs["index"], inputs["vae_eps"])
        t = inputs["timesteps"].to(dev).long()
        noise = inputs["noise"].to(dev)
        x_t = diffusion.add_noise(self.acp, x0, noise, t)
        target = diffusion.target(self.kind, self.acp, x0, noise, t)
        ctx, y = self.prompts(inputs["prompts"])
        return x_t, t, target, ctx, y


class WPlusAdapterTrainer(ResidualTrainerBase):
    """Stage I (``stage=1``) or Stage II (``stage=2``) of the W+ Adapter. See the module docstring."""

    method = "wplus"

    def __init__(self, model_patcher, clip, vae, pixels, examples, stage=1, init=None, batch_size=1,
                 lr=1e-4, weight_decay=1e-2, directions=None, class_word="face", seed=0, device="cpu",
                 output_dirs=None, gradient_checkpointing=False, preview_prompt=None, preview_steps=20,
                 preview_seed=0, **overrides):
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        self.stage = stage
        self.cfg = dict(OFFICIAL[stage])
        self.cfg.update(batch_size=int(batch_size), lr=float(lr), weight_decay=float(weight_decay))
        self.cfg.update(overrides)
        self.device = torch.device(device)
        self.output_dirs = dict(output_dirs or {})
        self.checkpointing = bool(gradient_checkpointing)
        self.patcher = model_patcher
        self.model = model_patcher.model
        self.examples = list(examples)
        if not self.examples:
            raise ValueError("no training images")
        if len(self.examples) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(self.examples)} examples")
        self.class_word = class_word
        self.clip, self.vae = clip, vae
        self.resolution = int(pixels.shape[-1])
        # preview: photo 0's code; Stage I the official template "a photo of a <class word>", Stage II its caption
        self.preview_prompt = preview_prompt or (f"a photo of a {class_word}" if stage == 1 else
                                                 (self.examples[0].captions or ["a photo of a person"])[0])
        self.preview_steps, self.preview_seed = int(preview_steps), int(preview_seed)
        self.source = LatentSource(vae, self.model, pixels, self.device)
        self.prompts = PromptEncoder(clip, self.model, tuple(pixels.shape[-2:]), self.device)
        self.acp = diffusion.alphas_cumprod(self.model).to(self.device)
        self.kind = diffusion.prediction_type(self.model)
        if stage == 2 and init is None:
            raise ValueError("W+ Adapter Stage II starts from a Stage I file (w_proj and adapters): give init")
        self.mapping, self.adapter = initial_modules(self.model, init, seed, self.device, train_mapping=stage == 1)
        self.transformer_options, self.holder = residual_training_options(model_patcher, self.adapter, "wplus_rca_train")
        self.plain_options = base_transformer_options(model_patcher)
        self.bank = directions
        if stage == 2:
            if directions is None:
                raise ValueError("W+ Adapter Stage II needs the W+ direction bank (DirectionBank)")
            if any(e.mask is None for e in self.examples):
                raise ValueError("W+ Adapter Stage II needs a face mask for every training image")

    # -- protocol -------------------------------------------------------------------------------
    def trainable(self):
        out = {}
        if self.stage == 1:
            out.update({f"w_proj.{k}": p for k, p in self.mapping.named_parameters()})
        out.update({f"wplus_adapter.{k}": p for k, p in self.adapter.named_parameters()})
        return out

    def sample_inputs(self, step, micro, generator):
        g, b = generator, self.cfg["batch_size"]
        c, h, w = self.source.shape
        inp = self.first_draws(len(self.examples), g)
        idx = inp["index"]
        u = torch.rand((b,), generator=g, dtype=torch.float64)
        drop_w, drop_t = draw_drops(u, self.cfg["drop_w"], self.cfg["drop_text"], self.cfg["drop_both"])
        texts = []
        for i in idx.tolist():
            ex = self.examples[i]
            if self.stage == 1:
                texts.append(STAGE1_TEMPLATES[_randint(g, 0, len(STAGE1_TEMPLATES) - 1)].format(self.class_word))
            else:  # official: a random caption line of the image ("a person" when it has none)
                texts.append(ex.captions[_randint(g, 0, len(ex.captions) - 1)] if ex.captions else "a person")
        inp["prompts"] = ["" if d else t for t, d in zip(texts, drop_t.tolist())]
        inp["drop_wplus"] = drop_w
        wplus = torch.stack([self.examples[i].wplus for i in idx.tolist()])
        inp["wplus"] = wplus
        if self.stage == 2:
            w0 = torch.where(drop_w.view(-1, 1, 1), torch.zeros_like(wplus), wplus)
            inp["wplus_aug"] = augment_wplus(w0, drop_w, self.bank, g)
            masks = torch.stack([erode_blur(self.examples[i].mask, g) for i in idx.tolist()])
            inp["region"] = 1.0 - masked_resize(masks, (h, w)).expand(-1, c, -1, -1)
        return inp

    def _tokens(self, wplus, drop):
        w = wplus.to(self.device)
        w = torch.where(drop.to(self.device).view(-1, 1, 1), torch.zeros_like(w), w)
        return self.mapping(w)

    def loss_terms(self, inputs):
        dev = self.device
        x_t, t, target, ctx, y = self.noised(inputs)
        self.holder.tokens = self._tokens(inputs["wplus"], inputs["drop_wplus"])
        pred = unet_forward(self.model, x_t, t, ctx, self.transformer_options, y, self.checkpointing)
        rec = F.mse_loss(pred.float(), target.float(), reduction="mean")
        if self.stage == 1:
            # the tokens stay in the holder: with gradient checkpointing the backward pass re-runs the UNet blocks,
            # and their residual attention reads them again (the next micro-batch sets its own)
            return {"loss": rec, "mse": rec}
        tokens = self.holder.tokens
        with torch.no_grad():
            self.holder.tokens = self.mapping(inputs["wplus_aug"].to(dev))
            pred_aug = unet_forward(self.model, x_t, t, ctx, self.transformer_options, y)
            pred_now = unet_forward(self.model, x_t, t, ctx, self.plain_options, y)  # λ = 0: no residual
        self.holder.tokens = tokens  # the grad forward's tokens, for the checkpointed recompute in backward
        m = inputs["region"].to(dev)
        disen = F.mse_loss(pred_aug.float() * m, pred.float() * m, reduction="mean")
        pres = F.mse_loss(pred_now.float(), pred.float(), reduction="mean")
        loss = rec + self.cfg["lambda_disen"] * disen + self.cfg["lambda_preserve"] * pres
        return {"loss": loss, "mse": rec, "disentangle": disen, "preserve": pres}

    def weights(self):
        """The current state as inference weights (ResidualAttnWeights over frozen CPU copies)."""
        return weights_of(self.mapping, self.adapter, "wplus_adapter")

    def export(self, name, meta):
        return export_wplus(self.weights(), name, meta, self.output_dirs, self.stage)

    def preview(self, step, out_dir):
        """One image with ApplyResidualCrossAttention's patch (strength 1, start 0.2) of the current weights and
        photo 0's W+ code."""
        return residual_preview(self, "wplus_rca", self.examples[0].wplus[None], self.preview_prompt, step, out_dir)


def weights_of(mapping, adapter, kind):
    import copy

    from .adapter import ResidualAttnWeights

    return ResidualAttnWeights(copy.deepcopy(mapping).float().cpu(), copy.deepcopy(adapter).float().cpu(), kind, "training")


def export_wplus(weights, name, meta, output_dirs, stage):
    """Official ``wplus_adapter.bin`` layout (``<name>.bin``) + safetensors (``<name>.safetensors``) + ``.json``."""
    from safetensors.torch import save_file

    from .adapter import to_official_dicts

    paths = jobfiles.fresh_output_paths(output_dirs["wplus"], name, (".bin", ".safetensors", ".json"))
    dicts = to_official_dicts(weights)
    torch.save(dicts, paths[0])
    flat = {f"w_proj.{k}": v.float().contiguous() for k, v in dicts["w_proj"].items()}
    flat.update({f"wplus_adapter.{k}": v.float().contiguous() for k, v in dicts["wplus_adapter"].items()})
    save_file(flat, paths[1], metadata=dict(jobfiles.string_metadata(meta), format="wplus_adapter", stage=str(stage)))
    with open(paths[2], "w", encoding="utf-8") as f:
        json.dump(dict(meta or {}, stage=stage), f, indent=1)
    return [{"path": paths[0], "folder": "wplus", "name": f"{name}.bin", "kind": "official"},
            {"path": paths[1], "folder": "wplus", "name": f"{name}.safetensors", "kind": "safetensors"},
            {"path": paths[2], "folder": "wplus", "name": None, "kind": "metadata"}]


# ----------------------------------------------------------------------------------------------
# job files -> trainer (worker side)
# ----------------------------------------------------------------------------------------------
RESULT_TYPE = "WPLUS_ADAPTER"
WPLUS_FILE = "wplus_codes.safetensors"  # in the job dir: {"wplus": [N, 18, 512]} (one code per photo)


def load_image(path, resolution):
    """RGB, PIL bilinear resize to resolution² (torchvision ``Resize`` of the official scripts), [-1, 1] CHW."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)


def load_mask(path, resolution):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("L").resize((resolution, resolution), Image.BILINEAR), dtype=np.float32)
    return torch.from_numpy(arr / 255.0)


def load_codes(job_dir, params, n):
    from safetensors.torch import load_file

    path = os.path.join(job_dir, params.get("wplus_file", WPLUS_FILE))
    w = load_file(path)["wplus"].float().reshape(-1, 18, 512)
    if w.shape[0] != n:
        raise ValueError(f"{path}: {w.shape[0]} W+ codes for {n} photos (one per photo expected)")
    return w


def build_trainer(spec, base, job_dir):
    from ...training.spec import photo_paths
    from .adapter import load_wplus_adapter

    p = spec.params
    stage = int(p.get("stage", 1))
    files = photo_paths(spec, job_dir)
    pixels = torch.stack([load_image(f, spec.resolution) for f in files])
    codes = load_codes(job_dir, p, len(files))
    masks = [load_mask(m if os.path.isabs(m) else os.path.join(job_dir, m), spec.resolution) for m in spec.masks] \
        if spec.masks else [None] * len(files)
    captions = p.get("captions") or [[] for _ in files]
    examples = [Example(codes[i], captions[i], masks[i], os.path.basename(files[i])) for i in range(len(files))]
    init = load_wplus_adapter(p["init_file"]) if p.get("init_file") else None
    bank = DirectionBank.from_folder(p["directions_dir"]) if stage == 2 else None
    return WPlusAdapterTrainer(base.model, base.clip, base.vae, pixels, examples, stage=stage, init=init,
                               batch_size=spec.batch, lr=spec.learning_rate,
                               weight_decay=float(p.get("weight_decay", 1e-2)), directions=bank,
                               class_word=p.get("class_word", "face"), seed=spec.seed, device=base.device,
                               output_dirs=spec.output_dirs, gradient_checkpointing=spec.gradient_checkpointing,
                               lambda_disen=float(p.get("lambda_disen", 2.0)),
                               lambda_preserve=float(p.get("lambda_preserve", 1.0)),
                               preview_prompt=p.get("preview_prompt"), preview_steps=spec.preview_steps,
                               preview_seed=spec.seed)


def load_result(outputs):
    from .adapter import load_wplus_adapter

    return load_wplus_adapter(jobfiles.written_safetensors(outputs, "W+ Adapter"))


__all__ = ["WPlusAdapterTrainer", "Example", "DirectionBank", "augment_wplus", "erode_blur", "draw_drops",
           "LatentSource", "PromptEncoder", "unet_forward", "residual_preview", "attn2_modules", "adapter_from_unet", "initial_modules",
           "residual_training_options", "build_trainer", "load_result", "RESULT_TYPE"]
