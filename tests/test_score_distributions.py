"""Mated / non-mated score distributions on synthetic embeddings with known scores."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import norm

from cemiray.data import storage
from cemiray.eval.score_distributions import (
    compare_reports,
    distribution_distance,
    mated_nonmated_scores,
    plot_det,
    plot_distributions,
    save_report_json,
    score_report,
    separation_summary,
)


def orthogonal_dataset(identities: int = 5, images: int = 4, alpha: float = 0.6):
    """Image j of identity c = cos(alpha) u_c + sin(alpha) v_cj with all u, v orthonormal:
    every mated score is exactly cos(alpha)^2, every non-mated score exactly 0."""
    basis = np.eye(identities + identities * images)
    embeddings, labels = [], []
    for c in range(identities):
        for j in range(images):
            v = basis[identities + c * images + j]
            embeddings.append(math.cos(alpha) * basis[c] + math.sin(alpha) * v)
            labels.append(f"id{c}")
    return np.array(embeddings) * 3.0, np.array(labels)  # scale: scores must not depend on it


def test_exact_scores_and_counts() -> None:
    embeddings, labels = orthogonal_dataset()
    mated, nonmated, sampled = mated_nonmated_scores(embeddings, labels)
    assert mated.size == 5 * math.comb(4, 2)
    assert nonmated.size == math.comb(20, 2) - mated.size
    assert not sampled
    np.testing.assert_allclose(mated, math.cos(0.6) ** 2, atol=1e-6)
    np.testing.assert_allclose(nonmated, 0.0, atol=1e-6)


def test_bounded_nonmated_sampling_is_seeded_and_never_mated() -> None:
    embeddings, labels = orthogonal_dataset(identities=6, images=5)
    first = mated_nonmated_scores(embeddings, labels, max_nonmated=50, seed=1)
    again = mated_nonmated_scores(embeddings, labels, max_nonmated=50, seed=1)
    assert first[2] and first[1].size == 50
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_allclose(first[1], 0.0, atol=1e-6)  # any mated pair would score 0.36+


def test_sampled_pairs_depend_on_seed() -> None:
    rng = np.random.default_rng(0)
    embeddings, labels = rng.normal(size=(60, 8)), np.repeat(np.arange(12), 5)
    a = mated_nonmated_scores(embeddings, labels, max_nonmated=100, seed=1)[1]
    b = mated_nonmated_scores(embeddings, labels, max_nonmated=100, seed=2)[1]
    assert not np.array_equal(a, b)


def test_separation_summary_on_known_gaussians() -> None:
    rng = np.random.default_rng(0)
    mated = rng.normal(0.6, 0.1, 30_000)
    nonmated = rng.normal(0.1, 0.1, 30_000)
    summary = separation_summary(mated, nonmated, thresholds=[0.35, 0.5])
    assert summary["d_prime"] == pytest.approx(5.0, rel=0.03)
    assert summary["eer"] == pytest.approx(norm.cdf(-2.5), abs=1.5e-3)
    assert summary["mated_mean"] == pytest.approx(0.6, abs=0.005)
    assert summary["nonmated_std"] == pytest.approx(0.1, abs=0.005)
    at_half = summary["rates"][1]
    assert at_half["threshold"] == 0.5
    assert at_half["fmr"] == pytest.approx(norm.sf(4.0), abs=2e-4)
    assert at_half["fnmr"] == pytest.approx(norm.cdf(-1.0), abs=0.01)


def test_embedding_report_reflects_separation() -> None:
    rng = np.random.default_rng(3)
    dim, identities, per_identity, rho = 512, 30, 6, 0.5
    centres = rng.normal(size=(identities, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.normal(size=(identities * per_identity, dim))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    labels = np.repeat(np.arange(identities), per_identity)
    embeddings = math.sqrt(rho) * centres[labels] + math.sqrt(1 - rho) * noise
    report = score_report(embeddings, labels, name="synthetic", max_nonmated=2_000, seed=0)
    assert report.num_images == 180 and report.num_identities == 30
    assert report.nonmated_sampled and report.nonmated.size == 2_000
    assert report.summary["mated_mean"] == pytest.approx(rho, abs=0.03)
    assert report.summary["nonmated_mean"] == pytest.approx(0.0, abs=0.01)
    assert report.summary["d_prime"] > 8
    assert report.summary["eer"] < 0.01


def test_distribution_distance() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 0.1, 5_000)
    same = distribution_distance(a, a)
    assert same["wasserstein"] == 0.0 and same["kl_a_b"] == pytest.approx(0.0, abs=1e-12)
    shifted = distribution_distance(a, a + 0.2)
    assert shifted["wasserstein"] == pytest.approx(0.2, abs=1e-9)
    assert shifted["kl_a_b"] > 1.0 and shifted["kl_b_a"] > 1.0
    near = distribution_distance(a, rng.normal(0.0, 0.1, 5_000))
    assert near["kl_a_b"] < 0.1 < shifted["kl_a_b"]
    with pytest.raises(ValueError, match="both sides"):
        distribution_distance(a, np.array([]))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        return image.size


@pytest.mark.parametrize("root", ["local", "memory://cemiray-test-scores"])
def test_plots_and_json(tmp_path: Path, root: str) -> None:
    base = str(tmp_path) if root == "local" else root
    embeddings, labels = orthogonal_dataset()
    rng = np.random.default_rng(0)
    noisy = embeddings + rng.normal(0, 0.5, embeddings.shape)
    real = score_report(noisy, labels, name="real")
    synthetic = score_report(
        embeddings + rng.normal(0, 0.8, embeddings.shape), labels, name="synthetic"
    )
    plot_distributions([real, synthetic], storage.join(base, "hist.png"))
    plot_det(real, storage.join(base, "det.png"))
    width, height = png_size(storage.read_bytes(storage.join(base, "hist.png")))
    assert width > 300 and height > 200
    png_size(storage.read_bytes(storage.join(base, "det.png")))

    save_report_json(real, storage.join(base, "report.json"))
    loaded = json.loads(storage.read_text(storage.join(base, "report.json")))
    assert loaded["name"] == "real" and loaded["num_mated"] == real.mated.size
    assert loaded["d_prime"] == pytest.approx(real.summary["d_prime"])
    assert sum(loaded["histogram"]["nonmated"]) == real.nonmated.size
    comparison = compare_reports(real, synthetic)
    assert comparison["mated"]["wasserstein"] > 0
    save_report_json(comparison, storage.join(base, "comparison.json"))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2 identities"):
        mated_nonmated_scores(np.ones((3, 4)), [0, 0, 0])
    with pytest.raises(ValueError, match="at least 2 images"):
        mated_nonmated_scores(np.eye(3), [0, 1, 2])
    with pytest.raises(ValueError, match="labels"):
        mated_nonmated_scores(np.eye(3), [0, 1])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        mated_nonmated_scores(np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), [0, 0, 1])
