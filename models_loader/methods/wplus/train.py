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
import math
import os
import random as _random_module  # noqa: F401  (documentation: the official code uses python's random)

import torch
import torch.nn.functional as F

from ... import patch_engine

# ----------------------------------------------------------------------------------------------
# diffusion pieces shared by the pack's UNet trainers (W+ Adapter, PIDiff, PersonaMagic)
# ----------------------------------------------------------------------------------------------
ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8}  # torch / accelerate defaults, what every official script uses


def alphas_cumprod(model):
    """DDPM ᾱ_t [T] (float32) of a ComfyUI BaseModel's discrete schedule: 1 / (σ_t² + 1)."""
    ms = model.model_sampling
    return (1.0 / (ms.sigmas.double() ** 2 + 1.0)).float()


def add_noise(x0, noise, t, acp):
    """diffusers ``DDPMScheduler.add_noise``: √ᾱ_t x0 + √(1−ᾱ_t) ε."""
    a = acp.to(x0.device)[t.long()].to(x0.dtype)
    s1 = a.sqrt().view(-1, *[1] * (x0.dim() - 1))
    s2 = (1 - a).sqrt().view(-1, *[1] * (x0.dim() - 1))
    return s1 * x0 + s2 * noise


def prediction_target(model, x0, noise, t, acp):
    """ε for ε-prediction models, v = √ᾱ ε − √(1−ᾱ) x0 for v-prediction (SD2 768-v)."""
    import comfy.model_base

    if model.model_type == comfy.model_base.ModelType.V_PREDICTION:
        a = acp.to(x0.device)[t.long()].to(x0.dtype).view(-1, *[1] * (x0.dim() - 1))
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    return noise


class LatentSource:
    """VAE posterior of training pixels, computed once (latent caching): latent = scale·(mean + std·eps)
    with ``eps`` a given input (``latent_dist.sample()`` of the official scripts)."""

    def __init__(self, vae, model, pixels):
        """``pixels``: [N, 3, H, W] in [-1, 1] (float)."""
        fsm = vae.first_stage_model
        dev = next(fsm.parameters()).device
        dtype = next(fsm.parameters()).dtype
        means, stds = [], []
        with torch.no_grad():
            for i in range(pixels.shape[0]):
                z = fsm.quant_conv(fsm.encoder(pixels[i:i + 1].to(dev, dtype))) if getattr(fsm, "quant_conv", None) \
                    is not None else fsm.encoder(pixels[i:i + 1].to(dev, dtype))
                mean, logvar = torch.chunk(z.float(), 2, dim=1)
                logvar = logvar.clamp(-30.0, 20.0)
                means.append(mean.cpu())
                stds.append(torch.exp(0.5 * logvar).cpu())
        self.mean = torch.cat(means)
        self.std = torch.cat(stds)
        self.latent_format = model.latent_format

    @property
    def shape(self):
        return tuple(self.mean.shape[1:])

    def latents(self, idx, eps):
        z = self.mean[idx] + self.std[idx] * eps
        return self.latent_format.process_in(z)


class PromptEncoder:
    """Frozen text conditioning of prompt strings through ComfyUI's CLIP (exactly CLIPTextEncode), cached."""

    def __init__(self, clip, model=None, size=None):
        self.clip = clip
        self.model = model
        self.size = size  # (H, W) in pixels: SDXL size conditioning
        self.cache = {}

    def __call__(self, texts):
        """-> (context [B, L, D], y [B, adm] or None) float32 on CPU."""
        ctx, ys = [], []
        for text in texts:
            hit = self.cache.get(text)
            if hit is None:
                with torch.no_grad():
                    tokens = self.clip.tokenize(text)
                    cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
                    y = None
                    if self.model is not None and getattr(self.model, "adm_channels", 0):
                        h, w = self.size or (1024, 1024)
                        y = self.model.encode_adm(pooled_output=pooled, width=w, height=h, crop_w=0, crop_h=0,
                                                  target_width=w, target_height=h, device=torch.device("cpu"))
                hit = (cond.float().cpu(), None if y is None else y.float().cpu())
                self.cache[text] = hit
            ctx.append(hit[0])
            ys.append(hit[1])
        lens = {c.shape[1] for c in ctx}
        if len(lens) > 1:  # prompts longer than one 77-token chunk: pad with the empty prompt's rows
            raise ValueError(f"training prompts encode to different lengths {sorted(lens)}; keep each prompt "
                             "under 75 tokens")
        y = torch.cat(ys) if ys and ys[0] is not None else None
        return torch.cat(ctx), y


def unet_forward(model, x_t, t, context, transformer_options, y=None):
    """One ComfyUI UNet call on raw noisy latents and integer timesteps (= diffusers ``unet(x_t, t, c).sample``)."""
    dm = model.diffusion_model
    dtype = next(dm.parameters()).dtype
    to = dict(transformer_options)
    to.setdefault("cond_or_uncond", [0])
    to["sigmas"] = None  # training: no step window (every entry is active)
    kw = {} if y is None else {"y": y.to(x_t.device, dtype)}
    out = dm(x_t.to(dtype), timesteps=t.to(x_t.device).float(), context=context.to(x_t.device, dtype),
             transformer_options=to, **kw)
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

    mods = attn2_modules(model)
    return ResidualAdapter.from_weights([(m.to_q.weight.detach(), m.to_k.weight.detach(), m.to_v.weight.detach())
                                         for m in mods])


def fresh_mapping(cross_dim, generator=None):
    """A freshly initialised WProjModel (torch default Linear/LayerNorm init, as the official script)."""
    from .adapter import WProjModel

    if generator is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))
            return WProjModel(cross_dim).float()
    return WProjModel(cross_dim).float()


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


class WPlusAdapterTrainer:
    """Stage I (``stage=1``) or Stage II (``stage=2``) of the W+ Adapter. See the module docstring."""

    method = "wplus_adapter"

    def __init__(self, model_patcher, clip, vae, pixels, examples, stage=1, init=None, batch_size=1,
                 lr=1e-4, weight_decay=1e-2, directions=None, class_word="face", seed=0, size=None, **overrides):
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        self.stage = stage
        self.cfg = dict(OFFICIAL[stage])
        self.cfg.update(batch_size=int(batch_size), lr=float(lr), weight_decay=float(weight_decay))
        self.cfg.update(overrides)
        self.patcher = model_patcher
        self.model = model_patcher.model
        self.examples = list(examples)
        if not self.examples:
            raise ValueError("no training images")
        self.class_word = class_word
        self.source = LatentSource(vae, self.model, pixels)
        self.prompts = PromptEncoder(clip, self.model, size or tuple(pixels.shape[-2:]))
        self.acp = alphas_cumprod(self.model)
        cross = attn2_modules(self.model)[0].to_k.weight.shape[1]
        if stage == 2 and init is None:
            raise ValueError("W+ Adapter Stage II starts from a Stage I file (w_proj and adapters): give init")
        if init is not None:
            self.mapping, self.adapter = trainable_copy(init)
        else:
            self.mapping = fresh_mapping(cross, torch.Generator().manual_seed(int(seed))).train()
            self.adapter = adapter_from_unet(self.model).train()
        self.mapping.requires_grad_(stage == 1)
        self.adapter.requires_grad_(True)
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

    def optimizer_config(self):
        return {"lr": self.cfg["lr"], "betas": ADAMW["betas"], "eps": ADAMW["eps"],
                "weight_decay": self.cfg["weight_decay"]}

    def sample_inputs(self, step, micro, generator):
        g = generator
        b = self.cfg["batch_size"]
        c, h, w = self.source.shape
        idx = torch.randint(0, len(self.examples), (b,), generator=g)
        inp = {
            "index": idx,
            "vae_eps": torch.randn((b, c, h, w), generator=g),
            "noise": torch.randn((b, c, h, w), generator=g),
            "timesteps": torch.randint(0, self.acp.shape[0], (b,), generator=g),
        }
        u = torch.rand((b,), generator=g, dtype=torch.float64)
        drop_w, drop_t = draw_drops(u, self.cfg["drop_w"], self.cfg["drop_text"], self.cfg["drop_both"])
        texts = []
        for i in idx.tolist():
            ex = self.examples[i]
            if self.stage == 1 or not ex.captions:
                tpl = STAGE1_TEMPLATES[_randint(g, 0, len(STAGE1_TEMPLATES) - 1)]
                texts.append(tpl.format(self.class_word) if self.stage == 1 else "a person")
            else:
                texts.append(ex.captions[_randint(g, 0, len(ex.captions) - 1)])
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
        w = torch.where(drop.view(-1, 1, 1), torch.zeros_like(wplus), wplus)
        return self.mapping(w)

    def loss_terms(self, inputs):
        idx = inputs["index"]
        x0 = self.source.latents(idx, inputs["vae_eps"])
        t = inputs["timesteps"]
        noise = inputs["noise"]
        x_t = add_noise(x0, noise, t, self.acp)
        target = prediction_target(self.model, x0, noise, t, self.acp)
        ctx, y = self.prompts(inputs["prompts"])
        self.holder.tokens = self._tokens(inputs["wplus"], inputs["drop_wplus"])
        self.holder.strength = 1.0
        pred = unet_forward(self.model, x_t, t, ctx, self.transformer_options, y)
        rec = F.mse_loss(pred, target.float(), reduction="mean")
        if self.stage == 1:
            return {"loss": rec, "mse": rec}
        with torch.no_grad():
            self.holder.tokens = self.mapping(inputs["wplus_aug"])
            pred_aug = unet_forward(self.model, x_t, t, ctx, self.transformer_options, y)
            pred_now = unet_forward(self.model, x_t, t, ctx, self.plain_options, y)  # λ = 0
        self.holder.tokens = None
        m = inputs["region"]
        disen = F.mse_loss(pred_aug * m, pred * m, reduction="mean")
        pres = F.mse_loss(pred_now, pred, reduction="mean")
        loss = rec + self.cfg["lambda_disen"] * disen + self.cfg["lambda_preserve"] * pres
        return {"loss": loss, "mse": rec, "disentangle": disen, "preserve": pres}

    def weights(self):
        """The current state as inference weights (ResidualAttnWeights, frozen copies)."""
        import copy

        from .adapter import ResidualAttnWeights

        return ResidualAttnWeights(copy.deepcopy(self.mapping).float(), copy.deepcopy(self.adapter).float(),
                                   "wplus_adapter", "training")

    def export(self, out_dir, name, meta):
        from safetensors.torch import save_file

        from .adapter import to_official_dicts

        dicts = to_official_dicts(self.weights())
        os.makedirs(out_dir, exist_ok=True)
        bin_path = os.path.join(out_dir, f"{name}.bin")
        st_path = os.path.join(out_dir, f"{name}.safetensors")
        for p in (bin_path, st_path):
            if os.path.exists(p):
                raise FileExistsError(f"{p} exists: choose another output name")
        torch.save(dicts, bin_path)
        flat = {f"w_proj.{k}": v.float().contiguous() for k, v in dicts["w_proj"].items()}
        flat.update({f"wplus_adapter.{k}": v.float().contiguous() for k, v in dicts["wplus_adapter"].items()})
        md = {"method": "wplus_adapter", "stage": str(self.stage)}
        md.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()})
        save_file(flat, st_path, metadata=md)
        return [bin_path, st_path]

    def preview(self, step, out_dir):
        return None


__all__ = ["WPlusAdapterTrainer", "Example", "DirectionBank", "augment_wplus", "erode_blur", "draw_drops",
           "alphas_cumprod", "add_noise", "LatentSource", "PromptEncoder", "unet_forward", "attn2_modules",
           "adapter_from_unet", "residual_training_options", "math"]


# ----------------------------------------------------------------------------------------------
# one optimiser step as a plain function (tests and benches; the job engine's loop does the same)
# ----------------------------------------------------------------------------------------------
def make_optimizer(trainer):
    """AdamW over ``trainer.trainable()`` with ``trainer.optimizer_config()`` (the official hyper-parameters)."""
    cfg = trainer.optimizer_config()
    return torch.optim.AdamW(list(trainer.trainable().values()), lr=cfg["lr"], betas=tuple(cfg["betas"]),
                             eps=cfg["eps"], weight_decay=cfg["weight_decay"])


def one_step(trainer, micro_inputs, optimizer):
    """One optimiser step over the given micro-batches (loss / n each, as accelerate's accumulation):
    -> (mean loss terms, {name: gradient before the step}, {name: tensor after the step})."""
    params = trainer.trainable()
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_inputs)
    totals = {}
    for inp in micro_inputs:
        terms = trainer.loss_terms(inp)
        (terms["loss"] / n).backward()
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v.detach().float() / n
    grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for k, p in params.items()}
    optimizer.step()
    return totals, grads, {k: p.detach().clone() for k, p in params.items()}
