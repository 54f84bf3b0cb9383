"""Face alignment on tensors with kornia: FFHQ (256/512/1024) and ArcFace 112, batched,
differentiable, on whatever device the images are on.

The similarity transform (rotation, uniform scale, translation) from the 5 detected points to a
template is estimated by least squares (Umeyama 1991) in torch, then applied with
``kornia.geometry.transform.warp_affine``.

FFHQ note: the official FFHQ / e4e / W+ Adapter preprocessing (``align_face`` with dlib's 68
landmarks) builds an oriented square from the eye centres and the outer mouth corners; template
``OFFICIAL`` runs exactly that (``align_dlib.py``, needs the optional dlib packages). Template
``ffhq`` uses 5 points (eyes, nose, mouth corners) fitted to the mean FFHQ 5-point positions (the
template used by GFPGAN/facexlib/CodeFormer): both are similarity transforms driven by the same
features, but the 5-point crop is an approximation (15.2 px mean landmark offset measured on the
512 px official W+ Adapter crop, tests/face/test_align.py), not a copy.
"""
import torch

from .types import AlignTransform

# mean FFHQ positions of the 5 points in a 512x512 aligned image (order: see types.KPS_NAMES)
FFHQ_TEMPLATE_512 = torch.tensor([
    [192.98138, 239.94708],
    [318.90277, 240.19360],
    [256.63416, 314.01935],
    [201.26117, 371.41043],
    [313.08905, 371.15118],
], dtype=torch.float64)

# insightface's ArcFace 112x112 template (utils/face_align.arcface_dst)
ARCFACE_TEMPLATE_112 = torch.tensor([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=torch.float64)

PADDING_MODES = {"reflect": "reflection", "zeros": "zeros", "border": "border"}
OFFICIAL = "ffhq official (dlib-68)"
TEMPLATES = (OFFICIAL, "ffhq", "arcface")


def default_template() -> str:
    """The official dlib-68 FFHQ alignment when dlib is installed, else the 5-point FFHQ fit."""
    from .align_dlib import available

    return OFFICIAL if available() else "ffhq"


def template(name: str, size: int) -> torch.Tensor:
    """The 5-point template ``[5, 2]`` (float64) scaled to a ``size`` x ``size`` crop."""
    if name == "ffhq":
        return FFHQ_TEMPLATE_512 * (size / 512.0)
    if name == "arcface":
        return ARCFACE_TEMPLATE_112 * (size / 112.0)
    raise ValueError(f"unknown alignment template {name!r}; expected 'ffhq' or 'arcface'")


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transform taking ``src`` points to ``dst`` points.

    src, dst: [B, N, 2] (dst may be [N, 2], broadcast). Returns [B, 2, 3] (float64) with
    ``dst ~= M[:, :, :2] @ src + M[:, :, 2]`` (Umeyama 1991, no reflection).
    """
    src = src.to(torch.float64)
    dst = dst.to(device=src.device, dtype=torch.float64)
    if dst.dim() == 2:
        dst = dst.expand(src.shape[0], -1, -1)
    n = src.shape[1]
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc ** 2).sum(dim=(1, 2)) / n                          # [B]
    cov = dc.transpose(1, 2) @ sc / n                              # [B, 2, 2]
    u, s, vh = torch.linalg.svd(cov)
    d = torch.ones(src.shape[0], 2, dtype=torch.float64, device=src.device)
    d[:, 1] = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    d[:, 1] = torch.where(d[:, 1] == 0, torch.ones_like(d[:, 1]), d[:, 1])
    rot = u @ torch.diag_embed(d) @ vh                             # [B, 2, 2]
    scale = (s * d).sum(1) / var_s.clamp_min(1e-12)                # [B]
    trans = mu_d.squeeze(1) - scale[:, None] * (rot @ mu_s.transpose(1, 2)).squeeze(2)
    return torch.cat([scale[:, None, None] * rot, trans[:, :, None]], dim=2)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """Inverse of [B, 2, 3] affine matrices."""
    a = m[:, :, :2]
    a_inv = torch.linalg.inv(a)
    return torch.cat([a_inv, -(a_inv @ m[:, :, 2:])], dim=2)


def _check(images, kps):
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be a tensor [B, H, W, 3] (ComfyUI IMAGE); got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    kps = torch.as_tensor(kps)
    if kps.dim() == 2:
        kps = kps[None]
    if kps.shape[1:] != (5, 2) or kps.shape[0] != images.shape[0]:
        raise ValueError(f"kps must be [B, 5, 2] with B = {images.shape[0]} images; got {tuple(kps.shape)}")
    if images.shape[0] == 0:
        raise ValueError("empty image batch: nothing to align")
    return kps


def warp(images: torch.Tensor, matrices: torch.Tensor, size, padding: str = "reflect") -> torch.Tensor:
    """Warp IMAGE-layout tensors [B, H, W, C] with forward matrices [B, 2, 3] to ``size`` (int or (h, w))."""
    from kornia.geometry.transform import warp_affine

    h, w = (size, size) if isinstance(size, int) else size
    x = images.movedim(-1, 1)
    out = warp_affine(x.float(), matrices.to(device=x.device, dtype=torch.float32), (h, w),
                      mode="bilinear", padding_mode=PADDING_MODES.get(padding, padding), align_corners=True)
    return out.movedim(1, -1).to(images.dtype)


def align_to_template(images, kps, name: str, size: int, padding: str = "reflect"):
    """Align each image [B, H, W, 3] by its 5 points [B, 5, 2] to template ``name`` at ``size``.

    Returns (aligned [B, size, size, 3], forward [B, 2, 3], inverse [B, 2, 3]) (matrices float32).
    """
    kps = _check(images, kps).to(images.device)
    fwd = umeyama(kps, template(name, size).to(images.device))
    inv = invert_affine(fwd)
    aligned = warp(images, fwd, int(size), padding)
    return aligned.clamp(0, 1) if padding != "zeros" else aligned, fwd.float(), inv.float()


def ffhq_align(images, kps, size: int = 1024, padding: str = "reflect"):
    """FFHQ alignment (as used by e4e / W+ Adapter, 5-point approximation: see module doc).

    images [B, H, W, 3] in 0..1, kps [B, 5, 2] pixels -> (aligned [B, size, size, 3],
    forward matrices [B, 2, 3] image->crop, inverse matrices [B, 2, 3] crop->image).
    """
    return align_to_template(images, kps, "ffhq", size, padding)


def arcface_align(images, kps) -> torch.Tensor:
    """ArcFace 112x112 crops [B, 112, 112, 3] (insightface norm_crop geometry, zero padding)."""
    return align_to_template(images, kps, "arcface", 112, padding="zeros")[0]


def align_faces(images: torch.Tensor, bundle, name: str = "ffhq", size: int = 512, padding: str = "reflect"):
    """Align every face of a FaceBundle; returns (crops [N, size, size, 3], AlignTransform)."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError("FP_FaceAlign needs a non-empty image batch [B, H, W, 3]")
    if len(bundle) == 0:
        raise ValueError("FACES is empty: no face was detected, so there is nothing to align")
    idx = bundle.image_indices
    if int(idx.max()) >= images.shape[0]:
        raise ValueError(f"FACES refer to image {int(idx.max()) + 1} but the image batch has only "
                         f"{images.shape[0]}; connect the same images that went into FP_FaceDetect")
    if tuple(images.shape[1:3]) != tuple(bundle.image_sizes):
        raise ValueError(f"FACES were detected on {bundle.image_sizes[1]}x{bundle.image_sizes[0]} images but "
                         f"these are {images.shape[2]}x{images.shape[1]}; connect the same images")
    if name == OFFICIAL:
        from .align_dlib import align_faces_official

        return align_faces_official(images, bundle, int(size), padding)
    crops, fwd, inv = align_to_template(images[idx.to(images.device)], bundle.kps, name, size, padding)
    return crops, AlignTransform(fwd.cpu(), inv.cpu(), idx, int(size), tuple(images.shape[1:3]), name)


def paste_back(images: torch.Tensor, crops: torch.Tensor, transform: AlignTransform, feather: int = 16):
    """Paste (edited) crops back into ``images`` with the inverse transform and a feathered edge.

    ``crops`` may have any square size: the inverse matrix is rescaled from ``transform.size``.
    Faces are composited in order, so later faces win where crops overlap.
    """
    from kornia.filters import gaussian_blur2d

    if crops.shape[0] != transform.forward.shape[0]:
        raise ValueError(f"{crops.shape[0]} crops but the transform describes {transform.forward.shape[0]} faces")
    if tuple(images.shape[1:3]) != tuple(transform.image_size):
        raise ValueError(f"the transform was made on {transform.image_size[1]}x{transform.image_size[0]} "
                         f"images, these are {images.shape[2]}x{images.shape[1]}")
    dev = images.device
    h, w = images.shape[1:3]
    scale = transform.size / float(crops.shape[1])
    s = torch.diag(torch.tensor([scale, scale, 1.0], dtype=torch.float64))
    inv = transform.inverse.to(torch.float64)
    inv3 = torch.cat([inv, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(inv.shape[0], 1, 3)], 1)
    inv = (inv3 @ s)[:, :2].to(dev)                       # crop(resized) pixels -> image pixels
    back = warp(crops.to(dev), inv, (h, w), padding="zeros")
    ones = torch.ones(crops.shape[0], crops.shape[1], crops.shape[2], 1, device=dev)
    if feather > 0:  # pull the opaque region in from the crop border, then blur it
        m = torch.zeros_like(ones)
        f = min(int(feather), crops.shape[1] // 4)
        m[:, f:crops.shape[1] - f, f:crops.shape[2] - f] = 1
        k = 2 * f + 1
        ones = gaussian_blur2d(m.movedim(-1, 1), (k, k), (f / 2 + 1e-6, f / 2 + 1e-6)).movedim(1, -1)
    alpha = warp(ones, inv, (h, w), padding="zeros").clamp(0, 1)
    out = images.clone()
    for i, b in enumerate(transform.image_indices.tolist()):
        out[b] = out[b] * (1 - alpha[i]) + back[i] * alpha[i]
    return out
