"""What `cemiray seeds` reads (pipeline part): the parts of every face source with their roles.

A row's `roles` bits say where it goes: SEED (a candidate), CENTRES (a training identity whose
centre the leakage filter compares with), PROBE (labelled data for the attribute probe). A
source that is both leakage and probe data is read once with both bits. Seed sources keep only
the first row of each label in a read part (the driver keeps the first over all parts)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import numpy as np

from cemiray.data.sources import Source
from cemiray.pipeline.seeds.config import SeedsConfig
from cemiray.runtime.reader import ReadPart, plan_reads

SEED, CENTRES, PROBE = 1, 2, 4
ROLE_NAMES = ((SEED, "seeds"), (CENTRES, "centres"), (PROBE, "probe"))


def scalar(value: Any, where: str) -> Any:
    """An attribute value as a plain scalar (int, float, str, bool or None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    raise ValueError(f"{where}: attribute value {value!r} is not a scalar (int, float, str, "
                     "bool)")


def seed_rows(part: ReadPart, rows: list[dict], attributes: tuple[str, ...]) -> list[dict]:
    """Inside a read task: the rows of one part as `{index, source, roles, image, label,
    attributes (JSON)}`; a seed source keeps the first row of each label only."""
    first_only = bool(part.constants["roles"] & SEED)
    out, seen = [], set()
    for row in rows:
        label = row["label"]
        if first_only and label in seen:
            continue
        seen.add(label)
        where = f"{part.source.uri} row {row['index'] - part.offset}"
        attrs = {a: scalar(row[a], f"{where} column {a!r}") for a in attributes if a in row}
        out.append({"index": row["index"], "source": part.constants["source"],
                    "roles": part.constants["roles"], "image": row["image"], "label": label,
                    "attributes": json.dumps(attrs)})
    return out


def seed_transform(cfg: SeedsConfig):
    """The read tasks' treatment of a part's rows (a picklable `seed_rows`)."""
    return partial(seed_rows, attributes=tuple(cfg.attributes))


def plan_sources(cfg: SeedsConfig, inquiry: list[Source], leakage: Source | None,
                 probe: Source | None, file_rows: list[int]
                 ) -> tuple[list[ReadPart], list[dict], list[dict]]:
    """Read parts of every face source, the seed sources in order (name, kind, first index,
    rows) and the reference sources (leakage centres and/or probe data, read once each)."""
    parts: list[ReadPart] = []
    sources: list[dict] = []
    offset = 0

    def reads(source: Source, roles: int, number: int) -> int:
        plan, spans = plan_reads([source], rows_per_task=cfg.rows_per_task,
                                 constants=[{"source": number, "roles": roles}])
        parts.extend(ReadPart(p.source, p.part, p.parts, offset, p.start, p.stop, p.constants)
                     for p in plan)
        return len(spans[0])

    for source in inquiry:
        n = reads(source, SEED, len(sources))
        sources.append({"name": source.uri, "kind": "inquiry", "offset": offset, "rows": n})
        offset += n
    for url, n in zip(cfg.embedding_files, file_rows, strict=True):
        sources.append({"name": f"embeddings:{url}", "kind": "embeddings", "offset": offset,
                        "rows": n, "url": url})
        offset += n
    if cfg.generator:
        sources.append({"name": f"uncond:{cfg.generator}", "kind": "generator",
                        "offset": offset, "rows": cfg.generator_samples})
        offset += cfg.generator_samples
    if cfg.gan:
        sources.append({"name": f"gan:{cfg.gan}", "kind": "gan", "offset": offset,
                        "rows": cfg.gan_samples})
        offset += cfg.gan_samples
    roles: dict[str, tuple[Source, int]] = {}
    for source, role in ((leakage, CENTRES), (probe, PROBE)):
        if source is not None:
            if source.num_classes() < 1:
                raise ValueError(f"{source.uri}: reference data needs identity labels (a .bin "
                                 "has none)")
            known, bits = roles.get(source.uri, (source, 0))
            roles[source.uri] = (known, bits | role)
    references = []
    for uri, (source, role) in roles.items():
        n = reads(source, role, len(sources) + len(references))
        references.append({"name": uri, "roles": role, "offset": offset, "rows": n})
        offset += n
    return parts, sources, references
