"""Sampling by a `SamplingSpec`, with its closed loop (diffusion).

The closed loop re-draws only the images whose measured similarity misses the target.

The generator's control of m is approximate; a recogniser measures the achieved similarity of
each image to its identity, and images off by more than `tolerance` are sampled again from a new
seed (`seed + k·seed_stride` at try k), at most `max_tries` times. The try closest to the target
is kept. Because each image depends only on its own seed, the result is deterministic and does
not depend on which other images were re-drawn alongside.

`sample(pipe, spec, ...)` is the one place a spec becomes pipeline calls: the generation job's
sampler actors and the served generator both call it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cemiray.diffusion.pipeline import CemiFacePipeline, validate_seeds, validate_similarity
from cemiray.diffusion.sampling import SamplingSpec
from cemiray.diffusion.similarity_loss import IdentityEncoder
from cemiray.models.noise_seeds import MAX_SEED


@dataclass
class ClosedLoopOutput:
    """Per image: the kept image, its achieved similarity, the target, how many tries were
    sampled, the seed of the kept try and whether it lies within tolerance (None without a
    closed loop)."""

    images: np.ndarray | Tensor
    similarity: np.ndarray
    target: np.ndarray
    tries: np.ndarray
    seeds: np.ndarray
    within_tolerance: np.ndarray | None


def closed_loop_generate(
    pipe: CemiFacePipeline,
    id_embeddings: Tensor,
    similarity: float | Sequence[float] | Tensor,
    seeds: Sequence[int],
    recognizer: IdentityEncoder,
    tolerance: float = 0.05,
    max_tries: int = 4,
    seed_stride: int = 1_000_003,
    variation: Tensor | None = None,
    **kw: Any,
) -> ClosedLoopOutput:
    """Generate with `pipe`, then re-sample the images with |achieved − target| > tolerance.
    `variation` (N×attributes) follows its image through the re-draws; `kw` goes to the
    pipeline call (num_inference_steps, scheduler, output_type, guidance_scale, ...)."""
    if recognizer is None:
        raise ValueError("closed_loop_generate needs a recognizer to measure similarity")
    if not (isinstance(tolerance, numbers.Real) and np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    for name, value in (("max_tries", max_tries), ("seed_stride", seed_stride)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    n = len(seeds)
    if n == 0:
        raise ValueError("closed_loop_generate: no seeds given")
    base_seeds = validate_seeds(seeds, n)
    if max(base_seeds, default=0) + (max_tries - 1) * seed_stride >= MAX_SEED:
        raise ValueError("seeds + (max_tries - 1) * seed_stride overflow the seed range [0, 2**63)")
    targets = validate_similarity(similarity, n).numpy().astype(np.float64)
    embeddings = torch.as_tensor(id_embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise ValueError(f"got {n} seeds for id_embeddings of shape {tuple(embeddings.shape)}")
    if variation is not None:
        variation = torch.as_tensor(variation, dtype=torch.float32)
        if variation.ndim != 2 or variation.shape[0] != n:
            raise ValueError(f"variation must have one row per seed ({n}), got shape "
                             f"{tuple(variation.shape)}")

    images: np.ndarray | Tensor | None = None
    achieved = np.full(n, np.nan)
    error = np.full(n, np.inf)
    tries = np.zeros(n, dtype=np.int64)
    kept_seeds = np.array(base_seeds, dtype=np.int64)
    pending = list(range(n))
    for k in range(max_tries):
        if not pending:
            break
        index = torch.as_tensor(pending, dtype=torch.long)
        try_seeds = [base_seeds[i] + k * seed_stride for i in pending]
        out = pipe(
            embeddings[index],
            torch.as_tensor(targets[pending], dtype=torch.float32),
            try_seeds,
            variation=None if variation is None else variation[index],
            recognizer=recognizer,
            **kw,
        )
        if images is None:
            images = out.images.copy() if isinstance(out.images, np.ndarray) else out.images.clone()
        still_off = []
        for j, i in enumerate(pending):
            tries[i] = k + 1
            err = abs(float(out.similarity[j]) - targets[i])
            if err < error[i]:
                error[i], achieved[i], kept_seeds[i] = err, out.similarity[j], try_seeds[j]
                images[i] = out.images[j]
            if err > tolerance:
                still_off.append(i)
        pending = still_off
    return ClosedLoopOutput(
        images=images,
        similarity=achieved,
        target=targets,
        tries=tries,
        seeds=kept_seeds,
        within_tolerance=error <= tolerance,
    )


def sample(
    pipe: CemiFacePipeline,
    spec: SamplingSpec,
    id_embeddings: Tensor,
    similarity: float | Sequence[float] | Tensor,
    seeds: Sequence[int],
    recognizer: IdentityEncoder,
    variation: Tensor | None = None,
    **kw: Any,
) -> ClosedLoopOutput:
    """Images sampled as `spec` says (in closed loop when it has one), their achieved
    similarity measured by `recognizer`; `kw` adds call options a spec does not hold
    (output_type, device)."""
    options = {**spec.pipeline_options(), **kw}
    if spec.closed_loop is not None:
        return closed_loop_generate(pipe, id_embeddings, similarity, seeds, recognizer=recognizer,
                                    tolerance=spec.closed_loop.tolerance,
                                    max_tries=spec.closed_loop.max_tries, variation=variation,
                                    **options)
    out = pipe(id_embeddings, similarity, seeds, variation=variation, recognizer=recognizer,
               **options)
    n = len(seeds)
    return ClosedLoopOutput(
        images=out.images,
        similarity=np.asarray(out.similarity),
        target=validate_similarity(similarity, n).numpy().astype(np.float64),
        tries=np.ones(n, dtype=np.int64),
        seeds=np.asarray(list(seeds), dtype=np.int64),
        within_tolerance=None,
    )
