"""Attribute quotas for seed selection (eval part): target shares of attribute cells.

Fractions are turned into exact counts (largest remainder) and reported as target vs achieved.
Pure numpy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

CELL_SEPARATOR = ","


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
            keys.append(cell_key([parse_scalar(v) for v in values]))
            fractions.append(float(fraction))
        if len(set(keys)) != len(keys):
            raise ValueError(f"quota {name!r}: repeated cells {keys}")
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"quota {name!r}: fractions sum to {sum(fractions):.6f}, not 1")
        f = np.asarray(fractions)
        quotas.append(Quota(attributes, keys, f, largest_remainder(f, total)))
    return quotas


def parse_scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def sort_key(key: str) -> tuple:
    value = parse_scalar(key)
    return (isinstance(value, str), value if not isinstance(value, str) else 0, key)
