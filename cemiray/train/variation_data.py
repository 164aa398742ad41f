"""train-gen's variation labels (train part): each training image's variation attributes.

A row's value of an attribute comes from the source itself (a column, or ToyFaces' per-image
`nuisance`: yaw, roll, smile, eye_open, glasses, hat, mask, light_strength, blur, ...) or, for
real data, from a variation table: Parquet (a file or a folder of them, such as `label-attr`
writes) or CSV, one row per image, keyed by the column `key` (cemiray.data.row_keys: what
label-attr writes) and holding one column per attribute, named by the user. A table value wins
over the source's. Missing values are NaN: the generator learns them as unspecified.
"""

from __future__ import annotations

import io
import math

import numpy as np

from cemiray.data import storage


def read_table(url: str, key: str, names: list[str]) -> dict[str, dict[str, float]]:
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
            raise ValueError(f"variation_table {url}: no such file or folder")
        files = [url] if not fs.isdir(path) else [
            storage.join(url, name) for name in storage.listdir(url) if name.endswith(".parquet")]
        if not files:
            raise ValueError(f"variation_table {url}: the folder holds no .parquet file")
        table = pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(f)))
                                  for f in files], promote_options="default")
    if key not in table.column_names:
        raise ValueError(f"variation_table {url}: no key column {key!r} (variation_key); it "
                         f"has {table.column_names}")
    names = [n for n in names if n in table.column_names]
    if not names:
        raise ValueError(f"variation_table {url}: none of the variation attributes is a column; "
                         f"it has {table.column_names}")
    keys = [str(k) for k in table.column(key).to_pylist()]
    if len(set(keys)) != len(keys):
        seen: set = set()
        repeat = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"variation_table {url}: key {repeat!r} appears more than once")
    columns = []
    for name in names:
        values = []
        for k, v in zip(keys, table.column(name).to_pylist(), strict=True):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                values.append(math.nan)
            elif isinstance(v, (bool, int, float)):
                values.append(float(v))
            else:
                raise ValueError(f"variation_table {url}: column {name!r}, key {k!r}: "
                                 f"{v!r} is not a number or a boolean")
        columns.append(values)
    return {k: dict(zip(names, vs, strict=True)) for k, *vs in zip(keys, *columns, strict=True)}


def variation_rows(names: list[str], table_ref=None):
    """A read transform: rows → {image, label, v:<name> (float, NaN when unknown)}; `table_ref`
    is a Ray object reference to `read_table`'s dict, fetched once per read task."""
    from cemiray.data.row_keys import row_key
    from cemiray.eval.attributes import truth_value

    def transform(part, rows: list[dict]) -> list[dict]:
        import ray

        table = ray.get(table_ref) if table_ref is not None else {}
        out = []
        for row in rows:
            item = {"image": row["image"], "label": int(row["label"])}
            given = table.get(row_key(row), {}) if table else {}
            for name in names:
                value = given.get(name)
                if value is None or math.isnan(value):
                    value = truth_value(row, name)
                item[f"v:{name}"] = math.nan if value is None else _number(value, name)
            out.append(item)
        return out

    return transform


def _number(value, name: str) -> float:
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return float(value)
    raise ValueError(f"variation attribute {name!r}: the source's value {value!r} is not a "
                     f"number or a boolean")


def variation_dataset(source, names: list[str], table: str | None, key: str, parts: int):
    """The source's rows with their variation columns, materialised."""
    import ray

    from cemiray.runtime.reader import plan_reads, read_parts

    ref = ray.put(read_table(table, key, names)) if table else None
    plan, _ = plan_reads([source], parts=parts)
    return read_parts(plan, columns=None, index=True,
                      transform=variation_rows(names, ref)).materialize()


def variation_columns(ds, names: list[str]) -> dict[str, np.ndarray]:
    """Every row's value of each attribute (float64, NaN unknown), gathered on the driver: a
    few floats per image."""
    frame = ds.select_columns([f"v:{n}" for n in names]).to_pandas()
    return {n: frame[f"v:{n}"].to_numpy(dtype=np.float64) for n in names}
