"""Statistics that settle a comparison (eval): means with 95% intervals and paired t-tests.

Statistics that settle a comparison: a mean with its 95% confidence interval over repeated
trainings, and a paired test of two settings run with the same seeds (and the same folds).

Each training of a setting is one sample; two settings trained with the same seeds form pairs,
so the seed-to-seed noise that both share cancels in their differences. With n pairs the test
is Student's paired t-test (n − 1 degrees of freedom); it needs n ≥ 2, and with n = 3 only a
difference that is large against its spread reaches p < 0.05, which is what it should say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over n repeats with the half-width of its confidence interval."""

    mean: float
    half_width: float
    n: int
    values: tuple[float, ...]
    confidence: float = CONFIDENCE

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def as_dict(self) -> dict:
        return {**asdict(self), "values": list(self.values), "low": self.low, "high": self.high}


@dataclass(frozen=True)
class PairedTest:
    """a − b over pairs: the mean difference, its interval, Student's t and the two-sided p."""

    difference: Estimate
    t: float
    p: float
    alpha: float = 1.0 - CONFIDENCE

    @property
    def significant(self) -> bool:
        return bool(self.p < self.alpha)

    def as_dict(self) -> dict:
        return {"difference": self.difference.as_dict(), "t": self.t, "p": self.p,
                "alpha": self.alpha, "significant": self.significant}

    def verdict(self, a: str, b: str) -> str:
        d = self.difference
        text = (f"{a} − {b}: {d.mean:+.4f} (95% CI {d.low:+.4f} … {d.high:+.4f}, "
                f"paired t-test p = {self.p:.3g}, n = {d.n})")
        return text + ("" if self.significant else " — not significant")


def _values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError(f"{name}: no values")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: values must be finite, got {array.tolist()}")
    return array


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE,
            name: str = "values") -> Estimate:
    """Mean and the Student-t confidence half-width (nan for a single value: no interval)."""
    array = _values(values, name)
    n = int(array.size)
    mean = float(array.mean())
    if n < 2:
        return Estimate(mean, math.nan, n, tuple(array.tolist()), confidence)
    sem = float(array.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sem
    return Estimate(mean, half, n, tuple(array.tolist()), confidence)


def paired_test(a: Sequence[float], b: Sequence[float],
                confidence: float = CONFIDENCE) -> PairedTest:
    """Paired two-sided t-test of a against b (a[i] and b[i] share seed i)."""
    x, y = _values(a, "a"), _values(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired test needs as many values on each side, got {x.size} and "
                         f"{y.size}")
    if x.size < 2:
        raise ValueError(f"paired test needs at least 2 pairs, got {x.size}")
    diff = mean_ci(x - y, confidence, "a − b")
    spread = float((x - y).std(ddof=1))
    if spread == 0.0:
        t = math.copysign(math.inf, diff.mean) if diff.mean else 0.0
        p = 0.0 if diff.mean else 1.0
    else:
        t = diff.mean / (spread / math.sqrt(x.size))
        p = float(2 * stats.t.sf(abs(t), x.size - 1))
    return PairedTest(diff, float(t), p, 1.0 - confidence)


def correlation_ci(rho: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Fisher's z interval for a (rank) correlation over n observations taken as independent;
    clustered observations (images of one identity) make it narrower than the truth."""
    if n < 4 or not -1 < rho < 1:
        raise ValueError(f"correlation_ci: needs n >= 4 and |rho| < 1, got n={n}, rho={rho}")
    z, half = math.atanh(rho), stats.norm.ppf(0.5 + confidence / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)
