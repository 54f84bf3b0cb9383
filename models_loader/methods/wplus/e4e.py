"""Pure-torch e4e (Encoder4Editing, Tov et al. 2021) image -> StyleGAN2-FFHQ W+ encoder.

Architecture and state-dict names follow omertov/encoder4editing (``models/encoders/
psp_encoders.py``, ``helpers.py``) so the official ``e4e_ffhq_encode.pt`` loads with
``strict=True`` for every ``encoder.*`` key:

- IR-SE50 backbone: ``input_layer`` (conv 3x3, BN, PReLU) and ``body`` = 24 ``bottleneck_IR_SE``
  units (3 + 4 + 14 + 3; SE reduction 16). Features are tapped after units 6 (c1, 128 ch, 64x64),
  20 (c2, 256 ch, 32x32) and 23 (c3, 512 ch, 16x16).
- Feature pyramid: ``p2 = up(c3) + latlayer1(c2)``, ``p1 = up(p2) + latlayer2(c1)`` (bilinear,
  ``align_corners=True``).
- 18 ``GradualStyleBlock``s (strided 3x3 convs + LeakyReLU(0.01), then an ``EqualLinear``): styles
  0..2 read c3, 3..6 read p2, 7..17 read p1.
- e4e: ``w[:, 0] = w0 = styles[0](c3)``, ``w[:, i] = w0 + styles[i](...)``; then ``+ latent_avg``.
  (pSp's ``GradualStyleEncoder`` shares the key layout and predicts each row independently;
  selected by ``opts['encoder_type']``.)

The official module imports StyleGAN2's fused CUDA ops; the encoder's ``EqualLinear`` layers use
no activation, so the plain ``F.linear(x, W * lr_mul / sqrt(in), b * lr_mul)`` here is exact.
At inference e4e uses all 18 deltas (``ProgressiveStage.Inference``).
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

NUM_STYLES = 18  # StyleGAN2 1024 px (FFHQ): 2 * log2(1024) - 2
INPUT_SIZE = 256
ENCODER_TYPES = ("Encoder4Editing", "GradualStyleEncoder")
_REQUIRED_KEYS = ("encoder.input_layer.0.weight", "encoder.body.0.res_layer.0.weight", "encoder.styles.0.linear.weight")


class EqualLinear(nn.Module):
    """StyleGAN2 equalised-lr linear layer without activation (the only form e4e uses)."""

    def __init__(self, in_dim, out_dim, lr_mul=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class SEModule(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * s


class BottleneckIRSE(nn.Module):
    """``bottleneck_IR_SE``: BN-conv-PReLU-conv(stride)-BN-SE residual + (maxpool | conv-BN) shortcut."""

    def __init__(self, in_channel, depth, stride):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_se50_units():
    """(in_channel, depth, stride) of the 24 IR-SE50 units (helpers.get_blocks(50))."""
    units = []
    for in_c, depth, n in ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3)):
        units.append((in_c, depth, 2))
        units += [(depth, depth, 1)] * (n - 1)
    return units


class GradualStyleBlock(nn.Module):
    def __init__(self, in_c, out_c, spatial):
        super().__init__()
        self.out_c = out_c
        layers = [nn.Conv2d(in_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]  # slope 0.01
        for _ in range(int(math.log2(spatial)) - 1):
            layers += [nn.Conv2d(out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x):
        return self.linear(self.convs(x).reshape(-1, self.out_c))


def _upsample_add(x, y):
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """IR-SE50 + FPN + GradualStyleBlocks. ``forward(x)`` takes [B,3,256,256] in [-1,1] and
    returns the codes *without* ``latent_avg`` ([B, style_count, 512])."""

    coarse_ind = 3
    middle_ind = 7

    def __init__(self, style_count=NUM_STYLES, encoder_type="Encoder4Editing"):
        super().__init__()
        if encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type must be one of {ENCODER_TYPES}, got {encoder_type!r}")
        self.encoder_type = encoder_type
        self.style_count = style_count
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = nn.Sequential(*[BottleneckIRSE(i, d, s) for i, d, s in ir_se50_units()])
        self.styles = nn.ModuleList()
        for i in range(style_count):
            spatial = 16 if i < self.coarse_ind else 32 if i < self.middle_ind else 64
            self.styles.append(GradualStyleBlock(512, 512, spatial))
        self.latlayer1 = nn.Conv2d(256, 512, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(128, 512, kernel_size=1, stride=1, padding=0)

    def features(self, x):
        x = self.input_layer(x)
        c1 = c2 = None
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == 6:
                c1 = x
            elif i == 20:
                c2 = x
        return c1, c2, x  # c3 = output of unit 23

    def forward(self, x):
        c1, c2, c3 = self.features(x)
        p2 = _upsample_add(c3, self.latlayer1(c2))
        p1 = _upsample_add(p2, self.latlayer2(c1))
        feats = [c3 if i < self.coarse_ind else p2 if i < self.middle_ind else p1 for i in range(self.style_count)]
        if self.encoder_type == "GradualStyleEncoder":  # pSp: every row predicted on its own
            return torch.stack([self.styles[i](f) for i, f in enumerate(feats)], dim=1)
        w0 = self.styles[0](c3)
        rows = [w0] + [w0 + self.styles[i](feats[i]) for i in range(1, self.style_count)]
        return torch.stack(rows, dim=1)


def preprocess(images, size=INPUT_SIZE):
    """ComfyUI IMAGE [B,H,W,3] in 0..1 -> [B,3,size,size] in [-1,1] ((x*255 - 127.5) / 127.5)."""
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"e4e expects an IMAGE tensor [B,H,W,3] in 0..1, got {shape}")
    x = images[..., :3].float().permute(0, 3, 1, 2)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x * 2.0 - 1.0


class E4EEncoder:
    """The ``E4E_ENCODER`` socket value: the network, ``latent_avg`` and the checkpoint's options."""

    def __init__(self, net, latent_avg=None, opts=None, source=""):
        self.net = net.eval().requires_grad_(False)
        self.latent_avg = latent_avg  # [style_count, 512] or None
        self.opts = dict(opts or {})
        self.source = source

    @property
    def style_count(self):
        return self.net.style_count

    def _device(self):
        try:
            import comfy.model_management as mm

            return mm.get_torch_device()
        except Exception:  # outside ComfyUI
            return torch.device("cpu")

    @torch.no_grad()
    def encode(self, images, batch_size=4, progress=None):
        """IMAGE [B,H,W,3] in 0..1 (FFHQ-aligned faces; resized to 256x256) -> WPLUS [B,18,512] fp32 (CPU)."""
        x = preprocess(images)
        device = self._device()
        self.net.to(device)
        out = []
        try:
            for start in range(0, x.shape[0], max(1, int(batch_size))):
                chunk = x[start:start + batch_size].to(device)
                codes = self.net(chunk).float()
                if self.latent_avg is not None:
                    codes = codes + self.latent_avg.to(device=device, dtype=codes.dtype).unsqueeze(0)
                out.append(codes.cpu())
                if progress is not None:
                    progress(chunk.shape[0])
        finally:
            if device.type != "cpu":
                self.net.to("cpu")
        return torch.cat(out, dim=0)

    def __repr__(self):
        return f"E4EEncoder({self.net.encoder_type}, styles={self.style_count}, source={os.path.basename(self.source)!r})"


class NotAnE4ECheckpoint(ValueError):
    pass


def _not_e4e(path, found):
    keys = sorted(found)[:6]
    return NotAnE4ECheckpoint(
        f"{os.path.basename(path)} is not an e4e encoder: expected keys encoder.input_layer.*, encoder.body.*, "
        f"encoder.styles.* (the official e4e_ffhq_encode.pt from omertov/encoder4editing, or a safetensors file "
        f"with the same 'encoder.*' keys and 'latent_avg'); found {len(found)} keys such as {keys}")


def split_checkpoint(ckpt, path=""):
    """(encoder state dict without the 'encoder.' prefix, latent_avg or None, opts dict) from a loaded
    official checkpoint ({'state_dict', 'opts', 'latent_avg'}) or a flat safetensors dict."""
    if not isinstance(ckpt, dict):
        raise _not_e4e(path, [type(ckpt).__name__])
    opts = ckpt.get("opts") if isinstance(ckpt.get("opts"), dict) else {}
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict):
        raise _not_e4e(path, list(ckpt))
    if not all(k in sd for k in _REQUIRED_KEYS):
        raise _not_e4e(path, list(sd))
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    latent_avg = ckpt.get("latent_avg", sd.get("latent_avg"))
    return enc, latent_avg, dict(opts)


def _style_count(enc):
    idx = {int(k.split(".")[1]) for k in enc if k.startswith("styles.")}
    return max(idx) + 1 if idx else 0


def build_from_state_dict(enc, latent_avg=None, opts=None, source=""):
    opts = dict(opts or {})
    name = os.path.basename(source) or "checkpoint"
    n = _style_count(enc)
    if n != NUM_STYLES:
        raise ValueError(f"{name}: this e4e predicts {n} W+ rows; the W+ Adapter / PIDiff need the 18-row "
                         f"StyleGAN2-FFHQ (1024 px) encoder e4e_ffhq_encode.pt")
    encoder_type = opts.get("encoder_type", "Encoder4Editing")
    if encoder_type not in ENCODER_TYPES:
        raise ValueError(f"{name}: unsupported encoder_type {encoder_type!r} in opts (expected one of {ENCODER_TYPES})")
    with torch.device("meta"):
        net = Encoder4Editing(n, encoder_type)
    enc = {k: v.float() if v.is_floating_point() else v for k, v in enc.items()}
    missing, unexpected = net.load_state_dict(enc, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{name}: e4e state dict does not match Encoder4Editing(IR-SE50): "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})")
    use_avg = bool(opts.get("start_from_latent_avg", latent_avg is not None))
    if use_avg:
        if latent_avg is None:
            raise ValueError(f"{name}: opts say start_from_latent_avg but the checkpoint has no 'latent_avg'")
        latent_avg = latent_avg.detach().float().reshape(-1, 512)
        if latent_avg.shape[0] == 1:
            latent_avg = latent_avg.expand(n, 512).clone()
        if latent_avg.shape != (n, 512):
            raise ValueError(f"{name}: latent_avg has shape {tuple(latent_avg.shape)}, expected [{n},512] or [512]")
    else:
        latent_avg = None
    return E4EEncoder(net, latent_avg, opts, source)


def load_e4e(path):
    """Load an e4e checkpoint safely (``weights_only`` torch pickle or safetensors) -> :class:`E4EEncoder`."""
    from ...safe_load import load_file, UnsafeCheckpointError

    check_torch_or_safetensors(path)
    try:
        ckpt = load_file(path)
    except UnsafeCheckpointError as exc:
        raise NotAnE4ECheckpoint(f"{os.path.basename(path)}: refused to unpickle it ({exc}). The official "
                                 f"e4e_ffhq_encode.pt holds only tensors and plain options and loads safely.") from exc
    opts = {}
    if str(path).lower().endswith((".safetensors", ".sft")):
        opts = safetensors_metadata(path)
    enc, latent_avg, ck_opts = split_checkpoint(ckpt, str(path))
    opts.update(ck_opts)
    return build_from_state_dict(enc, latent_avg, opts, str(path))


def check_torch_or_safetensors(path):
    """Clear error for files that are neither a torch checkpoint (zip or legacy pickle) nor safetensors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if str(path).lower().endswith((".safetensors", ".sft")):
        return
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise NotAnE4ECheckpoint(f"{os.path.basename(path)} is not a torch checkpoint (neither a zip nor a pickle "
                                 f"file) and not an e4e encoder: expected the official e4e_ffhq_encode.pt")


def safetensors_metadata(path):
    """Options stored in a safetensors header (``encoder_type``, ``start_from_latent_avg``)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out = {}
    if "encoder_type" in meta:
        out["encoder_type"] = meta["encoder_type"]
    if "start_from_latent_avg" in meta:
        out["start_from_latent_avg"] = meta["start_from_latent_avg"].lower() in ("1", "true", "yes")
    return out


def save_safetensors(encoder: E4EEncoder, path, dtype=None):
    """Write ``encoder.*`` + ``latent_avg`` (+ options as metadata) as safetensors."""
    import safetensors.torch

    sd = {f"encoder.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
          for k, v in encoder.net.state_dict().items()}
    meta = {"encoder_type": encoder.net.encoder_type, "start_from_latent_avg": str(encoder.latent_avg is not None)}
    if encoder.latent_avg is not None:
        sd["latent_avg"] = encoder.latent_avg.contiguous()
    safetensors.torch.save_file(sd, str(path), metadata=meta)


def encode_images(encoder: E4EEncoder, images, mask=None, average_batch=False, batch_size=4):
    """IMAGE (+ optional face MASK) -> WPLUS [B,18,512] (or [1,18,512] averaged), with a ComfyUI progress bar."""
    if not isinstance(encoder, E4EEncoder):
        raise ValueError(f"expected an E4E_ENCODER (from LoadE4EEncoder), got {type(encoder).__name__}")
    if mask is not None:  # the one whitening rule (face/mask.py); the MASK arrives already feathered, so no blur
        from ...face.mask import whiten_background

        images = whiten_background(images[..., :3].float(), mask, blur=0)
    bar = None
    try:
        import comfy.utils

        bar = comfy.utils.ProgressBar(int(images.shape[0]))
    except Exception:  # outside ComfyUI
        pass
    codes = encoder.encode(images, batch_size=batch_size, progress=bar.update if bar is not None else None)
    if average_batch:
        codes = codes.mean(dim=0, keepdim=True)
    return codes
