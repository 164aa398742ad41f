"""`cemiray fairness` (apps): FR on a balanced and on a skewed synthetic set, judged per group.

GANDiffFace's and FRCSyn's bias measure, end to end: identities from the GAN filled to a
balanced and to a skewed distribution over an attribute (ToyFaces' groups) by `cemiray seeds`
(gan_condition: each sample aimed at its cell), the same number of each; a CemiFace set of each
(`generate`, one m, one generator); FR trained `trainings` times on each with one recipe
(`train-fr`, seeds 0…n−1); then verification accuracy on a test set of unseen identities with
the same number of identities and pairs per group: per group, its mean, and the spread
(max − min) across groups, each a mean with its 95% CI over the trainings, and a paired t-test
of the two sets' spreads and mean accuracies. The kept identities' groups are also measured by
the independent attribute classifier. Stages are cached as the experiment's are."""

from __future__ import annotations

import json
import time

import numpy as np
from pydantic import Field, model_validator

from cemiray.apps.experiment.config import FRRecipe, SyntheticSet, _sampling
from cemiray.assets import (
    TOYFACES_ATTRIBUTES,
    TOYFACES_ATTRIBUTES_JUDGE,
    TOYFACES_GAN,
    TOYFACES_GENERATOR,
    TOYFACES_JUDGE,
    TOYFACES_RECOGNIZER,
)
from cemiray.data import storage
from cemiray.diffusion.sampling import SamplingSpec, lift_sampling_keys
from cemiray.runtime.config import JobConfig, RayConfig, WorldConfig

SETS = ("balanced", "skewed")


class FairnessConfig(JobConfig):
    out: str = "runs/fairness"
    world: WorldConfig = Field(default_factory=WorldConfig)
    recognizer: str = Field(TOYFACES_RECOGNIZER, description="E_id: conditions the generator "
                            "and the seeds' uniqueness and leakage filters")
    generator: str = Field(TOYFACES_GENERATOR, description="CemiFace pipeline folder")
    gan: str = Field(TOYFACES_GAN, description="StyleGAN identity source")
    attribute_model: str = Field(TOYFACES_ATTRIBUTES,
                                 description="labels the GAN samples for the quotas")
    attributes_judge: str | None = Field(TOYFACES_ATTRIBUTES_JUDGE,
                                         description="independent attribute classifier that "
                                         "measures the kept identities' groups; None: not measured")
    judge: str | None = Field(TOYFACES_JUDGE, description="measures the generated images "
                              "(generate's judge columns)")
    attribute: str = "group"
    balanced: dict[str, float] = Field(default_factory=lambda: {str(g): 0.25 for g in range(4)})
    skewed: dict[str, float] = Field(default_factory=lambda: {"0": 0.55, "1": 0.15, "2": 0.15,
                                                              "3": 0.15})
    identities: int = Field(100, ge=4, description="identities of each synthetic set")
    overshoot: float = Field(2.0, ge=1, description="GAN candidates per identity kept")
    gan_condition_psi: float = Field(1.0, ge=0, le=1, description="pull toward the cell's "
                                     "mean w after screening (1: none)")
    uniqueness_threshold: float = Field(0.7, ge=-1, le=1)
    leakage_threshold: float = Field(0.8, ge=-1, le=1)
    leakage_data: str | None = Field("toyfaces:?seed=0&ids=20000-20999&samples=2&size=32",
                                     description="faces the GAN trained on: kept identities "
                                     "must not repeat them")
    samples_per_identity: int = Field(10, ge=2)
    m: list[float] = Field(default_factory=lambda: [0.6], description="CemiFace similarity (one "
                           "value, or several in equal shares)")
    test_first: int = Field(50_000, ge=0, description="first ToyFaces identity scanned for the "
                            "test identities (disjoint from every model's)")
    test_per_group: int = Field(50, ge=2, description="test identities per group")
    test_samples: int = Field(10, ge=2)
    pairs_per_group: int = Field(1000, ge=20)
    trainings: int = Field(3, ge=2, description="FR trainings per set (seeds 0…n−1)")
    fr: FRRecipe = Field(default_factory=FRRecipe)
    sampling: SamplingSpec = Field(default_factory=_sampling)
    images_per_call: int = Field(50, ge=1)
    sampler_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    summary_json: str | None = Field(None, description="also write the figures to this JSON "
                                     "(e.g. docs/results/fairness.json)")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _flat_sampling_keys(cls, data):
        return lift_sampling_keys(data, _sampling())

    @model_validator(mode="after")
    def _check(self) -> FairnessConfig:
        for name in SETS:
            shares = getattr(self, name)
            if not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
                raise ValueError(f"{name}: give non-negative shares per {self.attribute} value")
        return self

    def experiment(self):
        """The experiment config whose generate and train-fr stages this study reuses."""
        from cemiray.apps.experiment.config import ExperimentConfig

        return ExperimentConfig(
            out=self.out, world=self.world, recognizer=self.recognizer, judge=self.judge,
            generator=self.generator, identities=self.identities,
            samples_per_identity=self.samples_per_identity, sets=[SyntheticSet(m=self.m)],
            fr=self.fr, sampling=self.sampling, images_per_call=self.images_per_call,
            sampler_workers=self.sampler_workers, use_gpu=self.use_gpu,
            trainings=self.trainings, ray=self.ray, report=False)


def group_test_identities(cfg: FairnessConfig) -> dict[str, list[int]]:
    """`test_per_group` ToyFaces identities of each group, the first found from `test_first`."""
    from cemiray.data.toyfaces import ToyFacesWorld

    world = ToyFacesWorld(seed=cfg.world.seed, size=cfg.world.size,
                          difficulty=cfg.world.difficulty)
    groups: dict[str, list[int]] = {}
    identity = cfg.test_first
    while len(groups) < 4 or min(len(v) for v in groups.values()) < cfg.test_per_group:
        g = str(world.attributes(identity)[cfg.attribute])
        if len(groups.setdefault(g, [])) < cfg.test_per_group:
            groups[g].append(identity)
        identity += 1
        if identity - cfg.test_first > 100 * cfg.test_per_group * 4:
            raise ValueError(f"fewer than {cfg.test_per_group} identities of some {cfg.attribute}"
                             f" from {cfg.test_first} on")
    return dict(sorted(groups.items()))


def stage_group_bins(cfg: FairnessConfig, cache) -> dict[str, str]:
    """One verification .bin per group: genuine and impostor pairs (half each, alternating)
    within it."""
    def work(out: str) -> dict:
        from cemiray.data.images import encode_png
        from cemiray.data.toyfaces import ToyFacesWorld, verification_pairs
        from cemiray.data.verification_bin import write_bin

        world = ToyFacesWorld(seed=cfg.world.seed, size=cfg.world.size,
                              difficulty=cfg.world.difficulty)
        bins = {}
        for g, ids in group_test_identities(cfg).items():
            pairs = verification_pairs(ids, cfg.test_samples, cfg.pairs_per_group,
                                       seed=cfg.world.seed)
            # genuine and impostor pairs alternate, so every fold of the protocol holds both
            same = [p for p in pairs if p[2]]
            other = [p for p in pairs if not p[2]]
            pairs = [p for two in zip(same, other, strict=True) for p in two]
            images, _ = world.render_batch([i for a, b, _ in pairs for i in (a[0], b[0])],
                                           [s for a, b, _ in pairs for s in (a[1], b[1])])
            bins[g] = storage.join(out, f"{cfg.attribute}_{g}.bin")
            write_bin(bins[g], [encode_png(im) for im in images], [s for _, _, s in pairs])
        return {"bins": bins}

    settings = {"world": cfg.world.model_dump(mode="json"), "first": cfg.test_first,
                "per_group": cfg.test_per_group, "samples": cfg.test_samples,
                "pairs": cfg.pairs_per_group, "attribute": cfg.attribute}
    return cache.run("group-bins", settings, work).result["bins"]


def stage_seeds(cfg: FairnessConfig, cache, name: str) -> dict:
    from cemiray.pipeline.seeds.job import SeedsConfig, run

    shares = getattr(cfg, name)
    settings = {"shares": shares, "identities": cfg.identities, "overshoot": cfg.overshoot,
                "psi": cfg.gan_condition_psi, "uniqueness": cfg.uniqueness_threshold,
                "leakage": cfg.leakage_threshold, "leakage_data": cfg.leakage_data}

    def work(out: str) -> dict:
        result = run(SeedsConfig(
            out=out, recognizer=cfg.recognizer, inquiry=[], gan=cfg.gan,
            gan_samples=int(np.ceil(cfg.identities * cfg.overshoot)),
            attribute_model=cfg.attribute_model, attributes=[cfg.attribute],
            quotas={cfg.attribute: shares}, num_identities=cfg.identities, gan_condition=True,
            gan_condition_psi=cfg.gan_condition_psi, leakage_data=cfg.leakage_data,
            uniqueness_threshold=cfg.uniqueness_threshold,
            leakage_threshold=cfg.leakage_threshold, ray=cfg.ray))
        return {"table": result["table"], "report": result["report"], "kept": result["kept"]}

    inputs = {"gan": cfg.gan, "attribute_model": cfg.attribute_model,
              "recognizer": cfg.recognizer}
    return cache.run(f"seeds-{name}", settings, work, inputs).result


def group_accuracies(backbone: str, bins: dict[str, str]) -> dict[str, float]:
    """Verification accuracy (10-fold protocol) of a trained backbone on each group's .bin."""
    from cemiray.data.verification_bin import decode_bin
    from cemiray.eval.verification import embed_with_flip, evaluate_pairs
    from cemiray.models.recognizer import load_recognizer

    model = load_recognizer(backbone)
    out = {}
    for g, url in bins.items():
        images, issame = decode_bin(url, model.input_size)
        emb = embed_with_flip(model, images)
        out[g] = float(evaluate_pairs(emb[0::2], emb[1::2], issame)["accuracy_mean"])
    return out


def measured_groups(cfg: FairnessConfig, table: str) -> dict[str, float] | None:
    """The kept identities' groups under the independent attribute classifier."""
    if not cfg.attributes_judge:
        return None
    from cemiray.data.images import decode_image
    from cemiray.eval.attributes import cell_labeller
    from cemiray.eval.set_metrics import shares
    from cemiray.models.attributes import load_attribute_model
    from cemiray.pipeline.seeds.table import read_seed_table

    seeds = read_seed_table(table, need_images=True)
    cells = cell_labeller(load_attribute_model(cfg.attributes_judge), [cfg.attribute])
    return shares(cells(np.stack([decode_image(im) for im in seeds.images])))


def summarise(per_training: dict[str, list[dict[str, float]]]) -> dict:
    """Per set: each group's mean accuracy, the mean and the spread (max − min) across groups,
    as means with 95% CIs over the trainings; the paired tests balanced − skewed."""
    from cemiray.eval.statistics import mean_ci, paired_test

    out: dict = {"sets": {}}
    for name, runs in per_training.items():
        groups = sorted(runs[0])
        out["sets"][name] = {
            "per_group": {g: mean_ci([r[g] for r in runs]).as_dict() for g in groups},
            "mean": mean_ci([np.mean(list(r.values())) for r in runs]).as_dict(),
            "spread": mean_ci([max(r.values()) - min(r.values()) for r in runs]).as_dict(),
            "per_training": runs}
    b, s = (per_training[n] for n in SETS)
    for key, f in (("spread", lambda r: max(r.values()) - min(r.values())),
                   ("mean", lambda r: float(np.mean(list(r.values()))))):
        test = paired_test([f(r) for r in b], [f(r) for r in s])
        out[f"balanced_minus_skewed_{key}"] = {**test.as_dict(),
                                               "verdict": test.verdict("balanced", "skewed")}
    return out


def run(cfg: FairnessConfig) -> dict:
    from cemiray.apps.experiment.cache import StageCache
    from cemiray.apps.experiment.loop import stage_generate, stage_train_fr
    from cemiray.data.sources import Source
    from cemiray.runtime.cluster import init_ray

    t0 = time.perf_counter()
    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out)})
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    init_ray(cfg.ray)
    cache = StageCache(storage.join(cfg.out, "stages"))
    exp = cfg.experiment()
    bins = stage_group_bins(cfg, cache)
    first_bin = next(iter(bins.values()))
    results: dict = {"target": {n: getattr(cfg, n) for n in SETS}, "bins": bins, "sets": {}}
    per_training: dict[str, list[dict[str, float]]] = {}
    for name in SETS:
        seeds = stage_seeds(cfg, cache, name)
        generated = stage_generate(cfg=exp, cache=cache, spec=exp.sets[0], seeds=seeds["table"],
                                   generator=cfg.generator, recognizer=cfg.recognizer,
                                   label=name).result
        data = Source.at("parquet", generated["parquet"]).uri
        trained = [stage_train_fr(exp, cache, name, data, first_bin,
                                  inputs={"data": generated["parquet"]}, seed=s).result
                   for s in range(cfg.trainings)]
        per_training[name] = [group_accuracies(t["backbone"], bins) for t in trained]
        report = json.loads(storage.read_text(seeds["report"]))
        results["sets"][name] = {
            "kept": seeds["kept"], "images": generated["images"],
            "groups_by_selector": {c: v["achieved_fraction"]
                                   for c, v in report["quotas"][0]["cells"].items()},
            "groups_by_judge": measured_groups(cfg, seeds["table"]),
            "gan_condition": report.get("gan_condition")}
    results["fairness"] = summarise(per_training)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    storage.atomic_write_text(storage.join(cfg.out, "results.json"),
                              json.dumps(results, indent=1, default=str) + "\n")
    if cfg.summary_json:
        from cemiray.runtime.machine import repository_relative

        storage.atomic_write_text(cfg.summary_json, json.dumps(repository_relative(
            {"command": "cemiray fairness", **results}), indent=1, default=str) + "\n")
    print_table(results["fairness"])
    return results


def print_table(fair: dict) -> None:
    sets = fair["sets"]
    groups = sorted(next(iter(sets.values()))["per_group"])
    print(f"{'set':<10}" + "".join(f"{'group ' + g:>16}" for g in groups)
          + f"{'mean':>16}{'spread':>16}")
    for name, row in sets.items():
        cells = [row["per_group"][g] for g in groups] + [row["mean"], row["spread"]]
        print(f"{name:<10}" + "".join(
            f"{100 * c['mean']:>9.2f} ± {100 * c['half_width']:<4.2f}" for c in cells))
    for key in ("spread", "mean"):
        print(f"{key}: " + fair[f"balanced_minus_skewed_{key}"]["verdict"])
