"""Filters that turn candidate identity seeds into a usable set (CemiFace/DCFace, GANDiffFace):

- quality: the recogniser's raw feature norm (before normalisation) within [lo, hi] — a face-ness
  proxy: non-faces and unrecognisable images give small norms (AdaFace's observation);
- leakage: the seed's largest cosine to the centres of a training set's identities must stay
  below τ, so no seed re-creates a person the recogniser or generator was trained on;
- uniqueness: greedy in a fixed order, a seed is kept iff its largest cosine to every seed kept
  before it is below τ (0.3 in CemiFace and DCFace);
- attribute quotas: a target distribution over attribute cells; a seed is kept only while its
  cells have room, so the kept set matches the target exactly when the supply allows.

Everything is blockwise: a block of candidates is compared with a chunk of kept seeds (or
centres) at a time by one matrix product, so memory is O(block × chunk) besides the inputs and
the kept embeddings, and 100K seeds need no all-pairs Python loop. Only candidates that collide
inside their own block are decided one by one. numpy/torch only; no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

KEPT, DUPLICATE, QUOTA_FULL, QUOTA_OUTSIDE, NOT_EXAMINED = range(5)
OUTCOMES = ("kept", "duplicate", "quota_full", "quota_outside", "not_examined")
CELL_SEPARATOR = ","


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
        cells = np.asarray(cells, dtype=np.int64).reshape(n, -1)
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


def cell_key(values: Sequence[Any]) -> str:
    """The canonical name of a cell: attribute values joined by ','; whole floats as ints."""
    parts = []
    for v in values:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        parts.append(str(v.item() if isinstance(v, np.generic) else v))
    return CELL_SEPARATOR.join(parts)


def largest_remainder(fractions: Sequence[float], total: int) -> np.ndarray:
    """Integer counts proportional to `fractions` that sum to `total` (Hamilton's method; ties
    go to the earlier cell)."""
    f = np.asarray(fractions, dtype=np.float64)
    exact = f / f.sum() * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


@dataclass
class Quota:
    """A target distribution over the cells of one attribute or a joint of several
    (`attributes=("group", "sex")`, cells named "0,1"), and the counts it asks of `total`."""

    attributes: tuple[str, ...]
    cells: list[str]
    fractions: np.ndarray
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def name(self) -> str:
        return CELL_SEPARATOR.join(self.attributes)

    def cell_index(self, attributes: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Each row's cell index (−1 outside the target); a missing attribute raises."""
        missing = [a for a in self.attributes if a not in attributes]
        if missing:
            raise ValueError(f"quota {self.name!r}: no values for attribute(s) {missing}")
        columns = [attributes[a] for a in self.attributes]
        n = len(columns[0])
        lookup = {c: i for i, c in enumerate(self.cells)}
        out = np.empty(n, dtype=np.int64)
        for r in range(n):
            values = [col[r] for col in columns]
            if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
                raise ValueError(f"quota {self.name!r}: row {r} has no value for "
                                 f"{self.attributes}")
            out[r] = lookup.get(cell_key(values), -1)
        return out

    def report(self, achieved_cells: np.ndarray) -> dict:
        achieved = np.bincount(achieved_cells[achieved_cells >= 0],
                               minlength=len(self.cells))
        total = max(int(achieved.sum()), 1)
        return {
            "attributes": list(self.attributes),
            "cells": {c: {"target_fraction": round(float(f), 6), "target": int(t),
                          "achieved": int(a), "achieved_fraction": round(a / total, 6)}
                      for c, f, t, a in zip(self.cells, self.fractions, self.counts, achieved,
                                            strict=True)},
            "filled": bool((achieved >= self.counts).all()),
            "shortfall": {c: int(t - a) for c, t, a in zip(self.cells, self.counts, achieved,
                                                           strict=True) if a < t},
        }


def parse_quotas(spec: Mapping[str, Mapping[str, float]], total: int) -> list[Quota]:
    """Quotas from `{"group": {"0": 0.25, ...}}` or joint `{"group,sex": {"0,1": 0.125, ...}}`:
    fractions ≥ 0 summing to 1 (±1e-6), turned into counts of `total` seeds."""
    if total < 1:
        raise ValueError(f"quotas need a number of identities >= 1, got {total}")
    quotas = []
    for name, cells in spec.items():
        attributes = tuple(a.strip() for a in str(name).split(CELL_SEPARATOR))
        if not all(attributes) or len(set(attributes)) != len(attributes):
            raise ValueError(f"quota {name!r}: expected attribute names joined by ','")
        if not cells:
            raise ValueError(f"quota {name!r}: no cells")
        keys, fractions = [], []
        for cell, fraction in cells.items():
            values = [v.strip() for v in str(cell).split(CELL_SEPARATOR)]
            if len(values) != len(attributes):
                raise ValueError(f"quota {name!r}: cell {cell!r} has {len(values)} values for "
                                 f"{len(attributes)} attributes")
            if not (isinstance(fraction, (int, float)) and math.isfinite(fraction)
                    and fraction >= 0):
                raise ValueError(f"quota {name!r}: cell {cell!r} has fraction {fraction!r}, "
                                 "expected a finite number >= 0")
            keys.append(cell_key([_parse_scalar(v) for v in values]))
            fractions.append(float(fraction))
        if len(set(keys)) != len(keys):
            raise ValueError(f"quota {name!r}: repeated cells {keys}")
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"quota {name!r}: fractions sum to {sum(fractions):.6f}, not 1")
        f = np.asarray(fractions)
        quotas.append(Quota(attributes, keys, f, largest_remainder(f, total)))
    return quotas


def _parse_scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _sort_key(key: str) -> tuple:
    value = _parse_scalar(key)
    return (isinstance(value, str), value if not isinstance(value, str) else 0, key)


class AttributeProbe:
    """Predicts a categorical attribute from unit embeddings: nearest class centroid (cosine)
    or multinomial logistic regression (full-batch gradient descent with momentum on
    standardised inputs, L2-regularised)."""

    def __init__(self, kind: str = "centroid", l2: float = 1e-3, iterations: int = 300,
                 lr: float = 0.5):
        if kind not in ("centroid", "logistic"):
            raise ValueError(f"probe kind must be 'centroid' or 'logistic', got {kind!r}")
        self.kind, self.l2, self.iterations, self.lr = kind, l2, iterations, lr
        self.classes: list[Any] = []
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    def fit(self, embeddings: np.ndarray, values: Sequence[Any]) -> AttributeProbe:
        x = unit_rows(embeddings, "probe embeddings")
        keys = [cell_key([v]) for v in values]
        self.classes = sorted(set(keys), key=_sort_key)
        if len(self.classes) < 2:
            raise ValueError(f"probe: need at least 2 attribute values, got {self.classes}")
        y = np.asarray([self.classes.index(k) for k in keys])
        if self.kind == "centroid":
            sums = np.zeros((len(self.classes), x.shape[1]))
            np.add.at(sums, y, x)
            self.weight, self.bias = unit_rows(sums, "probe centroids"), np.zeros(len(sums))
            return self
        # Standardised inputs make plain gradient descent converge in a few hundred steps; the
        # scaling is folded back into the weights so `predict` takes unit embeddings as they are.
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / std
        onehot = np.eye(len(self.classes))[y]
        w = np.zeros((len(self.classes), x.shape[1]))
        b = np.zeros(len(self.classes))
        vw, vb = np.zeros_like(w), np.zeros_like(b)
        for _ in range(self.iterations):
            logits = z @ w.T + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            grad = (p - onehot) / len(z)
            vw = 0.9 * vw - self.lr * (grad.T @ z + 2 * self.l2 * w)
            vb = 0.9 * vb - self.lr * grad.sum(axis=0)
            w, b = w + vw, b + vb
        weight = w / std
        self.weight, self.bias = weight, b - weight @ mean
        return self

    def predict(self, embeddings: np.ndarray) -> list[Any]:
        if self.weight is None:
            raise RuntimeError("probe: fit it before predict")
        scores = unit_rows(embeddings, "embeddings to probe") @ self.weight.T + self.bias
        return [_parse_scalar(self.classes[i]) for i in scores.argmax(axis=1)]


def probe_with_holdout(embeddings: np.ndarray, values: Sequence[Any], groups: np.ndarray,
                       kind: str = "centroid", holdout: float = 0.2,
                       seed: int = 0) -> tuple[AttributeProbe, dict]:
    """A probe fitted on all rows, and its accuracy on held-out groups (identities, drawn with
    `seed`) when fitted without them, next to chance (the majority value's share among the
    held-out rows)."""
    groups = np.asarray(groups)
    names = np.unique(groups)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(names, size=max(1, round(holdout * len(names))),
                          replace=False).tolist()) if len(names) > 1 else set()
    test = np.asarray([g in held for g in groups])
    report: dict = {"kind": kind, "rows": len(groups)}
    keys = [cell_key([v]) for v in values]
    if test.any() and (~test).any() and len(set(np.asarray(keys)[~test])) > 1:
        train = np.flatnonzero(~test)
        part = AttributeProbe(kind).fit(embeddings[train], [values[i] for i in train])
        predicted = [cell_key([v]) for v in part.predict(embeddings[test])]
        truth = [keys[i] for i in np.flatnonzero(test)]
        report["holdout_accuracy"] = float(np.mean([p == t for p, t in zip(predicted, truth,
                                                                             strict=True)]))
        report["holdout_chance"] = float(max(truth.count(k) for k in set(truth)) / len(truth))
        report["holdout_rows"] = len(truth)
    return AttributeProbe(kind).fit(embeddings, values), report


def summary_stats(values: np.ndarray) -> dict:
    """max / mean / percentiles of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"count": 0}
    p = np.percentile(v, [50, 90, 99])
    return {"count": int(v.size), "max": float(v.max()), "mean": float(v.mean()),
            "min": float(v.min()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}
