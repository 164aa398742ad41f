"""The seed table (pipeline part): the identities a generation job draws, one Parquet row each.

Columns:
- `seed_id` (int64, unique, not null): the identity's name, kept in every generated row;
- `embedding` (list<float32>, not null): its unit-norm identity embedding in the conditioning
  recogniser's space (the generator's `id_dim`);
- `source` (string, not null): where the identity came from (an inquiry image's dataset, "random"
  for IDiff-Face-style random unit vectors, ...);
- `image` (binary, optional): the inquiry image (PNG/JPEG), needed only by an independent judge;
- any other columns are attributes (group, age, sex, `leakage_max`, ...): scalar values (int,
  float, string, bool), copied into every generated row of the identity. Nulls are allowed
  (numeric nulls come back as NaN; bool columns may not hold nulls).

The row position is the identity's index in the dataset (its label). Reading validates
everything and names the file, the row and the column of the first problem.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cemiray.data import storage

REQUIRED = ("seed_id", "embedding", "source")
IMAGE_COLUMN = "image"
UNIT_NORM_TOLERANCE = 1e-3


class SeedTableError(ValueError):
    """The seed table is unreadable or malformed; the message names the file and row/column."""


@dataclass
class SeedTable:
    """A validated seed table. `attributes` maps each attribute column to its values, in row
    order; `images` is None when the table has no `image` column."""

    url: str
    sha256: str
    seed_ids: np.ndarray
    embeddings: np.ndarray
    sources: list[str]
    attributes: dict[str, list[Any]] = field(default_factory=dict)
    images: list[bytes | None] | None = None

    def __len__(self) -> int:
        return len(self.seed_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])


def _scalar_kind(arrow_type: pa.DataType) -> bool:
    return (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
            or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_boolean(arrow_type) or pa.types.is_null(arrow_type))


def _first_null(column: pa.ChunkedArray) -> int | None:
    if column.null_count == 0:
        return None
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def _read_embeddings(url: str, column: pa.ChunkedArray, expected_dim: int | None) -> np.ndarray:
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):
        raise SeedTableError(f"{url}: column 'embedding' is {column.type}, expected list<float32>")
    if not pa.types.is_floating(column.type.value_type):
        raise SeedTableError(f"{url}: column 'embedding' holds {column.type.value_type}, "
                             "expected float32 values")
    bad = _first_null(column)
    if bad is not None:
        raise SeedTableError(f"{url}: row {bad}: 'embedding' is null")
    array = column.combine_chunks()
    lengths = np.diff(np.asarray(array.offsets)) if not pa.types.is_fixed_size_list(
        array.type) else np.full(len(array), array.type.list_size)
    dim = int(expected_dim) if expected_dim is not None else int(lengths[0])
    wrong = np.flatnonzero(lengths != dim)
    if wrong.size:
        row = int(wrong[0])
        raise SeedTableError(f"{url}: row {row}: embedding has {int(lengths[row])} values, "
                             f"expected {dim} (the conditioning recogniser's dimension); "
                             f"{wrong.size} rows differ")
    values = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    if values.size != len(array) * dim:
        raise SeedTableError(f"{url}: 'embedding' holds null values inside its lists")
    embeddings = values.reshape(len(array), dim)
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise SeedTableError(f"{url}: row {row}: embedding holds NaN or inf")
    norms = np.linalg.norm(embeddings, axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
    if off.size:
        row = int(off[0])
        raise SeedTableError(f"{url}: row {row}: embedding norm is {norms[row]:.6f}, expected "
                             f"unit norm (±{UNIT_NORM_TOLERANCE}); {off.size} rows off")
    return embeddings.astype(np.float32)


def _read_seed_ids(url: str, column: pa.ChunkedArray) -> np.ndarray:
    if not pa.types.is_integer(column.type):
        raise SeedTableError(f"{url}: column 'seed_id' is {column.type}, expected int64")
    bad = _first_null(column)
    if bad is not None:
        raise SeedTableError(f"{url}: row {bad}: 'seed_id' is null")
    ids = np.asarray(column.to_numpy(), dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if repeated.size:
        value = int(ids[order][repeated[0]])
        rows = np.flatnonzero(ids == value).tolist()
        raise SeedTableError(f"{url}: seed_id {value} appears in rows {rows[:5]}; seed ids "
                             f"must be unique ({repeated.size} duplicates)")
    return ids


def _read_sources(url: str, column: pa.ChunkedArray) -> list[str]:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise SeedTableError(f"{url}: column 'source' is {column.type}, expected string")
    bad = _first_null(column)
    if bad is not None:
        raise SeedTableError(f"{url}: row {bad}: 'source' is null")
    return column.to_pylist()


def _attribute_values(url: str, name: str, column: pa.ChunkedArray) -> list[Any]:
    """Values of one attribute column. Numeric columns with nulls become floats with NaN, so the
    column keeps one type in every shard (a shard whose values were all null would otherwise
    store strings)."""
    values = column.to_pylist()
    if column.null_count == 0 or pa.types.is_null(column.type):
        return values
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return [math.nan if v is None else float(v) for v in values]
    if pa.types.is_boolean(column.type):
        raise SeedTableError(f"{url}: row {_first_null(column)}: bool attribute {name!r} is null; "
                             "store it as a string column to allow missing values")
    return values


def read_seed_table(
    url: str,
    expected_dim: int | None = None,
    need_images: bool = False,
    reserved: tuple[str, ...] = (),
) -> SeedTable:
    """Read and validate a seed table. `expected_dim`: the embedding length required;
    `need_images`: every row must carry an inquiry image; `reserved`: names attribute columns may
    not take (the generated rows' own columns)."""
    try:
        data = storage.read_bytes(url)
    except (OSError, ValueError) as exc:
        raise SeedTableError(f"{url}: cannot read the seed table ({exc})") from exc
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on damaged files
        raise SeedTableError(f"{url}: not a readable Parquet file ({exc})") from exc
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise SeedTableError(f"{url}: missing column(s) {missing} (columns: {table.column_names})")
    if table.num_rows == 0:
        raise SeedTableError(f"{url}: the seed table holds no rows")
    seed_ids = _read_seed_ids(url, table.column("seed_id"))
    embeddings = _read_embeddings(url, table.column("embedding"), expected_dim)
    sources = _read_sources(url, table.column("source"))
    images = None
    if IMAGE_COLUMN in table.column_names:
        column = table.column(IMAGE_COLUMN)
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            raise SeedTableError(f"{url}: column 'image' is {column.type}, expected binary")
        images = column.to_pylist()
    if need_images:
        if images is None:
            raise SeedTableError(f"{url}: no 'image' column; the judge recogniser compares "
                                 "generated images with each identity's inquiry image")
        bad = _first_null(table.column(IMAGE_COLUMN))
        if bad is not None:
            raise SeedTableError(f"{url}: row {bad}: 'image' is null but the judge needs it")
    attributes: dict[str, list[Any]] = {}
    for name in table.column_names:
        if name in REQUIRED or name == IMAGE_COLUMN:
            continue
        if name in reserved:
            raise SeedTableError(f"{url}: attribute column {name!r} clashes with a column of the "
                                 "generated rows; rename it")
        column = table.column(name)
        if not _scalar_kind(column.type):
            raise SeedTableError(f"{url}: attribute column {name!r} is {column.type}; attributes "
                                 "must be int, float, string or bool")
        attributes[name] = _attribute_values(url, name, column)
    return SeedTable(url=url, sha256=hashlib.sha256(data).hexdigest(), seed_ids=seed_ids,
                     embeddings=embeddings, sources=sources, attributes=attributes, images=images)


def random_identities(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """`n` random unit vectors of length `dim` (IDiff-Face's new identities), float32."""
    if n < 1 or dim < 1:
        raise ValueError(f"random_identities: need n >= 1 and dim >= 1, got {n}, {dim}")
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_seed_table(
    url: str,
    seed_ids: Any,
    embeddings: Any,
    sources: list[str] | str = "random",
    attributes: dict[str, list[Any]] | None = None,
    images: list[bytes | None] | None = None,
) -> int:
    """Write a seed table atomically (no validation: tests also write bad ones); returns rows."""
    seed_ids = np.asarray(seed_ids, dtype=np.int64)
    n = len(seed_ids)
    if isinstance(sources, str):
        sources = [sources] * n
    columns: dict[str, pa.Array] = {
        "seed_id": pa.array(seed_ids, pa.int64()),
        "embedding": pa.array([np.asarray(e, np.float32) for e in embeddings],
                              pa.list_(pa.float32())),
        "source": pa.array(sources, pa.string()),
    }
    if images is not None:
        columns[IMAGE_COLUMN] = pa.array(images, pa.binary())
    for name, values in (attributes or {}).items():
        columns[name] = pa.array(values)
    table = pa.table(columns)
    with storage.atomic_open(url, "wb") as f:
        pq.write_table(table, f)
    return n
