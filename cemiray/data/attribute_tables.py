"""Per-image attribute tables (data): a user's labels joined to face rows by key.

Parquet (a file, or a folder of them such as `label-attr` writes) or CSV, one row per image, a key
column (cemiray.data.row_keys) and one column per attribute. `train-gen` reads its variation
table here, `generate` the real set whose attribute distribution a variation plan copies."""

from __future__ import annotations

import io
import math

from cemiray.data import storage


def read_table(url: str, key: str, names: list[str], what: str = "variation_table"
               ) -> dict[str, dict[str, float]]:
    """{key: {name: value}} (NaN where empty) of a Parquet file/folder or CSV file, for the
    `names` it has columns for (the others come from the source); a missing key column, a table
    with none of the names, a repeated key or a non-numeric value is refused naming it."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if url.endswith(".csv"):
        table = pacsv.read_csv(io.BytesIO(storage.read_bytes(url)))
    else:
        fs, path = storage.filesystem(url)
        if not fs.exists(path):
            raise ValueError(f"{what} {url}: no such file or folder")
        files = [url] if not fs.isdir(path) else [
            storage.join(url, name) for name in storage.listdir(url) if name.endswith(".parquet")]
        if not files:
            raise ValueError(f"{what} {url}: the folder holds no .parquet file")
        table = pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(f)))
                                  for f in files], promote_options="default")
    if key not in table.column_names:
        raise ValueError(f"{what} {url}: no key column {key!r}; it "
                         f"has {table.column_names}")
    names = [n for n in names if n in table.column_names]
    if not names:
        raise ValueError(f"{what} {url}: none of the variation attributes is a column; "
                         f"it has {table.column_names}")
    keys = [str(k) for k in table.column(key).to_pylist()]
    if len(set(keys)) != len(keys):
        seen: set = set()
        repeat = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"{what} {url}: key {repeat!r} appears more than once")
    columns = []
    for name in names:
        values = []
        for k, v in zip(keys, table.column(name).to_pylist(), strict=True):
            if isinstance(v, str):  # label-attr writes class values as JSON text ("1", "true")
                v = _json_number(v)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                values.append(math.nan)
            elif isinstance(v, (bool, int, float)):
                values.append(float(v))
            else:
                raise ValueError(f"{what} {url}: column {name!r}, key {k!r}: "
                                 f"{v!r} is not a number or a boolean")
        columns.append(values)
    return {k: dict(zip(names, vs, strict=True)) for k, *vs in zip(keys, *columns, strict=True)}


def _json_number(text: str):
    """A JSON number or boolean in text as itself, else the text (refused by the caller)."""
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (bool, int, float)) or value is None else text
