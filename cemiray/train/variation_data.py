"""train-gen's variation labels (train part): each training image's variation attributes.

A row's value of an attribute comes from the source itself (a column, or ToyFaces' per-image
`nuisance`: yaw, roll, smile, eye_open, glasses, hat, mask, light_strength, blur, ...) or, for
real data, from a variation table: Parquet (a file or a folder of them, such as `label-attr`
writes) or CSV, one row per image, keyed by the column `key` (cemiray.data.row_keys: what
label-attr writes) and holding one column per attribute, named by the user. A table value wins
over the source's. Missing values are NaN: the generator learns them as unspecified.
"""

from __future__ import annotations

import math

import numpy as np

from cemiray.data.attribute_tables import read_table


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
