"""Target-similarity schedules, per-image seeds and the shard plan: pure functions of the seed and
the identity, validated at config time. No Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from cemiray.diffusion.variation import VariationSpec
from cemiray.pipeline.generate.job import GenerateConfig
from cemiray.pipeline.generate.schedules import (
    ConstantSchedule,
    ListSchedule,
    MixtureSchedule,
    Schedule,
    UniformSchedule,
    image_seeds,
    schedule_shorthand,
    uniform01,
)
from cemiray.pipeline.generate.shard_plan import (
    OutputConflictError,
    ShardPlanError,
    ShardProgress,
    check_plan,
    plan_fingerprint,
    plan_shards,
    work_items,
    write_plan,
)
from cemiray.pipeline.generate.variation_plan import ResolvedPlan, VariationPlan
from cemiray.pipeline.seeds.table import SeedTable, random_identities
from cemiray.runtime.config import ConfigError, load_config

IDS = np.arange(1000, 1400)
SAMPLES = np.arange(50)


def grid():
    ids, samples = np.meshgrid(IDS, SAMPLES, indexing="ij")
    return ids.ravel(), samples.ravel()


def parse(value) -> Schedule:
    return TypeAdapter(Schedule).validate_python(schedule_shorthand(value))


def test_values_are_pure_functions_of_seed_identity_and_sample():
    ids, samples = grid()
    for schedule in (parse(0.1), parse([0.0, 0.3, 0.6]), parse({"kind": "uniform", "low": -0.2,
                                                                "high": 0.4}),
                     parse({"kind": "mixture", "weights": {0.0: 3, 0.5: 1}})):
        full = schedule.targets(7, ids, samples)
        order = np.random.default_rng(0).permutation(len(ids))
        assert np.array_equal(schedule.targets(7, ids[order], samples[order]), full[order])
        assert np.array_equal(schedule.targets(7, ids[:5], samples[:5]), full[:5])
    seeds = image_seeds(7, ids, samples)
    assert np.array_equal(image_seeds(7, ids[::-1], samples[::-1]), seeds[::-1])
    assert seeds.dtype == np.int64 and seeds.min() >= 0 and seeds.max() < 2**62
    assert len(np.unique(seeds)) == len(seeds)
    assert not np.array_equal(image_seeds(8, ids, samples), seeds)
    assert image_seeds(7, [-5], [0])[0] >= 0  # negative seed ids hash too


def test_each_schedule_gives_its_distribution():
    ids, samples = grid()
    assert np.all(parse(-0.25).targets(0, ids, samples) == -0.25)
    listed = parse([0.0, 0.3, 0.6]).targets(0, ids, samples)
    assert np.array_equal(listed, np.array([0.0, 0.3, 0.6])[samples % 3])
    band = parse({"kind": "uniform", "low": -0.2, "high": 0.4}).targets(0, ids, samples)
    assert band.min() >= -0.2 and band.max() < 0.4
    assert abs(band.mean() - 0.1) < 0.01 and abs(band.std() - 0.6 / 12**0.5) < 0.01
    mix = parse({"kind": "mixture", "weights": {0.0: 3, 0.5: 1}}).targets(0, ids, samples)
    assert set(np.unique(mix)) == {0.0, 0.5}
    assert abs((mix == 0.5).mean() - 0.25) < 0.015  # 20,000 draws: 4 standard deviations
    u = uniform01(3, ids, samples, 1)
    assert abs(u.mean() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.03


def test_shorthands_and_round_trip_through_json():
    assert parse(0.2) == ConstantSchedule(m=0.2)
    assert parse([0.1, 0.2]) == ListSchedule(values=[0.1, 0.2])
    assert isinstance(parse({"kind": "uniform", "low": 0, "high": 0.1}), UniformSchedule)
    cfg = GenerateConfig(seeds="s", generator="g", recognizer="r",
                         schedule={"kind": "mixture", "weights": {0.0: 0.8, 0.3: 0.2}})
    again = GenerateConfig.model_validate_json(cfg.to_json())
    assert again.schedule == cfg.schedule and isinstance(again.schedule, MixtureSchedule)
    assert again.schedule.describe() == "m mixture: 0 (80%), 0.3 (20%)"
    loaded = load_config(GenerateConfig, None, ["seeds=s", "generator=g", "recognizer=r",
                                                "schedule=[0.0, 0.5]"])
    assert loaded.schedule == ListSchedule(values=[0.0, 0.5])


@pytest.mark.parametrize("schedule", [
    1.5, float("nan"), [0.0, 2.0], {"kind": "constant", "m": -1.01},
    {"kind": "uniform", "low": -1.5, "high": 0.0}, {"kind": "uniform", "low": 0.0,
                                                    "high": float("inf")},
    {"kind": "mixture", "weights": {1.2: 1.0}},
])
def test_m_outside_minus_one_one_or_nan_is_a_config_error(schedule):
    with pytest.raises(ValidationError, match=r"m must be a finite number in \[-1, 1\]"):
        GenerateConfig(seeds="s", generator="g", recognizer="r", schedule=schedule)


def test_other_schedule_mistakes_are_config_errors():
    bad = [
        ({"kind": "uniform", "low": 0.5, "high": 0.1}, "low 0.5 > high 0.1"),
        ({"kind": "mixture", "weights": {0.0: 0.0}}, "weight must be finite and > 0"),
        ({"kind": "list", "values": []}, "at least 1 item"),
        ({"kind": "ramp"}, "does not match any of the expected tags"),
    ]
    for schedule, message in bad:
        with pytest.raises(ValidationError, match=message):
            GenerateConfig(seeds="s", generator="g", recognizer="r", schedule=schedule)
    with pytest.raises(ConfigError, match="schedule.uniform.high"):
        load_config(GenerateConfig, None, ["seeds=s", "generator=g", "recognizer=r",
                                           "schedule.kind=uniform", "schedule.low=0"])
    both = GenerateConfig(seeds="s", generator="g", recognizer="r", closed_loop={},
                          variation={"kind": "uniform"})
    assert both.sampling.closed_loop.max_tries == 4 and both.variation.kind == "uniform"
    for field, value in (("guidance_scale", -1.0), ("guidance_m", 1.5)):
        with pytest.raises(ValidationError, match=field):
            GenerateConfig(seeds="s", generator="g", recognizer="r", **{field: value})


def test_variation_plans_are_pure_functions_of_the_image(tmp_path):
    spec = VariationSpec.from_config({"attributes": [
        {"name": "yaw", "kind": "continuous", "mean": 0.0, "std": 15.0, "low": -30.0,
         "high": 30.0}, {"name": "glasses", "kind": "binary"}]})
    ids, samples = grid()
    uniform = ResolvedPlan(VariationPlan(kind="uniform", presence=0.25,
                                         ranges={"yaw": (0.0, 10.0)}), spec)
    req = uniform.requests(1, ids, samples)
    assert req == uniform.requests(1, ids, samples) != uniform.requests(2, ids, samples)
    yaw = np.array([r["yaw"] for r in req])
    assert yaw.min() >= 0 and yaw.max() <= 10 and yaw.std() > 2
    assert abs(np.mean([r["glasses"] for r in req]) - 0.25) < 0.03
    encoded = uniform.encode(req)
    assert encoded.shape == (len(req), 2) and set(np.unique(encoded[:, 1])) == {-1.0, 1.0}

    table = tmp_path / "real.csv"
    table.write_text("key,yaw,glasses\na,-50.0,1\nb,5.0,0\nc,,1\n")
    target = ResolvedPlan(VariationPlan(kind="target", table=str(table)), spec)
    assert target.clipped == 1  # -50 lies outside the trained range: clipped to -30
    drawn = target.requests(0, ids, samples)
    kinds = {json.dumps(r, sort_keys=True) for r in drawn}
    assert kinds == {'{"glasses": true, "yaw": -30.0}', '{"glasses": false, "yaw": 5.0}',
                     '{"glasses": true}'}

    only_yaw = ResolvedPlan(VariationPlan(kind="grid", attributes=["yaw"], levels=3), spec)
    assert only_yaw.grid() == [None, {"yaw": -30.0}, {"yaw": 0.0}, {"yaw": 30.0}]
    assert only_yaw.requests(0, [5, 5], [4, 6]) == [None, {"yaw": 0.0}]
    for plan, message in ((VariationPlan(attributes=["tilt"]), "\\['tilt'\\]"),
                          (VariationPlan(kind="uniform", ranges={"yaw": (-40.0, 0.0)}),
                           "not inside the trained range"),
                          (VariationPlan(kind="uniform", ranges={"glasses": (0.0, 1.0)}),
                           "not a planned continuous"),
                          (VariationPlan(kind="target"), "needs variation.table"),
                          (VariationPlan(kind="grid", table=str(table)), "only by kind=target")):
        with pytest.raises(ValueError, match=message):
            ResolvedPlan(plan, spec)


def _table(n: int) -> SeedTable:
    return SeedTable(url="mem", sha256="x", seed_ids=np.arange(n) * 10,
                     embeddings=random_identities(n, 8), sources=["random"] * n)


def test_plan_covers_every_image_once_in_fixed_chunks():
    shards = plan_shards(11, 4)
    assert [(s.first, s.last) for s in shards] == [(0, 4), (4, 8), (8, 11)]
    assert shards[2].name == "shard-00000008-00000011.parquet"
    table, schedule = _table(11), parse([0.0, 0.5])
    seen = []
    for shard in shards:
        items = work_items(shard, table, 3, schedule, 0, chunk_identities=2)
        again = work_items(shard, table, 3, schedule, 0, chunk_identities=2)
        for a, b in zip(items, again, strict=True):
            assert all(np.array_equal(a[k], b[k]) for k in a)
        assert [len(i["labels"]) for i in items] == [2] * (shard.num_identities // 2) + (
            [1] if shard.num_identities % 2 else [])
        for item in items:
            assert np.array_equal(item["embeddings"], table.embeddings[item["labels"]])
            labels = item["labels"][item["image_identity"]]
            seen += list(zip(labels.tolist(), item["samples"].tolist(), strict=True))
            ids = table.seed_ids[labels]
            assert np.array_equal(item["seeds"], image_seeds(0, ids, item["samples"]))
            assert np.array_equal(item["targets"], np.where(item["samples"] % 2, 0.5, 0.0))
    assert sorted(seen) == [(label, s) for label in range(11) for s in range(3)]


def test_progress_completes_each_shard_once_from_keys_and_drops_repeats():
    shards = plan_shards(4, 2)
    progress = ShardProgress(shards, samples_per_identity=2)
    completed = []
    # parts as (shard, labels, samples): a repeated part, a part repeating a key inside itself,
    # and a part that completes shard 0 with one key it already had
    for shard, labels, samples in [(0, [0, 0], [0, 1]), (0, [0], [0]), (1, [2, 2], [0, 0]),
                                   (0, [1, 0], [0, 0]), (0, [1], [1])]:
        spec = progress.add(shard, labels, samples)
        if spec is not None:
            completed.append(spec.name)
    assert completed == ["shard-00000000-00000002.parquet"]
    assert progress.duplicates == 3 and progress.peak_open_images == 5
    assert progress.open_images == 1  # shard 1's one key; shard 0's were dropped
    assert progress.add(0, [1], [1]) is None and progress.duplicates == 4
    assert progress.missing() == {"shard-00000002-00000004.parquet": 3}
    with pytest.raises(ShardPlanError, match="does not belong to shard"):
        progress.add(1, [0], [0])
    with pytest.raises(ShardPlanError, match="does not belong to shard"):
        progress.add(1, [2], [2])
    with pytest.raises(ShardPlanError, match="not pending"):
        progress.add(7, [0], [0])


def test_plan_check_ignores_execution_fields_and_refuses_real_changes(tmp_path):
    base = json.loads(GenerateConfig(seeds="s", generator="g", recognizer="r").to_json())
    lineage = {"seeds": "a", "generator": "b", "recognizer": "c", "judge": None}
    out, parquet = str(tmp_path / "out"), str(tmp_path / "out" / "parquet")
    assert not check_plan(out, parquet, plan_fingerprint(base, lineage))
    write_plan(out, plan_fingerprint(base, lineage))
    moved = {**base, "out": "elsewhere", "seeds": "moved.parquet", "images_per_call": 8,
             "distributed": {**base["distributed"], "num_workers": 64, "use_gpu": True}}
    assert check_plan(out, parquet, plan_fingerprint(moved, lineage))
    with pytest.raises(OutputConflictError, match="config.samples_per_identity: 50 there, 10"):
        check_plan(out, parquet, plan_fingerprint({**base, "samples_per_identity": 10}, lineage))
    with pytest.raises(OutputConflictError, match="lineage.seeds: 'a' there, 'z' now"):
        check_plan(out, parquet, plan_fingerprint(base, {**lineage, "seeds": "z"}))


def test_sampling_keys_flat_or_nested_give_one_spec_and_the_plan_keeps_its_format():
    """`steps=`, `closed_loop.max_tries=` (the keys users always typed) and `sampling.*` build the
    same SamplingSpec; the experiment keeps its own defaults under a partial override; the plan
    names the spec's options at its config's top level, as plan format /1 always did."""
    from cemiray.apps.experiment.config import ExperimentConfig
    from cemiray.diffusion.sampling import SamplingSpec

    need = ["seeds=s", "generator=g", "recognizer=r"]
    flat = load_config(GenerateConfig, None, [*need, "steps=7", "closed_loop.max_tries=3",
                                              "guidance_scale=2"])
    nested = load_config(GenerateConfig, None, [*need, "sampling.steps=7",
                                                "sampling.closed_loop.max_tries=3",
                                                "sampling.guidance_scale=2"])
    assert flat.sampling == nested.sampling == SamplingSpec(
        steps=7, closed_loop={"max_tries": 3}, guidance_scale=2.0)
    assert flat.sampling.closed_loop.tolerance == 0.05 and flat.sampling.scheduler == "ddim"
    experiment = load_config(ExperimentConfig, None, ["steps=5"])
    assert (experiment.sampling.steps, experiment.sampling.scheduler) == (5, "dpmsolver++")
    plan = plan_fingerprint(json.loads(flat.to_json()), {})["config"]
    assert "sampling" not in plan and plan["steps"] == 7
    assert plan["closed_loop"] == {"tolerance": 0.05, "max_tries": 3}
    with pytest.raises(ConfigError, match="sampling.scheduler"):
        load_config(GenerateConfig, None, [*need, "scheduler=karras"])
