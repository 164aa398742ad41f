"""Which variation each generated image asks for (GANDiffFace's controlled intra-class variation).

A plan names the generator's variation attributes (cemiray.diffusion.variation) and gives every
image of an identity a request, a pure function of (global seed, seed_id, sample) like m and the
noise seed (cemiray.pipeline.generate.schedules), so a rerun or a retried shard asks for the same:
- `grid`: one attribute at a time over `levels` values of its trained range (binary: absent,
  present), the others unspecified, with "nothing requested" first; sample k of an identity takes
  entry k mod the grid's length — the columns of a variation sample grid;
- `uniform`: every planned attribute drawn on its own: a continuous one uniformly over its range
  (`ranges` narrows it), a binary one present with probability `presence`;
- `target`: each image takes the attributes of one row of `table` (Parquet file/folder or CSV,
  e.g. `label-attr`'s labels of a real set), drawn uniformly, so the images follow that set's
  joint distribution; values outside the trained range are clipped to it and counted.
A request is a mapping {attribute: value} in the attribute's own units (what rows record); the
generator receives it normalised, NaN where unspecified.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cemiray.pipeline.generate.schedules import STREAM_VARIATION, uniform01

STREAM_ROW = STREAM_VARIATION + 1000


class VariationPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["grid", "uniform", "target"] = "grid"
    attributes: list[str] | None = Field(None, description="planned attributes (default: all "
                                         "the generator's); the others stay unspecified")
    levels: int = Field(3, ge=2, description="grid: values per continuous attribute")
    presence: float = Field(0.5, ge=0, le=1, description="uniform: chance a binary attribute "
                            "is present")
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict, description="uniform: "
                                                   "narrower ranges of continuous attributes")
    table: str | None = Field(None, description="target: rows whose attribute columns images "
                              "copy (label-attr output of a real set, Parquet or CSV)")


class ResolvedPlan:
    """A plan bound to a generator's VariationSpec (and its target rows, read once)."""

    def __init__(self, plan: VariationPlan, spec) -> None:
        self.plan, self.spec = plan, spec
        names = plan.attributes or spec.names
        unknown = [n for n in names if n not in spec.names]
        if unknown:
            raise ValueError(f"variation.attributes {unknown}: the generator knows {spec.names}")
        self.attributes = [a for a in spec.attributes if a.name in names]
        for name, (lo, hi) in plan.ranges.items():
            a = next((a for a in self.attributes if a.name == name), None)
            if a is None or a.kind != "continuous":
                raise ValueError(f"variation.ranges.{name}: not a planned continuous attribute")
            if not (a.low <= lo <= hi <= a.high):
                raise ValueError(f"variation.ranges.{name}: [{lo}, {hi}] is not inside the "
                                 f"trained range [{a.low:.4g}, {a.high:.4g}]")
        self.clipped = 0
        self.rows: np.ndarray | None = None
        if plan.kind == "target":
            self._read_target()
        elif plan.table:
            raise ValueError("variation.table is read only by kind=target")

    def _read_target(self) -> None:
        from cemiray.data.attribute_tables import read_table

        if not self.plan.table:
            raise ValueError("variation.kind=target needs variation.table (e.g. label-attr's "
                             "labels of a real set)")
        names = [a.name for a in self.attributes]
        table = read_table(self.plan.table, "key", names, what="variation.table")
        rows = np.array([[r.get(n, math.nan) for n in names] for r in table.values()],
                        dtype=np.float64)
        if not len(rows):
            raise ValueError(f"variation.table {self.plan.table}: no rows")
        for j, a in enumerate(self.attributes):
            if a.kind == "continuous":
                column = rows[:, j]
                outside = np.isfinite(column) & ((column < a.low) | (column > a.high))
                self.clipped += int(outside.sum())
                rows[:, j] = np.where(np.isfinite(column), np.clip(column, a.low, a.high),
                                      np.nan)
            else:
                rows[:, j] = np.where(np.isfinite(rows[:, j]), rows[:, j] >= 0.5, np.nan)
        self.rows = rows

    def grid(self) -> list[dict | None]:
        """The grid's entries: nothing, then each attribute's values with the others unset."""
        out: list[dict | None] = [None]
        for a in self.attributes:
            values = [False, True] if a.kind == "binary" else \
                np.linspace(a.low, a.high, self.plan.levels).tolist()
            out += [{a.name: v} for v in values]
        return out

    def requests(self, seed: int, seed_ids, samples) -> list[dict | None]:
        """The request of each (seed_id, sample)."""
        seed_ids, samples = np.broadcast_arrays(np.asarray(seed_ids), np.asarray(samples))
        kind = self.plan.kind
        if kind == "grid":
            entries = self.grid()
            return [entries[int(s) % len(entries)] for s in samples.ravel()]
        if kind == "target":
            u = uniform01(seed, seed_ids, samples, STREAM_ROW).ravel()
            index = np.minimum((u * len(self.rows)).astype(np.int64), len(self.rows) - 1)
            return [{a.name: (bool(v) if a.kind == "binary" else float(v))
                     for a, v in zip(self.attributes, self.rows[i], strict=True)
                     if not math.isnan(v)} for i in index]
        columns = []
        for j, a in enumerate(self.attributes):
            u = uniform01(seed, seed_ids, samples, STREAM_VARIATION + j).ravel()
            if a.kind == "binary":
                columns.append([bool(x < self.plan.presence) for x in u])
            else:
                lo, hi = self.plan.ranges.get(a.name, (a.low, a.high))
                columns.append((lo + u * (hi - lo)).tolist())
        return [{a.name: c[i] for a, c in zip(self.attributes, columns, strict=True)}
                for i in range(samples.size)]

    def encode(self, requests: list[dict | None]) -> np.ndarray:
        """float32 N×A normalised values for the generator, NaN where unspecified."""
        return self.spec.encode_requests(requests)
