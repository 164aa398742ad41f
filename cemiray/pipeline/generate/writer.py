"""Where `cemiray generate`'s images are written (pipeline): by the workers, never the driver.

Two steps, both run by Ray workers; the driver only plans and counts.

1. `encode_and_write`, the CPU stage after the sampler: encodes a batch's pixels as PNG, adds the
   identity and lineage columns (RowContext) and writes the batch as one *part* file under
   `parts/<shard>/`, atomically (temporary name, then rename; one put on object stores). What
   goes down the pipeline is a small completion record per part: its shard, its (label, sample)
   keys, its size and content hash, and the CPU seconds each stage spent on it.
2. `compact_shard`, a task the driver starts once the records cover every (label, sample) of a
   shard: reads the shard's parts, keeps one row per key, sorts by (label, sample), writes the
   final shard atomically under its deterministic name and removes the parts.

Exactly once follows from determinism, not from a buffer: every image is a pure function of the
plan, so a part rewritten by a retried task holds the same rows, and parts that overlap (a retry
whose batches were cut differently) hold the same row for a key, of which the shard keeps one.
A shard's bytes do not depend on how its rows were cut into parts.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cemiray.data import storage

PARTS_FOLDER = "parts"
_PART = re.compile(r"part-(\d{8})-(\d{6})-(\d{6})\.parquet$")


def part_name(label: int, sample: int, rows: int) -> str:
    """A part is named by its first key and its size: a rewrite of the same rows hits the same
    name."""
    return f"part-{label:08d}-{sample:06d}-{rows:06d}.parquet"


def parts_folder(out_url: str, shard_name: str) -> str:
    return storage.join(out_url, PARTS_FOLDER, shard_name.removesuffix(".parquet"))


@dataclass
class RowContext:
    """What turns a sampler row into a stored row: the identity fields of every label and the
    lineage of the run (a few bytes per identity; shipped once to the encode tasks)."""

    out_url: str
    shards: dict[int, Any]  # pending ShardSpecs by index
    samples_per_identity: int
    plan_sha: str
    seed_ids: np.ndarray
    sources: list[str]
    attributes: dict[str, list]
    kinds: dict[str, str]
    hashes: dict[str, str | None]
    sampling: dict[str, Any]
    judge: bool = False
    closed_loop: bool = False
    variation: bool = False
    variation_measured: bool = False

    def rows(self, batch: dict[str, np.ndarray], images: list[bytes],
             index: np.ndarray) -> Iterator[dict[str, Any]]:
        """The stored rows of batch rows `index`: generated values, identity fields, lineage."""
        for i, image in zip(index.tolist(), images, strict=True):
            label = int(batch["label"][i])
            out = {
                "image": image,
                "label": label,
                "sample": int(batch["sample"][i]),
                "seed_id": int(self.seed_ids[label]),
                "source": self.sources[label],
                "target_m": float(batch["target_m"][i]),
                "similarity": float(batch["similarity"][i]),
            }
            if self.judge:
                out["judge_similarity"] = float(batch["judge_similarity"][i])
            out["seed"] = int(batch["seed"][i])
            out["tries"] = int(batch["tries"][i])
            if self.closed_loop:
                out["within_tolerance"] = bool(batch["within_tolerance"][i])
            if self.variation:
                out["variation"] = str(batch["variation"][i])
            if self.variation_measured:
                out["variation_measured"] = str(batch["variation_measured"][i])
            out.update(self.sampling)
            out.update(generator_sha256=self.hashes["generator"],
                       recognizer_sha256=self.hashes["recognizer"])
            if self.judge:
                out["judge_sha256"] = self.hashes["judge"]
            for name, values in self.attributes.items():
                out[name] = values[label]
            yield out


def encode_and_write(batch: dict[str, np.ndarray], context: RowContext) -> dict[str, np.ndarray]:
    """The CPU stage after the sampler: pixels → PNG → one part file per shard in the batch;
    returns one completion record per part written."""
    from cemiray.data.images import encode_png
    from cemiray.data.parquet_shards import shard_bytes

    records: dict[str, list] = {key: [] for key in (
        "shard", "part", "final", "rows", "labels", "samples", "workers", "bytes", "sha256",
        "sample_cpu_s", "encode_cpu_s", "write_cpu_s", "started_s", "finished_s")}
    shards = np.asarray(batch["shard"], dtype=np.int64)
    for shard in np.unique(shards).tolist():
        index = np.flatnonzero(shards == shard)
        started = time.time()  # wall clock: the driver spreads the images over the interval
        t0 = time.process_time()
        images = [encode_png(np.asarray(batch["pixels"][i])) for i in index.tolist()]
        t1 = time.process_time()
        labels = np.asarray(batch["label"], dtype=np.int64)[index]
        samples = np.asarray(batch["sample"], dtype=np.int64)[index]
        spec = context.shards[shard]
        whole = _whole_shard(spec, context.samples_per_identity, labels, samples)
        if whole is not None:  # the batch is the shard: written once, as the shard
            index, images = index[whole], [images[i] for i in whole.tolist()]
            labels, samples = labels[whole], samples[whole]
            name = spec.name
            url = storage.join(context.out_url, "parquet", name)
            metadata = {"shard": spec.name, "first": spec.first, "last": spec.last,
                        "plan_sha256": context.plan_sha}
        else:
            name = part_name(int(labels[0]), int(samples[0]), len(index))
            url = storage.join(parts_folder(context.out_url, spec.name), name)
            metadata = None
        data = shard_bytes(url, context.rows(batch, images, index), metadata, context.kinds)
        storage.atomic_write_bytes(url, data)
        workers = Counter(np.asarray(batch["worker_pid"], dtype=np.int64)[index].tolist())
        records["shard"].append(shard)
        records["part"].append(name)
        records["final"].append(whole is not None)
        records["rows"].append(len(index))
        records["labels"].append(labels)
        records["samples"].append(samples)
        records["workers"].append(json.dumps({str(k): v for k, v in workers.items()}))
        records["bytes"].append(len(data))
        records["sha256"].append(hashlib.sha256(data).hexdigest())
        records["sample_cpu_s"].append(float(np.sum(batch["sample_cpu_s"][index])))
        records["encode_cpu_s"].append(t1 - t0)
        records["write_cpu_s"].append(time.process_time() - t1)
        records["started_s"].append(started)
        records["finished_s"].append(time.time())
    out = {key: np.asarray(values) for key, values in records.items()}
    for key in ("labels", "samples"):  # one array per record (np.array would stack equal ones)
        out[key] = np.empty(len(records[key]), dtype=object)
        for i, keys in enumerate(records[key]):
            out[key][i] = keys
    return out


def _whole_shard(spec: Any, samples: int, labels: np.ndarray,
                 keys_samples: np.ndarray) -> np.ndarray | None:
    """The order that sorts a batch holding every image of `spec` once, or None (a part)."""
    planned = spec.num_identities * samples
    if len(labels) != planned:
        return None
    keys = (labels - spec.first) * samples + keys_samples
    order = np.argsort(keys, kind="stable")
    return order if np.array_equal(keys[order], np.arange(planned)) else None


def part_keys(folder_url: str) -> dict[str, np.ndarray]:
    """The (label, sample) keys of every complete part in a shard's parts folder, as an (n, 2)
    array per part name; temporaries of a killed writer are not parts."""
    import pyarrow.parquet as pq

    if not storage.exists(folder_url):
        return {}
    keys = {}
    for name in sorted(storage.listdir(folder_url)):
        if _PART.match(name):
            fs, path = storage.filesystem(storage.join(folder_url, name))
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=["label", "sample"])
            keys[name] = np.stack([table.column("label").to_numpy(),
                                   table.column("sample").to_numpy()], axis=1)
    return keys


def compact_shard(folder_url: str, shard_url: str, first: int, last: int,
                  samples_per_identity: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """Join a shard's parts into its final file (one row per key, (label, sample) order), then
    remove the parts. Raises, writing nothing, when the parts do not cover the shard's plan."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cemiray.data.parquet_shards import JSON_COLUMNS_KEY, table_shard_bytes

    t0 = time.process_time()
    if storage.exists(shard_url):  # a retried task whose first try wrote the shard
        data = storage.read_bytes(shard_url)
        storage.remove(folder_url, recursive=True)
        return {"rows": (last - first) * samples_per_identity, "parts": 0, "duplicates": 0,
                "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "compact_cpu_s": time.process_time() - t0}
    names = [n for n in sorted(storage.listdir(folder_url)) if _PART.match(n)]
    if not names:
        raise FileNotFoundError(f"{folder_url}: no parts to join into {shard_url}")
    tables = []
    for name in names:
        fs, path = storage.filesystem(storage.join(folder_url, name))
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    json_columns = json.loads((tables[0].schema.metadata or {}).get(
        JSON_COLUMNS_KEY.encode(), b"[]"))
    tables = [t.replace_schema_metadata(None) for t in tables]
    table = pa.concat_tables(tables)
    key = pc.add(pc.multiply(pc.subtract(table.column("label"), first), samples_per_identity),
                 table.column("sample")).to_numpy()
    planned = (last - first) * samples_per_identity
    if len(key) == planned and np.array_equal(key, np.arange(planned)):
        ordered = table  # the usual case: parts in key order, no repeats; nothing to copy
        unique = key
    else:
        unique, where = np.unique(key, return_index=True)
        if len(unique) != planned or unique[0] != 0 or unique[-1] != planned - 1:
            raise RuntimeError(f"{folder_url}: the parts hold {len(unique)} of the {planned} "
                               f"images of {shard_url}; it is not written")
        ordered = table.take(pa.array(where))
    data = table_shard_bytes(shard_url, ordered, json_columns, metadata)
    storage.atomic_write_bytes(shard_url, data)
    storage.remove(folder_url, recursive=True)
    return {"rows": planned, "parts": len(names), "duplicates": int(len(key) - len(unique)),
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "compact_cpu_s": time.process_time() - t0}


def remove_finished_parts(out_url: str, finished: list) -> int:
    """Remove the parts folders of shards whose final file exists (a run killed between writing
    a shard and removing its parts), and the parts root once empty; returns how many."""
    removed = 0
    for spec in finished:
        folder = parts_folder(out_url, spec.name)
        if storage.exists(folder):
            storage.remove(folder, recursive=True)
            removed += 1
    root = storage.join(out_url, PARTS_FOLDER)
    if storage.exists(root) and not storage.listdir(root):
        storage.remove(root, recursive=True)
    return removed
