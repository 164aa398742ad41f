"""Training data (train part): a face source as a Ray Dataset, and batches as tensors.

The source's `{image: bytes, label: int}` rows are read by cemiray.runtime.reader and
materialised; workers decode a batch into a normalised tensor."""

from __future__ import annotations

import numpy as np
import ray
import torch

from cemiray.data import pixels
from cemiray.data.images import decode_image, fit_square
from cemiray.data.sources import Source
from cemiray.runtime.block_facts import block_max_label, first_image_size
from cemiray.runtime.reader import read_source


def face_dataset(source: Source, parts: int = 8, materialize: bool = True):
    """A Ray Dataset over a face source, read by `parts` parallel tasks. Materialised by default so
    every epoch reads from the object store instead of decoding or rendering the source again."""
    ds = read_source(source, parts=parts, columns=("image", "label"))
    return ds.materialize() if materialize else ds


def decode_batch(images, size: int, mode: str = "stretch") -> torch.Tensor:
    """Encoded images → float tensor N×3×size×size in [-1, 1] (RGB, (x/255 − 0.5)/0.5); images
    of another size are fitted by `mode` (cemiray.data.images.fit_square)."""
    arrays = []
    for i, data in enumerate(images):
        arr = decode_image(bytes(data), where=f"batch item {i}")
        if arr.shape[0] != size or arr.shape[1] != size:
            arr = fit_square(arr, size, mode)
        arrays.append(arr)
    return pixels.from_numpy(np.stack(arrays))


def fit_note(job: str, ds, size: int, mode: str) -> str | None:
    """A line saying how the source's images are fitted to the model's input when they are not
    size×size already (read from the first image's header), else None."""
    first = ray.remote(num_cpus=0)(first_image_size)
    found = next((s for s in ray.get([first.remote(r) for r in ds.to_arrow_refs()[:1]]) if s),
                 None)
    if found is None or found == (size, size):
        return None
    height, width = found
    how = {"stretch": "stretched (aspect not kept; resize=crop or resize=pad keep it)",
           "crop": "centre-cropped to a square, then resized",
           "pad": "padded to a square with black, then resized"}[mode]
    return f"{job}: warning: images are {width}x{height}; each is {how} to {size}x{size} " \
           f"(resize={mode})"


def num_classes(ds) -> int:
    """Number of identity labels (max label + 1) of a materialised face Ray Dataset: one small
    task per block reads only its label column where the block lives. (`Dataset.max` plans a
    hash aggregation with a shuffle: about 5 s even for a few hundred rows.)"""
    block_max = ray.remote(num_cpus=0)(block_max_label)
    highest = max(ray.get([block_max.remote(ref) for ref in ds.to_arrow_refs()]), default=-1)
    if highest < 0:
        raise ValueError("the face dataset has no labelled rows")
    return highest + 1
