"""`cemiray generate` end to end on the session's local Ray cluster: 20 identities × 4 images from
a tiny random generator, sampled by a pool that grows from 1 to 2 actors, with the closed loop
and an independent judge on. One run serves every assertion (actor start-up dominates here).

The pool size is read from the sampler pids recorded with every image: Ray's state API
(`ray.util.state.list_actors`) needs the dashboard, which the test cluster does not run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cemiray.data import storage
from cemiray.data.imagefolder import read_imagefolder
from cemiray.data.images import decode_image, encode_png
from cemiray.data.parquet_shards import iter_rows, list_shards, read_shard_metadata
from cemiray.data.recordio import RecordIODataset
from cemiray.pipeline.generate.job import GenerateConfig, run
from cemiray.pipeline.generate.schedules import image_seeds
from cemiray.pipeline.generate.shard_plan import PLAN_NAME, plan_shards
from cemiray.pipeline.seeds.table import random_identities, read_seed_table, write_seed_table

ID_DIM = 32
GEN_16 = {"image_size": 16, "id_dim": ID_DIM, "block_out_channels": (8, 16),
          "attention_levels": (1,), "attention_heads": 2, "cross_attention_dim": 16,
          "pooled_dim": 16, "sim_dim": 8, "encoder_hidden_dim": 32}
# Heavy enough (≈ 20 s of one core for the 80 images, 3 tries each) that a second actor, started
# when the first one is busy, arrives while work remains: actor start-up costs ≈ 6 s here.
GEN_32 = {**GEN_16, "image_size": 32, "block_out_channels": (32, 64)}
VARIED = {**GEN_16, "num_variation_attrs": 2, "variation_route": "both", "variation_spec": {
    "attributes": [{"name": "yaw", "kind": "continuous", "mean": 0.0, "std": 15.0, "low": -30.0,
                    "high": 30.0},
                   {"name": "glasses", "kind": "binary"}]}}
N, K = 20, 4
STRIDE = 1_000_003  # closed_loop_generate's default seed stride


def make_inputs(root: Path, n: int, generator: dict, judge: bool = False) -> dict[str, str]:
    """A random tiny generator, a tiny recogniser (and judge) and a seed table of n random
    identities with attributes, all saved in their real formats under `root`."""
    from cemiray.diffusion import (
        CemiFacePipeline,
        build_generator,
        build_sample_scheduler,
        save_pipeline,
    )
    from cemiray.models import get_backbone, save_model_folder

    torch.manual_seed(0)
    unet, encoder = build_generator("tiny", **generator)
    if encoder.variation_out is not None:  # as if trained: the variation layer starts at zero
        with torch.no_grad():
            encoder.variation_out.weight.normal_(0, 0.5)
    pipe = CemiFacePipeline(unet=unet.eval(), condition_encoder=encoder.eval(),
                            scheduler=build_sample_scheduler("tiny", **generator))
    paths = {"generator": str(root / "generator"), "recognizer": str(root / "recognizer"),
             "seeds": str(root / "seeds.parquet")}
    save_pipeline(pipe, paths["generator"])
    model = get_backbone("iresnet18", input_size=32, num_features=ID_DIM)
    save_model_folder(model, paths["recognizer"], model.config)
    images = None
    if judge:
        torch.manual_seed(1)
        other = get_backbone("iresnet18", input_size=32, num_features=16)
        paths["judge"] = str(root / "judge")
        save_model_folder(other, paths["judge"], other.config)
        rng = np.random.default_rng(2)
        images = [encode_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    write_seed_table(
        paths["seeds"], [1000 + 3 * i for i in range(n)], random_identities(n, ID_DIM, seed=1),
        sources=["random"] * (n - 2) + ["inquiry"] * 2,
        attributes={"group": ["a", "b", "c", "d"] * (n // 4) + ["a"] * (n % 4),
                    "age": [20 + i for i in range(n)],
                    "leakage_max": [0.05 * (i % 8) for i in range(n)]},
        images=images,
    )
    return paths


@pytest.fixture(scope="module")
def generated(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    paths = make_inputs(root, N, GEN_32, judge=True)
    audit = root / "audit.json"
    audit.write_text(json.dumps({"pairs_checked": 190, "max_similarity": 0.21, "notes": "toy"}))
    cfg = GenerateConfig(
        out=str(root / "out"), **paths, samples_per_identity=K, identities_per_shard=4, steps=4,
        schedule=[0.0, 0.5], closed_loop={"tolerance": 0.01, "max_tries": 3},
        images_per_call=4, exports=["recordio", "imagefolder"], leakage_audit=str(audit),
        distributed={"num_workers": 2, "min_workers": 1, "initial_workers": 1},
    )
    summary = run(cfg)
    print("generate summary:", json.dumps(summary, indent=1))
    rows = list(iter_rows(summary["parquet"]))
    return {"cfg": cfg, "summary": summary, "rows": rows, "paths": paths, "root": root}


@pytest.mark.ray
def test_exact_rows_keys_and_lineage(generated):
    rows, summary, cfg = generated["rows"], generated["summary"], generated["cfg"]
    table = read_seed_table(cfg.seeds)
    assert len(rows) == N * K and summary["counts"]["images"] == N * K
    keys = [(r["seed_id"], r["sample"]) for r in rows]
    assert len(set(keys)) == N * K
    assert sorted((r["label"], r["sample"]) for r in rows) == [
        (label, s) for label in range(N) for s in range(K)]
    names = [p.rsplit("/", 1)[-1] for p in list_shards(summary["parquet"])]
    assert names == [s.name for s in plan_shards(N, 4)]
    assert names[0] == "shard-00000000-00000004.parquet"
    lineage = json.loads(Path(summary["manifest"]).read_text())["lineage"]
    for r in rows:
        label = r["label"]
        assert r["seed_id"] == table.seed_ids[label]
        assert r["group"] == table.attributes["group"][label]
        assert r["age"] == table.attributes["age"][label]
        assert r["target_m"] == [0.0, 0.5][r["sample"] % 2]
        assert -1.0 <= r["similarity"] <= 1.0 and -1.0 <= r["judge_similarity"] <= 1.0
        base = int(image_seeds(0, [r["seed_id"]], [r["sample"]])[0])
        assert 1 <= r["tries"] <= 3
        assert (r["seed"] - base) % STRIDE == 0 and 0 <= (r["seed"] - base) // STRIDE < r["tries"]
        assert r["within_tolerance"] == (abs(r["similarity"] - r["target_m"]) <= 0.01)
        assert (r["scheduler"], r["steps"]) == ("ddim", 4)
        assert r["generator_sha256"] == lineage["generator"]
        assert r["recognizer_sha256"] == lineage["recognizer"]
        assert r["judge_sha256"] == lineage["judge"]
    assert any(r["tries"] == 3 for r in rows)
    assert all(r["tries"] == 3 or r["within_tolerance"] for r in rows)
    meta = read_shard_metadata(list_shards(summary["parquet"])[0])
    assert (meta["first"], meta["last"]) == (0, 4)


@pytest.mark.ray
def test_pool_grew_from_one_to_two_actors(generated):
    workers = generated["summary"]["sampler_workers"]
    print("sampler processes (pid: images):", workers)
    assert len(workers) == 2, f"expected images from 2 sampler actors, got {workers}"
    assert sum(workers.values()) == N * K
    assert generated["summary"]["duplicates_dropped"] == 0
    assert 0 < generated["summary"]["peak_open_images"] <= N * K


@pytest.mark.ray
def test_manifest_card_grid_and_histogram(generated):
    out = Path(generated["summary"]["out"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"identities": N, "images_per_identity": K,
                                  "images": N * K, "shards": 5}
    assert [s["rows"] for s in manifest["shards"]] == [16] * 5
    assert manifest["config"]["schedule"] == {"kind": "list", "values": [0.0, 0.5]}
    assert {g["target"] for g in manifest["similarity"]} == {0.0, 0.5}
    assert sum(g["images"] for g in manifest["similarity"]) == N * K
    assert manifest["attributes"]["group"]["counts"] == {"a": 5, "b": 5, "c": 5, "d": 5}
    assert manifest["leakage"]["seed_table"]["above_threshold"] == 4
    assert manifest["leakage"]["audit"]["max_similarity"] == 0.21
    assert json.loads((out / PLAN_NAME).read_text())["config"]["samples_per_identity"] == K
    card = (out / "README.md").read_text()
    for heading in ("## How it was made", "## Similarity to the identity", "## Attributes",
                    "## Leakage audit", "## Intended use"):
        assert heading in card
    assert "4 of 20 identities at or above 0.3" in card and "max_similarity = 0.210" in card
    grid = decode_image((out / "preview_grid.png").read_bytes())
    assert grid.shape == (8 * 34 - 2, 4 * 34 - 2, 3)  # 8 identities × 4 samples of 32 px
    assert decode_image((out / "similarity_histogram.png").read_bytes()).shape[2] == 3


@pytest.mark.ray
def test_recordio_and_imagefolder_round_trip(generated):
    rows, out = generated["rows"], Path(generated["summary"]["out"])
    by_key = {(r["label"], r["sample"]): r["image"] for r in rows}
    rec = RecordIODataset(str(out / "recordio"))
    assert len(rec) == N * K and rec.num_classes() == N and rec.image_size() == (32, 32)
    for i in range(len(rec)):
        item = rec[i]
        assert item["image"] == by_key[(item["label"], item["sample"])]
    folder = read_imagefolder(str(out / "imagefolder"))
    assert len(folder) == N * K
    for item in folder:
        assert item["image"] == by_key[(item["label"], item["sample"])]


@pytest.mark.ray
def test_images_are_a_pure_function_of_the_plan(generated):
    """Re-sampling one chunk outside Ray reproduces the stored PNG bytes exactly."""
    from cemiray.pipeline.generate.job import prepare_inputs
    from cemiray.pipeline.generate.sampler_actor import SamplerActor
    from cemiray.pipeline.generate.shard_plan import identities_per_chunk, work_items

    cfg = generated["cfg"]
    inputs = prepare_inputs(cfg)
    shard = plan_shards(N, 4)[2]
    item = work_items(shard, inputs.table, K, cfg.schedule, cfg.seed,
                      identities_per_chunk(K, cfg.chunk_images), with_images=True)[1]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the actors (Ray sets OMP_NUM_THREADS=1 for 0.5 CPU)
    try:
        actor = SamplerActor(cfg.generator, cfg.recognizer, inputs.hashes, cfg.sampling,
                             judge=cfg.judge, images_per_call=cfg.images_per_call)
        batches = list(actor.generate_chunk(item))
    finally:
        torch.set_num_threads(threads)
    stored = {(r["label"], r["sample"]): r for r in generated["rows"]}
    for batch in batches:
        for i, label in enumerate(batch["label"]):
            row = stored[(int(label), int(batch["sample"][i]))]
            assert encode_png(batch["pixels"][i]) == row["image"]
            assert batch["similarity"][i] == pytest.approx(row["similarity"], abs=1e-6)


@pytest.mark.ray
def test_the_served_generator_has_the_hash_its_rows_carry(generated):
    """One model hash: `GET /v1/models` of the app serving this run's generator and recogniser
    (real HTTP on loopback) names them as the rows `generate` wrote name them."""
    import requests
    from serve_helpers import serving

    from cemiray.models.hashing import model_hash

    paths, rows = generated["paths"], generated["rows"]
    with serving(recognizer=paths["recognizer"], generator=paths["generator"]) as served:
        response = requests.get(served.url("/v1/models"), headers=served.headers, timeout=60)
    assert response.status_code == 200, response.text[:300]
    info = response.json()
    assert info["generator"]["uri"] == paths["generator"]
    assert {r["generator_sha256"] for r in rows} == {info["generator"]["content_hash"]}
    assert {r["recognizer_sha256"] for r in rows} == {info["recognizer"]["content_hash"]}
    assert info["generator"]["content_hash"] == model_hash(paths["generator"])
    assert {r["judge_sha256"] for r in rows} == {model_hash(paths["judge"])}


@pytest.mark.ray
def test_rerunning_a_finished_dataset_keeps_every_shard(generated):
    parquet = generated["summary"]["parquet"]
    before = {p: (Path(p).stat().st_mtime_ns, Path(p).read_bytes()) for p in list_shards(parquet)}
    again = run(generated["cfg"].model_copy(update={"exports": []}))
    assert again["shards_skipped"] == 5 and again["images_generated"] == 0
    after = {p: (Path(p).stat().st_mtime_ns, Path(p).read_bytes()) for p in list_shards(parquet)}
    assert after == before
    assert pq.ParquetFile(next(iter(before))).metadata.num_rows == 16
    assert storage.exists(again["manifest"])


def test_variation_plans_reach_the_generator_and_rows_record_request_and_measure(tmp_path):
    """No Ray: a sampler actor driven directly with a generator that knows yaw and glasses; the
    shipped independent estimator reads each image's variation."""
    from cemiray.assets import TOYFACES_ATTRIBUTES_JUDGE
    from cemiray.pipeline.generate.job import prepare_inputs
    from cemiray.pipeline.generate.sampler_actor import SamplerActor
    from cemiray.pipeline.generate.shard_plan import work_items

    paths = make_inputs(tmp_path, 4, VARIED)
    cfg = GenerateConfig(out=str(tmp_path / "out"), **paths, samples_per_identity=3, steps=2,
                         variation={"kind": "grid", "levels": 2},
                         variation_estimator=TOYFACES_ATTRIBUTES_JUDGE)
    plain = make_inputs(tmp_path / "plain", 4, GEN_16)
    with pytest.raises(ValueError, match="trained without a variation condition"):
        prepare_inputs(GenerateConfig(out=str(tmp_path / "o"), **plain, variation={}))
    with pytest.raises(ValueError, match="variation.attributes \\['tilt'\\]"):
        prepare_inputs(GenerateConfig.model_validate(
            {**cfg.model_dump(), "variation": {"attributes": ["tilt"]}}))
    inputs = prepare_inputs(cfg)
    low, high = inputs.variation.attributes[0].low, inputs.variation.attributes[0].high
    shard = plan_shards(4, 4)[0]
    item = work_items(shard, inputs.table, 3, cfg.schedule, 0, 4, variation=inputs.variation)[0]
    requests = [json.loads(r) for r in item["variation_request"]]
    assert requests[:3] == [{}, {"yaw": low}, {"yaw": high}] and requests[3] == {}
    assert np.isnan(item["variation"][0]).all() and np.isnan(item["variation"][1, 1])
    actor = SamplerActor(cfg.generator, cfg.recognizer, inputs.hashes, cfg.sampling,
                         variation_estimator=cfg.variation_estimator)
    out = next(actor.generate_chunk(item))
    assert list(out["variation"]) == list(item["variation_request"])
    measured = [json.loads(m) for m in out["variation_measured"]]
    assert set(measured[0]) == {"yaw", "glasses"} and measured[0]["glasses"] in (0, 1)
    assert out["pixels"].shape == (12, 16, 16, 3) and out["pixels"].dtype == np.uint8
    v = item["variation"]
    flipped = {**item, "variation": np.where(np.isnan(v), 1.0, -v).astype(np.float32)}
    assert not np.array_equal(next(actor.generate_chunk(flipped))["pixels"], out["pixels"])
    assert np.array_equal(next(actor.generate_chunk(item))["pixels"], out["pixels"])


def test_guided_closed_loop_keeps_each_images_variation_and_records_guidance(tmp_path):
    """No Ray: the sampler actor with variation, the closed loop and similarity guidance at once
    gives what the guided pipeline gives for each image's own seed and variation, and the
    stored rows name the guidance they were sampled with."""
    from cemiray.diffusion.pipeline import load_pipeline
    from cemiray.pipeline.generate.job import prepare_inputs
    from cemiray.pipeline.generate.sampler_actor import SamplerActor
    from cemiray.pipeline.generate.shard_plan import work_items
    from cemiray.pipeline.generate.streaming import row_context

    paths = make_inputs(tmp_path, 4, VARIED)
    cfg = GenerateConfig(out=str(tmp_path / "out"), **paths, samples_per_identity=3, steps=2,
                         variation={"kind": "uniform"},
                         closed_loop={"tolerance": 2.0, "max_tries": 2},
                         guidance_scale=2.0, guidance_m=0.25)
    inputs = prepare_inputs(cfg)
    item = work_items(plan_shards(4, 4)[0], inputs.table, 3, cfg.schedule, 0, 4,
                      variation=inputs.variation)[0]
    actor = SamplerActor(cfg.generator, cfg.recognizer, inputs.hashes, cfg.sampling)
    assert cfg.sampling.closed_loop.max_tries == 2 and cfg.sampling.guidance_scale == 2.0
    out = next(actor.generate_chunk(item))
    assert out["tries"].tolist() == [1] * 12  # tolerance 2: every first draw is kept

    pipe = load_pipeline(cfg.generator)
    embeddings = np.stack(list(item["embeddings"])).astype(np.float32)
    ids = torch.from_numpy(embeddings[np.asarray(item["image_identity"])])
    kw = {"num_inference_steps": 2, "variation": [json.loads(r) for r in out["variation"]]}
    targets, seeds = np.asarray(item["targets"]), [int(x) for x in item["seeds"]]
    guided = pipe(ids, targets, seeds, guidance_scale=2.0, guidance_m=0.25, **kw).images
    assert np.array_equal(out["pixels"], guided)
    assert not np.array_equal(out["pixels"], pipe(ids, targets, seeds, **kw).images)

    pending = plan_shards(4, 4)
    index = np.arange(len(out["label"]))
    images = [b"png"] * len(index)
    stored = list(row_context(cfg, inputs, pending).rows(out, images, index))
    assert {(r["guidance_scale"], r["guidance_m"]) for r in stored} == {(2.0, 0.25)}
    assert all(set(json.loads(r["variation"])) == {"yaw", "glasses"} for r in stored)
    unguided = cfg.model_copy(update={
        "sampling": cfg.sampling.model_copy(update={"guidance_scale": 1.0})})
    assert all("guidance_scale" not in r
               for r in row_context(unguided, inputs, pending).rows(out, images, index))
