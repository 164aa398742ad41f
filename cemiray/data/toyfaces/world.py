"""ToyFaces world: the public API that renders seeded identities and splits them for training.

Pixels are a pure function of (world seed, size, difficulty, identity, sample); difficulty 0 is
the canonical frontal image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cemiray.data.toyfaces.layers import _render_chunk
from cemiray.data.toyfaces.priors import (
    _IDENTITY_NORMALS,
    _IDENTITY_UNIFORMS,
    _NUISANCE_UNIFORMS,
    _check_index,
    _identity_draws,
    _identity_table,
    _nuisance_rng,
    _nuisance_table,
    _rows,
)

MIN_SIZE = 16
MAX_SIZE = 112
NEW_IDENTITY_OFFSET = 1_000_000

# Pixels per (n, H*W) work array: small enough to stay in cache, large enough to amortise the
# per-call overhead of numpy.
_CHUNK_PIXELS = 1 << 16


@dataclass(frozen=True)
class ToyFacesWorld:
    """A seeded world of identities; images of size x size RGB at a given nuisance difficulty.

    Attributes: `group` 0..3 shifts skin tone (0 lightest) and hair/eye colour; `age` 0 young,
    1 adult, 2 old (grey hair, wrinkles, receding hairline); `sex` 0/1 is a shape attribute
    (0: wider jaw, thicker brows, shorter hair, facial hair possible). Nuisances: yaw and roll
    in degrees, shift in image half-widths, scale as a factor, expression and light in [-1, 1]
    or [0, 1], colours as RGB in [0, 1], occluders as 0/1 flags. Difficulty 1 is the intended
    working point; 0 removes every nuisance; values above 1 widen them further.
    """

    seed: int = 0
    size: int = 32
    difficulty: float = 1.0

    def __post_init__(self) -> None:
        _check_index("seed", self.seed)
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)):
            raise TypeError(f"size must be an integer, got {self.size!r}")
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}], got {self.size}")
        if isinstance(self.difficulty, bool) or not isinstance(
            self.difficulty, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"difficulty must be a number, got {self.difficulty!r}")
        if not math.isfinite(self.difficulty):
            raise ValueError(f"difficulty must be finite, got {self.difficulty}")
        if self.difficulty < 0:
            raise ValueError(f"difficulty must be >= 0, got {self.difficulty}")

    def _identity_tables(self, identities: Sequence[int]) -> dict[str, np.ndarray]:
        draws = [_identity_draws(self.seed, _check_index("identity", i)) for i in identities]
        u = np.stack([d[0] for d in draws]) if draws else np.zeros((0, len(_IDENTITY_UNIFORMS)))
        z = np.stack([d[1] for d in draws]) if draws else np.zeros((0, len(_IDENTITY_NORMALS)))
        return _identity_table(u, z)

    def _nuisance_tables(
        self, identities: Sequence[int], samples: Sequence[int]
    ) -> tuple[dict[str, np.ndarray], list[np.random.Generator]]:
        rngs = [
            _nuisance_rng(self.seed, _check_index("identity", i), _check_index("sample", s))
            for i, s in zip(identities, samples)
        ]
        k = len(_NUISANCE_UNIFORMS)
        u = np.stack([rng.random(k) for rng in rngs]) if rngs else np.zeros((0, k))
        return _nuisance_table(u, self.difficulty), rngs

    def identity_params(self, identity: int) -> dict:
        """All per-identity parameters, JSON-serialisable."""
        return _rows(self._identity_tables([identity]))[0]

    def attributes(self, identity: int) -> dict[str, int]:
        """Known labels: group 0..3, age 0 young / 1 adult / 2 old, sex 0..1."""
        params = self.identity_params(identity)
        return {k: params[k] for k in ("group", "age", "sex")}

    def nuisance(self, identity: int, sample: int) -> dict:
        """The per-image nuisance values (pose in degrees and face units), JSON-serialisable."""
        return _rows(self._nuisance_tables([identity], [sample])[0])[0]

    def render(self, identity: int, sample: int) -> tuple[np.ndarray, dict]:
        images, nuisances = self.render_batch([identity], [sample])
        return images[0], nuisances[0]

    def render_batch(
        self, identities: Sequence[int], samples: Sequence[int]
    ) -> tuple[np.ndarray, list[dict]]:
        """(N, H, W, 3) uint8 images and their nuisance dicts; each image is independent of
        the others in the batch."""
        identities, samples = list(identities), list(samples)
        if len(identities) != len(samples):
            raise ValueError(
                f"identities and samples differ in length: {len(identities)} vs {len(samples)}"
            )
        ident = self._identity_tables(identities)
        nuis, rngs = self._nuisance_tables(identities, samples)
        n, size = len(identities), self.size
        out = np.empty((n, size, size, 3), dtype=np.uint8)
        step = max(1, _CHUNK_PIXELS // (size * size))
        for lo in range(0, n, step):
            part = slice(lo, lo + step)
            out[part] = _render_chunk(
                size,
                {k: col[part] for k, col in ident.items()},
                {k: col[part] for k, col in nuis.items()},
                rngs[part],
            )
        return out, _rows(nuis)

    def render_canonical(self, identity: int) -> np.ndarray:
        """The identity's difficulty-0 image: frontal, neutral, no occluders, blur or noise."""
        return replace(self, difficulty=0.0).render(identity, 0)[0]


@dataclass(frozen=True)
class ToyFacesSplit:
    """Disjoint identity ranges: train [0, num_train), test [num_train, num_train+num_test), and
    'new' identities (for synthetic identity seeds) starting at new_offset (default 1_000_000)."""

    num_train: int
    num_test: int
    new_offset: int = NEW_IDENTITY_OFFSET

    def __post_init__(self) -> None:
        _check_index("num_train", self.num_train)
        _check_index("num_test", self.num_test)
        _check_index("new_offset", self.new_offset)
        if self.new_offset < self.num_train + self.num_test:
            raise ValueError(
                f"new_offset {self.new_offset} overlaps train+test identities "
                f"[0, {self.num_train + self.num_test})"
            )

    def train_ids(self) -> range:
        return range(self.num_train)

    def test_ids(self) -> range:
        return range(self.num_train, self.num_train + self.num_test)

    def new_ids(self, n: int) -> range:
        return range(self.new_offset, self.new_offset + _check_index("n", n))


def verification_pairs(
    identities: Sequence[int], samples_per_identity: int, num_pairs: int, seed: int = 0
) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """Shuffled (identity, sample) pairs, half genuine (same identity, two different samples) and
    half impostor (two different identities); deterministic for `seed`."""
    ids = [_check_index("identity", i) for i in identities]
    if len(set(ids)) != len(ids):
        raise ValueError("identities must not repeat")
    if len(ids) < 2:
        raise ValueError(f"need at least 2 identities for impostor pairs, got {len(ids)}")
    spi = _check_index("samples_per_identity", samples_per_identity)
    if spi < 2:
        raise ValueError(f"samples_per_identity must be >= 2 for genuine pairs, got {spi}")
    num_pairs = _check_index("num_pairs", num_pairs)
    if num_pairs % 2:
        raise ValueError(f"num_pairs must be even (half genuine, half impostor), got {num_pairs}")
    rng = np.random.default_rng(np.random.SeedSequence([_check_index("seed", seed), 0x9A1]))
    half = num_pairs // 2
    idx = np.asarray(ids)
    a = idx[rng.integers(0, len(ids), half)]
    s1 = rng.integers(0, spi, half)
    s2 = (s1 + rng.integers(1, spi, half)) % spi
    first = rng.integers(0, len(ids), half)
    second = (first + rng.integers(1, len(ids), half)) % len(ids)
    t1, t2 = rng.integers(0, spi, half), rng.integers(0, spi, half)
    pairs = [((int(a[k]), int(s1[k])), (int(a[k]), int(s2[k])), True) for k in range(half)]
    pairs += [
        ((int(idx[first[k]]), int(t1[k])), (int(idx[second[k]]), int(t2[k])), False)
        for k in range(half)
    ]
    return [pairs[k] for k in rng.permutation(num_pairs)]
