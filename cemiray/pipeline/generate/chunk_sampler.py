"""What every sampler of `cemiray generate` shares (pipeline): a chunk → fixed micro-batches.

A sampler takes chunk rows (shard_plan.work_items) and yields one row batch per micro-batch of at
most `images_per_call` images, always cut the same way, so that an image's rounding never depends
on scheduling. Subclasses say how a micro-batch's images are made (`sample`) and what a chunk
needs first (`prepare`); the plan's fields, the worker pid and the CPU seconds per image are
added here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


class ChunkSampler:
    """Callable class for `Dataset.map_batches(compute=ActorPoolStrategy(...))`."""

    def __init__(self, images_per_call: int) -> None:
        self.images_per_call = int(images_per_call)
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(batch["shard"])):
            yield from self.generate_chunk({key: values[i] for key, values in batch.items()})

    def generate_chunk(self, item: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        """Images of one chunk, in fixed micro-batches (the same for every run and retry)."""
        labels = np.asarray(item["labels"], dtype=np.int64)
        position = np.asarray(item["image_identity"], dtype=np.int64)
        samples = np.asarray(item["samples"], dtype=np.int64)
        targets = np.asarray(item["targets"], dtype=np.float64)
        seeds = np.asarray(item["seeds"], dtype=np.int64)
        prepared = self.prepare(item)
        for start in range(0, len(position), self.images_per_call):
            cpu = time.process_time()
            part = slice(start, start + self.images_per_call)
            rows = self.sample(prepared, part, position[part], targets[part], seeds[part])
            n = len(rows["pixels"])
            rows.update(shard=np.full(n, int(item["shard"]), dtype=np.int64),
                        label=labels[position[part]], sample=samples[part],
                        target_m=targets[part],
                        worker_pid=np.full(n, self.pid, dtype=np.int64),
                        sample_cpu_s=np.full(n, (time.process_time() - cpu) / max(n, 1)))
            yield rows

    def prepare(self, item: dict[str, Any]) -> Any:
        """What the chunk's micro-batches share (decoded embeddings, judge inquiries, ...)."""
        return None

    def sample(self, prepared: Any, part: slice, position: np.ndarray, targets: np.ndarray,
               seeds: np.ndarray) -> dict[str, np.ndarray]:
        """The micro-batch's `pixels`, `similarity`, `seed`, `tries` and optional columns."""
        raise NotImplementedError
