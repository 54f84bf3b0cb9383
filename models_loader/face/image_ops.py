"""The two uint8 image operations the ONNX face models need, in numpy (no OpenCV):

* ``resize_bilinear``: OpenCV ``INTER_LINEAR`` geometry (pixel centres at +0.5, edge samples
  clamped, no antialiasing when shrinking), as insightface's SCRFD resizes its input;
* ``warp_affine``: OpenCV ``warpAffine`` geometry (``dst(x, y) = src(M^-1 (x, y))``, bilinear,
  samples outside the image read as 0), as insightface's ``norm_crop`` warps the ArcFace crop.

The resize repeats OpenCV's fixed-point arithmetic (equal to ``cv2.resize`` bit for bit in the tests);
the warp computes in float and rounds, while OpenCV quantises positions to 1/32 px, so a few crop
pixels differ from OpenCV's by one grey level.
"""
import numpy as np


def _linear_taps(n_out: int, n_in: int):
    """OpenCV INTER_LINEAR taps: source indices (i0, i1) and 11-bit weights (w0, w1) per output pixel.

    Positions are computed in float32 and the weights rounded to 1/2048, as OpenCV does."""
    scale = 1.0 / (n_out / n_in)
    pos = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos)
    frac = (pos - i0).astype(np.float32)
    frac[(i0 < 0) | (i0 >= n_in - 1)] = 0.0     # outside the first / last centre: that pixel
    i0 = np.clip(i0, 0, n_in - 1).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int64)
    w0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
    return i0, i1, w0, w1


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [height, width, C], OpenCV's fixed-point INTER_LINEAR arithmetic:
    a horizontal pass in units of 1/2048, then the vertical pass with its SIMD rounding."""
    if img.shape[1] == width and img.shape[0] == height:
        return img.copy()
    y0, y1, b0, b1 = _linear_taps(height, img.shape[0])
    x0, x1, a0, a1 = _linear_taps(width, img.shape[1])
    used = np.unique(np.concatenate([y0, y1]))          # only the source rows the output reads
    src = img[used].astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]
    r0, r1 = np.searchsorted(used, y0), np.searchsorted(used, y1)
    b0, b1 = b0[:, None, None], b1[:, None, None]
    out = (((b0 * (rows[r0] >> 4)) >> 16) + ((b1 * (rows[r1] >> 4)) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def warp_affine(img: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, C] warped by the 2x3 forward ``matrix`` (image -> output) to [height, width, C]."""
    m = np.vstack([np.asarray(matrix, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(m)[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    h, w = img.shape[:2]
    src = img.astype(np.float64)

    def tap(yy, xx):
        inside = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w))[..., None]
        return np.where(inside, src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)

    out = ((1 - fy) * ((1 - fx) * tap(y0, x0) + fx * tap(y0, x0 + 1))
           + fy * ((1 - fx) * tap(y0 + 1, x0) + fx * tap(y0 + 1, x0 + 1)))
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def to_blob(images, mean: float, std: float) -> np.ndarray:
    """BGR uint8 images (one [H, W, 3] or a list of them) -> RGB float32 NCHW ``(x - mean) / std``."""
    batch = np.stack(images if isinstance(images, (list, tuple)) else [images])
    x = (batch[..., ::-1].astype(np.float32) - np.float32(mean)) * np.float32(1.0 / std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
