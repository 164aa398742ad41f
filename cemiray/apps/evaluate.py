"""`cemiray evaluate` (apps): verification accuracy and score distributions of one recogniser.

`cemiray evaluate model=... verification=[a.bin] datasets=[uri]`: a face-recognition model on
verification sets (insightface arcface_torch protocol) and on face datasets (GANDiffFace's mated /
non-mated score distributions), with every image embedded in one Ray Data pass. Only the sets
named are evaluated; at least one of `verification` and `datasets` is required. A `.bin`'s
same / different pairs give its mated / non-mated score distribution as well.

Outputs under `out`: `config.json`, `report.json` (every figure, with score histograms and a
`units` mapping: scores and thresholds are cosine similarities except the protocol's accuracy
thresholds, squared L2 distances), `report.html`, `scores.png` (all sets overlaid),
`scores_<name>.png` (one per set), `det.png`, and with `save_embeddings` an
`embeddings_<name>.npz` per set."""

from __future__ import annotations

import io
import re
import time
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

BIN_PREFIX = "bin:"
NOTHING_TO_EVALUATE = ("evaluate: nothing to evaluate; give `verification` (arcface_torch .bin "
                       "files, e.g. verification=[lfw.bin]) and/or `datasets` (source URIs, e.g. "
                       "datasets=[orl:])")


class EvaluateConfig(JobConfig):
    out: str = "runs/evaluate"
    model: str = Field(description="the recogniser: a cemiray model folder, "
                       "`.pth?arch=iresnet50`, .onnx")
    verification: list[str] = Field(
        default_factory=list,
        description="arcface_torch verification .bin files (`bin:` prefix optional)")
    datasets: list[str] = Field(
        default_factory=list,
        description="source URIs whose mated / non-mated score distributions are reported "
                    "(e.g. `orl:`, `toyfaces:?ids=1000-1049&samples=10`, `imagefolder:DIR`)")
    labels: dict[str, str] = Field(default_factory=dict, description="the names sets go by in "
                                   "the report and file names, keyed by their URI (default: the "
                                   "file or folder's stem)")
    reference: str | None = Field(None, description="a dataset every other one is compared to "
                                  "(Wasserstein-1, KL), e.g. `orl:`; added to `datasets` when "
                                  "absent")
    flip_datasets: bool = Field(False, description="embed datasets with flip-sum as well "
                                "(verification sets always are)")
    nfolds: int = Field(10, ge=2)
    thresholds: list[float] = Field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5],
                                    description="cosine thresholds of the FMR/FNMR table")
    max_nonmated_pairs: int = Field(200_000, ge=1)
    histogram_bins: int = Field(100, ge=2)
    seed: int = Field(0, ge=0, description="seed of the non-mated pair sample")
    save_embeddings: bool = False
    batch_size: int = Field(256, ge=1)
    rows_per_read_task: int = Field(1000, ge=1)
    num_actors_min: int = Field(1, ge=1)
    num_actors_max: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, ge=0, description="≤ 0.5 on 2-core machines")
    use_gpu: bool = False
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("verification", "datasets", "reference", mode="before")
    @classmethod
    def _bare_kind(cls, value: Any) -> Any:
        """YAML (config files, `key=value` overrides) reads a bare `orl:` as the mapping
        {orl: None}; read it back as the URI it was written as."""

        def uri(item: Any) -> Any:
            if isinstance(item, dict) and len(item) == 1 and next(iter(item.values())) is None:
                return f"{next(iter(item))}:"
            return item

        return [uri(v) for v in value] if isinstance(value, list) else uri(value)

    @model_validator(mode="after")
    def _check(self) -> EvaluateConfig:
        if not self.verification and not self.datasets and self.reference is None:
            raise ValueError(NOTHING_TO_EVALUATE)
        if self.num_actors_max < self.num_actors_min:
            raise ValueError(f"num_actors_max={self.num_actors_max} is below "
                             f"num_actors_min={self.num_actors_min}")
        return self


def bin_url(entry: str) -> str:
    return entry.removeprefix(BIN_PREFIX)


def set_names(entries: list[str], kinds: list[str],
              labels: dict[str, str] | None = None) -> list[str]:
    """Short distinct names for file names and the report: the user's label for the entry, else
    a file or folder's stem (`lfw`, `orl_faces`), `toyfaces` for rendered sets; repeats get
    `-2`, `-3`, ..."""
    names: list[str] = []
    for entry, kind in zip(entries, kinds, strict=True):
        if labels and entry in labels:
            base = labels[entry]
        elif kind == "toyfaces":
            base = "toyfaces"
        else:
            tail = entry.split(":", 1)[1] if kind != "bin" and ":" in entry else bin_url(entry)
            base = tail.rstrip("/").rsplit("/", 1)[-1].removesuffix(".bin") or kind
        base = re.sub(r"[^A-Za-z0-9_.=-]+", "_", base)
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def check_inputs(cfg: EvaluateConfig) -> tuple[Any, list[dict]]:
    """Open the model and every set before any Ray work, so a missing or malformed file fails
    at once with its name. Returns the recogniser and one plan entry per set."""
    from cemiray.data.sources import Source
    from cemiray.data.verification_bin import load_bin
    from cemiray.eval.verification import check_folds
    from cemiray.models.recognizer import load_recognizer

    datasets = list(cfg.datasets)
    if cfg.reference is not None and cfg.reference not in datasets:
        datasets.append(cfg.reference)
    if not datasets and not cfg.verification:
        raise ValueError(NOTHING_TO_EVALUATE)
    for entry in cfg.verification:  # every named file, before the slow model load
        if not storage.exists(bin_url(entry)):
            raise FileNotFoundError(f"{bin_url(entry)}: verification .bin not found")
    recognizer = load_recognizer(cfg.model)
    plan = []
    for entry in cfg.verification:
        url = bin_url(entry)
        _, issame = load_bin(url)
        check_folds(issame, cfg.nfolds, where=url)
        plan.append({"kind": "bin", "uri": BIN_PREFIX + url, "entry": entry, "flip": True,
                     "issame": issame, "source": Source.at("bin", url)})
    for uri in datasets:
        source = Source.parse(uri)
        if source.kind == "bin":
            raise ValueError(f"{uri}: a .bin holds unlabelled pairs; list it under "
                             "`verification`, not `datasets`")
        if source.kind != "toyfaces" and not storage.exists(source.url):
            raise FileNotFoundError(f"{uri}: {source.url} not found")
        if source.num_classes() < 2:
            raise ValueError(f"{uri}: score distributions need at least 2 identities")
        plan.append({"kind": "dataset", "uri": uri, "entry": uri, "flip": cfg.flip_datasets,
                     "source": source})
    names = set_names([p["entry"] for p in plan], [p["source"].kind for p in plan], cfg.labels)
    for entry, name in zip(plan, names, strict=True):
        entry["name"] = name
    return recognizer, plan


def embed_all(cfg: EvaluateConfig, plan: list[dict]) -> tuple[np.ndarray, np.ndarray, float]:
    """Embeddings and labels of every set, concatenated in plan order, and the seconds spent."""
    from cemiray.pipeline.embed import collect_embeddings, embed_dataset, read_face_sources

    t0 = time.perf_counter()
    ds, spans = read_face_sources([p["source"] for p in plan], [p["flip"] for p in plan],
                                  rows_per_task=cfg.rows_per_read_task)
    ds = embed_dataset(ds, cfg.model, batch_size=cfg.batch_size,
                       num_actors=(cfg.num_actors_min, cfg.num_actors_max),
                       cpus_per_actor=cfg.cpus_per_actor, use_gpu=cfg.use_gpu,
                       flip_column="flip")
    total = spans[-1].stop
    embeddings, labels, extras = collect_embeddings(ds, "evaluate", total, every_s=15.0)
    if not np.array_equal(extras["index"], np.arange(total)):
        raise RuntimeError(f"evaluate: {total} images were read but {len(labels)} distinct rows "
                           "came back embedded")
    for entry, span in zip(plan, spans, strict=True):
        entry["span"] = span
    return embeddings, labels, time.perf_counter() - t0


def save_embeddings(cfg: EvaluateConfig, name: str, embeddings: np.ndarray,
                    labels: np.ndarray) -> str:
    url = storage.join(cfg.out, f"embeddings_{name}.npz")
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=embeddings, labels=labels)
    storage.atomic_write_bytes(url, buffer.getvalue())
    return url


def verification_entry(cfg: EvaluateConfig, entry: dict, embeddings: np.ndarray
                       ) -> tuple[dict, Any]:
    """The protocol's figures of one .bin (TAR at each FAR with whether its impostor pairs can
    measure it) and the score distribution of its same / different pairs."""
    from cemiray.eval.score_distributions import pair_score_report
    from cemiray.eval.verification import (
        VAL_FAR,
        evaluate_pairs,
        tar_at_far_table,
        val_far_floor,
    )

    first, second = embeddings[0::2], embeddings[1::2]
    same = np.asarray(entry["issame"]).astype(bool)
    result = evaluate_pairs(first, second, same, cfg.nfolds)
    scores = np.sum(np.asarray(first, np.float64) * np.asarray(second, np.float64), axis=1)
    n_impostor = int((~same).sum())
    val_floor = val_far_floor(same, cfg.nfolds)
    result.update(
        num_genuine_pairs=int(same.sum()), num_impostor_pairs=n_impostor,
        min_measurable_far=1.0 / n_impostor,
        tar_at_far=tar_at_far_table(scores[same], scores[~same]),
        val_far=VAL_FAR, val_min_measurable_far=val_floor,
        val_measurable=bool(VAL_FAR >= val_floor * (1 - 1e-9)))
    if not result["val_measurable"]:
        result["val_note"] = (f"interpolated: the training folds hold as few as "
                              f"{round(1 / val_floor)} impostor pairs, which measure FAR down to "
                              f"{val_floor:.3g} only; the threshold at FAR {VAL_FAR:g} is "
                              "interpolated between FAR 0 and that")
    try:
        distribution = pair_score_report(scores, same, entry["name"], cfg.thresholds)
    except ValueError as exc:
        raise ValueError(f"{entry['uri']}: {exc}") from exc
    return {"uri": entry["entry"], **result}, distribution


def run(cfg: EvaluateConfig) -> dict:
    from cemiray.apps.evaluate_html import write_html
    from cemiray.apps.evaluate_summary import UNITS, compact, print_table
    from cemiray.eval.score_distributions import (
        compare_reports,
        plot_det,
        plot_distributions,
        save_report_json,
        score_report,
    )
    from cemiray.runtime.cluster import init_ray

    t0 = time.perf_counter()
    recognizer, plan = check_inputs(cfg)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    init_ray(cfg.ray)
    embeddings, labels, embed_seconds = embed_all(cfg, plan)

    verification, reports, uris, files = {}, {}, {}, {}
    distributions = {}  # every set's ScoreReport, in plan order: .bin pairs and datasets
    for entry in plan:
        span = slice(entry["span"].start, entry["span"].stop)
        emb, lab = embeddings[span], labels[span]
        if cfg.save_embeddings:
            files[f"embeddings_{entry['name']}"] = save_embeddings(cfg, entry["name"], emb, lab)
        if entry["kind"] == "bin":
            verification[entry["name"]], distributions[entry["name"]] = verification_entry(
                cfg, entry, emb)
            continue
        try:
            reports[entry["name"]] = score_report(emb, lab, entry["name"], cfg.thresholds,
                                                  cfg.max_nonmated_pairs, cfg.seed)
        except ValueError as exc:
            raise ValueError(f"{entry['uri']}: {exc}") from exc
        distributions[entry["name"]] = reports[entry["name"]]
        uris[entry["name"]] = entry["uri"]

    comparisons = []
    if cfg.reference is not None:
        reference = next(reports[p["name"]] for p in plan
                         if p["kind"] == "dataset" and p["uri"] == cfg.reference)
        comparisons = [compare_reports(reference, other, cfg.histogram_bins)
                       for other in reports.values() if other is not reference]
    files["scores"] = storage.join(cfg.out, "scores.png")
    plot_distributions(list(distributions.values()), files["scores"], cfg.histogram_bins)
    files["det"] = storage.join(cfg.out, "det.png")
    plot_det(list(distributions.values()), files["det"])
    for name, r in distributions.items():
        files[f"scores_{name}"] = storage.join(cfg.out, f"scores_{name}.png")
        plot_distributions(r, files[f"scores_{name}"], cfg.histogram_bins)
    for name, r in verification.items():
        r["score_distribution"] = distributions[name].to_dict(cfg.histogram_bins)

    images = len(labels)
    report = {
        "model": {"uri": cfg.model, "content_hash": recognizer.content_hash,
                  "input_size": recognizer.input_size, "dim": recognizer.dim},
        "units": UNITS,
        "verification": verification,
        "datasets": {name: {"uri": uris[name], **r.to_dict(cfg.histogram_bins)}
                     for name, r in reports.items()},
        "comparisons": comparisons,
        "files": files,
        "images": images,
        "images_per_s": round(images / max(embed_seconds, 1e-9), 1),
        "report": storage.join(cfg.out, "report.json"),
        "html": storage.join(cfg.out, "report.html"),
    }
    report["seconds"] = {"embed": round(embed_seconds, 2),
                         "total": round(time.perf_counter() - t0, 2)}
    save_report_json(report, report["report"])
    write_html(report, report["html"])
    print_table(report)
    return compact(report)
