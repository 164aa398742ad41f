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
