"""The driver-side filters of `cemiray seeds` (pipeline part), in their fixed order.

Candidates are seen in the sources' order, the sources taken in turn, or a seeded shuffle:
quality (raw norm within bounds), leakage (max cosine to a training centre < τ), then greedy
uniqueness under the judge together with the attribute quotas, until `num_identities` seeds
are kept (cemiray.eval.seed_filters, blockwise). Attributes a candidate lacks come from the
attribute model (in the embedder actors), else from a probe on embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cemiray.eval.seed_filters import Selection, greedy_select, nearest_centres, quality_mask
from cemiray.eval.seed_probe import probe_with_holdout
from cemiray.eval.seed_quotas import Quota, parse_quotas
from cemiray.pipeline.seeds.config import SeedsConfig


@dataclass
class Filtered:
    """What the filters decided for the candidates (arrays in candidate order)."""

    quality: np.ndarray
    leak_max: np.ndarray
    leak_nearest: np.ndarray
    leak_ok: np.ndarray
    columns: dict[str, list]
    origin: list[str]
    probe_report: dict
    passing: np.ndarray
    quotas: list[Quota]
    cells: np.ndarray | None
    selection: Selection
    kept: np.ndarray


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fill_attributes(cfg: SeedsConfig, attrs: list[dict], embedding: np.ndarray,
                    probe: dict | None) -> tuple[dict[str, list], list[str], dict]:
    """Attribute columns of the candidates: their own values, missing ones predicted by a probe
    fitted on the probe data. Returns (columns, where each row's values came from, report)."""
    columns = {a: [row.get(a) for row in attrs] for a in cfg.attributes}
    probed = [set() for _ in attrs]
    report: dict = {}
    for name, values in columns.items():
        missing = [i for i, v in enumerate(values) if _missing(v)]
        if not missing or probe is None:
            continue
        known = [i for i, row in enumerate(probe["attrs"]) if not _missing(row.get(name))]
        if not known:
            report[name] = {"skipped": f"probe data {cfg.probe_data} has no {name!r} values"}
            continue
        model, report[name] = probe_with_holdout(
            probe["embedding"][known], [probe["attrs"][i][name] for i in known],
            probe["label"][known], kind=cfg.probe_kind, seed=cfg.order_seed)
        for i, value in zip(missing, model.predict(embedding[missing]), strict=True):
            values[i] = value
            probed[i].add(name)
        report[name]["predicted"] = len(missing)
    origin = []
    for row, names in zip(attrs, probed, strict=True):
        modelled = set(row.get("_from_model", ()))
        own = any(not _missing(row.get(a)) and a not in modelled for a in cfg.attributes)
        origin.append("+".join(k for k, on in (("source", own), ("model", bool(modelled)),
                                               ("probe", bool(names))) if on) or "none")
    return columns, origin, report


def candidate_order(cfg: SeedsConfig, source: np.ndarray) -> np.ndarray:
    """The order the greedy filters see the candidates (which are sorted by index)."""
    n = len(source)
    if cfg.order == "shuffled":
        return np.random.default_rng(cfg.order_seed).permutation(n)
    if cfg.order == "interleaved":
        rank = np.zeros(n, dtype=np.int64)
        for k in np.unique(source):
            rows = np.flatnonzero(source == k)
            rank[rows] = np.arange(len(rows))
        return np.lexsort((source, rank))
    return np.arange(n)


def filter_candidates(cfg: SeedsConfig, data: dict[str, Any], centres: np.ndarray | None,
                      centre_labels: np.ndarray | None, probe: dict | None) -> Filtered:
    """Quality, leakage, attributes (probed where missing), then uniqueness with the quotas."""
    n = len(data["index"])
    order = candidate_order(cfg, data["source"])
    quality = quality_mask(data["norm"], cfg.quality_min_norm, cfg.quality_max_norm)
    leak_max = np.full(n, np.nan, dtype=np.float32)
    leak_nearest = np.full(n, -1, dtype=np.int64)
    leak_ok = np.ones(n, dtype=bool)
    if centres is not None:
        leak_max, rows = nearest_centres(data["space"], centres, block=cfg.block_size)
        leak_nearest = np.asarray(centre_labels)[rows]
        leak_ok = leak_max < cfg.leakage_threshold
    columns, origin, probe_report = fill_attributes(cfg, data["attrs"], data["embedding"], probe)
    passing = order[(quality & leak_ok)[order]]
    quotas = parse_quotas(cfg.quotas, cfg.num_identities) if cfg.quotas else []
    cells = None
    if quotas:
        sub = {a: [columns[a][i] for i in passing] for a in cfg.attributes}
        try:
            cells = np.stack([q.cell_index(sub) for q in quotas], axis=1)
        except ValueError as exc:
            raise ValueError(f"{exc}; give probe_data (a labelled source with the attribute) "
                             "to predict it from embeddings") from None
    selection = greedy_select(data["space"][passing], cfg.uniqueness_threshold, cells,
                              [q.counts for q in quotas] or None, limit=cfg.num_identities,
                              block=cfg.block_size)
    return Filtered(quality, leak_max, leak_nearest, leak_ok, columns, origin, probe_report,
                    passing, quotas, cells, selection, passing[selection.kept])
