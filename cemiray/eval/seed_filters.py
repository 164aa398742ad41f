"""Seed filters (eval part): quality, leakage and greedy uniqueness under attribute quotas.

They turn candidate identity seeds into a usable set (CemiFace/DCFace, GANDiffFace):

- quality: the recogniser's raw feature norm (before normalisation) within [lo, hi] — a face-ness
  proxy: non-faces and unrecognisable images give small norms (AdaFace's observation);
- leakage: the seed's largest cosine to the centres of a training set's identities must stay
  below τ, so no seed re-creates a person the recogniser or generator was trained on;
- uniqueness: greedy in a fixed order, a seed is kept iff its largest cosine to every seed kept
  before it is below τ (0.3 in CemiFace and DCFace);
- attribute quotas (cells counted by cemiray.eval.seed_quotas): a seed is kept only while its
  cells have room, so the kept set matches the target exactly when the supply allows.

Everything is blockwise: a block of candidates is compared with a chunk of kept seeds (or
centres) at a time by one matrix product, so memory is O(block × chunk) besides the inputs and
the kept embeddings, and 100K seeds need no all-pairs Python loop. Only candidates that collide
inside their own block are decided one by one. numpy/torch only; no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

KEPT, DUPLICATE, QUOTA_FULL, QUOTA_OUTSIDE, NOT_EXAMINED = range(5)
OUTCOMES = ("kept", "duplicate", "quota_full", "quota_outside", "not_examined")


def unit_rows(x: np.ndarray, where: str = "embeddings") -> np.ndarray:
    """float32 copy of a 2-D array with rows scaled to unit norm; zero or non-finite rows raise."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{where}: expected a 2-D array (N x D), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"{where}: row {int(bad[0])} is zero or not finite "
                         f"({bad.size} such rows)")
    return x / norms[:, None]


def _tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)


def quality_mask(norms: np.ndarray, low: float | None = None,
                 high: float | None = None) -> np.ndarray:
    """True where the raw feature norm lies in [low, high] (a missing bound is open); a zero or
    infinite norm never passes (no direction to compare). A NaN norm (a seed given as an
    embedding, with no image to measure) passes."""
    norms = np.asarray(norms, dtype=np.float64)
    measured = ~np.isnan(norms)
    keep = ~measured | (np.isfinite(norms) & (norms > 0))
    if low is not None:
        keep &= ~measured | (norms >= low)
    if high is not None:
        keep &= ~measured | (norms <= high)
    return keep


def nearest_centres(seeds: np.ndarray, centres: np.ndarray, block: int = 1024,
                    chunk: int = 8192, device: str | torch.device = "cpu"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """For each seed (unit rows) its largest cosine to the centres (unit rows) and that centre's
    row: (float32[N], int64[N]), computed block × chunk at a time."""
    if seeds.ndim != 2 or centres.ndim != 2 or seeds.shape[1] != centres.shape[1]:
        raise ValueError(f"seeds {seeds.shape} and centres {centres.shape} must be N x D and "
                         "M x D with the same D")
    if len(centres) == 0:
        raise ValueError("no centres to compare with")
    device = torch.device(device)
    best = np.full(len(seeds), -np.inf, dtype=np.float32)
    arg = np.zeros(len(seeds), dtype=np.int64)
    for c0 in range(0, len(centres), chunk):
        c = _tensor(centres[c0:c0 + chunk], device)
        for s0 in range(0, len(seeds), block):
            sims = _tensor(seeds[s0:s0 + block], device) @ c.T
            value, index = sims.max(dim=1)
            value, index = value.cpu().numpy(), index.cpu().numpy() + c0
            part = slice(s0, s0 + len(value))
            better = value > best[part]
            best[part] = np.where(better, value, best[part])
            arg[part] = np.where(better, index, arg[part])
    return best, arg


def label_centres(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean embedding per label: (centres K x D, the labels they belong to, sorted)."""
    labels = np.asarray(labels, dtype=np.int64)
    names, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(names), embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, inverse, np.asarray(embeddings, dtype=np.float64))
    return unit_rows(sums, "label centres"), names


@dataclass
class Selection:
    """The outcome of `greedy_select` for every candidate row (in the input's order).

    `outcome`: one of KEPT, DUPLICATE, QUOTA_FULL, QUOTA_OUTSIDE, NOT_EXAMINED (the target was
    reached first); `max_similarity`: the row's largest cosine to the seeds kept before it (NaN
    where not measured or nothing was kept before it); `kept`: kept rows in acceptance order."""

    outcome: np.ndarray
    max_similarity: np.ndarray
    kept: np.ndarray

    def counts(self) -> dict[str, int]:
        return {name: int((self.outcome == k).sum()) for k, name in enumerate(OUTCOMES)}


class _KeptStore:
    """Embeddings of the kept seeds on the compute device, in fixed chunks of `chunk` rows: memory
    is the kept rows themselves, never a regrown copy, and each chunk is one matrix product."""

    def __init__(self, dim: int, device: torch.device, chunk: int):
        self.dim, self.device, self.chunk = dim, device, chunk
        self.chunks: list[torch.Tensor] = []
        self.size = 0

    def add(self, rows: torch.Tensor) -> None:
        done = 0
        while done < len(rows):
            used = self.size - self.chunk * (len(self.chunks) - 1) if self.chunks else self.chunk
            if used == self.chunk:
                self.chunks.append(torch.empty((self.chunk, self.dim), dtype=torch.float32,
                                               device=self.device))
                used = 0
            take = min(self.chunk - used, len(rows) - done)
            self.chunks[-1][used:used + take] = rows[done:done + take]
            done += take
            self.size += take

    def max_similarity(self, block: torch.Tensor) -> torch.Tensor:
        best = torch.full((len(block),), -math.inf, device=block.device)
        for k, part in enumerate(self.chunks):
            filled = min(self.chunk, self.size - k * self.chunk)
            sims = block @ part[:filled].T
            best = torch.maximum(best, sims.max(dim=1).values)
        return best


def greedy_select(embeddings: np.ndarray, threshold: float = 0.3,
                  cells: np.ndarray | None = None, capacities: Sequence[np.ndarray] | None = None,
                  limit: int | None = None, block: int = 1024, chunk: int = 8192,
                  device: str | torch.device = "cpu") -> Selection:
    """Greedy uniqueness (and quotas) over unit-norm rows in the given order.

    A row is kept iff its cosine to every row kept before it is < `threshold` and, with quotas,
    each of its cells still has room: `cells` is N x Q (the row's cell index in each of Q
    quotas, −1 for a cell outside the target) and `capacities[q]` the number of seeds wanted in
    each cell of quota q (a row in a full cell counts as QUOTA_FULL before any similarity
    check). Selection stops once `limit` rows are kept or every cell is full."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be N x D, got shape {x.shape}")
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [-1, 1], got {threshold}")
    if block < 1 or chunk < 1:
        raise ValueError(f"block and chunk must be >= 1, got {block}, {chunk}")
    n = len(x)
    quota = cells is not None
    if quota:
        columns = len(capacities) if capacities is not None else -1
        cells = np.asarray(cells, dtype=np.int64).reshape(n, columns if n == 0 else -1)
        if capacities is None or len(capacities) != cells.shape[1]:
            raise ValueError("give one capacity array per quota column of `cells`")
        room = [np.asarray(c, dtype=np.int64).copy() for c in capacities]
        for q, r in enumerate(room):
            if cells[:, q].max(initial=-1) >= len(r):
                raise ValueError(f"quota {q}: a cell index exceeds its {len(r)} capacities")
        target = min(int(room[0].sum()), n if limit is None else int(limit))
    else:
        target = n if limit is None else int(limit)
    device = torch.device(device)
    outcome = np.full(n, NOT_EXAMINED, dtype=np.int8)
    max_sim = np.full(n, np.nan, dtype=np.float32)
    kept: list[int] = []
    store = _KeptStore(x.shape[1], device, chunk)
    if quota:
        outside = (cells < 0).any(axis=1)
        outcome[outside] = QUOTA_OUTSIDE
        order = np.flatnonzero(~outside)
    else:
        order = np.arange(n)

    pos = 0
    while pos < len(order) and len(kept) < target:
        rows = order[pos:pos + block]
        pos += len(rows)
        if quota:
            full = np.zeros(len(rows), dtype=bool)
            for q, r in enumerate(room):
                full |= r[cells[rows, q]] <= 0
            outcome[rows[full]] = QUOTA_FULL
            rows = rows[~full]
            if not len(rows):
                continue
        b = _tensor(x[rows], device)
        prior = store.max_similarity(b).cpu().numpy()
        inner = (b @ b.T).cpu().numpy()
        earlier = np.tri(len(rows), k=-1, dtype=bool)
        conflict = earlier & (inner >= threshold)
        has_conflict = conflict.any(axis=1)
        local = np.zeros(len(rows), dtype=bool)
        examined = 0
        for i, row in enumerate(rows):
            if len(kept) >= target:
                break
            examined = i + 1
            if quota and any(room[q][cells[row, q]] <= 0 for q in range(len(room))):
                outcome[row] = QUOTA_FULL
                continue
            if prior[i] >= threshold or (has_conflict[i] and (conflict[i] & local).any()):
                outcome[row] = DUPLICATE
                continue
            if quota:
                for q in range(len(room)):
                    room[q][cells[row, q]] -= 1
            outcome[row] = KEPT
            local[i] = True
            kept.append(int(row))
        inside = np.where(earlier & local[None, :], inner, -np.inf).max(axis=1, initial=-np.inf)
        best = np.maximum(prior, inside)[:examined]
        max_sim[rows[:examined]] = np.where(np.isfinite(best), best, np.nan)
        if local.any():
            store.add(b[torch.from_numpy(np.flatnonzero(local)).to(device)])
        if quota and all((r <= 0).all() for r in room):
            break
    return Selection(outcome=outcome, max_similarity=max_sim,
                     kept=np.asarray(kept, dtype=np.int64))


def summary_stats(values: np.ndarray) -> dict:
    """max / mean / percentiles of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"count": 0}
    p = np.percentile(v, [50, 90, 99])
    return {"count": int(v.size), "max": float(v.max()), "mean": float(v.mean()),
            "min": float(v.min()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}
