"""Embedding and centre files of `cemiray seeds` (pipeline part): .npy or Parquet, checked.

Seeds may be given as identity embeddings directly (.npy N x D, or Parquet with an `embedding`
column and optional attribute columns), and leakage centres as a file instead of training data."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cemiray.data import storage
from cemiray.eval.seed_filters import unit_rows
from cemiray.pipeline.seeds.plan import scalar


def read_embedding_file(url: str, dim: int, attributes: list[str]
                        ) -> tuple[np.ndarray, list[dict]]:
    """(N x D float32 embeddings, attribute dicts) of a .npy or Parquet embedding file."""
    data = storage.read_bytes(url)
    attrs: list[dict] = []
    if url.endswith(".npy"):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{url}: not a readable .npy array ({exc})") from exc
        attrs = [{} for _ in range(len(array))]
    else:
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as exc:  # pyarrow raises several types on damaged files
            raise ValueError(f"{url}: not a readable Parquet file ({exc})") from exc
        if "embedding" not in table.column_names:
            raise ValueError(f"{url}: no 'embedding' column (columns: {table.column_names})")
        column = table.column("embedding")
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
                or pa.types.is_fixed_size_list(column.type)):
            raise ValueError(f"{url}: column 'embedding' is {column.type}, expected a list")
        values = column.to_pylist()
        bad = [i for i, v in enumerate(values) if v is None or len(v) != len(values[0])]
        if bad:
            raise ValueError(f"{url}: row {bad[0]}: embedding is null or of another length")
        array = np.asarray(values, dtype=np.float32)
        present = [a for a in attributes if a in table.column_names]
        cols = {a: table.column(a).to_pylist() for a in present}
        attrs = [{a: scalar(cols[a][i], f"{url} row {i} column {a!r}") for a in present}
                 for i in range(len(values))]
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{url}: embeddings of shape {array.shape}, expected N x {dim} (the "
                         "conditioning recogniser's dimension)")
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"{url}: row {int(bad[0])}: embedding is zero or not finite")
    return (array / norms[:, None]).astype(np.float32), attrs


def read_centres_file(url: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit centres K x D, their labels) from a .npy (labels = rows) or Parquet file
    (`embedding`, optional `label`)."""
    centres, _ = read_embedding_file(url, dim, [])
    labels = np.arange(len(centres))
    if not url.endswith(".npy"):
        table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
        if "label" in table.column_names:
            labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    return unit_rows(centres, url), labels
