"""The experiment's results document (apps): every stage's output gathered for the report.

Gather the stages' outputs into the results document the report renders
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
from cemiray.eval.statistics import mean_ci, paired_test
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


def variation_section(cfg: ExperimentConfig, generated: dict[str, StageResult]) -> dict:
    """Per set with a variation plan, requested against measured (the independent estimator's
    reading, recorded in every row): each binary attribute's share, each continuous one's mean,
    std and correlation over the images that requested it."""
    out = {}
    for spec in cfg.sets:
        stage = generated.get(spec.label)
        if not spec.variation or stage is None or not cfg.variation_estimator:
            continue
        cols = read_generated(stage.result["parquet"], ["variation", "variation_measured"])
        requested = [json.loads(v) for v in cols["variation"]]
        measured = [json.loads(v) for v in cols["variation_measured"]]
        rows: dict[str, dict] = {}
        for name in sorted({k for m in measured for k in m}):
            pairs = [(r[name], m[name]) for r, m in zip(requested, measured, strict=True)
                     if name in r]
            if not pairs:
                continue
            req, got = (np.asarray(x, dtype=np.float64) for x in zip(*pairs, strict=True))
            if set(np.unique(req)) <= {0.0, 1.0}:
                rows[name] = {"requested_share": float(req.mean()),
                              "measured_share": float((got == 1.0).mean()), "images": len(req)}
            else:
                rows[name] = {"requested_mean": float(req.mean()), "requested_std": float(req.std()),
                              "measured_mean": float(got.mean()), "measured_std": float(got.std()),
                              "correlation": float(np.corrcoef(req, got)[0, 1])
                              if req.std() > 0 and got.std() > 0 else None,
                              "images": len(req)}
        out[spec.label] = {"plan": spec.variation.model_dump(mode="json"),
                           "estimator": cfg.variation_estimator, "attributes": rows}
    return out


def calibration(generated: dict[str, StageResult]) -> list[dict]:
    """Target vs achieved similarity, pooled over every set by target: measured by E_id when
    each image was made (`achieved_*`) and, where the sets were judged, by the independent judge
    (`judge_*`), the figure that counts since E_id conditioned the generator."""
    by_target: dict[float, dict[str, list[np.ndarray]]] = {}
    for stage in generated.values():
        judged = stage.result.get("judged")
        cols = read_generated(stage.result["parquet"], ["target_m", "similarity"]
                              + (["judge_similarity"] if judged else []))
        for target in np.unique(cols["target_m"]):
            mask = cols["target_m"] == target
            cell = by_target.setdefault(round(float(target), 4), {})
            cell.setdefault("achieved", []).append(cols["similarity"][mask].astype(np.float64))
            if judged:
                cell.setdefault("judge", []).append(
                    cols["judge_similarity"][mask].astype(np.float64))
    rows = []
    for target in sorted(by_target):
        row: dict[str, Any] = {"target": target}
        for key, parts in by_target[target].items():
            s = np.concatenate(parts)
            row[f"{key}_mean"], row[f"{key}_std"] = float(s.mean()), float(s.std())
            row["n"] = int(s.size)
        rows.append(row)
    return rows


def sample_grid(cfg: ExperimentConfig, generated: dict[str, StageResult], out: str,
                seeds_table: str | None = None) -> dict | None:
    """One PNG: rows = the first identities, columns = the identity's seed image (the inquiry
    image, or the GAN sample) when the seed table keeps it, then the single-m sets in
    increasing m."""
    from cemiray.data.images import decode_image, fit_square
    from cemiray.eval.control import save_labelled_grid
    from cemiray.pipeline.seeds.table import read_seed_table

    singles = sorted((s.m[0], s.label) for s in cfg.sets if len(s.m) == 1 and not s.variation)
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
    first_column, titles = "", [label for _, label in singles]
    table = read_seed_table(seeds_table) if seeds_table else None
    if table is not None and table.images and all(table.images[:rows]):
        size = columns[0][0].shape[0]
        seed_images = [decode_image(bytes(table.images[k]), where=f"seed {k}")
                       for k in range(rows)]
        columns.insert(0, [im if im.shape[:2] == (size, size) else fit_square(im, size)
                           for im in seed_images])
        kind = "GAN sample" if cfg.identity_source == "gan" else "inquiry image"
        first_column = f"the identity's seed ({kind}), then "
        titles.insert(0, "GAN sample" if cfg.identity_source == "gan" else "inquiry")
    grid = np.stack([np.stack([col[r] for col in columns]) for r in range(rows)])
    url = storage.join(out, "sample_grid.png")
    save_labelled_grid(grid.astype(np.uint8), titles, url)
    caption = (f"rows: new identities; columns: {first_column}m = "
               + ", ".join(f"{m:g}" for m, _ in singles))
    return {"caption": caption, "png": url}


def variation_grid(cfg: ExperimentConfig, generator: str, seeds_table: str, out: str
                   ) -> dict | None:
    """For the first sets with a variation plan: rows = the first identities (their seed image
    first), columns = one requested variation each (nothing, then each attribute at the ends of
    its range), made by the generator at that set's first m."""
    import torch

    from cemiray.data.images import decode_image, fit_square
    from cemiray.diffusion import load_pipeline
    from cemiray.eval.control import save_labelled_grid
    from cemiray.pipeline.generate.variation_plan import ResolvedPlan, VariationPlan
    from cemiray.pipeline.seeds.table import read_seed_table

    varied = next((s for s in cfg.sets if s.variation), None)
    if varied is None:
        return None
    pipe = load_pipeline(generator)
    plan = ResolvedPlan(VariationPlan(kind="grid", levels=2,
                                      attributes=varied.variation.attributes),
                        pipe.condition_encoder.variation)
    requests = plan.grid()
    table = read_seed_table(seeds_table, need_images=False)
    rows = min(cfg.grid_identities, len(table.seed_ids))
    ids = torch.as_tensor(np.repeat(table.embeddings[:rows], len(requests), axis=0))
    out_images = pipe(ids, varied.m[0], [int(table.seed_ids[r]) for r in range(rows)
                                          for _ in requests],
                      variation=requests * rows, num_inference_steps=cfg.sampling.steps,
                      scheduler=cfg.sampling.scheduler).images
    size = out_images.shape[1]
    grid = out_images.reshape(rows, len(requests), size, size, 3)
    inquiry = None
    if table.images and all(table.images[:rows]):
        inquiry = np.stack([fit_square(im, size) if im.shape[0] != size else im for im in
                            (decode_image(bytes(table.images[r])) for r in range(rows))])
    titles = [("nothing" if r is None else ", ".join(
        f"{k}" if v is True else f"no {k}" if v is False else f"{k} {v:.2g}"
        for k, v in r.items())) for r in requests]
    url = storage.join(out, "variation_grid.png")
    save_labelled_grid(grid, titles, url, inquiry=inquiry)
    return {"png": url, "caption": f"rows: identities ({'seed image first, ' if inquiry is not None else ''}"
            f"same noise seed along a row); columns: the requested variation, one attribute at "
            f"a time, at m = {varied.m[0]:g} ({varied.label})"}


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


def training_row(cfg: ExperimentConfig, label: str, stages: list[StageResult],
                 identities: int | None = None) -> dict:
    """One training set's row: accuracy as the mean over its trainings (one per seed) with the
    95% confidence interval, each training's accuracy, and the mean fold std."""
    identities = identities or cfg.identities
    base = label.rsplit(" x", 1)[0]
    spec = {s.label: s for s in cfg.sets}.get(base)
    accuracies = [s.result["accuracy"] for s in stages if s.result.get("accuracy") is not None]
    fold_stds = [s.result.get("accuracy_std") or 0.0 for s in stages]
    row: dict[str, Any] = {
        "name": label, "kind": "real" if base == REAL else "synthetic",
        "m": None if spec is None else spec.m,
        "variation": spec.variation.kind if spec is not None and spec.variation else None,
        "images": identities * cfg.samples_per_identity, "identities": identities,
        "accuracy": None, "accuracy_std": float(np.mean(fold_stds)) if fold_stds else None,
        "accuracies": accuracies, "trainings": len(stages),
        "wall_seconds": sum(s.result.get("train_seconds") or s.seconds for s in stages),
        "model": stages[0].result.get("backbone") if stages else None}
    if accuracies:
        estimate = mean_ci(accuracies, name=f"{label} accuracies")
        row["accuracy"] = estimate.mean
        row["accuracy_ci95"] = None if estimate.n < 2 else estimate.half_width
    return row


def claims(rows: list[dict]) -> list[dict]:
    """The comparisons the loop exists for, each a paired t-test over the trainings (same seeds,
    same test folds): the best semi-hard set (one m below 1) against m = 1, the best synthetic
    set against the real one of the same size, and, with `scaling`, the synthetic set with the
    most identities against that real set. Absent when a side is missing or has one training."""
    by_name = {r["name"]: r for r in rows if len(r.get("accuracies") or []) >= 2}
    base = min((r["identities"] for r in by_name.values()), default=None)
    equal = [r for r in by_name.values() if r["identities"] == base]
    plain = [r for r in equal if not r.get("variation")]
    singles = [r for r in plain if r["kind"] == "synthetic" and r["m"] and len(r["m"]) == 1]
    easy = [r for r in singles if r["m"][0] == 1.0]
    semi = [r for r in singles if r["m"][0] < 1.0]
    synthetic = [r for r in equal if r["kind"] == "synthetic"]
    scaled = [r for r in by_name.values() if r["kind"] == "synthetic" and r not in equal]
    real = by_name.get(REAL)
    pairs = []
    if semi and easy:
        best = max(semi, key=lambda r: r["accuracy"])
        pairs.append(("best semi-hard m against m = 1", best, easy[0]))
    for varied in (r for r in equal if r.get("variation") and r["kind"] == "synthetic"):
        same_m = [r for r in plain if r["kind"] == "synthetic" and r["m"] == varied["m"]]
        if same_m:
            pairs.append((f"{varied['variation']} variation against none at the same m",
                          varied, same_m[0]))
    if synthetic and real:
        best = max(synthetic, key=lambda r: r["accuracy"])
        pairs.append(("best synthetic set against real", best, real))
    if scaled and real:
        most = max(scaled, key=lambda r: r["identities"])
        times = most["identities"] // real["identities"]
        pairs.append((f"synthetic at {times}x the identities against real at equal size",
                      most, real))
    out = []
    for claim, a, b in pairs:
        n = min(len(a["accuracies"]), len(b["accuracies"]))
        test = paired_test(a["accuracies"][:n], b["accuracies"][:n])
        out.append({"claim": claim, "a": a["name"], "b": b["name"], **test.as_dict(),
                    "ratio": a["accuracy"] / b["accuracy"] if b["accuracy"] else None,
                    "verdict": test.verdict(a["name"], b["name"])})
    return out


def collect_results(cfg: ExperimentConfig, cache: StageCache, *,
                    trained: dict[str, list[StageResult]],
                    generated: dict[str, StageResult], datasets: dict[str, str],
                    seeds: StageResult, judge: StageResult,
                    recognizer: str, generator: str, wall_seconds: float,
                    sizes: dict[str, int] | None = None) -> dict[str, Any]:
    sizes = sizes or {}
    hashes = {"recognizer": model_hash(recognizer),
              **({"judge": model_hash(cfg.judge)} if cfg.judge else {})}
    rows = [training_row(cfg, label, stages, sizes.get(label))
            for label, stages in trained.items()]
    distributions, distances = judge_section(judge, datasets)
    attrs, leakage = seeds_section(seeds)
    results: dict[str, Any] = {
        "title": "cemiray experiment: FR trained on CemiFace synthetic sets vs real ToyFaces",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "training_sets": rows,
        "claims": claims(rows),
        "judge": {"path": cfg.judge or recognizer,
                  "independent": cfg.judge is not None,
                  "sha256": hashes["judge"] if cfg.judge else hashes["recognizer"]},
        "calibration": calibration(generated) if generated else [],
        "score_distributions": distributions,
        "distances": distances,
        "variation": variation_section(cfg, generated) if generated else {},
        "leakage": leakage,
    }
    if attrs:
        results["seed_attributes"] = attrs
    grid = sample_grid(cfg, generated, storage.join(cfg.out, "figures"),
                       seeds.result.get("table")) if generated else None
    if grid is not None:
        results["sample_grids"] = [grid]
    if any(s.variation for s in cfg.sets) and seeds.result.get("table"):
        extra = variation_grid(cfg, generator, seeds.result["table"],
                               storage.join(cfg.out, "figures"))
        if extra is not None:
            results.setdefault("sample_grids", []).append(extra)
    results["provenance"] = {
        "commit": git_commit(),
        "versions": versions(),
        "models": {"recognizer": {"path": recognizer, "sha256": hashes["recognizer"]},
                   **({"judge": {"path": cfg.judge, "sha256": hashes["judge"]}}
                      if cfg.judge else {}),
                   "generator": {"path": generator, "sha256": model_hash(generator)}},
        "configs": {r.name: r.config for r in cache.records},
        "hashes": {r.name: r.key[:16] for r in cache.records},
        "wall_times": {r.name: r.seconds for r in cache.records},
        "cached": [r.name for r in cache.records if r.cached],
        "experiment": cfg.model_dump(mode="json"),
        "wall_seconds": round(wall_seconds, 1),
    }
    return results



def summary_of(results: dict[str, Any], command: str) -> dict[str, Any]:
    """The few figures a README table is copied from: each set's accuracies, the claims, the
    judge's calibration, which models measured what, and the command that made them."""
    keep = ("name", "kind", "m", "variation", "images", "identities", "accuracy",
            "accuracy_ci95", "accuracies", "trainings")
    stats = ("mated_mean", "mated_std", "nonmated_mean", "nonmated_std", "eer", "d_prime")
    distributions = {
        label: {**{k: d.get(k) for k in stats},
                **{f"wasserstein_{side}_to_real": results.get("distances", {}).get(label, {})
                   .get(side, {}).get("wasserstein") for side in ("mated", "nonmated")}}
        for label, d in (results.get("score_distributions") or {}).items()}
    from cemiray.runtime.machine import repository_relative

    provenance = results.get("provenance", {})
    return repository_relative({
        "command": command,
        "created": results.get("created"),
        "machine": {k: results.get("machine", {}).get(k) for k in ("cpus", "gpu", "date")},
        # the loop's own wall time (stages taken from the cache cost ~0: their count beside it)
        "wall_seconds": provenance.get("wall_seconds"),
        "stages_cached": len(provenance.get("cached", [])),
        "training_sets": [{k: row.get(k) for k in keep} for row in results["training_sets"]],
        "claims": [{k: c[k] for k in ("claim", "a", "b", "p", "significant", "ratio", "verdict")}
                   for c in results.get("claims", [])],
        "calibration": results.get("calibration", []),
        "score_distributions": distributions,
        "variation": results.get("variation") or None,
        "judge": {**results["judge"], "path": _relative(results["judge"]["path"])}
        if results.get("judge") else None,
    })


def _relative(path: str) -> str:
    """A path under the working folder as a relative one (no machine's paths in shared JSON)."""
    import os

    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative
