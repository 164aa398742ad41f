"""Mated / non-mated score distributions of a face dataset (eval): GANDiffFace's evaluation.

Mated / non-mated similarity-score distributions of a face dataset (GANDiffFace's evaluation
without training): how well a pretrained recogniser separates the identities of a (synthetic or
real) set, and how far two sets' distributions lie from each other.

Scores are cosine similarities of L2-normalised embeddings. A comparison is accepted when its
score is >= the threshold: FMR = accepted share of non-mated pairs, FNMR = rejected share of
mated pairs.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

from cemiray.data import storage
from cemiray.eval.verification import equal_error_rate

DEFAULT_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


@dataclass
class ScoreReport:
    """Score arrays of one dataset and the summary computed from them."""

    name: str
    mated: np.ndarray
    nonmated: np.ndarray
    num_images: int
    num_identities: int | None  # None for pair lists (a verification .bin names no identity)
    nonmated_sampled: bool
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, histogram_bins: int = 100) -> dict[str, Any]:
        """JSON-ready: the summary plus histograms of both distributions on [-1, 1]."""
        edges = np.linspace(-1.0, 1.0, histogram_bins + 1)
        return {
            "name": self.name,
            "num_images": self.num_images,
            "num_identities": self.num_identities,
            "num_mated": int(self.mated.size),
            "num_nonmated": int(self.nonmated.size),
            "nonmated_sampled": self.nonmated_sampled,
            **self.summary,
            "histogram": {
                "edges": edges.tolist(),
                "mated": np.histogram(self.mated, edges)[0].tolist(),
                "nonmated": np.histogram(self.nonmated, edges)[0].tolist(),
            },
        }


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty N x D array, got shape {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    zero_rows = np.flatnonzero(~(norms[:, 0] > 0))
    if zero_rows.size:
        raise ValueError(f"embedding rows {zero_rows[:10].tolist()} are zero or not finite")
    return e / norms


def mated_nonmated_scores(
    embeddings: np.ndarray, labels: Sequence[Any] | np.ndarray, max_nonmated: int = 200_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(mated, non-mated, sampled): cosine scores of every same-identity pair, and of all
    different-identity pairs when there are at most `max_nonmated` of them, otherwise of
    `max_nonmated` pairs drawn uniformly (with replacement, from `seed`)."""
    e = _unit_rows(embeddings)
    label_array = np.asarray(labels)
    if label_array.shape != (e.shape[0],):
        raise ValueError(f"{label_array.shape} labels for {e.shape[0]} embeddings")
    _, ids, counts = np.unique(label_array, return_inverse=True, return_counts=True)
    if counts.size < 2:
        raise ValueError("non-mated scores need at least 2 identities")
    if counts.max() < 2:
        raise ValueError("mated scores need an identity with at least 2 images")
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    mated = []
    for start, stop in itertools.pairwise(starts):
        members = e[order[start:stop]]
        gram = members @ members.T
        mated.append(gram[np.triu_indices(len(members), k=1)])
    total_nonmated = (e.shape[0] ** 2 - int(np.sum(counts.astype(np.int64) ** 2))) // 2
    if total_nonmated <= max_nonmated:
        first, second = np.triu_indices(e.shape[0], k=1)
        keep = ids[first] != ids[second]
        first, second, sampled = first[keep], second[keep], False
    else:
        rng = np.random.default_rng(seed)
        firsts, seconds, found = [], [], 0
        while found < max_nonmated:
            a = rng.integers(0, e.shape[0], size=2 * max_nonmated)
            b = rng.integers(0, e.shape[0], size=2 * max_nonmated)
            keep = ids[a] != ids[b]
            firsts.append(a[keep])
            seconds.append(b[keep])
            found += int(keep.sum())
        first = np.concatenate(firsts)[:max_nonmated]
        second = np.concatenate(seconds)[:max_nonmated]
        sampled = True
    nonmated = np.einsum("ij,ij->i", e[first], e[second])
    return np.concatenate(mated).astype(np.float64), nonmated.astype(np.float64), sampled


def fmr_fnmr(mated: np.ndarray, nonmated: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FMR, FNMR) at one threshold (accept when score >= threshold)."""
    return float(np.mean(nonmated >= threshold)), float(np.mean(mated < threshold))


def separation_summary(
    mated: np.ndarray, nonmated: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """Means, standard deviations, d' = |mu_m - mu_n| / sqrt((var_m + var_n) / 2), EER and
    FMR/FNMR at the given thresholds."""
    mated = np.asarray(mated, dtype=np.float64)
    nonmated = np.asarray(nonmated, dtype=np.float64)
    mean_m, mean_n = float(mated.mean()), float(nonmated.mean())
    std_m, std_n = float(mated.std()), float(nonmated.std())
    spread = np.sqrt((std_m**2 + std_n**2) / 2)
    gap = abs(mean_m - mean_n)
    d_prime = float(gap / spread) if spread > 0 else (float("inf") if gap > 0 else 0.0)
    eer, eer_threshold = equal_error_rate(mated, nonmated)
    rates = []
    for t in thresholds:
        fmr, fnmr = fmr_fnmr(mated, nonmated, float(t))
        rates.append({"threshold": float(t), "fmr": fmr, "fnmr": fnmr})
    return {
        "mated_mean": mean_m,
        "mated_std": std_m,
        "nonmated_mean": mean_n,
        "nonmated_std": std_n,
        "d_prime": d_prime,
        "eer": eer,
        "eer_threshold": eer_threshold,
        "rates": rates,
    }


def score_report(
    embeddings: np.ndarray, labels: Sequence[Any] | np.ndarray, name: str = "",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, max_nonmated: int = 200_000, seed: int = 0,
) -> ScoreReport:
    """Score distributions and their summary for one dataset's embeddings and identity labels."""
    mated, nonmated, sampled = mated_nonmated_scores(embeddings, labels, max_nonmated, seed)
    label_array = np.asarray(labels)
    return ScoreReport(
        name=name,
        mated=mated,
        nonmated=nonmated,
        num_images=int(label_array.size),
        num_identities=int(np.unique(label_array).size),
        nonmated_sampled=sampled,
        summary=separation_summary(mated, nonmated, thresholds),
    )


def pair_score_report(
    scores: np.ndarray, issame: Sequence[Any] | np.ndarray, name: str = "",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> ScoreReport:
    """Score distributions of a list of labelled pairs (a verification .bin): mated = the cosine
    scores of its same-identity pairs, non-mated = those of its different-identity pairs."""
    values = np.asarray(scores, dtype=np.float64)
    same = np.asarray(issame)
    if values.ndim != 1 or same.shape != values.shape:
        raise ValueError(f"{same.shape} same/different labels for {values.shape} pair scores")
    same = same.astype(bool)
    if same.all() or not same.any():
        raise ValueError(f"score distributions need both kinds of pairs; got {int(same.sum())} "
                         f"same, {int((~same).sum())} different")
    mated, nonmated = values[same], values[~same]
    return ScoreReport(name=name, mated=mated, nonmated=nonmated, num_images=2 * values.size,
                       num_identities=None, nonmated_sampled=False,
                       summary=separation_summary(mated, nonmated, thresholds))


def distribution_distance(
    a_scores: np.ndarray, b_scores: np.ndarray, bins: int = 100, pseudo_count: float = 0.5
) -> dict[str, float]:
    """Wasserstein-1 distance of two score samples, and KL divergences of their histograms on
    common bins spanning both samples, each bin given `pseudo_count` extra counts so empty bins
    stay finite."""
    a = np.asarray(a_scores, dtype=np.float64)
    b = np.asarray(b_scores, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"need scores on both sides, got {a.size} and {b.size}")
    low, high = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(low, high if high > low else low + 1e-6, bins + 1)
    p = np.histogram(a, edges)[0] + pseudo_count
    q = np.histogram(b, edges)[0] + pseudo_count
    p, q = p / p.sum(), q / q.sum()
    return {
        "wasserstein": float(wasserstein_distance(a, b)),
        "kl_a_b": float(np.sum(p * np.log(p / q))),
        "kl_b_a": float(np.sum(q * np.log(q / p))),
        "bins": int(bins),
    }


def compare_reports(a: ScoreReport, b: ScoreReport, bins: int = 100) -> dict[str, Any]:
    """Distances between two datasets' mated and non-mated distributions (e.g. synthetic vs
    real)."""
    return {
        "a": a.name,
        "b": b.name,
        "mated": distribution_distance(a.mated, b.mated, bins),
        "nonmated": distribution_distance(a.nonmated, b.nonmated, bins),
    }


def _as_list(reports: ScoreReport | Sequence[ScoreReport]) -> list[ScoreReport]:
    return [reports] if isinstance(reports, ScoreReport) else list(reports)


def _save_figure(figure: Any, png_url: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    storage.atomic_write_bytes(png_url, buffer.getvalue())


def plot_distributions(reports: ScoreReport | Sequence[ScoreReport], png_url: str,
                       bins: int = 100) -> None:
    """Overlaid density histograms of mated and non-mated scores, one pair per report."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for index, report in enumerate(_as_list(reports)):
        color = f"C{index}"
        label = report.name or f"set {index}"
        axes.hist(report.mated, edges, density=True, histtype="stepfilled", alpha=0.35,
                  color=color, label=f"{label} mated")
        axes.hist(report.nonmated, edges, density=True, histtype="step", linewidth=1.5,
                  color=color, label=f"{label} non-mated")
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.legend(fontsize="small")
    figure.tight_layout()
    _save_figure(figure, png_url)


def det_curve(mated: np.ndarray, nonmated: np.ndarray,
              points: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at thresholds spread over the quantiles of each distribution, so both
    tails are resolved."""
    quantiles = np.linspace(0, 1, points)
    thresholds = np.unique(np.concatenate([np.quantile(mated, quantiles),
                                           np.quantile(nonmated, quantiles)]))
    fmr = 1.0 - np.searchsorted(np.sort(nonmated), thresholds, side="left") / nonmated.size
    fnmr = np.searchsorted(np.sort(mated), thresholds, side="left") / mated.size
    return fmr, fnmr


def plot_det(reports: ScoreReport | Sequence[ScoreReport], png_url: str) -> None:
    """DET curves (FNMR against FMR, both on log axes; points where either is 0 cannot be
    drawn), one per report, EER in the legend."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    for index, report in enumerate(_as_list(reports)):
        fmr, fnmr = det_curve(report.mated, report.nonmated)
        visible = (fmr > 0) & (fnmr > 0)
        axes.plot(fmr[visible], fnmr[visible], color=f"C{index}",
                  label=f"{report.name or f'set {index}'} (EER {report.summary['eer']:.3%})")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("FMR")
    axes.set_ylabel("FNMR")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    _save_figure(figure, png_url)


def save_report_json(report: ScoreReport | dict[str, Any], url: str) -> None:
    """Write a report (summary + histograms) as JSON, atomically."""
    content = report.to_dict() if isinstance(report, ScoreReport) else report
    storage.atomic_write_text(url, json.dumps(content, indent=2, sort_keys=True) + "\n")
