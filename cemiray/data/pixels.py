"""Pixel normalisation (data): the one mapping between uint8 RGB and model inputs in [−1, 1].

Pixel normalisation: the one mapping between uint8 RGB and the float tensors in [−1, 1] that
every model here takes (arcface_torch's (x/255 − 0.5)/0.5, written x/127.5 − 1)."""

from __future__ import annotations

import numpy as np
import torch


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any layout) → float32 in [−1, 1], same layout."""
    return x.float().div(127.5).sub(1.0)


def from_numpy(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 RGB → float32 N×3×H×W in [−1, 1]."""
    return normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Float in [−1, 1] → float pixel values in [0, 255] (not rounded)."""
    return (x + 1.0) * 127.5


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [−1, 1] → uint8 pixels, rounded and clamped, same layout."""
    return denormalize(x).round().clamp(0, 255).to(torch.uint8)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """Float N×3×H×W in [−1, 1] → uint8 N×H×W×3 RGB on the CPU."""
    return to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
