"""Sampling a StyleGAN toward attribute cells (models): class-conditional truncation in W.

An unconditional StyleGAN's W space clusters by what its images show. `cell_centroids` labels
samples with an attribute predictor (cemiray.models.attributes) and averages their w per cell
(a cell: one value of each attribute, e.g. group 2, or group 2 and sex 1); `pulled` draws w
from a seed's z as usual and pulls it toward the cell's centroid, w' = c + ψ (w − c) (the
truncation trick with the cell's mean in place of the global w̄). `screened` first picks, per
row, a seed whose w a linear discriminant in W (fitted on the same labelled samples) already
puts in the cell, so only promising draws are rendered. Screening and pull make most draws land
in the cell; the caller's check rejects the rest, so a quota is filled from far fewer rendered
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
    return locate(generator, cells_of, seeds, batch_size)[0]


def locate(generator: Generator, cells_of: CellsOf, seeds: Sequence[int],
           batch_size: int = 64) -> tuple[dict[str, dict], dict]:
    """(the cells as `cell_centroids` gives them, a linear probe that names the cell of a w
    without rendering it: `fit_cell_probe` on the same samples)."""
    w = mapped(generator, seeds)
    cells = cells_of(render(generator, w, batch_size))
    found: dict[str, dict] = {}
    for name in sorted(set(cells)):
        rows = torch.as_tensor([c == name for c in cells])
        found[name] = {"count": int(rows.sum()), "share": float(rows.float().mean()),
                       "w": w[rows].mean(0)}
    return found, fit_cell_probe(w, cells)


def fit_cell_probe(w: torch.Tensor, cells: list[str], ridge: float = 1e-3) -> dict:
    """Linear discriminant analysis in W: cell means, a pooled covariance (ridge-regularised),
    the cells' log shares as priors. {"cells", "weight" C×D, "bias" C} as lists."""
    x = w.double().cpu()
    names = sorted(set(cells))
    index = torch.as_tensor([names.index(c) for c in cells])
    means = torch.stack([x[index == k].mean(0) for k in range(len(names))])
    centred = x - means[index]
    cov = centred.T @ centred / max(len(x) - len(names), 1)
    cov += ridge * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
    weight = torch.linalg.solve(cov, means.T).T
    prior = torch.bincount(index, minlength=len(names)).double() / len(x)
    bias = -0.5 * (weight * means).sum(1) + prior.clamp_min(1e-12).log()
    return {"cells": names, "weight": weight.tolist(), "bias": bias.tolist()}


def probe_cells(probe: dict, w: torch.Tensor) -> list[str]:
    """The probe's cell for each row of w."""
    weight = torch.as_tensor(probe["weight"], dtype=torch.float64)
    scores = w.double().cpu() @ weight.T + torch.as_tensor(probe["bias"], dtype=torch.float64)
    return [probe["cells"][k] for k in scores.argmax(1).tolist()]


# Try j of a row's seed s is s + j · SEED_STRIDE. torch's CPU generator keeps only a seed's low
# 32 bits (cemiray.models.noise_seeds), so the stride is an odd Weyl step modulo 2**32: the
# tries of row k meet another row's seed only when rows lie ~10**8 or more apart.
SEED_STRIDE = 0x9E3779B1


@torch.no_grad()
def screened(generator: Generator, probe: dict, seeds: Sequence[int], cells: Sequence[str],
             tries: int = 16) -> tuple[list[int], list[int]]:
    """For each row, the first of its seeds s, s + stride, s + 2·stride, … (at most `tries`) whose
    w the probe puts in the row's cell (the mapping network only: nothing is rendered), else
    its last try; returns (the seeds to render, the tries each took)."""
    chosen, taken = list(seeds), [tries] * len(seeds)
    open_rows = list(range(len(seeds)))
    for j in range(tries):
        if not open_rows:
            break
        trial = [int(seeds[i]) + j * SEED_STRIDE for i in open_rows]
        named = probe_cells(probe, mapped(generator, trial))
        still = []
        for i, s, c in zip(open_rows, trial, named, strict=True):
            chosen[i] = s
            if c == cells[i]:
                taken[i] = j + 1
            else:
                still.append(i)
        open_rows = still
    return chosen, taken


def pulled(generator: Generator, seeds: Sequence[int], centroids: torch.Tensor,
           psi: float = 0.7, batch_size: int = 64) -> np.ndarray:
    """uint8 images of `seeds`, each seed's w pulled toward its row of `centroids`
    (N × w_dim): w' = c + ψ (w − c)."""
    psi = check_truncation(psi)
    w = mapped(generator, seeds)
    return render(generator, centroids.to(w).lerp(w, psi), batch_size)
