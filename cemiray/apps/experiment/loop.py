"""`cemiray experiment`: the CemiFace loop on ToyFaces, every stage cached by content hash.

real split → E_id (train-fr, or a given model) → generator (train-gen, or a given one) → seeds
from new identities → one synthetic set per m setting (generate, each image also measured by the
independent judge) → FR trained `trainings` times (seeds 0…n−1) on each set and on as many real
images of identities no model saw (train-fr, one recipe) → accuracy on a held-out-identity `.bin`
as mean ± 95% CI, paired t-tests of the claims → the judge's score distributions of every set
against the real set (evaluate) → HTML report.

Each stage is a Ray job step (Ray Train or Ray Data) run through `StageCache`, so a rerun redoes
only the stages whose config or inputs changed.
"""

from __future__ import annotations

import json
import sys
import time

from cemiray.apps.experiment.cache import StageCache, StageResult
from cemiray.apps.experiment.config import REAL, ExperimentConfig, SyntheticSet
from cemiray.data import storage
from cemiray.data.sources import Source


def toyfaces(cfg: ExperimentConfig, first: int, count: int, samples: int) -> str:
    """The URI of `samples` images of identities first..first+count−1 of the loop's world."""
    w = cfg.world
    return Source.toyfaces(range(first, first + count), samples=samples, seed=w.seed,
                           size=w.size, difficulty=w.difficulty).uri


def new_identities(cfg: ExperimentConfig, count: int) -> str:
    """Inquiry images of identities no model of the loop saw: ToyFaces' new-identity range."""
    from cemiray.data.toyfaces import ToyFacesSplit

    first = ToyFacesSplit.new_offset
    return toyfaces(cfg, first, count, 1)


def stage_test_bin(cfg: ExperimentConfig, cache: StageCache) -> StageResult:
    from cemiray.pipeline.render import RenderConfig, run

    first = cfg.recognizer_identities
    settings = {"world": cfg.world.model_dump(mode="json"), "first": first,
                "identities": cfg.test_identities, "samples": cfg.test_samples,
                "pairs": cfg.bin_pairs}

    def work(out: str) -> dict:
        result = run(RenderConfig(out=out, world=cfg.world, first_identity=first,
                                  num_identities=cfg.test_identities,
                                  samples_per_identity=cfg.test_samples, formats=["bin"],
                                  bin_pairs=cfg.bin_pairs, ray=cfg.ray))
        return {"bin": result["bin"]}

    return cache.run("test-bin", settings, work)


def stage_train_fr(cfg: ExperimentConfig, cache: StageCache, name: str, data: str,
                   verification: str, inputs: dict[str, str] | None = None,
                   epochs: int | None = None, seed: int = 0) -> StageResult:
    from cemiray.train.fr import fr_config, run

    def train_config(out: str):
        """The loop's FR recipe for this set; Ray Train keeps its files under `out`."""
        r = cfg.fr
        dist = r.distributed.model_copy(update={"storage_path": storage.join(out, "ray")})
        return fr_config(r, out=out, data=data, verification=verification, distributed=dist,
                         input_size=cfg.world.size, epochs=epochs or r.epochs, log_every=20,
                         seed=seed, ray=cfg.ray)

    probe = train_config("unused")
    settings = probe.model_dump(mode="json", exclude={"out", "ray"})
    settings["distributed"].pop("storage_path", None)

    def work(out: str) -> dict:
        result = run(train_config(out))
        return {"backbone": result["backbone"], "accuracy": result.get("val_acc"),
                "accuracy_std": result.get("val_acc_std"), "images": result.get("images"),
                "train_seconds": result.get("seconds")}

    return cache.run(f"fr-{slug(name)}-seed{seed}", settings, work, inputs)


def stage_generator(cfg: ExperimentConfig, cache: StageCache, recognizer: str,
                    data: str) -> StageResult:
    from cemiray.train.gen import TrainGenConfig, run

    settings = {"data": data, **cfg.generator_training}

    def work(out: str) -> dict:
        options = {"out": out, "data": data, "recognizer": recognizer, "ray": cfg.ray,
                   **cfg.generator_training}
        options.setdefault("distributed", {"num_workers": 1, "cpus_per_worker": 1.0,
                                           "zero_stage": 1, "torch_threads": 2})
        options["distributed"] = {**options["distributed"],
                                  "storage_path": storage.join(out, "ray")}
        result = run(TrainGenConfig.model_validate(options))
        return {"generator": result["generator"], "steps": result.get("steps")}

    return cache.run("train-gen", settings, work, {"recognizer": recognizer})


def joint_quota(quotas: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Marginal quotas as one joint quota (the product of the shares), so GAN samples can be
    aimed at one cell each: {"group": {"0": .5, "1": .5}, "sex": {...}} → {"group,sex": {...}}."""
    names, joint = [], {(): 1.0}
    for name, shares in quotas.items():
        names.append(name)
        joint = {(*cell, c): f * g for cell, f in joint.items() for c, g in shares.items()}
    return {",".join(names): {",".join(cell): f for cell, f in joint.items() if f > 0}}


def stage_seeds(cfg: ExperimentConfig, cache: StageCache, recognizer: str,
                count: int) -> StageResult:
    from cemiray.pipeline.seeds.job import SeedsConfig, run

    leakage = toyfaces(cfg, 0, cfg.recognizer_identities, 2)
    candidates = count * cfg.candidates_per_identity
    if cfg.identity_source == "gan":
        quotas = joint_quota(cfg.quotas) if cfg.quotas else {}
        source = {"inquiry": [], "gan": cfg.gan, "gan_samples": candidates,
                  "attribute_model": cfg.attribute_model, "gan_condition": bool(quotas),
                  "gan_condition_psi": cfg.gan_condition_psi,
                  "attributes": sorted({a for q in cfg.quotas for a in q.split(",")}),
                  "quotas": quotas}
        inputs = {"recognizer": recognizer, "gan": cfg.gan,
                  "attribute_model": cfg.attribute_model}
        settings = {**source, "leakage": leakage}
    else:
        inquiry = new_identities(cfg, candidates)
        source = {"inquiry": [inquiry], "probe_data": leakage, "quotas": cfg.quotas}
        inputs = {"recognizer": recognizer}
        settings = {"inquiry": inquiry, "leakage": leakage, "quotas": cfg.quotas}
    settings.update({"identities": count, "uniqueness": cfg.uniqueness_threshold,
                     "leakage_threshold": cfg.leakage_threshold})

    def work(out: str) -> dict:
        result = run(SeedsConfig(out=out, recognizer=recognizer, leakage_data=leakage,
                                 num_identities=count,
                                 uniqueness_threshold=cfg.uniqueness_threshold,
                                 leakage_threshold=cfg.leakage_threshold,
                                 ray=cfg.ray, **source))
        return {"table": result["table"], "report": result["report"], "kept": result["kept"]}

    return cache.run("seeds", settings, work, inputs)


def stage_seed_subset(cache: StageCache, table: str, count: int) -> str:
    """The first `count` seeds of a table: the base sets use as many identities as the real
    baseline while the scaled sets draw on the whole table."""
    import io

    import pyarrow.parquet as pq

    def work(out: str) -> dict:
        data = pq.read_table(io.BytesIO(storage.read_bytes(table)))
        if data.num_rows < count:
            raise ValueError(f"{table}: {data.num_rows} seeds, fewer than the {count} asked for")
        url = storage.join(out, "seeds.parquet")
        with storage.atomic_open(url, "wb") as f:
            pq.write_table(data.slice(0, count), f)
        return {"table": url}

    return cache.run(f"seeds-{count}", {"count": count}, work, {"seeds": table}).result["table"]


def schedule_of(spec: SyntheticSet) -> dict:
    if len(spec.m) == 1:
        return {"kind": "constant", "m": spec.m[0]}
    return {"kind": "list", "values": spec.m}


def stage_variation_labels(cfg: ExperimentConfig, cache: StageCache, real: str) -> str:
    """The real training set labelled by `variation_labeller` (label-attr): the table a
    `target` variation plan copies."""
    from cemiray.pipeline.label_attr import LabelAttrConfig, run

    def work(out: str) -> dict:
        result = run(LabelAttrConfig(out=out, data=real, model=cfg.variation_labeller,
                                     ray=cfg.ray))
        return {"labels": result["labels"]}

    return cache.run("variation-labels", {"data": real}, work,
                     {"model": cfg.variation_labeller}).result["labels"]


def stage_generate(cfg: ExperimentConfig, cache: StageCache, spec: SyntheticSet, seeds: str,
                   generator: str, recognizer: str, label: str | None = None,
                   identities: int | None = None) -> StageResult:
    from cemiray.pipeline.generate.job import GenerateConfig, run

    sampling = cfg.sampling
    variation = spec.variation.model_dump(mode="json") if spec.variation else None
    estimator = cfg.variation_estimator if variation else None
    settings = {"samples": cfg.samples_per_identity, "schedule": schedule_of(spec),
                "sampling": sampling.model_dump(mode="json"), "seed": 0, "judged": bool(cfg.judge),
                **({"variation": variation, "estimator": estimator} if variation else {})}

    def work(out: str) -> dict:
        result = run(GenerateConfig.model_validate({
            "out": out, "seeds": seeds, "generator": generator, "recognizer": recognizer,
            "judge": cfg.judge,
            "samples_per_identity": cfg.samples_per_identity,
            "identities_per_shard": max(1, (identities or cfg.identities) // 4),
            "schedule": schedule_of(spec), "sampling": sampling,
            "variation": variation, "variation_estimator": estimator,
            "images_per_call": cfg.images_per_call,
            "ray": cfg.ray.model_dump(mode="json"),
            "distributed": {"num_workers": cfg.sampler_workers, "use_gpu": cfg.use_gpu}}))
        return {"parquet": result["parquet"], "images": result["counts"]["images"],
                "images_per_s": result.get("images_per_s"), "judged": bool(cfg.judge)}

    inputs = {"seeds": seeds, "generator": generator, "recognizer": recognizer,
              **({"judge": cfg.judge} if cfg.judge else {}),
              **({"variation_estimator": estimator} if estimator else {}),
              **({"variation_table": spec.variation.table}
                 if spec.variation and spec.variation.table else {})}
    return cache.run(f"generate-{slug(label or spec.label)}", settings, work, inputs)


def stage_judge(cfg: ExperimentConfig, cache: StageCache, recognizer: str,
                datasets: dict[str, str], test_bin: str) -> StageResult:
    """Mated / non-mated similarity distributions of every training set under one judge (the
    independent judge; E_id only when none is given), each compared to the real set."""
    from cemiray.apps.evaluate import EvaluateConfig, run

    real = datasets[REAL]
    model = cfg.judge or recognizer
    settings = {"datasets": datasets}

    def work(out: str) -> dict:
        run(EvaluateConfig(out=out, model=model, verification=[test_bin],
                           datasets=list(datasets.values()), reference=real, ray=cfg.ray,
                           labels={uri: label for label, uri in datasets.items()}))
        return {"report": storage.join(out, "report.json")}

    files = {label: Source.parse(uri).url for label, uri in datasets.items()}
    inputs = {"recognizer": model, **{f"set-{slug(label)}": url for label, url in files.items()
                                      if url}}
    return cache.run("judge", settings, work, inputs)


def slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in ".-" else "_" for c in text)
    return keep.strip("_") or "set"


def run(cfg: ExperimentConfig) -> dict:
    from cemiray.apps.experiment.results import collect_results, summary_of
    from cemiray.runtime.cluster import init_ray

    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out),
                                 "recognizer": storage.absolute(cfg.recognizer),
                                 "generator": storage.absolute(cfg.generator)})
    t0 = time.perf_counter()
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    init_ray(cfg.ray)
    cache = StageCache(storage.join(cfg.out, "stages"))

    test_bin = stage_test_bin(cfg, cache).result["bin"]
    real_split = toyfaces(cfg, 0, cfg.recognizer_identities, cfg.recognizer_samples)
    recognizer = cfg.recognizer
    if recognizer is None:
        recognizer = stage_train_fr(cfg, cache, "e_id", real_split, test_bin,
                                    epochs=cfg.recognizer_epochs).result["backbone"]
    generator = cfg.generator
    if generator is None:
        generator = stage_generator(cfg, cache, recognizer, real_split).result["generator"]
    largest = cfg.identities * max([1, *cfg.scaling])
    seeds = stage_seeds(cfg, cache, recognizer, largest)
    table = seeds.result["table"]
    base_table = table if largest == cfg.identities else stage_seed_subset(
        cache, table, cfg.identities)

    datasets: dict[str, str] = {}
    generated: dict[str, StageResult] = {}
    sizes: dict[str, int] = {}  # identities of each training set
    real_ids = cfg.real_identities()
    real = toyfaces(cfg, real_ids.start, len(real_ids), cfg.samples_per_identity)
    for spec in cfg.sets:
        if spec.variation and spec.variation.kind == "target" and not spec.variation.table:
            labels = stage_variation_labels(cfg, cache, real)
            spec = spec.model_copy(update={
                "variation": spec.variation.model_copy(update={"table": labels})})
        generated[spec.label] = stage_generate(cfg, cache, spec, base_table, generator,
                                               recognizer)
        datasets[spec.label] = Source.at("parquet", generated[spec.label].result["parquet"]).uri
    datasets[REAL] = real
    sizes.update({label: cfg.identities for label in datasets})
    for k in cfg.scaling:  # more identities, the same images per identity
        n = cfg.identities * k
        spec = cfg.scaled_set()
        label = f"{spec.label} x{k}"
        subset = table if n == largest else stage_seed_subset(cache, table, n)
        generated[label] = stage_generate(cfg, cache, spec, subset, generator, recognizer,
                                          label=label, identities=n)
        datasets[label] = Source.at("parquet", generated[label].result["parquet"]).uri
        datasets[f"{REAL} x{k}"] = toyfaces(cfg, real_ids.start, n, cfg.samples_per_identity)
        sizes[label] = sizes[f"{REAL} x{k}"] = n

    trained: dict[str, list[StageResult]] = {}
    training_seeds = range(cfg.trainings)
    for label in [REAL, *(name for name in datasets if name != REAL)]:
        if label.startswith(REAL) and not cfg.real_baseline:
            continue
        inputs = {"data": generated[label].result["parquet"]} if label in generated else None
        trained[label] = [stage_train_fr(cfg, cache, label, datasets[label], test_bin,
                                         inputs=inputs, seed=s) for s in training_seeds]
    judge = stage_judge(cfg, cache, recognizer, datasets, test_bin)

    results = collect_results(cfg, cache, trained=trained, generated=generated,
                              datasets=datasets, seeds=seeds,
                              judge=judge, recognizer=recognizer, generator=generator,
                              sizes=sizes,
                              wall_seconds=time.perf_counter() - t0)
    storage.atomic_write_text(storage.join(cfg.out, "results.json"),
                              json.dumps(results, indent=2, default=str) + "\n")
    summary = {"out": cfg.out, "results": storage.join(cfg.out, "results.json"),
               "table": results["training_sets"]}
    if cfg.summary_json:
        command = "cemiray " + " ".join(sys.argv[1:]) if sys.argv[1:] else "cemiray experiment"
        storage.atomic_write_text(cfg.summary_json, json.dumps(
            summary_of(results, command), indent=1, default=str) + "\n")
        summary["summary_json"] = cfg.summary_json
    if cfg.report:
        from cemiray.apps.report.html import write_report

        summary["report"] = write_report(results, storage.join(cfg.out, "report"))
        if cfg.screenshot:
            from cemiray.apps.report.browser import render_in_chromium

            shot = render_in_chromium(summary["report"],
                                      storage.join(cfg.out, "report", "screenshot.png"))
            summary["screenshot"] = shot
    print_table(results["training_sets"], results.get("claims", []))
    if "report" in summary:
        print(f"report: {summary['report']}")
    if "screenshot" in summary:
        shot = summary["screenshot"]
        print(f"report in Chromium: {shot['images_loaded']}/{shot['images_total']} images "
              f"loaded → {shot['screenshot']}")
    return summary


def print_table(rows: list[dict], claims: list[dict] | None = None) -> None:
    """Each set's accuracy (mean ± 95% CI over its trainings), then the claims' paired tests."""
    print(f"{'training set':<22}{'images':>8}  {'accuracy (mean ± 95% CI)':>26}  per training")
    for row in rows:
        acc, ci = row.get("accuracy"), row.get("accuracy_ci95")
        if acc is None:
            text = "-"
        elif ci is None:
            text = f"{100 * acc:6.2f}%"
        else:
            text = f"{100 * acc:6.2f} ± {100 * ci:.2f}%"
        each = ", ".join(f"{100 * a:.2f}" for a in row.get("accuracies") or [])
        print(f"{row['name']:<22}{row.get('images') or 0:>8}  {text:>26}  {each}")
    for claim in claims or []:
        print(f"{claim['claim']}: {claim['verdict']}")