"""Face datasets for training as Ray Datasets of `{image: bytes, label: int}` rows, from any
source URI (`toyfaces:…`, `parquet:…`, `recordio:…`, `imagefolder:…`, `orl:…`), and the worker-side
decoding of a batch into a normalised tensor."""

from __future__ import annotations

import numpy as np
import torch

from cemiray.data import pixels


def _read_part(row: dict) -> list[dict]:
    from cemiray.data.sources import parse_source

    source = parse_source(row["uri"])
    return [
        {"image": r["image"], "label": int(r["label"])}
        for r in source.iter_rows(shard=int(row["part"]), num_shards=int(row["parts"]))
    ]


def face_dataset(uri: str, parts: int = 8, materialize: bool = True):
    """A Ray Dataset over a face source, read by `parts` parallel tasks. Materialised by default so
    every epoch reads from the object store instead of decoding or rendering the source again."""
    import ray.data

    from cemiray.data.sources import parse_source

    source = parse_source(uri)
    if source.kind == "parquet":
        ds = ray.data.read_parquet(source.url, columns=["image", "label"], file_extensions=["parquet"])
    else:
        items = [{"uri": uri, "part": i, "parts": parts} for i in range(parts)]
        ds = ray.data.from_items(items).flat_map(_read_part, num_cpus=0.5)
    return ds.materialize() if materialize else ds


def decode_batch(images, size: int) -> torch.Tensor:
    """Encoded images → float tensor N×3×size×size in [-1, 1] (RGB, (x/255 − 0.5)/0.5)."""
    from cemiray.data.images import decode_image, resize

    arrays = []
    for i, data in enumerate(images):
        arr = decode_image(bytes(data), where=f"batch item {i}")
        if arr.shape[0] != size or arr.shape[1] != size:
            arr = resize(arr, size)
        arrays.append(arr)
    return pixels.from_numpy(np.stack(arrays))


def _block_max_label(block) -> int:
    import pyarrow.compute as pc

    value = pc.max(block.column("label")).as_py() if block.num_rows else None
    return -1 if value is None else int(value)


def num_classes(ds) -> int:
    """Number of identity labels (max label + 1) of a materialised face Ray Dataset: one small
    task per block reads only its label column where the block lives. (`Dataset.max` plans a
    hash aggregation with a shuffle: about 5 s even for a few hundred rows.)"""
    import ray

    block_max = ray.remote(num_cpus=0)(_block_max_label)
    highest = max(ray.get([block_max.remote(ref) for ref in ds.to_arrow_refs()]), default=-1)
    if highest < 0:
        raise ValueError("the face dataset has no labelled rows")
    return highest + 1
