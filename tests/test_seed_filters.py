"""Seed filters (no Ray): blockwise greedy uniqueness against a brute-force loop, planted
duplicates, leakage against training centres, attribute quotas and the attribute probe."""

from __future__ import annotations

import numpy as np
import pytest

from cemiray.eval.seed_filters import (
    DUPLICATE,
    KEPT,
    NOT_EXAMINED,
    QUOTA_FULL,
    QUOTA_OUTSIDE,
    greedy_select,
    label_centres,
    nearest_centres,
    quality_mask,
    unit_rows,
)
from cemiray.eval.seed_probe import probe_with_holdout
from cemiray.eval.seed_quotas import largest_remainder, parse_quotas


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The products here are tiny: extra threads only contend on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_units(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force_greedy(x: np.ndarray, tau: float, limit: int | None = None):
    kept: list[int] = []
    best = np.full(len(x), np.nan)
    for i in range(len(x)):
        if limit is not None and len(kept) >= limit:
            break
        sims = [float(np.dot(x[i].astype(np.float64), x[k])) for k in kept]
        best[i] = max(sims) if sims else np.nan
        if all(s < tau for s in sims):
            kept.append(i)
    return kept, best


@pytest.mark.parametrize("block,chunk", [(7, 5), (64, 3), (1000, 8192)])
def test_uniqueness_equals_brute_force_greedy(block, chunk):
    x = random_units(300, 16, seed=1)  # 16-d: most pairs collide at 0.3, so order matters
    kept, best = brute_force_greedy(x, 0.3)
    sel = greedy_select(x, 0.3, block=block, chunk=chunk)
    assert sel.kept.tolist() == kept
    assert 20 < len(kept) < 280
    assert (sel.outcome[kept] == KEPT).all()
    assert (np.delete(sel.outcome, kept) == DUPLICATE).all()
    np.testing.assert_allclose(sel.max_similarity, best, atol=1e-5, equal_nan=True)


def test_uniqueness_limit_stops_and_leaves_the_rest_unexamined():
    x = random_units(200, 12, seed=2)
    kept, _ = brute_force_greedy(x, 0.3, limit=12)
    sel = greedy_select(x, 0.3, limit=12, block=16, chunk=4)
    assert sel.kept.tolist() == kept
    assert (sel.outcome[kept[-1] + 1:] == NOT_EXAMINED).all()
    assert sel.counts()["kept"] == 12


def test_planted_near_duplicates_are_removed():
    rng = np.random.default_rng(3)
    base = random_units(2000, 512, seed=4)  # random 512-d pairs: cosine ~ N(0, 0.044²)
    originals = rng.choice(2000, size=150, replace=False)
    noisy = base[originals] + 0.01 * rng.standard_normal((150, 512)).astype(np.float32)
    x = unit_rows(np.concatenate([base, noisy]))
    sel = greedy_select(x, 0.3, block=256, chunk=512)
    assert sel.kept.tolist() == list(range(2000))
    assert (sel.outcome[2000:] == DUPLICATE).all()
    assert (sel.max_similarity[2000:] > 0.9).all()


def test_leakage_finds_seeds_near_training_centres_and_names_them():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(40), 5)
    per_label = random_units(40, 256, seed=6)
    samples = unit_rows(per_label[labels] + 0.03 * rng.standard_normal((200, 256)))
    centres, names = label_centres(samples, labels + 100)
    assert names.tolist() == list(range(100, 140))
    seeds = random_units(300, 256, seed=7)
    leaked = np.array([3, 50, 299])
    seeds[leaked] = unit_rows(centres[[7, 0, 39]] + 0.05 * rng.standard_normal((3, 256)))
    best, nearest = nearest_centres(seeds, centres, block=16, chunk=7)
    sims = seeds.astype(np.float64) @ centres.T.astype(np.float64)
    np.testing.assert_allclose(best, sims.max(axis=1), atol=1e-5)
    assert (nearest == sims.argmax(axis=1)).all()
    rejected = np.flatnonzero(best >= 0.3)
    assert rejected.tolist() == leaked.tolist()
    assert names[nearest[leaked]].tolist() == [107, 100, 139]


def test_quality_mask_keeps_norms_in_bounds_and_unmeasured_seeds():
    norms = np.array([0.5, 2.0, 9.0, np.nan, 3.0])
    assert quality_mask(norms, 1.0, 5.0).tolist() == [False, True, False, True, True]
    assert quality_mask(norms, None, 2.5).tolist() == [True, True, False, True, False]


def test_quotas_fill_every_cell_exactly_and_report_it():
    rng = np.random.default_rng(8)
    x = random_units(3000, 512, seed=9)
    group = rng.choice(4, size=3000, p=[0.55, 0.25, 0.15, 0.05]).tolist()
    sex = rng.integers(0, 2, 3000).tolist()
    quotas = parse_quotas({"group": {"0": 0.25, "1": 0.25, "2": 0.25, "3": 0.25},
                           "sex": {"0": 0.5, "1": 0.5}}, total=100)
    cells = np.stack([q.cell_index({"group": group, "sex": sex}) for q in quotas], axis=1)
    sel = greedy_select(x, 0.3, cells, [q.counts for q in quotas], limit=100, block=128)
    assert len(sel.kept) == 100
    reports = [q.report(cells[sel.kept, k]) for k, q in enumerate(quotas)]
    for rep in reports:
        assert rep["filled"] and not rep["shortfall"]
    assert [c["achieved"] for c in reports[0]["cells"].values()] == [25, 25, 25, 25]
    assert [c["achieved"] for c in reports[1]["cells"].values()] == [50, 50]
    assert (sel.outcome == QUOTA_FULL).sum() > 0


def test_joint_quota_cells_and_a_shortfall_is_reported():
    group = [0, 0, 0, 1, 1, 2, 0, 1, 3]
    sex = [0, 1, 0, 0, 1, 1, 1, 0, 0]
    (quota,) = parse_quotas({"group,sex": {"0,0": 0.25, "0,1": 0.25, "1,0": 0.25,
                                           "2,1": 0.25}}, total=8)
    cells = quota.cell_index({"group": group, "sex": sex})[:, None]
    assert cells[8, 0] == -1  # (3, 0) lies outside the target
    x = random_units(9, 512, seed=10)
    sel = greedy_select(x, 0.3, cells, [quota.counts], limit=8)
    assert sel.outcome[8] == QUOTA_OUTSIDE
    rep = quota.report(cells[sel.kept, 0])
    assert rep["cells"]["0,0"]["achieved"] == 2 and rep["cells"]["2,1"]["achieved"] == 1
    assert not rep["filled"] and rep["shortfall"] == {"2,1": 1}


def test_quota_specs_are_checked():
    with pytest.raises(ValueError, match="sum to"):
        parse_quotas({"group": {"0": 0.5, "1": 0.4}}, total=10)
    with pytest.raises(ValueError, match="values for 2 attributes"):
        parse_quotas({"group,sex": {"0": 1.0}}, total=10)
    (q,) = parse_quotas({"age": {"0": 1 / 3, "1": 1 / 3, "2": 1 / 3}}, total=10)
    assert q.counts.sum() == 10 and sorted(q.counts.tolist()) == [3, 3, 4]
    with pytest.raises(ValueError, match="no value"):
        q.cell_index({"age": [0, None]})
    assert largest_remainder([0.5, 0.3, 0.2], 7).tolist() == [4, 2, 1]


def test_probe_predicts_toyfaces_group_above_chance():
    from cemiray.data.toyfaces import ToyFacesWorld

    world = ToyFacesWorld(seed=0, size=16, difficulty=0.5)
    ids = list(range(300))
    images, _ = world.render_batch(ids, [0] * len(ids))
    group = [world.attributes(i)["group"] for i in ids]
    # A crude "embedding" without a trained model: the centred mean colour of 4x4 cells.
    cells = images.reshape(len(ids), 4, 4, 4, 4, 3).mean(axis=(2, 4)).reshape(len(ids), -1)
    features = cells - cells.mean(axis=0)
    for kind in ("centroid", "logistic"):
        probe, report = probe_with_holdout(features, group, np.asarray(ids), kind=kind)
        assert report["holdout_accuracy"] > report["holdout_chance"] + 0.15, report
        train_acc = np.mean(np.asarray(probe.predict(features)) == np.asarray(group))
        assert train_acc > 0.6


def test_unit_rows_refuses_zero_rows():
    with pytest.raises(ValueError, match="row 1"):
        unit_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_no_candidate_left_keeps_nothing_under_quotas():
    """Every candidate may fail quality or leakage: the quota selection then keeps none."""
    selection = greedy_select(np.zeros((0, 8), np.float32), 0.3, np.zeros((0, 1), np.int64),
                              [np.array([2, 2])], limit=4)
    assert selection.kept.size == 0 and selection.outcome.size == 0
