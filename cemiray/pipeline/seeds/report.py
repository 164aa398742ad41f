"""Outputs of `cemiray seeds` (pipeline part): the seed table, the report and the audit.

`seeds.parquet` (seed_id = seed_id_offset + the candidate's position in the concatenated
sources), `seeds_report.json` (counts per stage, leakage audit, quota target vs achieved, probe
accuracy) and `seeds_audit.parquet` (every candidate with the stage that decided it, its feature
norm, leakage_max / leakage_nearest and uniqueness_max). A run short of its target writes the
report and the audit, not the table, and raises."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cemiray.data import storage
from cemiray.eval.seed_filters import OUTCOMES, summary_stats
from cemiray.pipeline.generate.job import OUTPUT_COLUMNS
from cemiray.pipeline.seeds.config import SeedsConfig
from cemiray.pipeline.seeds.gan_condition import condition_report
from cemiray.pipeline.seeds.plan import ROLE_NAMES
from cemiray.pipeline.seeds.select import Filtered
from cemiray.pipeline.seeds.table import read_seed_table, write_seed_table


def write_audit(url: str, columns: dict[str, Any]) -> None:
    """One row per candidate with the stage that decided it (quality, leakage, duplicate,
    quota_full, quota_outside, not_examined, kept) and the measures behind it."""
    table = pa.table({k: pa.array(list(v) if isinstance(v, list) else v)
                      for k, v in columns.items()})
    with storage.atomic_open(url, "wb") as f:
        pq.write_table(table, f)


def _source_counts(rows: np.ndarray, source: np.ndarray, sources: list[dict]) -> dict[str, int]:
    counts = Counter(source[rows].tolist())
    return {s["name"]: int(counts.get(k, 0)) for k, s in enumerate(sources)}


def build_report(cfg: SeedsConfig, data: dict[str, Any], sources: list[dict],
                 references: list[dict], f: Filtered, num_centres: int,
                 seconds: dict[str, float], gan_calibration: dict | None = None) -> dict:
    """The report: counts per stage, per source, leakage audit, quotas, probe accuracy."""
    n, kept = len(data["index"]), f.kept
    counts = f.selection.counts()
    quota_reports = [q.report(f.cells[f.selection.kept, k]) for k, q in enumerate(f.quotas)]
    rejected_leak = np.flatnonzero(f.quality & ~f.leak_ok)
    worst = rejected_leak[np.argsort(-f.leak_max[rejected_leak], kind="stable")[:10]]
    unique_max = uniqueness_max(n, f)
    return {
        "sources": [{k: v for k, v in s.items() if k != "url"} for s in sources],
        "references": [{**r, "roles": [name for bit, name in ROLE_NAMES if r["roles"] & bit]}
                       for r in references],
        "candidates": {"total": n, "by_source": _source_counts(np.arange(n), data["source"],
                                                                sources)},
        "stages": {
            "candidates": n,
            "quality_rejected": int((~f.quality).sum()),
            "after_quality": int(f.quality.sum()),
            "leakage_rejected": int(rejected_leak.size),
            "after_leakage": int(f.passing.size),
            "duplicate": counts["duplicate"],
            "quota_full": counts["quota_full"],
            "quota_outside": counts["quota_outside"],
            "not_examined": counts["not_examined"],
            "kept": len(kept),
        },
        "kept_by_source": _source_counts(kept, data["source"], sources),
        "quality": {"min_norm": cfg.quality_min_norm, "max_norm": cfg.quality_max_norm,
                    "unmeasured": int(np.isnan(data["norm"]).sum()),
                    "feature_norm": summary_stats(data["norm"])},
        "leakage": {
            "threshold": cfg.leakage_threshold,
            "reference": cfg.leakage_data or cfg.leakage_centres,
            "centres": num_centres,
            "rejected": int(rejected_leak.size),
            "leakage_max": summary_stats(f.leak_max),
            "kept_leakage_max": summary_stats(f.leak_max[kept]),
            "worst_rejected": [{"seed_id": int(cfg.seed_id_offset + data["index"][i]),
                                "source": sources[data["source"][i]]["name"],
                                "leakage_max": float(f.leak_max[i]),
                                "leakage_nearest": int(f.leak_nearest[i])} for i in worst],
        },
        "uniqueness": {"threshold": cfg.uniqueness_threshold,
                       "judge": cfg.judge or cfg.recognizer, "order": cfg.order,
                       "kept_max_similarity": summary_stats(unique_max[kept])},
        "quotas": quota_reports,
        "probe": f.probe_report,
        "attributes_from": dict(Counter(f.origin[i] for i in kept)),
        "gan_condition": condition_report(gan_calibration, data["attrs"], cfg.gan_condition_psi)
        if gan_calibration else None,
        "num_identities": cfg.num_identities,
        "target_reached": bool(cfg.num_identities is None or len(kept) == cfg.num_identities),
        "quotas_filled": bool(all(r["filled"] for r in quota_reports)),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
        "table": storage.join(cfg.out, "seeds.parquet"),
        "audit": storage.join(cfg.out, "seeds_audit.parquet"),
    }


def uniqueness_max(n: int, f: Filtered) -> np.ndarray:
    """Each candidate's largest cosine to the seeds kept before it (NaN where not measured)."""
    unique_max = np.full(n, np.nan, dtype=np.float32)
    unique_max[f.passing] = f.selection.max_similarity
    return unique_max


def audit_columns(cfg: SeedsConfig, data: dict[str, Any], sources: list[dict],
                  f: Filtered) -> dict[str, Any]:
    n = len(data["index"])
    stage = np.full(n, "quality", dtype=object)
    stage[f.quality & ~f.leak_ok] = "leakage"
    stage[f.passing] = np.asarray(OUTCOMES, dtype=object)[f.selection.outcome]
    return {
        "seed_id": cfg.seed_id_offset + data["index"],
        "source": [sources[k]["name"] for k in data["source"]],
        "source_label": data["label"], "outcome": stage.tolist(),
        "feature_norm": data["norm"], "leakage_max": f.leak_max,
        "leakage_nearest": f.leak_nearest, "uniqueness_max": uniqueness_max(n, f),
        "attributes_from": f.origin, **f.columns}


def write_outputs(cfg: SeedsConfig, data: dict[str, Any], sources: list[dict],
                  report: dict, f: Filtered, dim: int, t0: float) -> str:
    """The audit, then the table (unless short of the target: then raise) and the report."""
    kept = f.kept
    write_audit(report["audit"], audit_columns(cfg, data, sources, f))
    report_url = storage.join(cfg.out, "seeds_report.json")
    if len(kept) == 0 or (cfg.require_target
                          and not (report["target_reached"] and report["quotas_filled"])):
        report["table"] = None
        storage.atomic_write_text(report_url, json.dumps(report, indent=2) + "\n")
        short = {r["attributes"][0] if len(r["attributes"]) == 1 else ",".join(r["attributes"]):
                 r["shortfall"] for r in report["quotas"] if r["shortfall"]}
        wanted = cfg.num_identities or "at least 1"
        raise RuntimeError(f"seeds: kept {len(kept)} seeds, wanted {wanted}"
                           f"{'; quota shortfall ' + json.dumps(short) if short else ''}; "
                           f"add candidates or relax the filters (report: {report_url})")
    attribute_columns = {a: [f.columns[a][i] for i in kept] for a in cfg.attributes}
    attribute_columns.update({
        "source_label": data["label"][kept].tolist(),
        "feature_norm": data["norm"][kept].astype(float).tolist(),
        "leakage_max": f.leak_max[kept].astype(float).tolist(),
        "leakage_nearest": f.leak_nearest[kept].tolist(),
        "uniqueness_max": uniqueness_max(len(data["index"]), f)[kept].astype(float).tolist(),
        "attributes_from": [f.origin[i] for i in kept],
    })
    images = [data["images"][i] for i in kept] if cfg.keep_images else None
    if images is not None and all(im is None for im in images):
        images = None
    table_url = report["table"]
    write_seed_table(table_url, cfg.seed_id_offset + data["index"][kept],
                     data["embedding"][kept], [sources[k]["name"] for k in data["source"][kept]],
                     attribute_columns, images)
    read_seed_table(table_url, expected_dim=dim, reserved=OUTPUT_COLUMNS)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    storage.atomic_write_text(report_url, json.dumps(report, indent=2) + "\n")
    return report_url


def print_summary(report: dict) -> None:
    st = report["stages"]
    leak = report["leakage"]["leakage_max"]
    print(f"seeds: {st['candidates']} candidates → quality {st['after_quality']} → leakage "
          f"{st['after_leakage']} (max {leak.get('max', float('nan')):.3f}, "
          f"{st['leakage_rejected']} rejected) → kept {st['kept']} (duplicates "
          f"{st['duplicate']}, quota full {st['quota_full']}); quotas filled "
          f"{report['quotas_filled']}; {report['seconds']['total']} s → {report['table']}",
          flush=True)
