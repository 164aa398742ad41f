"""Means with confidence intervals and the paired test, against scipy's own routines."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cemiray.eval.statistics import mean_ci, paired_test


def test_mean_ci_matches_the_t_interval() -> None:
    values = [0.80, 0.83, 0.78, 0.81]
    est = mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                 scale=stats.sem(values))
    assert est.mean == pytest.approx(np.mean(values))
    assert (est.low, est.high) == pytest.approx((low, high))
    assert est.n == 4 and est.as_dict()["values"] == values
    assert math.isnan(mean_ci([0.5]).half_width)


def test_paired_test_matches_scipy_and_says_when_not_significant() -> None:
    a, b = [0.82, 0.85, 0.80], [0.78, 0.80, 0.79]
    test = paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert test.t == pytest.approx(ref.statistic)
    assert test.p == pytest.approx(ref.pvalue)
    assert test.difference.mean == pytest.approx(np.mean(np.subtract(a, b)))
    noisy = paired_test([0.80, 0.70, 0.85], [0.78, 0.79, 0.80])
    assert not noisy.significant
    assert noisy.verdict("m=0.6", "m=1").endswith("not significant")
    clear = paired_test([0.90, 0.91, 0.92, 0.905], [0.80, 0.81, 0.815, 0.80])
    assert clear.significant and clear.p < 0.001
    assert "not significant" not in clear.verdict("a", "b")


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_test([0.5], [0.4])
    with pytest.raises(ValueError, match="as many values"):
        paired_test([0.5, 0.6], [0.4])
    with pytest.raises(ValueError, match="finite"):
        mean_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_the_experiment_claims_pair_equal_sizes_and_the_scaled_set() -> None:
    from cemiray.apps.experiment.results import claims

    def row(name, kind, m, identities, accuracies):
        return {"name": name, "kind": kind, "m": m, "identities": identities,
                "accuracies": accuracies, "accuracy": float(np.mean(accuracies))}

    rows = [row("real", "real", None, 50, [0.85, 0.84, 0.86]),
            row("m=0.6", "synthetic", [0.6], 50, [0.80, 0.79, 0.81]),
            row("m=1", "synthetic", [1.0], 50, [0.78, 0.78, 0.79]),
            row("real x4", "real", None, 200, [0.90, 0.91, 0.92]),
            row("m=0.6 x4", "synthetic", [0.6], 200, [0.95, 0.96, 0.94])]
    found = {c["claim"]: c for c in claims(rows)}
    assert (found["best semi-hard m against m = 1"]["a"],
            found["best semi-hard m against m = 1"]["b"]) == ("m=0.6", "m=1")
    assert found["best synthetic set against real"]["a"] == "m=0.6"  # not the 4x set
    scaled = found["synthetic at 4x the identities against real at equal size"]
    assert (scaled["a"], scaled["b"]) == ("m=0.6 x4", "real") and scaled["significant"]
    assert claims([row("real", "real", None, 50, [0.8])]) == []  # one training: no test

    varied = {**row("m=0.6 +target variation", "synthetic", [0.6], 50, [0.83, 0.82, 0.84]),
              "variation": "target"}
    found = {c["claim"]: c for c in claims([*rows, varied])}
    pair = found["target variation against none at the same m"]
    assert (pair["a"], pair["b"]) == ("m=0.6 +target variation", "m=0.6")
    # a varied set is never the "semi-hard m" of the m-sweep claim
    assert found["best semi-hard m against m = 1"]["a"] == "m=0.6"


def test_a_set_with_variation_is_named_by_it() -> None:
    from cemiray.apps.experiment.config import ExperimentConfig

    cfg = ExperimentConfig(sets=[{"m": [0.6]}, {"m": [0.6], "variation": {"kind": "target"}}])
    assert [s.label for s in cfg.sets] == ["m=0.6", "m=0.6 +target variation"]


def test_correlation_ci_is_fishers_interval():
    from cemiray.eval.statistics import correlation_ci

    low, high = correlation_ci(0.673, 140)  # z = atanh(0.673) ± 1.96 / sqrt(137)
    assert (round(low, 3), round(high, 3)) == (0.571, 0.755)
    assert correlation_ci(-0.5, 50) == pytest.approx(tuple(-v for v in correlation_ci(0.5, 50)[::-1]))
    with pytest.raises(ValueError, match="n >= 4"):
        correlation_ci(0.5, 3)
