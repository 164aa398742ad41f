"""Gather the stages' outputs into the results document the report renders
(training-set table, m-sweep, calibration, sample grid, score distributions, seeds, provenance).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from cemiray.apps.experiment.cache import StageCache, StageResult
from cemiray.apps.experiment.config import REAL, ExperimentConfig
from cemiray.data import storage
from cemiray.models.hashing import model_hash
from cemiray.runtime.machine import git_commit, machine_info, versions


def read_generated(parquet_url: str, columns: list[str]) -> dict[str, np.ndarray]:
    """Columns of a generated dataset's shards, in shard order."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(parquet_url)
    files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"{parquet_url}: no Parquet shards")
    tables = []
    for name in files:
        with fs.open(name, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return {c: np.concatenate([t.column(c).to_numpy(zero_copy_only=False) for t in tables])
            for c in columns}


def calibration(generated: dict[str, StageResult]) -> list[dict]:
    """Target vs achieved similarity (measured by E_id when each image was made), pooled over
    every set by target."""
    by_target: dict[float, list[np.ndarray]] = {}
    for stage in generated.values():
        cols = read_generated(stage.result["parquet"], ["target_m", "similarity"])
        for target in np.unique(cols["target_m"]):
            mask = cols["target_m"] == target
            by_target.setdefault(round(float(target), 4), []).append(
                cols["similarity"][mask].astype(np.float64))
    rows = []
    for target in sorted(by_target):
        s = np.concatenate(by_target[target])
        rows.append({"target": target, "achieved_mean": float(s.mean()),
                     "achieved_std": float(s.std()), "n": int(s.size)})
    return rows


def sample_grid(cfg: ExperimentConfig, generated: dict[str, StageResult], out: str) -> dict | None:
    """One PNG: rows = the first identities, columns = the single-m sets in increasing m."""
    from cemiray.data.images import decode_image
    from cemiray.eval.control import save_grid_png

    singles = sorted((s.m[0], s.label) for s in cfg.sets if len(s.m) == 1)
    if not singles:
        return None
    columns = []
    for _, label in singles:
        cols = read_generated(generated[label].result["parquet"], ["label", "sample", "image"])
        first = {}
        for lab, sample, data in zip(cols["label"], cols["sample"], cols["image"], strict=True):
            if lab < cfg.grid_identities and (lab not in first or sample < first[lab][0]):
                first[int(lab)] = (int(sample), data)
        columns.append([decode_image(bytes(first[k][1]), where=f"{label} label {k}")
                        for k in sorted(first)])
    rows = min(len(c) for c in columns)
    grid = np.stack([np.stack([col[r] for col in columns]) for r in range(rows)])
    url = storage.join(out, "sample_grid.png")
    save_grid_png(grid.astype(np.uint8), url)
    caption = ("rows: new identities; columns: m = "
               + ", ".join(f"{m:g}" for m, _ in singles))
    return {"caption": caption, "png": url}


def seeds_section(seeds: StageResult) -> tuple[dict, dict]:
    report = json.loads(storage.read_text(seeds.result["report"]))
    attrs: dict[str, dict] = {}
    for quota in report.get("quotas", []):
        name = ",".join(quota["attributes"])
        attrs[name] = {cell: {"target": v["target_fraction"], "achieved": v["achieved_fraction"]}
                       for cell, v in quota["cells"].items()}
    leak = report.get("leakage", {})
    kept_max = leak.get("kept_leakage_max", {})
    leakage = {"threshold": leak.get("threshold"), "reference": leak.get("reference"),
               "checked": report.get("stages", {}).get("after_quality"),
               "flagged": leak.get("rejected"), "max_similarity": kept_max.get("max"),
               "kept_max_similarity": kept_max}
    return attrs, leakage


def judge_section(judge: StageResult, datasets: dict[str, str]) -> tuple[dict, dict]:
    report = json.loads(storage.read_text(judge.result["report"]))
    by_uri = {entry["uri"]: (name, entry) for name, entry in report["datasets"].items()}
    names = {}
    distributions = {}
    for label, uri in datasets.items():
        if uri in by_uri:
            names[by_uri[uri][0]] = label
            distributions[label] = by_uri[uri][1]
    distances = {}
    for comparison in report.get("comparisons", []):
        other = names.get(comparison["b"]) or names.get(comparison["a"])
        if other is not None:
            distances[other] = {"mated": comparison["mated"], "nonmated": comparison["nonmated"]}
    return distributions, distances


def collect_results(cfg: ExperimentConfig, cache: StageCache, *, trained: dict[str, StageResult],
                    generated: dict[str, StageResult], datasets: dict[str, str],
                    seeds: StageResult, judge: StageResult,
                    recognizer: str, generator: str, wall_seconds: float) -> dict[str, Any]:
    specs = {s.label: s for s in cfg.sets}
    rows = []
    for label, stage in trained.items():
        spec = specs.get(label)
        rows.append({"name": label, "kind": "real" if label == REAL else "synthetic",
                     "m": None if spec is None else spec.m,
                     "images": cfg.identities * cfg.samples_per_identity,
                     "identities": cfg.identities,
                     "accuracy": stage.result.get("accuracy"),
                     "accuracy_std": stage.result.get("accuracy_std"),
                     "wall_seconds": stage.result.get("train_seconds") or stage.seconds,
                     "model": stage.result.get("backbone")})
    distributions, distances = judge_section(judge, datasets)
    attrs, leakage = seeds_section(seeds)
    results: dict[str, Any] = {
        "title": "cemiray experiment: FR trained on CemiFace synthetic sets vs real ToyFaces",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "training_sets": rows,
        "calibration": calibration(generated) if generated else [],
        "score_distributions": distributions,
        "distances": distances,
        "leakage": leakage,
    }
    if attrs:
        results["seed_attributes"] = attrs
    grid = sample_grid(cfg, generated, storage.join(cfg.out, "figures")) if generated else None
    if grid is not None:
        results["sample_grids"] = [grid]
    results["provenance"] = {
        "commit": git_commit(),
        "versions": versions(),
        "models": {"recognizer": {"path": recognizer, "sha256": model_hash(recognizer)},
                   "generator": {"path": generator, "sha256": model_hash(generator)}},
        "configs": {r.name: r.config for r in cache.records},
        "hashes": {r.name: r.key[:16] for r in cache.records},
        "wall_times": {r.name: r.seconds for r in cache.records},
        "cached": [r.name for r in cache.records if r.cached],
        "experiment": cfg.model_dump(mode="json"),
        "wall_seconds": round(wall_seconds, 1),
    }
    return results

