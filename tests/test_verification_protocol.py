"""The 10-fold verification protocol against an independent scikit-learn KFold + brute-force
threshold search, and the score metrics on hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.model_selection import KFold

from cemiray.eval.verification import (
    embed_with_flip,
    equal_error_rate,
    evaluate_pairs,
    evaluate_verification_set,
    kfold_splits,
    tar_at_far,
    threshold_at_far,
)
from cemiray.models import TorchRecognizer, get_backbone


def seeded_pairs(n_pairs: int = 613, dim: int = 24, seed: int = 7):
    """Unit embeddings whose same pairs are noisy copies and different pairs independent, with
    a few hard cases, so accuracies sit well below 1."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    first = rng.normal(size=(n_pairs, dim))
    noise = rng.uniform(0.4, 1.6, size=(n_pairs, 1))
    second = np.where(
        issame[:, None],
        first + noise * rng.normal(size=(n_pairs, dim)),
        rng.normal(size=(n_pairs, dim)),
    )
    first /= np.linalg.norm(first, axis=1, keepdims=True)
    second /= np.linalg.norm(second, axis=1, keepdims=True)
    return first, second, issame


def brute_force_protocol(e1, e2, issame, nfolds=10):
    """The protocol written the slow, obvious way, one threshold at a time."""
    dist = np.sum(np.square(e1 - e2), axis=1)
    thresholds = np.arange(0, 4, 0.01)
    val_thresholds = np.arange(0, 4, 0.001)

    def accuracy(t, d, same):
        predict = np.less(d, t)
        return (np.sum(predict & same) + np.sum(~predict & ~same)) / d.size

    def val_far(t, d, same):
        predict = np.less(d, t)
        return np.sum(predict & same) / np.sum(same), np.sum(predict & ~same) / np.sum(~same)

    accuracies, best, vals, fars = [], [], [], []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))):
        train_acc = [accuracy(t, dist[train], issame[train]) for t in thresholds]
        best_t = thresholds[int(np.argmax(train_acc))]
        best.append(best_t)
        accuracies.append(accuracy(best_t, dist[test], issame[test]))
        far_train = [val_far(t, dist[train], issame[train])[1] for t in val_thresholds]
        if max(far_train) >= 1e-3:
            last = max(i for i, f in enumerate(far_train) if f <= 1e-3)
            if far_train[last] == 1e-3:
                threshold = val_thresholds[last]
            else:
                x0, x1 = far_train[last], far_train[last + 1]
                y0, y1 = val_thresholds[last], val_thresholds[last + 1]
                threshold = y0 + (1e-3 - x0) / (x1 - x0) * (y1 - y0)
        else:
            threshold = 0.0
        val, far = val_far(threshold, dist[test], issame[test])
        vals.append(val)
        fars.append(far)
    return accuracies, best, vals, fars


@pytest.mark.parametrize(("n", "k"), [(613, 10), (600, 10), (23, 5), (10, 10)])
def test_kfold_matches_sklearn(n: int, k: int) -> None:
    ours = kfold_splits(n, k)
    theirs = list(KFold(n_splits=k, shuffle=False).split(np.arange(n)))
    assert len(ours) == len(theirs)
    for (train, test), (ref_train, ref_test) in zip(ours, theirs, strict=True):
        assert np.array_equal(train, ref_train) and np.array_equal(test, ref_test)


def test_accuracy_and_val_match_independent_computation() -> None:
    e1, e2, issame = seeded_pairs()
    result = evaluate_pairs(e1, e2, issame, nfolds=10)
    accuracies, best, vals, fars = brute_force_protocol(e1, e2, issame)
    assert 0.6 < result["accuracy_mean"] < 0.99  # a set where the threshold matters
    np.testing.assert_allclose(result["accuracies"], accuracies, atol=1e-6)
    np.testing.assert_allclose(result["best_thresholds"], best, atol=1e-9)
    assert result["accuracy_mean"] == pytest.approx(np.mean(accuracies), abs=1e-6)
    assert result["accuracy_std"] == pytest.approx(np.std(accuracies), abs=1e-6)
    assert result["val"] == pytest.approx(np.mean(vals), abs=1e-6)
    assert result["val_std"] == pytest.approx(np.std(vals), abs=1e-6)
    assert result["far"] == pytest.approx(np.mean(fars), abs=1e-6)
    assert 0 < result["val"] < 1
    assert result["num_pairs"] == 613
    assert set(result["tar_at_far"]) == {"0.01", "0.001", "0.0001"}


def test_threshold_interpolation_equals_scipy_slinear_on_distinct_points() -> None:
    from scipy.interpolate import interp1d

    far = np.array([0.0, 0.0004, 0.0007, 0.0015, 0.01, 0.2, 1.0])
    thresholds = np.array([0.0, 0.1, 0.25, 0.3, 0.8, 1.5, 3.0])
    for target in (1e-3, 5e-4, 0.0015, 0.05):
        expected = float(interp1d(far, thresholds, kind="slinear")(target))
        assert threshold_at_far(far, thresholds, target) == pytest.approx(expected, abs=1e-12)
    # repeated FAR values: interpolate from the last point at or below the target
    repeated = np.array([0.0, 0.0, 0.0005, 0.0005, 0.002, 0.002])
    assert threshold_at_far(repeated, np.arange(6.0), 1e-3) == pytest.approx(3 + 1 / 3)


def test_tar_at_far_and_eer_by_hand() -> None:
    mated = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    nonmated = np.array([0.1, 0.0, -0.2, 0.3, 0.65, 0.05, -0.1, 0.15, 0.25, -0.3])
    # FAR 0.1 allows 1 false accept of 10: threshold = 2nd highest non-mated (0.3)
    assert tar_at_far(mated, nonmated, 0.1) == pytest.approx(4 / 5)
    # FAR 0.01 allows none: threshold = highest non-mated (0.65)
    assert tar_at_far(mated, nonmated, 0.01) == pytest.approx(3 / 5)
    eer, threshold = equal_error_rate(mated, nonmated)
    # t = 0.25: FMR 3/10 > FNMR 1/5; t = 0.3: FMR 2/10 = FNMR 1/5 -> EER 0.2 at 0.3
    assert (eer, threshold) == pytest.approx((0.2, 0.3))
    separable_eer, _ = equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.2]))
    assert separable_eer == 0.0


def test_eer_on_gaussian_scores() -> None:
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    mated = rng.normal(0.5, 0.1, 40_000)
    nonmated = rng.normal(0.1, 0.1, 40_000)
    eer, threshold = equal_error_rate(mated, nonmated)
    assert eer == pytest.approx(norm.cdf(-2.0), abs=2e-3)
    assert threshold == pytest.approx(0.3, abs=0.01)


def test_evaluate_pairs_rejects_bad_input() -> None:
    e1, e2, issame = seeded_pairs(40)
    with pytest.raises(ValueError, match="booleans"):
        evaluate_pairs(e1, e2, issame[:-1])
    with pytest.raises(ValueError, match="one shape"):
        evaluate_pairs(e1, e2[:, :5], issame)
    with pytest.raises(ValueError, match="n_splits"):
        evaluate_pairs(e1, e2, issame, nfolds=1)


def test_embed_with_flip_sums_raw_features() -> None:
    torch.manual_seed(0)
    model = get_backbone("iresnet18", input_size=16, num_features=16).eval()
    recognizer = TorchRecognizer(model, "test", input_size=16, dim=16)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    got = embed_with_flip(recognizer, images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        raw = model(x) + model(torch.flip(x, dims=[3]))
    np.testing.assert_allclose(got, F.normalize(raw, dim=1).numpy(), atol=1e-5)
    tensor_input = embed_with_flip(recognizer, x)
    np.testing.assert_allclose(tensor_input, got, atol=1e-5)

    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    got = embed_with_flip(recognizer, images)
    issame = [True, False, True, False, True, False]
    result = evaluate_verification_set(recognizer, images, issame, nfolds=2)
    direct = evaluate_pairs(got[0::2], got[1::2], issame, nfolds=2)
    assert result["accuracies"] == pytest.approx(direct["accuracies"])
    with pytest.raises(ValueError, match="two per pair"):
        evaluate_verification_set(recognizer, images[:11], issame)
