"""Face rows as Parquet shards: the project's own storage format for rendered and generated data.

Schema: `image` (binary, encoded PNG/JPEG), `label` (int64), `sample` (int64), then free metadata
columns. Metadata types are inferred from the first row group: bool → bool, int → int64, int
mixed with float → float64, str → string, bytes → binary; dicts and lists are stored as JSON
strings and their column names listed in the file's key-value metadata, so they come back as
dicts and lists. None is allowed anywhere in a metadata column. A shard is written under a
temporary name and renamed when complete, so `list_shards` never sees a partial shard.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cemiray.data import storage

BASE_FIELDS = (("image", pa.binary()), ("label", pa.int64()), ("sample", pa.int64()))
JSON_COLUMNS_KEY = "cemiray:json_columns"
NUM_ROWS_KEY = "cemiray:num_rows"
USER_KEY_PREFIX = "cemiray.meta:"


class ShardError(ValueError):
    """A shard or row is malformed; the message names the file and the row or column."""


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, (dict, list, tuple)):
        return "json"
    return type(value).__name__


_ARROW_TYPES = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "bytes": pa.binary(),
    "json": pa.string(),
}


def _column_kind(url: str, name: str, values: list) -> str:
    kinds = {_kind(v) for v in values} - {"null"}
    if kinds == {"int", "float"}:
        return "float"
    if len(kinds) > 1:
        raise ShardError(f"{url}: column {name!r} mixes types {sorted(kinds)}")
    kind = kinds.pop() if kinds else "str"
    if kind not in _ARROW_TYPES:
        raise ShardError(f"{url}: column {name!r} holds {kind} values, which Parquet shards "
                         "do not store (use int, float, str, bool, bytes, dict or list)")
    return kind


def _check_row(url: str, index: int, row: dict, keys: list[str]) -> None:
    if not isinstance(row, dict):
        raise ShardError(f"{url}: row {index} is a {type(row).__name__}, not a dict")
    if list(row) != keys and set(row) != set(keys):
        missing = sorted(set(keys) - set(row))
        extra = sorted(set(row) - set(keys))
        raise ShardError(f"{url}: row {index} has fields unlike the first row "
                         f"(missing {missing}, extra {extra})")
    image = row["image"]
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise ShardError(f"{url}: row {index} field 'image' is {type(image).__name__}, "
                         "expected encoded image bytes")
    for field in ("label", "sample"):
        value = _plain(row[field])
        if isinstance(value, bool) or not isinstance(value, int):
            raise ShardError(f"{url}: row {index} field {field!r} is {value!r}, expected an int")


def column_kind(where: str, name: str, values: list) -> str:
    """The stored kind of a metadata column holding `values` (as write_shard infers it);
    for fixing a column's type across files that each hold only some of its values."""
    return _column_kind(where, name, [_plain(v) for v in values])


class _ShardBuilder:
    """Turns batches of rows into Arrow record batches of one fixed schema."""

    def __init__(self, url: str, first_batch: list[dict], kinds: dict[str, str] | None = None):
        self.url = url
        for required in ("image", "label", "sample"):
            if first_batch and required not in first_batch[0]:
                raise ShardError(f"{url}: row 0 has no {required!r} field")
        self.keys = list(first_batch[0]) if first_batch else ["image", "label", "sample"]
        base = [name for name, _ in BASE_FIELDS]
        self.meta_names = [k for k in self.keys if k not in base]
        kinds = kinds or {}
        self.kinds = {
            name: kinds.get(name) or _column_kind(url, name, [_plain(r.get(name))
                                                             for r in first_batch])
            for name in self.meta_names
        }
        fields = [pa.field(n, t, nullable=False) for n, t in BASE_FIELDS]
        fields += [pa.field(n, _ARROW_TYPES[self.kinds[n]]) for n in self.meta_names]
        self.schema = pa.schema(fields)
        self.json_columns = [n for n in self.meta_names if self.kinds[n] == "json"]

    def batch(self, rows: list[dict], first_index: int) -> pa.RecordBatch:
        for offset, row in enumerate(rows):
            _check_row(self.url, first_index + offset, row, self.keys)
        arrays = [
            pa.array([bytes(r["image"]) for r in rows], pa.binary()),
            pa.array([int(_plain(r["label"])) for r in rows], pa.int64()),
            pa.array([int(_plain(r["sample"])) for r in rows], pa.int64()),
        ]
        for name in self.meta_names:
            values = [_plain(r[name]) for r in rows]
            if self.kinds[name] == "json":
                values = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
            try:
                arrays.append(pa.array(values, _ARROW_TYPES[self.kinds[name]]))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                last = first_index + len(rows) - 1
                raise ShardError(f"{self.url}: column {name!r} in rows {first_index}..{last} "
                                 f"does not fit type {self.kinds[name]} ({exc})") from exc
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_shard(
    url: str,
    rows: Iterable[dict],
    metadata: dict[str, Any] | None = None,
    row_group_size: int = 1024,
    kinds: dict[str, str] | None = None,
) -> int:
    """Write face rows to one Parquet file, atomically; returns the number of rows.

    `rows` may be a generator: rows are converted one row group at a time. If anything raises
    before the end, no file appears at `url`. `metadata` values must be JSON-serialisable; they
    come back from `read_shard_metadata`. `kinds` fixes the type of the metadata columns it
    names (see column_kind) instead of inferring it from the first row group."""
    with storage.atomic_open(url, "wb") as f:
        return _write_rows(f, url, rows, metadata, row_group_size, kinds)


def shard_bytes(where: str, rows: Iterable[dict], metadata: dict[str, Any] | None = None,
                kinds: dict[str, str] | None = None, row_group_size: int = 1024) -> bytes:
    """The bytes write_shard would write for `rows` (for small files written in one put and
    hashed without reading them back); `where` names them in errors."""
    buf = io.BytesIO()
    _write_rows(buf, where, rows, metadata, row_group_size, kinds)
    return buf.getvalue()


def _write_rows(f: Any, url: str, rows: Iterable[dict], metadata: dict[str, Any] | None,
                row_group_size: int, kinds: dict[str, str] | None) -> int:
    chunks = _chunks(rows, row_group_size)
    first = next(chunks, [])
    builder = _ShardBuilder(url, first, kinds)
    count = 0
    schema = builder.schema.with_metadata(_key_values(url, builder.json_columns, metadata))
    with _writer(f, schema) as writer:
        for chunk in _all(first, chunks):
            writer.write_batch(builder.batch(chunk, count))
            count += len(chunk)
        writer.add_key_value_metadata({NUM_ROWS_KEY: str(count)})
    return count


def table_shard_bytes(where: str, table: pa.Table, json_columns: list[str],
                      metadata: dict[str, Any] | None = None,
                      row_group_size: int = 1024) -> bytes:
    """An Arrow table of face rows (read back from shards, e.g. joined parts) as the bytes of
    one shard, written with the same settings as write_shard."""
    _check_schema(where, table.schema)
    table = table.replace_schema_metadata(_key_values(where, json_columns, metadata))
    buf = io.BytesIO()
    with _writer(buf, table.schema) as writer:
        writer.write_table(table, row_group_size=row_group_size)
        writer.add_key_value_metadata({NUM_ROWS_KEY: str(table.num_rows)})
    return buf.getvalue()


def _key_values(url: str, json_columns: list[str],
                metadata: dict[str, Any] | None) -> dict[str, str]:
    kv = {JSON_COLUMNS_KEY: json.dumps(json_columns)}
    for key, value in (metadata or {}).items():
        try:
            kv[USER_KEY_PREFIX + str(key)] = json.dumps(value, sort_keys=True)
        except TypeError as exc:
            raise ShardError(f"{url}: metadata {key!r} is not JSON-serialisable ({exc})") from exc
    return kv


def _writer(f: Any, schema: pa.Schema) -> pq.ParquetWriter:
    others = [n for n in schema.names if n != "image"]
    return pq.ParquetWriter(
        f,
        schema,
        use_dictionary=others,  # dictionaries of image bytes cost 7× the write time
        write_statistics=others,
        compression={"image": "none", **dict.fromkeys(others, "snappy")},  # PNG/JPEG already
    )


def _all(first: list[dict], rest: Iterator[list[dict]]) -> Iterator[list[dict]]:
    if first:
        yield first
    yield from rest


def _open_parquet(url: str) -> tuple[Any, pq.ParquetFile]:
    fs, path = storage.filesystem(url)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError as exc:
        raise storage.StorageError(f"{url}: no such file") from exc
    try:
        return f, pq.ParquetFile(f)
    except Exception as exc:
        f.close()
        raise ShardError(f"{url}: not a readable Parquet shard ({exc})") from exc


def _check_schema(url: str, schema: pa.Schema) -> None:
    for name, arrow_type in BASE_FIELDS:
        index = schema.get_field_index(name)
        if index < 0:
            raise ShardError(f"{url}: no {name!r} column (columns: {schema.names})")
        actual = schema.field(index).type
        if not (actual == arrow_type or (name == "image" and actual == pa.large_binary())):
            raise ShardError(f"{url}: column {name!r} is {actual}, expected {arrow_type}")


def _file_metadata(pf: pq.ParquetFile) -> dict[str, str]:
    raw = pf.metadata.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def read_shard_metadata(url: str) -> dict[str, Any]:
    """The `metadata` dict given to `write_shard`."""
    f, pf = _open_parquet(url)
    with f:
        kv = _file_metadata(pf)
    return {k[len(USER_KEY_PREFIX):]: json.loads(v) for k, v in kv.items()
            if k.startswith(USER_KEY_PREFIX)}


def shard_num_rows(url: str) -> int:
    """Rows in a shard, from its footer (no data read)."""
    f, pf = _open_parquet(url)
    with f:
        return pf.metadata.num_rows


def max_label(url: str) -> int:
    """Largest label in a shard (−1 when empty), reading the label column only."""
    f, pf = _open_parquet(url)
    with f:
        _check_schema(url, pf.schema_arrow)
        labels = pf.read(columns=["label"]).column("label").to_numpy()
    return int(labels.max()) if labels.size else -1


def _rows_of(url: str, table: pa.Table, json_columns: list[str], first_index: int):
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    for i in range(table.num_rows):
        row = {name: values[i] for name, values in columns.items()}
        for name in json_columns:
            if row[name] is not None:
                try:
                    row[name] = json.loads(row[name])
                except json.JSONDecodeError as exc:
                    raise ShardError(f"{url}: row {first_index + i} column {name!r} is not "
                                     f"valid JSON ({exc})") from exc
        yield row


def iter_shard(url: str) -> Iterator[dict]:
    """Rows of one shard, one row group at a time; checks the row count the writer recorded."""
    f, pf = _open_parquet(url)
    with f:
        _check_schema(url, pf.schema_arrow)
        kv = _file_metadata(pf)
        json_columns = json.loads(kv.get(JSON_COLUMNS_KEY, "[]"))
        expected = int(kv.get(NUM_ROWS_KEY, pf.metadata.num_rows))
        if expected != pf.metadata.num_rows:
            raise ShardError(f"{url}: footer says {pf.metadata.num_rows} rows but the writer "
                             f"recorded {expected}")
        seen = 0
        for group in range(pf.num_row_groups):
            try:
                table = pf.read_row_group(group)
            except Exception as exc:
                raise ShardError(f"{url}: row group {group} is unreadable ({exc})") from exc
            yield from _rows_of(url, table, json_columns, seen)
            seen += table.num_rows
        if seen != expected:
            raise ShardError(f"{url}: read {seen} rows, expected {expected}")


def read_shard(url: str) -> list[dict]:
    return list(iter_shard(url))


def list_shards(folder_url: str) -> list[str]:
    """URLs of the complete shards in a folder, sorted; temporary (dot) files are not shards."""
    return [
        storage.join(folder_url, name)
        for name in storage.listdir(folder_url)
        if name.endswith(".parquet") and not name.startswith((".", "_"))
    ]


def iter_rows(folder_or_file_url: str) -> Iterator[dict]:
    """Rows of one shard file, or of every shard in a folder in name order."""
    fs, path = storage.filesystem(folder_or_file_url)
    if fs.isfile(path):
        yield from iter_shard(folder_or_file_url)
        return
    if not fs.isdir(path):
        raise storage.StorageError(f"{folder_or_file_url}: no such shard file or folder")
    for url in list_shards(folder_or_file_url):
        yield from iter_shard(url)
