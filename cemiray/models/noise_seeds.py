"""Noise seeds (models): the one check of the integer seeds every sampler draws its noise from.

Each generated image is a function of its seed alone (a CPU torch.Generator seeded with it), so
a seed must be a non-negative integer below 2**63 (torch's seed range); booleans, floats, text
and numpy/torch scalars holding anything else are refused with the position of the bad one.

torch's CPU generator (mt19937) keeps only a seed's low 32 bits: seeds that differ by a multiple
of 2**32 draw the same noise (measured: torch 2.13, manual_seed(5), (5 + 2**32), (5 + 2**40)
give equal randn). Offsets and strides between seed streams therefore differ in the low 32 bits
(`aliases` says whether two seeds draw the same noise)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

MAX_SEED = 2**63


def check_noise_seeds(seeds: Sequence[int], n: int | None = None) -> list[int]:
    """`seeds` as Python ints (numpy and torch scalars unwrapped); with `n`, exactly n of them."""
    kinds = (Sequence, np.ndarray)
    try:
        from torch import Tensor

        kinds = (*kinds, Tensor)
    except ImportError:  # pragma: no cover (torch is a dependency)
        pass
    count = f"{n} " if n is not None else ""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, kinds):
        raise TypeError(f"seeds must be a sequence of {count}integers, got "
                        f"{type(seeds).__name__}")
    values = [s.item() if hasattr(s, "item") and not isinstance(s, numbers.Number) else s
              for s in seeds]
    if n is not None and len(values) != n:
        raise ValueError(f"got {len(values)} seeds for {n} identity embeddings")
    for i, s in enumerate(values):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or not 0 <= s < MAX_SEED:
            raise ValueError(f"seeds[{i}] = {s!r} is not an integer in [0, 2**63)")
    if not values:
        raise ValueError("seeds is empty")
    return [int(s) for s in values]


def aliases(a: int, b: int) -> bool:
    """True when seeds a and b draw the same noise from torch's CPU generator."""
    return (int(a) - int(b)) % 2**32 == 0
