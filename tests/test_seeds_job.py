"""`cemiray seeds` end to end on the session's Ray cluster: an unconditional generator trained
for a few steps by `train-uncond` (2 Ray Train workers, DeepSpeed ZeRO-2), then seeds from every
kind of source — ToyFaces inquiry images, an embedding file, generator samples — filtered for
uniqueness and leakage, with a group quota filled through labels and a probe.

The recogniser is an untrained IResNet-18 (32-d): its cosines are not identities, so the
thresholds are set from what it measures here (new ToyFaces identities: pairwise median ≈ 0.63,
largest cosine to a training centre ≤ 0.93), and the checks are exact invariants: no kept pair
reaches τ, leaked copies of training identities are rejected and named, the quota is exact."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cemiray.data.images import decode_image
from cemiray.data.sources import Source
from cemiray.models import get_backbone
from cemiray.models.recognizer import load_recognizer
from cemiray.models.serialization import save_model_folder
from cemiray.pipeline.generate.job import OUTPUT_COLUMNS
from cemiray.pipeline.seeds.job import SeedsConfig, run
from cemiray.pipeline.seeds.table import read_seed_table

NEW = "toyfaces:?seed=0&ids=1000000-1000015&samples=2&size=32"
LEAKED = "toyfaces:?seed=0&ids=0-3&samples=1&size=32"
TRAINING = "toyfaces:?seed=0&ids=0-11&samples=1&size=32"
TAU_UNIQUE, TAU_LEAK = 0.75, 0.97


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = get_backbone("iresnet18", input_size=32, num_features=32)
    url = str(tmp_path_factory.mktemp("rec") / "iresnet18")
    save_model_folder(model, url, dict(model.config))
    return url


def source_rows(uri: str) -> list[dict]:
    return list(Source.parse(uri).iter_rows())


def embedding_file(path, recognizer: str) -> tuple[str, dict]:
    """Eight unit vectors orthogonal to each other and to the training centres' mean (group
    0..3 given), one near-duplicate of the first, two near-copies of training centres 5 and 9."""
    rec = load_recognizer(recognizer)
    train = source_rows(TRAINING)
    centres = rec.embed(np.stack([decode_image(r["image"]) for r in train]))
    mean = centres.mean(axis=0)
    basis, _ = np.linalg.qr(np.column_stack([mean, np.random.default_rng(0).standard_normal(
        (32, 8))]))
    fresh = basis[:, 1:].T.astype(np.float32)
    rng = np.random.default_rng(1)
    duplicate = fresh[0] + 0.01 * rng.standard_normal(32).astype(np.float32)
    leaks = centres[[5, 9]] + 0.01 * rng.standard_normal((2, 32)).astype(np.float32)
    rows = np.vstack([fresh, duplicate, leaks])
    groups = [3, 0, 3, 1, 0, 2, 1, 3, 3, 1, 2]
    url = str(path / "embeddings.parquet")
    pq.write_table(pa.table({"embedding": pa.array(list(rows), pa.list_(pa.float32())),
                             "group": pa.array(groups, pa.int64())}), url)
    return url, {"fresh": fresh, "centres": centres}


@pytest.fixture(scope="module")
def uncond(ray_cluster, tmp_path_factory) -> dict:
    """One train-uncond fit (2 Ray Train workers, ZeRO-2, 3 steps) shared by the tests."""
    from cemiray.train.uncond import TrainUncondConfig
    from cemiray.train.uncond import run as train_uncond

    root = tmp_path_factory.mktemp("uncond")
    return train_uncond(TrainUncondConfig(
        out=str(root / "uncond"), data="toyfaces:?seed=0&ids=0-7&samples=2&size=32",
        batch_size=4, max_steps=3, warmup_steps=0, log_every=1, read_parts=2,
        distributed={"num_workers": 2, "cpus_per_worker": 0.5, "zero_stage": 2,
                     "checkpoint_every": 3, "storage_path": str(root / "ray_results"),
                     "torch_threads": 1}))


@pytest.mark.ray
def test_train_uncond_exports_a_generator_sampled_per_seed(uncond):
    from cemiray.diffusion.unconditional import load_unconditional, sample_unconditional

    assert uncond["step"] == 3 and np.isfinite(uncond["loss"])
    gen = load_unconditional(uncond["generator"])
    assert gen.meta["step"] == 3 and gen.image_size == 32
    for sampler in ("ddim", "ddpm"):
        a = sample_unconditional(gen, [5, 6, 7], steps=2, sampler=sampler)
        b = sample_unconditional(gen, [7, 5], steps=2, sampler=sampler)
        assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
        assert np.abs(a[[2, 0]].astype(int) - b.astype(int)).max() <= 1  # per seed, any batch
        assert np.abs(a[0].astype(int) - a[1].astype(int)).max() > 10  # seeds differ


@pytest.mark.ray
def test_seeds_from_every_source_with_uniqueness_leakage_and_quotas(uncond, recognizer,
                                                                     tmp_path):
    from cemiray.diffusion.unconditional import load_unconditional, sample_unconditional

    generator = uncond["generator"]
    file_url, planted = embedding_file(tmp_path, recognizer)
    out = tmp_path / "seeds"
    cfg = SeedsConfig(
        out=str(out), recognizer=recognizer, inquiry=[NEW, LEAKED], embedding_files=[file_url],
        generator=generator, generator_samples=6, generator_steps=4, generator_batch=3,
        generator_seed=100, order="interleaved",
        leakage_data=TRAINING, probe_data=TRAINING, num_identities=12,
        quotas={"group": {0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}},
        uniqueness_threshold=TAU_UNIQUE, leakage_threshold=TAU_LEAK, seed_id_offset=500,
        batch_size=16, num_actors_max=1, rows_per_task=8)
    result = run(cfg)
    report = json.loads((out / "seeds_report.json").read_text())
    table = read_seed_table(result["table"], expected_dim=32, reserved=OUTPUT_COLUMNS)

    # Candidates: first image of each of 16 + 4 identities, 11 file rows, 6 generator samples.
    by_source = report["candidates"]["by_source"]
    assert list(by_source.values()) == [16, 4, 11, 6]
    stages = report["stages"]
    assert stages["candidates"] == 37 and stages["kept"] == len(table) == 12
    assert stages["after_leakage"] == 37 - stages["leakage_rejected"] - stages[
        "quality_rejected"]
    assert sum(stages[k] for k in ("duplicate", "quota_full", "quota_outside", "not_examined",
                                   "kept")) == stages["after_leakage"]

    # Uniqueness: no two kept seeds reach τ under the judge (here the conditioning recogniser).
    sims = table.embeddings @ table.embeddings.T
    assert sims[np.triu_indices(12, 1)].max() < TAU_UNIQUE
    assert stages["duplicate"] >= 1

    # Leakage: the training identities themselves (cosine 1 to their centre) and the planted
    # near-centres are rejected and named; no kept seed reaches τ.
    worst = {(w["source"], w["leakage_nearest"]) for w in report["leakage"]["worst_rejected"]}
    assert {(Source.parse(LEAKED).uri, k) for k in range(4)} <= worst
    assert {(f"embeddings:{file_url}", 5), (f"embeddings:{file_url}", 9)} <= worst
    assert report["leakage"]["rejected"] >= 6 and report["leakage"]["centres"] == 12
    audit = pq.read_table(out / "seeds_audit.parquet").to_pydict()
    assert len(audit["seed_id"]) == 37
    outcomes = Counter(audit["outcome"])
    assert outcomes["kept"] == 12 and outcomes["leakage"] == stages["leakage_rejected"]
    assert outcomes["duplicate"] == stages["duplicate"]
    leaked = [(o, near) for o, src, near in zip(audit["outcome"], audit["source"],
                                                audit["leakage_nearest"], strict=True)
              if src == Source.parse(LEAKED).uri]
    assert leaked == [("leakage", k) for k in range(4)]
    assert max(table.attributes["leakage_max"]) < TAU_LEAK
    assert report["leakage"]["leakage_max"]["max"] >= 0.999

    # Quotas: exactly 3 per group, achieved reported next to the target.
    (quota,) = report["quotas"]
    assert quota["filled"] and all(c["target"] == c["achieved"] == 3
                                   for c in quota["cells"].values())
    assert sorted(Counter(table.attributes["group"]).values()) == [3, 3, 3, 3]
    assert "group" in report["probe"] and report["probe"]["group"]["predicted"] == 6

    # Rows: ids are offset + position in the sources (16 x 2 + 4 + 11 rows, then samples);
    # inquiry embeddings are those of the first image of each identity; file seeds keep their
    # vectors; generator seeds are re-sampled from noise seed generator_seed + k.
    rec = load_recognizer(recognizer)
    gen = load_unconditional(generator)
    new_rows = source_rows(NEW)
    kinds = Counter()
    for seed_id, emb, source, image in zip(table.seed_ids, table.embeddings, table.sources,
                                           table.images, strict=True):
        position = seed_id - 500
        if source == Source.parse(NEW).uri:
            assert position % 2 == 0  # sample 0 of its identity
            assert image == new_rows[position]["image"]
            np.testing.assert_allclose(emb, rec.embed(decode_image(image)[None])[0], atol=1e-4)
        elif source == f"embeddings:{file_url}":
            assert 36 <= position < 44 and image is None  # fresh rows only
            np.testing.assert_allclose(emb, planted["fresh"][position - 36], atol=1e-5)
        else:
            assert source == f"uncond:{generator}" and 47 <= position < 53
            pixels = decode_image(image)
            again = sample_unconditional(gen, [100 + position - 47], steps=4)[0]
            assert np.abs(pixels.astype(int) - again.astype(int)).max() <= 1
            np.testing.assert_allclose(emb, rec.embed(pixels[None])[0], atol=1e-4)
        kinds[source.split(":")[0]] += 1
    assert set(kinds) == {"toyfaces", "embeddings", "uncond"}, kinds
    assert len(set(table.seed_ids.tolist())) == 12
    froms = dict(zip(table.sources, table.attributes["attributes_from"], strict=True))
    assert froms[f"uncond:{generator}"] == "probe"


def test_an_unfillable_target_fails_after_writing_the_report(recognizer, tmp_path):
    """Embedding files only (no Ray pass): 2 seeds of group 0 cannot fill 3 of them."""
    vectors = np.eye(32, dtype=np.float32)[:4]
    url = str(tmp_path / "e.parquet")
    pq.write_table(pa.table({"embedding": pa.array(list(vectors), pa.list_(pa.float32())),
                             "group": [0, 1, 0, 1]}), url)
    cfg = SeedsConfig(out=str(tmp_path / "s"), recognizer=recognizer, inquiry=[],
                      embedding_files=[url], leakage_data=None, num_identities=6,
                      quotas={"group": {"0": 0.5, "1": 0.5}})
    with pytest.raises(RuntimeError, match="shortfall"):
        run(cfg)
    report = json.loads((tmp_path / "s" / "seeds_report.json").read_text())
    assert report["table"] is None and report["quotas"][0]["shortfall"] == {"0": 1, "1": 1}
    assert not (tmp_path / "s" / "seeds.parquet").exists()
    audit = pq.read_table(tmp_path / "s" / "seeds_audit.parquet").to_pydict()
    assert audit["outcome"] == ["kept"] * 4 and audit["group"] == [0, 1, 0, 1]


def test_bad_configs_are_refused(recognizer, tmp_path):
    with pytest.raises(ValueError, match="not in attributes"):
        SeedsConfig(recognizer=recognizer, num_identities=4, quotas={"skin": {"0": 1.0}})
    with pytest.raises(ValueError, match="no images for the judge"):
        SeedsConfig(recognizer=recognizer, judge="other", embedding_files=["x.npy"])
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((3, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="expected N x 32"):
        run(SeedsConfig(out=str(tmp_path / "o"), recognizer=recognizer, inquiry=[],
                        embedding_files=[str(bad)], leakage_data=None))


def test_leakage_against_a_centres_file_without_ray(recognizer, tmp_path):
    """Seeds given as embeddings, centres as a Parquet file with labels: no Ray pass at all."""
    basis = np.linalg.qr(np.random.default_rng(2).standard_normal((32, 32)))[0].T
    seeds, centres = basis[:6].astype(np.float32), basis[[2, 4, 10]].astype(np.float32)
    seeds_url, centres_url = str(tmp_path / "seeds.npy"), str(tmp_path / "centres.parquet")
    np.save(seeds_url, seeds * 3.0)  # any norm: files are normalised on reading
    pq.write_table(pa.table({"embedding": pa.array(list(centres), pa.list_(pa.float32())),
                             "label": [70, 71, 72]}), centres_url)
    cfg = SeedsConfig(out=str(tmp_path / "o"), recognizer=recognizer, inquiry=[],
                      embedding_files=[seeds_url], leakage_centres=centres_url)
    assert cfg.leakage_data is None  # the centres file replaces the default training data
    result = run(cfg)
    table = read_seed_table(result["table"], expected_dim=32)
    assert table.seed_ids.tolist() == [0, 1, 3, 5]
    report = json.loads((tmp_path / "o" / "seeds_report.json").read_text())
    worst = sorted((w["seed_id"], w["leakage_nearest"])
                   for w in report["leakage"]["worst_rejected"])
    assert worst == [(2, 70), (4, 71)]
    assert report["quality"]["unmeasured"] == 6
