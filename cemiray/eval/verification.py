"""Face verification by arcface_torch's 10-fold protocol (eval), with TAR at FAR and EER.

Face verification accuracy by insightface arcface_torch's protocol (LFW, CFP-FP, AgeDB-30,
CALFW, CPLFW), plus TAR at fixed FAR and EER on the cosine scores.

Protocol: the raw features of each image and of its horizontal flip are summed, then
L2-normalised; a pair's distance is the squared L2 distance between its members and a pair is
called "same" when the distance is below the threshold. Thresholds 0, 0.01, ..., 3.99. Ten
contiguous folds (no shuffle, the first n % k folds one pair longer); per fold the threshold
with the best accuracy on the nine others (first best on ties) scores the held-out fold.
VAL at FAR = 1e-3 uses thresholds 0, 0.001, ..., 3.999: per fold, the FAR-vs-threshold curve
of the training folds is interpolated linearly at the target FAR, as their
`interp1d(far, thresholds, kind="slinear")` did when duplicate FAR values were allowed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from cemiray.data import pixels
from cemiray.models.recognizer import Recognizer, check_uint8_images

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
REPORTED_FARS = (1e-2, 1e-3, 1e-4)
VAL_FAR = 1e-3  # the FAR of the k-fold VAL


def kfold_splits(n: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of contiguous folds, as scikit-learn's KFold(shuffle=False)."""
    if not 2 <= n_splits <= n:
        raise ValueError(f"n_splits={n_splits} must lie in [2, {n}] for {n} pairs")
    sizes = np.full(n_splits, n // n_splits)
    sizes[: n % n_splits] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    indices = np.arange(n)
    return [
        (np.concatenate([indices[:start], indices[stop:]]), indices[start:stop])
        for start, stop in itertools.pairwise(bounds)
    ]


def count_below(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many values are strictly below each threshold."""
    return np.searchsorted(np.sort(values), thresholds, side="left")


def accuracy_curve(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of `dist < threshold` as the "same" decision, for every threshold."""
    true_accepts = count_below(dist[issame], thresholds)
    true_rejects = (~issame).sum() - count_below(dist[~issame], thresholds)
    return (true_accepts + true_rejects) / dist.size


def val_far_curve(
    dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(VAL, FAR) of `dist < threshold` for every threshold: the accepted share of same pairs
    and of different pairs."""
    n_same, n_diff = int(issame.sum()), int((~issame).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError(f"VAL/FAR need both kinds of pairs; got {n_same} same, {n_diff} different")
    val = count_below(dist[issame], thresholds) / n_same
    far = count_below(dist[~issame], thresholds) / n_diff
    return val, far


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, target: float) -> float:
    """Linear interpolation of threshold against a non-decreasing FAR curve at `target`, between
    the last point with FAR <= target and the next one (a spline of degree 1 through points
    with repeated FAR values, which is what their interp1d computed)."""
    last = int(np.searchsorted(far, target, side="right")) - 1
    if last < 0:
        return float(thresholds[0])
    if far[last] == target or last == len(far) - 1:
        return float(thresholds[last])
    x0, x1 = far[last], far[last + 1]
    y0, y1 = thresholds[last], thresholds[last + 1]
    return float(y0 + (target - x0) * (y1 - y0) / (x1 - x0))


def threshold_at_far_scores(nonmated: np.ndarray, far: float) -> float:
    """The strictest cosine threshold that accepts (score > threshold) at most
    floor(far * n_nonmated) non-mated pairs (-inf when every pair may be accepted)."""
    allowed = math.floor(far * len(nonmated) + 1e-9)
    ranked = np.sort(np.asarray(nonmated, dtype=np.float64))[::-1]
    return float(-np.inf if allowed >= len(ranked) else ranked[allowed])


def tar_at_far(mated: np.ndarray, nonmated: np.ndarray, far: float) -> float:
    """True-accept rate at the strictest threshold that accepts (score > threshold) at most
    floor(far * n_nonmated) non-mated pairs."""
    threshold = threshold_at_far_scores(nonmated, far)
    return float(np.mean(np.asarray(mated) > threshold))


def far_is_measurable(far: float, num_nonmated: int) -> bool:
    """Whether `num_nonmated` impostor pairs can measure a FAR: one accepted pair is a FAR of
    1 / num_nonmated, the smallest non-zero FAR they can show."""
    return num_nonmated > 0 and far * num_nonmated >= 1 - 1e-9


def tar_at_far_table(mated: np.ndarray, nonmated: np.ndarray,
                     fars: tuple[float, ...] = REPORTED_FARS) -> dict[str, dict[str, Any]]:
    """TAR at each FAR (keyed like "0.001"), each with the cosine threshold it was read at, the
    number of impostor pairs and the smallest FAR they can measure (1 / n). A FAR below that
    floor is not measurable: its `tar` and `threshold` are None, `measurable` is False and
    `note` says why (the old figure there was the TAR at zero accepted impostors, whatever the
    FAR asked for)."""
    n = len(nonmated)
    floor = 1.0 / n if n else math.inf
    table = {}
    for far in fars:
        entry: dict[str, Any] = {"far": float(far), "num_impostor_pairs": n,
                                 "min_measurable_far": floor}
        if far_is_measurable(far, n):
            threshold = threshold_at_far_scores(nonmated, far)
            entry.update(measurable=True, tar=float(np.mean(np.asarray(mated) > threshold)),
                         threshold=threshold if math.isfinite(threshold) else None)
        else:
            entry.update(measurable=False, tar=None, threshold=None,
                         note=f"not measurable: FAR {far:g} is below 1/{n} = {floor:.3g}, the "
                              f"smallest FAR {n} impostor pairs can measure")
        table[f"{far:g}"] = entry
    return table


def val_far_floor(issame: Any, nfolds: int = 10) -> float:
    """The smallest FAR the k-fold VAL can measure: 1 / the fewest impostor pairs any fold's
    training side holds (its threshold is read from the training folds' FAR curve)."""
    same = np.asarray(issame).astype(bool)
    fewest = min(int((~same[train]).sum()) for train, _ in kfold_splits(len(same), nfolds))
    return 1.0 / fewest if fewest else math.inf


def equal_error_rate(mated: np.ndarray, nonmated: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) where FMR (non-mated score >= t) meets FNMR (mated score < t),
    interpolated linearly between the neighbouring candidate thresholds."""
    mated = np.sort(np.asarray(mated, dtype=np.float64))
    nonmated = np.sort(np.asarray(nonmated, dtype=np.float64))
    if mated.size == 0 or nonmated.size == 0:
        raise ValueError("EER needs mated and non-mated scores")
    candidates = np.append(np.unique(np.concatenate([mated, nonmated])), np.inf)
    fmr = 1.0 - np.searchsorted(nonmated, candidates, side="left") / nonmated.size
    fnmr = np.searchsorted(mated, candidates, side="left") / mated.size
    gap = fnmr - fmr
    cross = int(np.argmax(gap >= 0))
    if cross == 0:
        return float((fmr[0] + fnmr[0]) / 2), float(candidates[0])
    g0, g1 = gap[cross - 1], gap[cross]
    weight = g0 / (g0 - g1)
    eer = fmr[cross - 1] + weight * (fmr[cross] - fmr[cross - 1])
    t0, t1 = candidates[cross - 1], candidates[cross]
    threshold = t0 + weight * (t1 - t0) if np.isfinite(t1) else t0
    return float(eer), float(threshold)


def check_folds(issame: Any, nfolds: int = 10, where: str = "verification pairs") -> None:
    """Every fold of the protocol needs same and different pairs on both of its sides, or VAL at
    a FAR cannot be measured: say so before any compute rather than after a training run."""
    same = np.asarray(issame).astype(bool)
    if len(same) < max(nfolds, 2):
        raise ValueError(f"{where}: {len(same)} pairs, fewer than nfolds={nfolds}")
    for k, (train, test) in enumerate(kfold_splits(len(same), nfolds)):
        for side, rows in (("test", test), ("train", train)):
            n_same = int(same[rows].sum())
            if n_same == 0 or n_same == len(rows):
                raise ValueError(
                    f"{where}: fold {k} of {nfolds}, {side} side, has {n_same} same of "
                    f"{len(rows)} pairs; the "
                    f"{nfolds}-fold protocol needs both kinds in every fold (use more pairs, "
                    f"interleaved)")


def evaluate_pairs(
    embeddings1: np.ndarray, embeddings2: np.ndarray, issame: Any, nfolds: int = 10
) -> dict[str, Any]:
    """Verification metrics of pairs (row i of each array): accuracy_mean/std over folds,
    per-fold accuracies and best thresholds, VAL/VAL std/FAR at FAR=1e-3 (k-fold), and on the
    cosine scores of all pairs: TAR at FAR 1e-2/1e-3/1e-4 and EER."""
    e1 = np.asarray(embeddings1, dtype=np.float64)
    e2 = np.asarray(embeddings2, dtype=np.float64)
    same = np.asarray(issame)
    if e1.ndim != 2 or e1.shape != e2.shape:
        raise ValueError(f"embeddings must be two N x D arrays of one shape, got "
                         f"{e1.shape} and {e2.shape}")
    if same.shape != (e1.shape[0],) or not np.isin(same, (0, 1)).all():
        raise ValueError(f"issame must hold {e1.shape[0]} booleans, got shape {same.shape}")
    same = same.astype(bool)
    check_folds(same, nfolds)
    dist = np.sum(np.square(e1 - e2), axis=1)
    accuracies, best_thresholds, vals, fars = [], [], [], []
    for train, test in kfold_splits(len(dist), nfolds):
        train_accuracy = accuracy_curve(dist[train], same[train], ACCURACY_THRESHOLDS)
        best = ACCURACY_THRESHOLDS[int(np.argmax(train_accuracy))]
        accuracies.append(float(accuracy_curve(dist[test], same[test], np.array([best]))[0]))
        best_thresholds.append(float(best))
        _, far_train = val_far_curve(dist[train], same[train], VAL_THRESHOLDS)
        threshold = (threshold_at_far(far_train, VAL_THRESHOLDS, VAL_FAR)
                     if far_train.max() >= VAL_FAR else 0.0)
        val, far = val_far_curve(dist[test], same[test], np.array([threshold]))
        vals.append(float(val[0]))
        fars.append(float(far[0]))
    scores = np.sum(e1 * e2, axis=1)
    eer, eer_threshold = equal_error_rate(scores[same], scores[~same])
    return {
        "num_pairs": len(dist),
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "accuracies": accuracies,
        "best_thresholds": best_thresholds,
        "val": float(np.mean(vals)),
        "val_std": float(np.std(vals)),
        "far": float(np.mean(fars)),
        "tar_at_far": {f"{f:g}": tar_at_far(scores[same], scores[~same], f)
                       for f in REPORTED_FARS},
        "eer": eer,
        "eer_threshold": eer_threshold,
    }


def flip_sum(features: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The protocol's test-time flip: raw features of each N×3×H×W image plus those of its
    horizontal mirror image (normalise afterwards)."""
    return features(x) + features(torch.flip(x, dims=[3]))


def embed_with_flip(recognizer: Recognizer, images: np.ndarray | torch.Tensor,
                    batch_size: int = 64) -> np.ndarray:
    """L2-normalised sum of the raw features of each image and of its horizontal flip
    (float64, N x D). uint8 N x H x W x 3 arrays or normalised N x 3 x H x W tensors."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be N x H x W x 3, got shape {images.shape}")
        check_uint8_images(images)
        images = pixels.from_numpy(images)

    def raw(x: torch.Tensor) -> torch.Tensor:
        embedded = recognizer.embed(x, normalize=False, batch_size=batch_size)
        return torch.from_numpy(embedded.astype(np.float64))

    features = flip_sum(raw, images).numpy()
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms == 0, 1.0, norms)


def evaluate_verification_set(recognizer: Recognizer, images: np.ndarray, issame: Any,
                              nfolds: int = 10, batch_size: int = 64) -> dict[str, Any]:
    """Metrics of a verification set laid out as arcface_torch's `.bin` files: images 2i and
    2i+1 form pair i."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; expected two per pair")
    embeddings = embed_with_flip(recognizer, images, batch_size)
    return evaluate_pairs(embeddings[0::2], embeddings[1::2], issame, nfolds)
