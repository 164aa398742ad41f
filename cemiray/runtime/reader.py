"""Face sources as Ray Datasets (runtime part): one "read one part" task serves every job.

A source is cut into contiguous parts (cemiray.data.sources: shard k of K); each part is one Ray
task that yields the part's rows, optionally with their `index` in the concatenation of the
sources, per-source constant columns and a job's own transform of the part's rows. The parsed
`Source` objects travel to the tasks as they are: no task parses a URI string again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.data

from cemiray.data.sources import Source

DEFAULT_PARTS = 8
DEFAULT_ROWS_PER_TASK = 1000


@dataclass(frozen=True)
class ReadPart:
    """Part `part` of `parts` of `source`: its rows [start, stop), whose first row has index
    `offset + start` in the concatenation of the sources; `constants` are added to each row."""

    source: Source
    part: int
    parts: int
    offset: int
    start: int
    stop: int
    constants: dict[str, Any] = field(default_factory=dict)


# A job's own treatment of one part's rows (each with its `index`), run inside the read task.
Transform = Callable[[ReadPart, list[dict]], list[dict]]


def _check(sources: Sequence[Source]) -> list[Source]:
    bad = [s for s in sources if not isinstance(s, Source)]
    if bad:
        raise TypeError(f"read sources as parsed Source objects (Source.parse), got {bad[:3]!r}")
    return list(sources)


def plan_reads(sources: Sequence[Source], rows_per_task: int | None = None,
               parts: int | None = None, constants: Sequence[dict] | None = None
               ) -> tuple[list[ReadPart], list[range]]:
    """The parts of every source (`parts` each, or about `rows_per_task` rows each) and the index
    range of each source. Sources are opened here, so a missing file fails before Ray work."""
    sources = _check(sources)
    constants = [{} for _ in sources] if constants is None else list(constants)
    if len(constants) != len(sources):
        raise ValueError(f"{len(constants)} sets of constant columns for {len(sources)} sources")
    if (rows_per_task is None) == (parts is None):
        raise ValueError("give rows_per_task or parts")
    if rows_per_task is not None and rows_per_task < 1:
        raise ValueError(f"rows_per_task must be >= 1, got {rows_per_task}")
    if parts is not None and parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    plan, spans, offset = [], [], 0
    for source, const in zip(sources, constants, strict=True):
        n = source.num_rows()
        if n == 0:
            raise ValueError(f"{source.uri}: the source holds no images")
        k = parts if parts is not None else -(-n // rows_per_task)
        plan += [ReadPart(source, p, k, offset, n * p // k, n * (p + 1) // k, dict(const))
                 for p in range(k)]
        spans.append(range(offset, offset + n))
        offset += n
    if not plan:
        raise ValueError("no sources to read")
    return plan, spans


def read_part(part: ReadPart, columns: Sequence[str] | None = None, index: bool = True,
              transform: Transform | None = None) -> list[dict]:
    """The rows of one part: `columns` of each source row (all if None; `label` as an int),
    with its `index` unless index=False, through `transform`, plus the part's constants."""
    rows = []
    for i, row in enumerate(part.source.iter_rows(shard=part.part, num_shards=part.parts)):
        out = dict(row) if columns is None else {c: row[c] for c in columns}
        if "label" in out:
            out["label"] = int(out["label"])
        rows.append({"index": part.offset + part.start + i, **out} if index else out)
    if len(rows) != part.stop - part.start:
        raise ValueError(f"{part.source.uri}: part {part.part} of {part.parts} yielded "
                         f"{len(rows)} rows, expected {part.stop - part.start} (did the source "
                         "change while it was read?)")
    if transform is not None:
        rows = transform(part, rows)
    return [{**row, **part.constants} for row in rows] if part.constants else rows


def _read_task(item: dict, plan: list[ReadPart], columns: Sequence[str] | None, index: bool,
               transform: Transform | None) -> list[dict]:
    return read_part(plan[item["task"]], columns, index, transform)


def read_parts(plan: Sequence[ReadPart], columns: Sequence[str] | None = None,
               index: bool = True, transform: Transform | None = None,
               num_cpus: float = 0.5) -> ray.data.Dataset:
    """A Ray Dataset of the rows of `plan`, one read task (and one block) per part."""
    plan = list(plan)
    items = [{"task": k} for k in range(len(plan))]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.flat_map(_read_task, num_cpus=num_cpus, fn_kwargs={
        "plan": plan, "columns": None if columns is None else list(columns), "index": index,
        "transform": transform})


def read_sources(sources: Sequence[Source], rows_per_task: int = DEFAULT_ROWS_PER_TASK,
                 columns: Sequence[str] | None = ("image", "label"),
                 constants: Sequence[dict] | None = None, transform: Transform | None = None,
                 num_cpus: float = 0.5) -> tuple[ray.data.Dataset, list[range]]:
    """The concatenation of `sources` as one Ray Dataset of rows with an `index` (their position
    in the concatenation), read by tasks of about `rows_per_task` rows, and the index range of
    each source."""
    plan, spans = plan_reads(sources, rows_per_task=rows_per_task, constants=constants)
    return read_parts(plan, columns, True, transform, num_cpus), spans


def read_source(source: Source, parts: int = DEFAULT_PARTS,
                columns: Sequence[str] = ("image", "label"),
                num_cpus: float = 0.5) -> ray.data.Dataset:
    """One source's `columns` (no index) read by `parts` parallel tasks; Parquet by Ray's own
    Parquet reader, which reads only those columns."""
    (source,) = _check([source])
    if source.kind == "parquet":
        return ray.data.read_parquet(source.url, columns=list(columns),
                                     file_extensions=["parquet"])
    plan, _ = plan_reads([source], parts=parts)
    return read_parts(plan, columns, index=False, num_cpus=num_cpus)
