"""MNIST transformations of docs/method.md §1, in numpy: scale, rotation and hue on fixed value grids.

Geometry follows kornia's `get_rotation_matrix2d` + `warp_affine` (the authors' pipeline): a
point p of the source goes to `s R(θ) (p − c) + c` with c = (W/2, H/2) in pixel-index
coordinates and θ > 0 counter-clockwise on screen; each output pixel samples the source
bilinearly at the inverse image of its centre, zero outside. Hue follows kornia's `adjust_hue`:
RGB → HSV, h ← (h + δ) mod 2π, HSV → RGB.
"""

from __future__ import annotations

import functools

import numpy as np

MNIST_TRANSFORMS = ("scale", "rotation", "hue")
MNIST_FRAMES = 9
SCALES = 1.0 + 0.1 * np.arange(MNIST_FRAMES)
ROTATIONS_DEG = 10.0 * np.arange(MNIST_FRAMES)
HUES_DEG = 20.0 * np.arange(MNIST_FRAMES)


def colourise(grey: np.ndarray) -> np.ndarray:
    """A grey digit (H, W) or (1, H, W) in [0, 1] → RGB (3, H, W) with the digit in the red channel."""
    grey = np.asarray(grey, np.float32).reshape(grey.shape[-2:])
    out = np.zeros((3, *grey.shape), np.float32)
    out[0] = grey
    return out


@functools.lru_cache(maxsize=64)
def _affine_table(
    angles: tuple[float, ...], scales: tuple[float, ...], h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat source indices (F, 4, H·W) and bilinear weights (zero outside) of each output pixel."""
    theta = np.deg2rad(np.asarray(angles, np.float64)).reshape(-1, 1, 1)
    s = np.asarray(scales, np.float64).reshape(-1, 1, 1)
    cx, cy = w / 2.0, h / 2.0
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    dx, dy = xs[None] - cx, ys[None] - cy
    cos, sin = np.cos(theta), np.sin(theta)
    # inverse of dst = s [[cos, sin], [-sin, cos]] (src - c) + c
    sx = (cos * dx - sin * dy) / s + cx
    sy = (sin * dx + cos * dy) / s + cy
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    wx, wy = sx - x0, sy - y0
    idx, weights = [], []
    for oy, ox, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        xi, yi = x0 + ox, y0 + oy
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx.append(np.clip(yi, 0, h - 1) * w + np.clip(xi, 0, w - 1))
        weights.append(weight * valid)
    f = theta.shape[0]
    return np.stack(idx, 1).reshape(f, 4, h * w), np.stack(weights, 1).reshape(f, 4, h * w).astype(np.float32)


def affine(image: np.ndarray, angle_deg: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Frames of one image (C, H, W), frame i rotated by angle_deg[i] and scaled by scale[i] about
    (W/2, H/2): (F, C, H, W). Bilinear, zero fill; the sampling table is cached per grid.
    """
    c, h, w = image.shape
    angles = tuple(float(a) for a in np.ravel(angle_deg))
    idx, weight = _affine_table(angles, tuple(float(v) for v in np.ravel(scale)), h, w)
    flat = np.asarray(image, np.float32).reshape(c, h * w)
    out = np.einsum("cfkp,fkp->fcp", np.take(flat, idx, axis=1), weight)  # np.take: 5× `flat[:, idx]`
    return out.reshape(len(angles), c, h, w)


def rgb_to_hsv(rgb: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(…, 3, H, W) RGB in [0, 1] → HSV with h in [0, 2π) (kornia's convention)."""
    maxc, minc = rgb.max(axis=-3), rgb.min(axis=-3)
    argmax = rgb.argmax(axis=-3)
    delta = maxc - minc
    s = delta / (maxc + eps)
    safe = np.where(delta == 0, 1.0, delta)
    r, g, b = np.moveaxis(maxc[..., None, :, :] - rgb, -3, 0)
    cand = np.stack([b - g, (r - b) + 2.0 * safe, (g - r) + 4.0 * safe], axis=-3) / safe[..., None, :, :]
    hue = np.take_along_axis(cand, argmax[..., None, :, :], axis=-3)[..., 0, :, :]
    hue = np.mod(hue / 6.0, 1.0) * 2 * np.pi
    return np.stack([hue, s, maxc], axis=-3)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(…, 3, H, W) HSV (h in radians, any value: taken mod 2π) → RGB.

    kornia's six-sector table in closed form: channel n ∈ (5, 3, 1) for (r, g, b) is
    v − v·s·clip(min(k, 4 − k), 0, 1) with k = (n + 3h/π) mod 6 (no table to build and gather from,
    which the data loader feels: docs/performance.md).
    """
    h, s, v = (hsv[..., i : i + 1, :, :] for i in range(3))
    k = np.array([5.0, 3.0, 1.0]).reshape(3, 1, 1) + h * (3 / np.pi)
    k -= 6.0 * np.floor(k / 6.0)
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hue(image: np.ndarray, hue_deg: np.ndarray) -> np.ndarray:
    """Frames of one RGB image (3, H, W), frame i with its hue rotated by hue_deg[i]: (F, 3, H, W)."""
    hsv = rgb_to_hsv(np.asarray(image, np.float64))
    shift = np.deg2rad(np.asarray(hue_deg, np.float64)).reshape(-1, 1, 1)
    frames = np.broadcast_to(hsv, (shift.shape[0], *hsv.shape)).copy()
    frames[:, 0] += shift
    return hsv_to_rgb(frames).astype(np.float32)


def mnist_values(k: int, ts: np.ndarray) -> np.ndarray:
    """The value of MNIST transformation k at frames `ts` on docs/method.md §1's grid, continued past t = 8 for
    extrapolation (scale 1 + 0.1t, rotation 10t°, hue 20t°)."""
    ts = np.asarray(ts, np.float64)
    if ts.size and ts.min() < 0:
        raise ValueError(f"MNIST frames start at t = 0, got t = {ts.tolist()}")
    return (1.0 + 0.1 * ts, 10.0 * ts, 20.0 * ts)[k]


def mnist_transform(image: np.ndarray, values: dict[int, np.ndarray]) -> np.ndarray:
    """Frames of one RGB image (3, H, W) under MNIST transformations applied together: `values[k]` the
    per-frame values of transformation k (`mnist_values`), the others at identity; the geometry (one
    affine warp of scale and rotation) first, then the hue. → (F, 3, H, W)."""
    n = len(next(iter(values.values())))
    scale = values.get(0, np.ones(n))
    angle = values.get(1, np.zeros(n))
    frames = affine(image, angle, scale) if (0 in values or 1 in values) else np.broadcast_to(image, (n, *image.shape))
    if 2 in values:
        frames = np.stack([adjust_hue(f, values[2][i : i + 1])[0] for i, f in enumerate(frames)])
    return np.asarray(frames, np.float32)


def mnist_frames(image: np.ndarray, k: int, ts: np.ndarray) -> np.ndarray:
    """Frames `ts` of MNIST transformation k applied to one RGB image (3, H, W) → (len(ts), 3, H, W)."""
    ts = np.asarray(ts, np.int64)
    if ts.size and (ts.min() < 0 or ts.max() >= MNIST_FRAMES):
        raise ValueError(f"MNIST frames are t = 0…{MNIST_FRAMES - 1}, got t = {ts.tolist()}")
    name = MNIST_TRANSFORMS[k]
    if name == "scale":
        return affine(image, np.zeros(len(ts)), SCALES[ts])
    if name == "rotation":
        return affine(image, ROTATIONS_DEG[ts], np.ones(len(ts)))
    return adjust_hue(image, HUES_DEG[ts])


MNIST_PAIRS = ((0, 1), (0, 2), (1, 2))


def mnist_probe_frames(image: np.ndarray, k: int, num_frames: int) -> dict[str, np.ndarray]:
    """Ground truth for docs/method.md §5's probes beyond training, for a sequence of T + 1 = num_frames frames:
    `extrapolation` (T, 3, H, W), frames t = T+1 … 2T of transformation k; `composition`
    (3, T+1, 3, H, W), frames t = 0 … T of each pair of `MNIST_PAIRS` applied together."""
    horizon = num_frames - 1
    later = np.arange(horizon + 1, 2 * horizon + 1)
    ts = np.arange(num_frames)
    return {
        "extrapolation": mnist_transform(image, {k: mnist_values(k, later)}),
        "composition": np.stack(
            [mnist_transform(image, {a: mnist_values(a, ts), b: mnist_values(b, ts)}) for a, b in MNIST_PAIRS]
        ),
    }


def apply_transform(name: str, image: np.ndarray, k: int, t: int) -> np.ndarray:
    """Frame t of transformation k of `image` (float32 (C, H, W) in [0, 1]), same shape (docs/method.md §1).

    Only MNIST has analytic transformations; the other datasets' frames are rendered images, read
    from the dataset itself (`sequence_dataset`).
    """
    if name != "mnist":
        raise ValueError(
            f"apply_transform is defined for 'mnist' only, got {name!r}: the frames of {name} are "
            "images of the dataset; use data.sequence_dataset"
        )
    if not 0 <= k < len(MNIST_TRANSFORMS):
        raise ValueError(f"MNIST has transformations k = 0…{len(MNIST_TRANSFORMS) - 1} {MNIST_TRANSFORMS}, got k = {k}")
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an RGB image (3, H, W), got shape {image.shape}; colourise grey digits first")
    return mnist_frames(image, k, np.array([t]))[0]
