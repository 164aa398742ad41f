"""The null generator of `cemiray generate` (pipeline): images that cost nothing to make.

`generator=null:<size>` replaces the CemiFace sampler actor by one that draws each image as a
deterministic function of its plan (its noise seed): a fixed face-sized texture — smooth blocks
plus fine noise, so PNG encoding costs what it costs on real faces — shifted and tinted by the
seed. It loads no model and needs no recogniser, so a run measures what Ray Data, encoding,
writing and bookkeeping cost per image (`cemiray bench-pipeline`), at any image size. Its rows
say so: `generator_sha256` is the hash of the URI, `similarity` equals `target_m` (nothing is
measured), `tries` is 1.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from cemiray.pipeline.generate.chunk_sampler import ChunkSampler

NULL_PREFIX = "null:"
_SIZE = re.compile(r"null:(\d+)$")


def is_null(generator: str | None) -> bool:
    return str(generator or "").startswith(NULL_PREFIX)


def null_size(generator: str) -> int:
    """The image size of a `null:<size>` URI; ValueError naming the URI otherwise."""
    match = _SIZE.match(str(generator))
    if not match or not 8 <= int(match.group(1)) <= 1024:
        raise ValueError(f"generator {generator!r}: the null generator is `null:<size>` with a "
                         "size in [8, 1024] pixels, e.g. null:112")
    return int(match.group(1))


def null_hash(generator: str) -> str:
    """The lineage hash of a null generator: of its URI, as no weights exist."""
    return hashlib.sha256(generator.encode()).hexdigest()


class NullImages:
    """uint8 RGB images from seeds: a texture drawn once per size, rolled and tinted per seed."""

    def __init__(self, size: int) -> None:
        rng = np.random.default_rng(size)
        cells = -(-size // 8)
        blocks = np.repeat(np.repeat(rng.integers(40, 216, (cells, cells, 3)), 8, 0), 8, 1)
        fine = rng.integers(0, 12, (size, size, 3))
        self.texture = (blocks[:size, :size] + fine).astype(np.uint8)
        self.size = size

    def __call__(self, seeds: np.ndarray) -> np.ndarray:
        seeds = np.asarray(seeds, dtype=np.int64)
        out = np.empty((len(seeds), self.size, self.size, 3), dtype=np.uint8)
        for i, seed in enumerate(seeds.tolist()):
            shifted = np.roll(self.texture, (seed % self.size, (seed >> 16) % self.size), (0, 1))
            np.add(shifted, np.uint8((seed >> 32) % 32), out=out[i], casting="unsafe")
        return out


class NullSampler(ChunkSampler):
    """Drop-in for SamplerActor (same rows, same micro-batches) with no model behind it."""

    def __init__(self, generator: str, images_per_call: int = 64, **_: Any) -> None:
        super().__init__(images_per_call)
        self.images = NullImages(null_size(generator))

    def sample(self, prepared: Any, part: slice, position: np.ndarray, targets: np.ndarray,
               seeds: np.ndarray) -> dict[str, np.ndarray]:
        return {"pixels": self.images(seeds), "similarity": targets, "seed": seeds,
                "tries": np.ones(len(seeds), dtype=np.int64)}
