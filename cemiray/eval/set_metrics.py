"""Figures of a set of faces in an embedding space (eval part): realism, separability, targets.

Distance to real data, separability of identities, distance of a distribution to its target:

- Fréchet distance between two sets of embeddings (FID's formula, in a recogniser's space
  instead of Inception's): ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).
- Fisher discriminant ratio of labelled embeddings, tr(S_B) / tr(S_W): between-identity
  scatter of the identity means over within-identity scatter (NegFaceDiff's separability).
- Pairwise similarity of identity centres: mean and maximum off-diagonal cosine.
- Total-variation distance between two distributions over the same cells.
Pure numpy / scipy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import linalg

from cemiray.eval.seed_filters import unit_rows


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of `a` and `b` (each N×D, N > 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: need two N×D sets of the same D with N > 1, got "
                         f"{a.shape} and {b.shape}")
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(ca @ cb, disp=False)
    if not np.isfinite(root).all():  # singular product: offset both covariances, as FID does
        eps = np.eye(len(ca)) * 1e-6
        root = linalg.sqrtm((ca + eps) @ (cb + eps))
    return float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(root.real))


def fisher_ratio(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """tr(S_B) / tr(S_W) of unit-normalised embeddings grouped by `labels` (each label at least
    two rows; at least two labels)."""
    x = unit_rows(np.asarray(embeddings), "fisher_ratio embeddings").astype(np.float64)
    labels = np.asarray(labels)
    names, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(names) < 2 or counts.min() < 2:
        raise ValueError(f"fisher_ratio: need ≥ 2 identities of ≥ 2 images, got {len(names)} "
                         f"identities, the smallest with {counts.min()} image(s)")
    means = np.zeros((len(names), x.shape[1]))
    np.add.at(means, inverse, x)
    means /= counts[:, None]
    overall = x.mean(0)
    between = float((counts * ((means - overall) ** 2).sum(1)).sum())
    within = float(((x - means[inverse]) ** 2).sum())
    return between / within if within > 0 else float("inf")


def centre_similarity(embeddings: np.ndarray, labels: np.ndarray) -> dict:
    """Mean and maximum cosine between the unit centres of different identities."""
    x = unit_rows(np.asarray(embeddings), "centre_similarity embeddings")
    names, inverse = np.unique(np.asarray(labels), return_inverse=True)
    sums = np.zeros((len(names), x.shape[1]))
    np.add.at(sums, inverse, x)
    c = unit_rows(sums, "identity centres")
    gram = c @ c.T
    off = gram[~np.eye(len(c), dtype=bool)]
    return {"identities": len(c), "mean": float(off.mean()), "max": float(off.max())}


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """½ Σ |p − q| over the union of cells (each mapping normalised to sum 1 first)."""
    sp, sq = sum(p.values()), sum(q.values())
    if sp <= 0 or sq <= 0:
        raise ValueError("total_variation: a distribution sums to zero")
    cells = set(p) | set(q)
    return 0.5 * sum(abs(p.get(c, 0) / sp - q.get(c, 0) / sq) for c in cells)


def shares(values) -> dict[str, float]:
    """The share of each value (as text) among `values`."""
    names, counts = np.unique(np.asarray([str(v) for v in values]), return_counts=True)
    return {str(n): float(c / counts.sum()) for n, c in zip(names, counts, strict=True)}
