"""`cemiray fairness`: the per-group test sets hold only their group's identities, the
statistics of the spread are the textbook ones, bad shares are refused, and (slow) the whole
study runs on a tiny GAN: seeds per target, CemiFace sets, FR trainings, per-group accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from cemiray.apps.fairness import (
    FairnessConfig,
    group_test_identities,
    run,
    stage_group_bins,
    summarise,
)
from cemiray.data.toyfaces import ToyFacesWorld
from cemiray.data.verification_bin import decode_bin


def test_test_identities_are_balanced_and_of_their_group():
    cfg = FairnessConfig(test_first=50_000, test_per_group=5)
    groups = group_test_identities(cfg)
    world = ToyFacesWorld(seed=0, size=32)
    assert sorted(groups) == ["0", "1", "2", "3"]
    assert all(len(ids) == 5 for ids in groups.values())
    for g, ids in groups.items():
        assert all(str(world.attributes(i)["group"]) == g and i >= 50_000 for i in ids)


def test_group_bins_pair_identities_of_one_group(tmp_path):
    from cemiray.apps.experiment.cache import StageCache

    cfg = FairnessConfig(test_per_group=3, test_samples=2, pairs_per_group=20)
    bins = stage_group_bins(cfg, StageCache(str(tmp_path / "stages"), log=lambda _: None))
    assert sorted(bins) == ["0", "1", "2", "3"]
    for url in bins.values():
        images, issame = decode_bin(url, 32)
        assert len(issame) == 20 and issame.sum() == 10 and images.shape[0] == 40


def test_spread_statistics_match_scipy():
    balanced = [{"0": 0.90, "1": 0.88}, {"0": 0.91, "1": 0.90}, {"0": 0.89, "1": 0.86}]
    skewed = [{"0": 0.93, "1": 0.80}, {"0": 0.92, "1": 0.84}, {"0": 0.94, "1": 0.83}]
    out = summarise({"balanced": balanced, "skewed": skewed})
    spreads_b, spreads_s = [0.02, 0.01, 0.03], [0.13, 0.08, 0.11]
    assert out["sets"]["balanced"]["spread"]["mean"] == pytest.approx(np.mean(spreads_b))
    half = stats.t.ppf(0.975, 2) * np.std(spreads_b, ddof=1) / np.sqrt(3)
    assert out["sets"]["balanced"]["spread"]["half_width"] == pytest.approx(half)
    t = stats.ttest_rel(spreads_b, spreads_s)
    test = out["balanced_minus_skewed_spread"]
    assert test["p"] == pytest.approx(t.pvalue) and test["significant"] == (t.pvalue < 0.05)
    assert out["sets"]["skewed"]["per_group"]["1"]["mean"] == pytest.approx(0.8233333)


def test_bad_shares_are_refused():
    with pytest.raises(ValueError, match="skewed: give non-negative shares"):
        FairnessConfig(skewed={"0": -1.0, "1": 0.5})
    with pytest.raises(ValueError, match="trainings"):
        FairnessConfig(trainings=1)


@pytest.mark.slow
def test_the_study_runs_end_to_end_on_a_tiny_gan(ray_cluster, tmp_path):
    from test_seeds_gan_condition import TINY, varied_predictor

    from cemiray.models.attributes import AttributeSpec, save_attribute_model
    from cemiray.models.stylegan import Generator
    from cemiray.models.stylegan_io import save_gan

    torch.manual_seed(3)
    gen = Generator("compact", **TINY)
    with torch.no_grad():
        gen.mapping.w_avg.normal_()
    gan = save_gan(str(tmp_path / "gan"), gen, meta={"step": 0})
    spec = [AttributeSpec("group", "categorical", classes=[0, 1, 2, 3])]
    save_attribute_model(varied_predictor(gen, spec), str(tmp_path / "attr"))
    summary = tmp_path / "fairness.json"
    results = run(FairnessConfig(
        out=str(tmp_path / "fair"), gan=gan, attribute_model=str(tmp_path / "attr"),
        attributes_judge=str(tmp_path / "attr"), identities=8, overshoot=4,
        samples_per_identity=2, balanced={"0": 0.5, "3": 0.5}, skewed={"0": 0.75, "3": 0.25},
        uniqueness_threshold=1.0, leakage_data=None, test_per_group=3, test_samples=2,
        pairs_per_group=20, trainings=2, fr={"max_steps": 2, "batch_size": 8},
        steps=2, images_per_call=16, sampler_workers=1, summary_json=str(summary)))
    fair = results["fairness"]
    assert set(fair["sets"]) == {"balanced", "skewed"}
    for row in fair["sets"].values():
        assert len(row["per_training"]) == 2 and set(row["per_group"]) == {"0", "1", "2", "3"}
        spreads = [max(r.values()) - min(r.values()) for r in row["per_training"]]
        assert row["spread"]["mean"] == pytest.approx(np.mean(spreads))
    assert json.loads(summary.read_text())["fairness"]["sets"].keys() == fair["sets"].keys()
    for name in ("balanced", "skewed"):
        assert results["sets"][name]["images"] == results["sets"][name]["kept"] * 2
