"""Face masks from detected landmarks/boxes (convex hull, ellipse, box), feathered; background whitening."""
import math

import torch

from .types import FaceBundle

MASK_SHAPES = ["convex_hull", "ellipse", "bbox"]


def _outline(kps: torch.Tensor) -> torch.Tensor:
    """Points around the whole face from 5 landmarks: the 5 points plus forehead and chin points
    extrapolated along the eyes->mouth axis, and cheek points along the eye axis."""
    eye_l, eye_r, nose, m_l, m_r = kps
    eyes_c, mouth_c = (eye_l + eye_r) / 2, (m_l + m_r) / 2
    down = mouth_c - eyes_c                   # eyes -> mouth
    across = (eye_r - eye_l)                  # left eye -> right eye
    pts = [eye_l, eye_r, nose, m_l, m_r,
           eye_l - 0.9 * down - 0.25 * across, eye_r - 0.9 * down + 0.25 * across,   # forehead
           eyes_c - 1.1 * down,
           mouth_c + 0.75 * down,                                                     # chin
           m_l + 0.3 * down - 0.35 * across, m_r + 0.3 * down + 0.35 * across,       # jaw
           eye_l - 0.5 * across + 0.3 * down, eye_r + 0.5 * across + 0.3 * down]      # cheeks
    return torch.stack(pts)


def _hull(points: torch.Tensor) -> torch.Tensor:
    """Convex hull (counter-clockwise in x-right/y-down pixel space orientation of the monotone chain)."""
    pts = sorted({(float(x), float(y)) for x, y in points.tolist()})
    if len(pts) < 3:
        return torch.tensor(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return torch.tensor(lower[:-1] + upper[:-1], dtype=torch.float32)


def _fill_convex(poly: torch.Tensor, h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    inside = torch.ones(h, w, dtype=torch.bool)
    n = poly.shape[0]
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        c = (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0])
        inside &= c >= 0
    return inside.float()


def _fill_ellipse(center, ax, ay, angle, h, w):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    dx, dy = xs - center[0], ys - center[1]
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    return (((u / max(ax, 1e-3)) ** 2 + (v / max(ay, 1e-3)) ** 2) <= 1).float()


def feather_mask(mask: torch.Tensor, feather: float) -> torch.Tensor:
    """Gaussian-feather a MASK [B, H, W] (sigma = feather / 2 px)."""
    if feather <= 0:
        return mask
    from kornia.filters import gaussian_blur2d

    sigma = float(feather) / 2.0
    k = int(2 * math.ceil(3 * sigma) + 1)
    k = min(k, 2 * (min(mask.shape[-2:]) // 2) - 1)
    if k < 3:
        return mask
    return gaussian_blur2d(mask[:, None].float(), (k, k), (sigma, sigma), border_type="replicate")[:, 0].clamp(0, 1)


def face_mask(bundle: FaceBundle, shape: str = "convex_hull", grow: float = 1.0, feather: float = 8.0,
              height=None, width=None) -> torch.Tensor:
    """MASK [B, H, W] (B = images the FACES came from): union of each image's face regions."""
    if shape not in MASK_SHAPES:
        raise ValueError(f"mask shape must be one of {MASK_SHAPES}, got {shape!r}")
    h, w = (height, width) if height is not None else bundle.image_sizes
    sy, sx = h / bundle.image_sizes[0], w / bundle.image_sizes[1]
    scale = torch.tensor([sx, sy])
    out = torch.zeros(bundle.num_images, h, w)
    for f in bundle.faces:
        kps, box = f.kps * scale, f.bbox.view(2, 2) * scale
        if shape == "bbox":
            c, half = box.mean(0), (box[1] - box[0]) / 2 * grow
            m = torch.zeros(h, w)
            x1, y1 = (c - half).floor().clamp(min=0).long().tolist()
            x2, y2 = (c + half).ceil().long().tolist()
            m[y1:max(y2, y1), x1:max(x2, x1)] = 1
        elif shape == "ellipse":
            eye_vec = kps[1] - kps[0]
            angle = math.atan2(float(eye_vec[1]), float(eye_vec[0]))
            c = (box.mean(0) + _outline(kps).mean(0)) / 2
            bw, bh = (box[1] - box[0]).tolist()
            m = _fill_ellipse(c.tolist(), bw / 2 * grow, bh / 2 * 1.1 * grow, angle, h, w)
        else:
            pts = _outline(kps)
            c = pts.mean(0)
            poly = _hull(c + (pts - c) * grow)
            # the monotone chain orientation: make the half-plane test sign consistent
            area = sum(float(poly[i, 0] * poly[(i + 1) % len(poly), 1] - poly[(i + 1) % len(poly), 0] * poly[i, 1])
                       for i in range(len(poly)))
            if area < 0:
                poly = poly.flip(0)
            m = _fill_convex(poly, h, w)
        out[f.image_index] = torch.maximum(out[f.image_index], m)
    return feather_mask(out, feather)


def whiten_background(images: torch.Tensor, mask: torch.Tensor, blur: float = 8.0) -> torch.Tensor:
    """W+ Adapter preprocessing: keep the masked face, white elsewhere: ``img*m + (1-m)*1``, blurred mask."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.shape[-2:] != images.shape[1:3]:
        mask = torch.nn.functional.interpolate(mask[:, None].float(), size=images.shape[1:3], mode="bilinear",
                                               align_corners=False)[:, 0]
    if mask.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"{mask.shape[0]} masks for {images.shape[0]} images: give one mask or one per image")
    m = feather_mask(mask.float().clamp(0, 1), blur).to(images.device)[..., None]
    return images * m + (1 - m) * 1.0
