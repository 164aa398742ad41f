"""The deterministic plan of `cemiray generate` and its exactly-once bookkeeping (pipeline).

The plan is a pure function of the seed table and the config: shard i holds the identities
[i·S, min((i+1)·S, N)) of the seed table (S = identities_per_shard) with all their samples, and
is named after that block (`shard-{first:08d}-{last:08d}.parquet`, last exclusive, as the render
job names its shards). A shard is complete iff its final file exists: shards are written under a
temporary name and renamed (parquet_shards.write_shard), so a visible shard is never partial, and
a rerun redoes exactly the missing ones.

Within a shard, work is cut into fixed chunks of whole identities: a chunk is the sampler's unit
of work and of retry, and its images are generated in fixed micro-batches, so the batch
composition — and with it the float rounding of every image — never depends on scheduling.

`plan.json` in the output folder records what the dataset is (the config minus execution-only
fields, plus the content hashes of every input, cemiray.models.hashing.model_hash); a rerun with
a different plan is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from cemiray.data import storage
from cemiray.pipeline.generate.schedules import image_seeds
from cemiray.pipeline.seeds.table import SeedTable

SAMPLING = "sampling"  # the config's SamplingSpec section
PLAN_NAME = "plan.json"
PLAN_FORMAT = "cemiray-generate-plan/1"
# Config fields that change how a dataset is computed or what is made beside it, not its rows.
# Inputs named by URL are not compared by URL but by content hash (the plan's `lineage`).
EXECUTION_FIELDS = frozenset({
    "out", "distributed", "ray", "images_per_call", "images_per_chunk", "exports",
    "preview_identities",    "preview_samples", "leakage_audit", "seeds", "generator", "recognizer", "judge",
})


class ShardPlanError(RuntimeError):
    """Rows that do not fit the plan (a bug or a changed input), or an incomplete run."""


class OutputConflictError(ValueError):
    """The output folder already holds a dataset made from a different plan."""


def shard_name(first: int, last: int) -> str:
    """Deterministic name of the shard holding identities first..last-1."""
    return f"shard-{first:08d}-{last:08d}.parquet"


@dataclass(frozen=True)
class ShardSpec:
    index: int
    first: int
    last: int

    @property
    def name(self) -> str:
        return shard_name(self.first, self.last)

    @property
    def num_identities(self) -> int:
        return self.last - self.first


def plan_shards(num_identities: int, identities_per_shard: int) -> list[ShardSpec]:
    if num_identities < 1 or identities_per_shard < 1:
        raise ValueError(f"plan_shards: need >= 1 identities and identities per shard, got "
                         f"{num_identities}, {identities_per_shard}")
    return [ShardSpec(i, first, min(first + identities_per_shard, num_identities))
            for i, first in enumerate(range(0, num_identities, identities_per_shard))]


def identities_per_chunk(samples_per_identity: int, chunk_images: int) -> int:
    """Whole identities per chunk: as many as fit `chunk_images`, at least one."""
    return max(1, chunk_images // samples_per_identity)


def work_items(
    shard: ShardSpec,
    table: SeedTable,
    samples_per_identity: int,
    schedule: Any,
    seed: int,
    chunk_identities: int,
    variation: Any = None,
    with_images: bool = False,
) -> list[dict]:
    """The chunks of one shard: per identity its label (row in the seed table) and embedding,
    per image its identity (position in the chunk), sample, target m, noise seed and variation
    (`variation`, a ResolvedPlan: the request as JSON text and its normalised values)."""
    items = []
    for c, start in enumerate(range(shard.first, shard.last, chunk_identities)):
        labels = np.arange(start, min(start + chunk_identities, shard.last), dtype=np.int64)
        position = np.repeat(np.arange(len(labels), dtype=np.int64), samples_per_identity)
        samples = np.tile(np.arange(samples_per_identity, dtype=np.int64), len(labels))
        ids = table.seed_ids[labels][position]
        item = {
            "shard": shard.index,
            "chunk": c,
            "labels": labels,
            "embeddings": table.embeddings[labels],
            "image_identity": position,
            "samples": samples,
            "targets": schedule.targets(seed, ids, samples).astype(np.float64),
            "seeds": image_seeds(seed, ids, samples),
        }
        if variation is not None:
            requests = variation.requests(seed, ids, samples)
            item["variation"] = variation.encode(requests)
            item["variation_request"] = np.array(
                [json.dumps(r or {}, sort_keys=True) for r in requests], dtype=object)
        if with_images:
            item["inquiry"] = [table.images[i] for i in labels.tolist()]
        items.append(item)
    return items


class ShardProgress:
    """Counts the images of each pending shard from the workers' completion records — keys
    only, never images — and says when a shard's keys are all present. Keys arriving twice (a
    retried task) are counted and dropped; keys outside the plan are errors. A shard's key set
    is dropped once it is complete, so the driver holds keys of open shards only."""

    def __init__(self, shards: list[ShardSpec], samples_per_identity: int):
        self.shards = {s.index: s for s in shards}
        self.samples = samples_per_identity
        self.seen: dict[int, np.ndarray] = {}
        self.done: set[int] = set()
        self.duplicates = 0
        self.open_images = 0
        self.peak_open_images = 0
        self.counted = 0

    def add(self, shard_index: int, labels: Any, samples: Any) -> ShardSpec | None:
        """Take the keys of one part; returns the shard they complete, if any."""
        labels = np.asarray(labels, dtype=np.int64)
        samples = np.asarray(samples, dtype=np.int64)
        spec = self.shards.get(int(shard_index))
        if spec is None:
            raise ShardPlanError(f"a part names shard {shard_index}, which is not pending in "
                                 "this run")
        outside = (labels < spec.first) | (labels >= spec.last) | (samples < 0) | (
            samples >= self.samples)
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            raise ShardPlanError(f"row (label {labels[k]}, sample {samples[k]}) does not belong "
                                 f"to shard {spec.name}")
        if spec.index in self.done:
            self.duplicates += len(labels)
            return None
        seen = self.seen.setdefault(spec.index, np.zeros(spec.num_identities * self.samples,
                                                         dtype=bool))
        keys = (labels - spec.first) * self.samples + samples
        fresh = ~seen[keys] & _first_of(keys)
        self.duplicates += int(len(keys) - fresh.sum())
        seen[keys[fresh]] = True
        self.open_images += int(fresh.sum())
        self.counted += int(fresh.sum())
        self.peak_open_images = max(self.peak_open_images, self.open_images)
        if seen.all():
            self.seen.pop(spec.index)
            self.done.add(spec.index)
            self.open_images -= len(seen)
            return spec
        return None

    def covers(self, shard_index: int, labels: Any, samples: Any) -> bool:
        """Whether every key given is counted already (a chunk a killed run finished)."""
        if shard_index in self.done:
            return True
        seen = self.seen.get(shard_index)
        if seen is None:
            return False
        spec = self.shards[shard_index]
        keys = (np.asarray(labels, dtype=np.int64) - spec.first) * self.samples + np.asarray(
            samples, dtype=np.int64)
        return bool(seen[keys].all())

    def missing(self) -> dict[str, int]:
        """Images still missing per unfinished shard name."""
        return {
            spec.name: int(spec.num_identities * self.samples - self.seen.get(i, np.zeros(0)).sum())
            for i, spec in self.shards.items() if i not in self.done
        }


def _first_of(keys: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each key."""
    first = np.zeros(len(keys), dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first


def plan_fingerprint(config: dict[str, Any], lineage: dict[str, Any]) -> dict[str, Any]:
    """What the dataset is: the config without execution-only fields, and the inputs' hashes.
    The sampling spec's options stand at the top level of the plan's config, where plan format
    /1 has always had them, so datasets begun before the spec existed can be completed."""
    config = {**{k: v for k, v in config.items() if k != SAMPLING}, **(config.get(SAMPLING) or {})}
    return {
        "format": PLAN_FORMAT,
        "config": {k: v for k, v in sorted(config.items()) if k not in EXECUTION_FIELDS},
        "lineage": lineage,
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_flatten(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def check_plan(out_url: str, parquet_url: str, fingerprint: dict[str, Any]) -> bool:
    """Refuse an output folder holding another dataset. True when it holds this plan already."""
    plan_url = storage.join(out_url, PLAN_NAME)
    if not storage.exists(plan_url):
        if storage.exists(parquet_url):
            shards = [n for n in storage.listdir(parquet_url) if n.endswith(".parquet")
                      and not n.startswith(".")]
            if shards:
                raise OutputConflictError(
                    f"{out_url}: holds {len(shards)} Parquet shard(s) but no {PLAN_NAME}; they "
                    "were not made by `cemiray generate` with this plan. Use another `out`.")
        return False
    try:
        existing = json.loads(storage.read_text(plan_url))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputConflictError(f"{plan_url}: not valid JSON ({exc}); refusing to add to "
                                  "an output folder whose plan is unknown") from exc
    ours, theirs = _flatten(json.loads(json.dumps(fingerprint))), _flatten(existing)
    differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differ:
        details = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now"
                            for k in differ[:6])
        raise OutputConflictError(
            f"{out_url}: already holds a dataset made with a different config or inputs "
            f"({details}{'; ...' if len(differ) > 6 else ''}). Use another `out`, or the "
            "original config to complete that dataset.")
    return True


def write_plan(out_url: str, fingerprint: dict[str, Any]) -> str:
    url = storage.join(out_url, PLAN_NAME)
    storage.atomic_write_text(url, json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
    return url


def remove_stale_temporaries(folder_url: str) -> int:
    """Delete the temporary files a killed run left (`.tmp-*`); returns how many."""
    if not storage.exists(folder_url):
        return 0
    stale = [n for n in storage.listdir(folder_url) if n.startswith(".tmp-")]
    for name in stale:
        storage.remove(storage.join(folder_url, name))
    return len(stale)


def complete_shards(parquet_url: str, shards: list[ShardSpec]) -> set[int]:
    """Indices of the planned shards whose final file exists."""
    if not storage.exists(parquet_url):
        return set()
    present = set(storage.listdir(parquet_url))
    return {s.index for s in shards if s.name in present}
