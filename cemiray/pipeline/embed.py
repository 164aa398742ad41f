"""Embedding face datasets with a frozen recogniser (pipeline part), as a Ray Data pass.

Read tasks (cemiray.runtime.reader) turn sources into encoded-image rows, a pool of actors (each
loading the recogniser once) adds an `embedding` column, and the driver collects the embeddings
back in source order.

Ray Data may hand blocks back in any order, so every row carries an `index` (its position in
the concatenation of the sources) and `collect_embeddings` sorts by it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import ray.data

from cemiray.data.images import decode_image
from cemiray.data.sources import Source
from cemiray.eval.verification import embed_with_flip
from cemiray.models.recognizer import load_recognizer
from cemiray.runtime.reader import DEFAULT_ROWS_PER_TASK, read_sources


def read_face_sources(sources: Sequence[Source], flips: Sequence[bool] | None = None,
                      rows_per_task: int = DEFAULT_ROWS_PER_TASK, num_cpus: float = 0.5):
    """A Ray Dataset of `{index, image, label, flip}` rows over the concatenation of `sources`,
    read by tasks of about `rows_per_task` rows, and the `index` range of each source. `flips`
    marks the sources whose rows are embedded with their horizontal flip (see `embed_dataset`).
    Sources are opened here first, so a missing file fails before any Ray work."""
    flips = [False] * len(sources) if flips is None else list(flips)
    if len(flips) != len(sources):
        raise ValueError(f"{len(flips)} flip flags for {len(sources)} sources")
    return read_sources(sources, rows_per_task=rows_per_task, columns=("image", "label"),
                        constants=[{"flip": bool(f)} for f in flips], num_cpus=num_cpus)


def _decode(batch: dict, i: int) -> np.ndarray:
    where = f"row index {batch['index'][i]}" if "index" in batch else f"batch row {i}"
    return decode_image(bytes(batch["image"][i]), where=where)


class Embedder:
    """A Ray Data actor: loads the recogniser once, then embeds batches of encoded images.

    Images of one batch are grouped by pixel size and embedded group by group, so the result
    equals `Recognizer.embed` (or `embed_with_flip`) on the same decoded images."""

    def __init__(self, model_uri: str, device: str, flip: bool, flip_column: str | None,
                 keep_images: bool) -> None:
        self.recognizer = load_recognizer(model_uri, device)
        self.flip, self.flip_column, self.keep_images = flip, flip_column, keep_images

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["image"])
        if self.flip_column is not None:
            flips = np.asarray(batch[self.flip_column], dtype=bool)
        else:
            flips = np.full(n, self.flip)
        images = [_decode(batch, i) for i in range(n)]
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault((image.shape, bool(flips[i])), []).append(i)
        out = np.empty((n, self.recognizer.dim), dtype=np.float32)
        for (_, flip), rows in groups.items():
            stacked = np.stack([images[i] for i in rows])
            if flip:
                out[rows] = embed_with_flip(self.recognizer, stacked, batch_size=len(rows))
            else:
                out[rows] = self.recognizer.embed(stacked, batch_size=len(rows))
        result = {k: v for k, v in batch.items() if self.keep_images or k != "image"}
        result["embedding"] = out
        return result


def embed_dataset(ds, model_uri: str, batch_size: int = 256, num_actors: tuple[int, int] = (1, 2),
                  cpus_per_actor: float = 0.5, use_gpu: bool = False, flip: bool = False,
                  flip_column: str | None = None, keep_images: bool = False):
    """`ds` (rows with an encoded `image`) with an `embedding` column (float32 unit vectors) added
    by a pool of `num_actors = (min, max)` actors, each holding the recogniser once.

    flip=True embeds every image as the arcface_torch protocol does (raw features of the image
    and of its mirror summed, then L2-normalised); `flip_column` names a bool column choosing
    this per row instead. The `image` column is dropped unless `keep_images`. Keep
    `cpus_per_actor` at 0.5 or less on a 2-core machine, or the read tasks starve."""
    low, high = (int(v) for v in num_actors)
    if not 1 <= low <= high:
        raise ValueError(f"num_actors={num_actors}: need 1 <= min <= max")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if cpus_per_actor < 0:
        raise ValueError(f"cpus_per_actor must be >= 0, got {cpus_per_actor}")
    return ds.map_batches(
        Embedder,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        num_cpus=cpus_per_actor,
        num_gpus=1 if use_gpu else 0,
        batch_size=int(batch_size),
        batch_format="numpy",
        fn_constructor_kwargs={
            "model_uri": str(model_uri),
            "device": "cuda" if use_gpu else "cpu",
            "flip": bool(flip),
            "flip_column": flip_column,
            "keep_images": bool(keep_images),
        },
    )


def collect_embeddings(ds, job: str = "embed", total: int = 0, every_s: float = 0.0
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(embeddings N x D float32, labels, the other columns) of an embedded dataset, in the order
    of its `index` column, which must hold distinct values. With `every_s` > 0 a progress line
    (images embedded out of `total`) is printed at that interval."""
    from cemiray.runtime.progress import count_line, ticker

    columns: dict[str, list[Any]] = {}
    done = [0]
    with ticker(lambda waited: count_line(job, done[0], total, "images", waited), every_s):
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for key, value in batch.items():
                columns.setdefault(key, []).append(value)
            done[0] += len(next(iter(batch.values()), []))
    if not columns:
        raise ValueError("the embedded dataset holds no rows")
    for needed in ("index", "embedding", "label"):
        if needed not in columns:
            raise ValueError(f"the embedded dataset has no {needed!r} column "
                             f"(columns: {sorted(columns)})")
    data = {key: np.concatenate(parts) for key, parts in columns.items()}
    index = data.pop("index").astype(np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    repeated = index[1:][index[1:] == index[:-1]]
    if repeated.size:
        raise ValueError(f"rows with index {np.unique(repeated)[:10].tolist()} came back more "
                         "than once")
    embeddings = np.asarray(np.stack(data.pop("embedding")[order]), dtype=np.float32)
    labels = data.pop("label")[order]
    extras = {"index": index, **{key: value[order] for key, value in data.items()}}
    return embeddings, labels, extras
