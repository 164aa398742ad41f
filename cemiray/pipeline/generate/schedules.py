"""Which similarity m each generated image asks for and its noise seed (variation: variation_plan).

Every value is a pure function of (global seed, seed_id, sample): a shard generated twice — by
another actor, after a retry, or in a rerun — asks for exactly the same images. The randomness
is a counter-based hash (SplitMix64's finaliser) instead of a stateful generator, so no value
depends on the order in which images are planned or on how they are batched.

Schedules (config `schedule`, all m in [−1, 1]):
- `constant`: one m for every image (CemiFace generates at m = 0, METHOD.md §1);
- `list`: values cycled over the samples of an identity (sample k gets values[k % len]);
- `uniform`: m drawn uniformly from the band [low, high];
- `mixture`: m drawn from a finite set with given weights, e.g. {0.0: 0.8, 0.3: 0.2}.
A bare number is shorthand for `constant`, a bare list for `list`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
STREAM_M = 1
STREAM_SEED = 2
STREAM_VARIATION = 16  # + attribute index
SEED_BITS = 62  # leaves room for the closed loop's `seed + k·stride` below 2**63


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _as_u64(values: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(values, dtype=np.int64)).view(np.uint64)


def hash64(seed: int, seed_ids: Any, samples: Any, stream: int) -> np.ndarray:
    """A 64-bit hash per (seed, seed_id, sample, stream); seed_ids and samples broadcast."""
    ids, samples = np.broadcast_arrays(_as_u64(seed_ids), _as_u64(samples))
    golden = np.uint64(GOLDEN)
    with np.errstate(over="ignore"):
        h = _mix(np.full(ids.shape, (int(seed) * 0x100000001B3 + stream) & MASK64, np.uint64))
        h = _mix((h + golden) ^ ids)
        h = _mix((h + golden) ^ samples)
    return h


def uniform01(seed: int, seed_ids: Any, samples: Any, stream: int) -> np.ndarray:
    """Deterministic float64 values in [0, 1): the top 53 bits of `hash64`."""
    return (hash64(seed, seed_ids, samples, stream) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def image_seeds(seed: int, seed_ids: Any, samples: Any) -> np.ndarray:
    """Noise seed of each image, in [0, 2**62)."""
    h = hash64(seed, seed_ids, samples, STREAM_SEED) >> np.uint64(64 - SEED_BITS)
    return h.astype(np.int64)


def check_m(value: Any, where: str) -> float:
    """`value` as a float in [−1, 1], or a ValueError naming `where`."""
    try:
        number = math.nan if isinstance(value, (bool, str)) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not -1.0 <= number <= 1.0:
        raise ValueError(f"{where}: m must be a finite number in [-1, 1], got {value!r}")
    return number


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def targets(self, seed: int, seed_ids: Any, samples: Any) -> np.ndarray:
        """Target m (float64) of each (seed_id, sample) pair."""
        raise NotImplementedError

    def levels(self) -> list[float] | None:
        """The finite set of m values this schedule uses, or None for a continuous band."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class ConstantSchedule(_Schedule):
    kind: Literal["constant"] = "constant"
    m: float = 0.0

    @field_validator("m")
    @classmethod
    def _check(cls, v: float) -> float:
        return check_m(v, "schedule.m")

    def targets(self, seed: int, seed_ids: Any, samples: Any) -> np.ndarray:
        ids, _ = np.broadcast_arrays(np.asarray(seed_ids), np.asarray(samples))
        return np.full(ids.shape, self.m, dtype=np.float64)

    def levels(self) -> list[float] | None:
        return [self.m]

    def describe(self) -> str:
        return f"constant m = {self.m:g}"


class ListSchedule(_Schedule):
    kind: Literal["list"] = "list"
    values: list[float] = Field(min_length=1)

    @field_validator("values")
    @classmethod
    def _check(cls, v: list[float]) -> list[float]:
        return [check_m(x, f"schedule.values[{i}]") for i, x in enumerate(v)]

    def targets(self, seed: int, seed_ids: Any, samples: Any) -> np.ndarray:
        _, samples = np.broadcast_arrays(np.asarray(seed_ids), np.asarray(samples, np.int64))
        return np.asarray(self.values, dtype=np.float64)[samples % len(self.values)]

    def levels(self) -> list[float] | None:
        return sorted(set(self.values))

    def describe(self) -> str:
        return "m cycled over samples: " + ", ".join(f"{v:g}" for v in self.values)


class UniformSchedule(_Schedule):
    kind: Literal["uniform"] = "uniform"
    low: float
    high: float

    @model_validator(mode="after")
    def _check(self) -> UniformSchedule:
        check_m(self.low, "schedule.low")
        check_m(self.high, "schedule.high")
        if self.low > self.high:
            raise ValueError(f"schedule: low {self.low} > high {self.high}")
        return self

    def targets(self, seed: int, seed_ids: Any, samples: Any) -> np.ndarray:
        u = uniform01(seed, seed_ids, samples, STREAM_M)
        return self.low + u * (self.high - self.low)

    def levels(self) -> list[float] | None:
        return [self.low] if self.low == self.high else None

    def describe(self) -> str:
        return f"m uniform in [{self.low:g}, {self.high:g}]"


class MixtureSchedule(_Schedule):
    kind: Literal["mixture"] = "mixture"
    weights: dict[float, float] = Field(min_length=1, description="{m: weight}")

    @field_validator("weights")
    @classmethod
    def _check(cls, v: dict[float, float]) -> dict[float, float]:
        out = {}
        for m, w in sorted(v.items()):
            m = check_m(m, "schedule.weights key")
            if not (math.isfinite(w) and w > 0):
                raise ValueError(f"schedule.weights[{m:g}]: weight must be finite and > 0, got {w}")
            out[m] = float(w)
        return out

    def targets(self, seed: int, seed_ids: Any, samples: Any) -> np.ndarray:
        values = np.asarray(list(self.weights), dtype=np.float64)
        cdf = np.cumsum(np.asarray(list(self.weights.values()), dtype=np.float64))
        u = uniform01(seed, seed_ids, samples, STREAM_M) * cdf[-1]
        return values[np.minimum(np.searchsorted(cdf, u, side="right"), len(values) - 1)]

    def levels(self) -> list[float] | None:
        return list(self.weights)

    def describe(self) -> str:
        total = sum(self.weights.values())
        return "m mixture: " + ", ".join(f"{m:g} ({w / total:.0%})" for m, w in self.weights.items())


Schedule = Annotated[
    ConstantSchedule | ListSchedule | UniformSchedule | MixtureSchedule,
    Field(discriminator="kind"),
]


def schedule_shorthand(value: Any) -> Any:
    """A bare number means `constant`, a bare list means `list`; anything else is unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"kind": "constant", "m": value}
    if isinstance(value, (list, tuple)):
        return {"kind": "list", "values": list(value)}
    return value

