"""ToyFaces rasteriser: face-frame coordinates, antialiased shapes, compositing and blur.

Coordinates: the image spans [-1, 1] on both axes, y pointing down. The face lives in its own
frame (u, v) that pose (shift, scale, roll) maps into the image; yaw shifts features by
depth * tan(yaw) and foreshortens them by cos(yaw). Shapes are signed distances turned into
antialiased coverage one pixel wide.
"""

from __future__ import annotations

import math

import numpy as np

from cemiray.data.toyfaces.priors import _trig

_F32 = np.float32


def _cov(dist: np.ndarray, aa: np.ndarray) -> np.ndarray:
    """Antialiased coverage of a signed distance (negative inside), one pixel wide."""
    return np.clip(0.5 - dist * aa, 0.0, 1.0)


def _ellipse(x: np.ndarray, y: np.ndarray, rx, ry) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse centred at the origin."""
    return (np.sqrt((x / rx) ** 2 + (y / ry) ** 2) - 1.0) * np.minimum(rx, ry)


def _segment(x: np.ndarray, y: np.ndarray, ax, ay, bx, by) -> np.ndarray:
    """Distance to the segment from (ax, ay) to (bx, by)."""
    dx, dy = bx - ax, by - ay
    px, py = x - ax, y - ay
    h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2)


def _fine_pattern(pattern: np.ndarray, mean: float, period: float, aa: np.ndarray) -> np.ndarray:
    """Fade a repeating pattern to its mean where pixels are too coarse to resolve its period:
    point-sampling it there would alias into moire."""
    contrast = np.clip((period * aa - _F32(2.0)) * _F32(1.0 / 3.0), 0.0, 1.0)
    return _F32(mean) + contrast * (pattern - _F32(mean))


def _pos(x: np.ndarray) -> np.ndarray:
    """max(x, 0); a two-sided clip, because numpy's maximum against a scalar is not vectorised."""
    return np.clip(x, 0.0, 1e9)


def _tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [0, 1] with period 1, peaking at integers."""
    return np.abs(2.0 * (x - np.floor(x)) - 1.0)


class _Frame:
    """Face-frame coordinates and per-image parameters of one chunk of images. Pixel arrays
    are flat, (n, H*W): numpy then runs long inner loops instead of one per image row."""

    def __init__(self, size: int, ident: dict, nuis: dict):
        self.ident, self.nuis = ident, nuis
        n = len(nuis["yaw"])
        grid = (np.arange(size, dtype=_F32) + _F32(0.5)) * _F32(2.0 / size) - _F32(1.0)
        xx, yy = np.meshgrid(grid, grid)
        self.x, self.y = xx.reshape(1, -1), yy.reshape(1, -1)
        roll = np.radians(nuis["roll"])
        yaw = np.radians(nuis["yaw"])
        cr, sr = self.col(_trig(roll, math.cos)), self.col(_trig(roll, math.sin))
        scale = self.col(nuis["scale"])
        xs = self.x - self.col(nuis["shift_x"])
        ys = self.y - self.col(nuis["shift_y"])
        self.u = (cr * xs + sr * ys) / scale
        self.v = (cr * ys - sr * xs) / scale
        self.cos_yaw = self.col(_trig(yaw, math.cos))
        self.tan_yaw = self.col(_trig(yaw, math.tan))
        self.uf = self.u / self.cos_yaw
        self.aa = scale * _F32(size / 2.0)
        self.n = n

    @staticmethod
    def col(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=_F32).reshape(-1, 1)

    def p(self, name: str, idx: np.ndarray | None = None) -> np.ndarray:
        """Identity or nuisance parameter `name` as (n, 1) float32, optionally a subset."""
        table = self.ident if name in self.ident else self.nuis
        values = table[name] if idx is None else table[name][idx]
        return self.col(values)

    def rgb(self, name: str, idx: np.ndarray | None = None) -> np.ndarray:
        """Colour parameter `name` as (3, n, 1) float32, planar like the canvas."""
        return np.stack([self.p(f"{name}_{c}", idx) for c in "rgb"])

    def shift(self, depth: float, idx: np.ndarray | None = None) -> np.ndarray:
        """Horizontal offset of a feature at `depth` under the image's yaw."""
        tan = self.tan_yaw if idx is None else self.tan_yaw[idx]
        return tan * _F32(depth)


def _const(r: float, g: float, b: float) -> np.ndarray:
    """A fixed colour shaped (3, 1, 1) to broadcast over a planar canvas."""
    return np.array([r, g, b], dtype=_F32).reshape(3, 1, 1)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Composite `colour` over the planar canvas img (3, n, P) with coverage alpha (n, P).
    Planar, because numpy broadcasts slowly over a trailing axis of length 3."""
    tmp = colour - img
    tmp *= alpha
    img += tmp


def _paint_subset(img: np.ndarray, idx: np.ndarray, alpha: np.ndarray, colour: np.ndarray):
    sub = img[:, idx]
    _paint(sub, alpha, colour)
    img[:, idx] = sub


def _where(mask: np.ndarray) -> np.ndarray | None:
    """Indices of images a rare layer applies to; None when there are none."""
    idx = np.flatnonzero(mask)
    return idx if idx.size else None


# (destination, source) slices along one axis: left and right neighbours, edges repeated.
_BLUR_TAPS = (
    (slice(1, None), slice(None, -1)),
    (slice(None, -1), slice(1, None)),
    (slice(0, 1), slice(0, 1)),
    (slice(-1, None), slice(-1, None)),
)


def _blur(img: np.ndarray, amount: np.ndarray, size: int) -> None:
    """Blend each image towards a separable [1, 2, 1] blur repeated ~size/32 times."""
    idx = _where(amount > 0)
    if idx is None:
        return
    sub = img[:, idx].reshape(3, len(idx), size, size)
    blurred = sub.copy()
    for _ in range(max(1, round(size / 32))):
        for axis in (2, 3):
            out = blurred * _F32(2.0)
            dst, src = [slice(None)] * 4, [slice(None)] * 4
            for dst_slice, src_slice in _BLUR_TAPS:
                dst[axis], src[axis] = dst_slice, src_slice
                out[tuple(dst)] += blurred[tuple(src)]
            blurred = out * _F32(0.25)
    weight = np.asarray(amount[idx], dtype=_F32).reshape(1, -1, 1, 1)
    sub += weight * (blurred - sub)
    img[:, idx] = sub.reshape(3, len(idx), size * size)
