"""Sampling a StyleGAN toward attribute cells (models): class-conditional truncation in W.

An unconditional StyleGAN's W space clusters by what its images show. `cell_centroids` labels
samples with an attribute predictor (cemiray.models.attributes) and averages their w per cell
(a cell: one value of each attribute, e.g. group 2, or group 2 and sex 1); `pulled` draws w
from a seed's z as usual and pulls it toward the cell's centroid, w' = c + ψ (w − c) (the
truncation trick with the cell's mean in place of the global w̄). The pull makes most draws
land in the cell; the caller's check rejects the rest, so a quota is filled from far fewer
draws than rejection from unconditional samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from cemiray.data import pixels
from cemiray.models.stylegan import Generator, check_seeds, check_truncation, seed_latents

# uint8 images N×S×S×3 → each image's cell name (the caller's attribute predictor and cell
# naming, e.g. cemiray.eval.attributes.cell_labeller)
CellsOf = Callable[[np.ndarray], list[str]]


@torch.no_grad()
def mapped(generator: Generator, seeds: Sequence[int]) -> torch.Tensor:
    """w (N × w_dim, untruncated) of each seed's z."""
    _, z = seed_latents(check_seeds(seeds), generator.preset.z_dim)
    return generator.mapping(z.to(next(generator.parameters()).device))


@torch.no_grad()
def render(generator: Generator, w: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """uint8 images N×S×S×3 from w rows (the same w at every layer, constant noise)."""
    out = []
    for start in range(0, len(w), batch_size):
        ws = w[start:start + batch_size, None].repeat(1, generator.num_ws, 1)
        out.append(pixels.to_numpy(generator.synthesis(ws, "const").float().clamp(-1, 1)))
    return np.concatenate(out) if out else np.zeros((0, generator.image_size,
                                                     generator.image_size, 3), np.uint8)


def cell_centroids(generator: Generator, cells_of: CellsOf, seeds: Sequence[int],
                   batch_size: int = 64) -> dict[str, dict]:
    """Per cell found among the untruncated samples of `seeds`: its share and the mean w of its
    samples ({"share", "count", "w"})."""
    w = mapped(generator, seeds)
    cells = cells_of(render(generator, w, batch_size))
    found: dict[str, dict] = {}
    for name in sorted(set(cells)):
        rows = torch.as_tensor([c == name for c in cells])
        found[name] = {"count": int(rows.sum()), "share": float(rows.float().mean()),
                       "w": w[rows].mean(0)}
    return found


def pulled(generator: Generator, seeds: Sequence[int], centroids: torch.Tensor,
           psi: float = 0.7, batch_size: int = 64) -> np.ndarray:
    """uint8 images of `seeds`, each seed's w pulled toward its row of `centroids`
    (N × w_dim): w' = c + ψ (w − c)."""
    psi = check_truncation(psi)
    w = mapped(generator, seeds)
    return render(generator, centroids.to(w).lerp(w, psi), batch_size)
