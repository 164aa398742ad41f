"""Training augmentations (data): batched, seeded tensor transforms of the FR recipe.

Batched training augmentations on tensors in [-1, 1], N×3×H×W, driven by a torch Generator so a
run is reproducible: horizontal flip, random resized crop, colour jitter, random erasing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)


def random_resized_crop(x: torch.Tensor, min_scale: float, gen: torch.Generator) -> torch.Tensor:
    """Crop a square of area fraction in [min_scale, 1] at a random place, resize back."""
    if min_scale >= 1.0:
        return x
    n = x.shape[0]
    scale = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    side = scale.sqrt()
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - side)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - side)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = side, side
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1-s, 1+s]."""
    if strength <= 0:
        return x
    n = x.shape[0]

    def factor():
        return (1 + strength * (torch.rand(n, generator=gen) * 2 - 1)).to(x)[:, None, None, None]

    img = (x + 1) / 2
    img = img * factor()
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * factor() + mean
    grey = img.mean(dim=1, keepdim=True)
    img = (img - grey) * factor() + grey
    return img.clamp(0, 1) * 2 - 1


def random_erasing(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Replace one random rectangle (2–20% of the area) by noise in a fraction `prob` of images."""
    if prob <= 0:
        return x
    n, _, h, w = x.shape
    out = x.clone()
    apply = torch.rand(n, generator=gen) < prob
    area = 0.02 + 0.18 * torch.rand(n, generator=gen)
    aspect = torch.exp((torch.rand(n, generator=gen) * 2 - 1) * 1.2)
    for i in torch.nonzero(apply).flatten().tolist():
        eh = max(1, min(h, round((area[i] * h * w * aspect[i]).sqrt().item())))
        ew = max(1, min(w, round((area[i] * h * w / aspect[i]).sqrt().item())))
        top = int(torch.randint(0, h - eh + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - ew + 1, (1,), generator=gen))
        noise = torch.rand(x.shape[1], eh, ew, generator=gen) * 2 - 1
        out[i, :, top : top + eh, left : left + ew] = noise.to(x)
    return out


def augment(x: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
    """Apply an `AugmentConfig` to a batch."""
    if cfg.flip:
        x = random_flip(x, gen)
    x = random_resized_crop(x, cfg.crop_min_scale, gen)
    x = color_jitter(x, cfg.color_jitter, gen)
    return random_erasing(x, cfg.erase_prob, gen)
