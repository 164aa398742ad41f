"""The `cemiray generate` job (pipeline): a synthetic face dataset in exactly-once Parquet shards.

A synthetic face dataset from a seed table of identities, sampled by a pool of generator actors that Ray Data grows and shrinks with the cluster, written as exactly-once
Parquet shards with their lineage.

    cemiray generate seeds=s3://b/seeds.parquet generator=s3://b/cemiface recognizer=s3://b/ir50
        out=s3://b/synthetic/v1 samples_per_identity=50 schedule=0.0 distributed.use_gpu=true
        distributed.num_workers=8        # (one command line: 10K seeds × 50 images, 8 GPUs)

Pipeline (one Ray Data dataset over the shards not yet complete):
  chunk rows (from_items, one block per chunk: a few whole identities of one shard)
  → map_batches(SamplerActor, ActorPoolStrategy(min, max, initial), batch_size=1): generator,
    conditioning recogniser, closed loop and judge, loaded once per actor; yields raw uint8
    images in micro-batches of `images_per_call`
  → map_batches(encode_and_write) as CPU tasks, off the sampler's critical path: PNG encoding,
    the identity and lineage columns, and one part file per batch written by the task itself
    under parts/<shard>/ (atomically); a small completion record goes on
  → iter_batches in the driver over the records only: it counts each shard's keys and, the
    moment a shard's are all written, starts a task that joins the parts into the final shard
    (atomically, in (label, sample) order) and removes them.

Every image is a pure function of the plan: its m, noise seed and variation come from (global
seed, seed_id, sample), and a chunk is always sampled in the same micro-batches, so a chunk
re-sampled by another actor, a retry or a rerun gives the same images — bit for bit on the same
device type and thread count (tests/test_generate.py checks the PNG bytes).

Why workers write. A driver that receives every image is a single-node ceiling: its network,
memory and CPU grow with the cluster. Ray Data does not keep rows of one shard together after
map_batches, and a groupby would hold the whole dataset back until every image exists (an
all-to-all barrier), so the workers write parts as images come and a shard is joined from its
parts once they are all there: no barrier, no image in the driver, and exactly once from
determinism (cemiray.pipeline.generate.writer). The driver holds only the key bitmaps of open
shards and the plan.

Memory is kept bounded on purpose (rows that fan out into images flood the object store
otherwise, Ray issues 34041/42217):
- the fan-out happens inside the sampler: its input rows are chunk descriptors of a few KB (the
  identities' embeddings and per-image targets/seeds), one block per chunk, so the actor pool's
  unit of work, of backpressure and of retry is one chunk, never a whole shard;
- the sampler yields images in micro-batches of at most `images_per_call`, and blocks are capped
  at `distributed.block_mb` (Ray Data's default is 128 MiB), so the first blocks after the
  fan-out are small and flow on to encoding while the next micro-batch is sampled;
- encoding tasks take one sampler micro-batch each (`distributed.encode_batch` defaults to
  `images_per_call`): a larger batch makes Ray Data hold sampled images back until enough
  blocks are bundled, which delays the shards and grows the driver's buffer;
- each actor holds at most `distributed.tasks_in_flight_per_worker` chunks (default 2: one
  running, one prefetched — also what lets utilisation reach Ray Data's upscaling threshold of
  1.75, so the pool can grow);
- `distributed.object_store_budget_mb` optionally caps Ray Data's object-store budget, which it
  enforces by backpressure on the operators upstream of a full queue;
- the driver holds no image: only one bit per image of the shards still open (chunks enter in
  shard order, so that is a few shards); the peak is recorded (`run.peak_open_images`).

A killed sampler actor is restarted and its unfinished chunks are retried: Ray Data gives
actor-pool workers max_restarts=-1 and max_task_retries=-1 by default (passing them through
map_batches is deprecated in Ray 2.60). The rows a retried chunk delivers again are counted once
by key; their parts rewrite the same rows. A killed driver's parts are kept: a rerun counts them
and samples only the chunks they do not cover.

On 2 cores a sampler actor must reserve at most half a CPU (`distributed.cpus_per_worker`,
default 0.5): actors reserving whole CPUs starve the encode tasks and the pipeline hangs
silently (docs/STACK.md). On GPUs each actor takes one GPU (`distributed.use_gpu`).

Files: config (GenerateConfig, the SamplingSpec it carries), inputs (opening and hashing the
models and seed table), streaming (the Ray Data pipeline and the driver loop), sampler_actor,
null_sampler (no model: for measuring the pipeline), writer (encode, parts, shard joining),
shard_plan, dataset_card; this module runs them.

Exactly once: see shard_plan. A rerun skips complete shards and redoes missing ones; an output
folder whose plan.json differs from this run's plan is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from typing import Any

import numpy as np

from cemiray.data import storage
from cemiray.pipeline.generate.config import OUTPUT_COLUMNS, GenerateConfig, SamplerPoolConfig
from cemiray.pipeline.generate.inputs import Inputs, absolute_paths, prepare_inputs
from cemiray.pipeline.generate.streaming import generate_shards
from cemiray.pipeline.generate.writer import remove_finished_parts

__all__ = ["OUTPUT_COLUMNS", "GenerateConfig", "Inputs", "SamplerPoolConfig", "prepare_inputs",
           "run"]


def _manifest(cfg: GenerateConfig, inputs: Inputs, fingerprint: dict, shards: list,
              parquet_url: str, run: dict) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The manifest (statistics read back from every shard), and the targets and achieved
    similarities for the histogram."""
    from cemiray.data.parquet_shards import shard_num_rows
    from cemiray.pipeline.generate import dataset_card as card

    urls = [storage.join(parquet_url, s.name) for s in shards]
    columns = ["label", "sample", "target_m", "similarity"]
    columns += ["judge_similarity"] if cfg.judge else []
    columns += ["within_tolerance"] if cfg.sampling.closed_loop else []
    stats = card.read_columns(urls, columns)
    target = stats.column("target_m").to_numpy()
    achieved = stats.column("similarity").to_numpy()
    within = stats.column("within_tolerance").to_numpy() if cfg.sampling.closed_loop else None
    judge = stats.column("judge_similarity").to_numpy() if cfg.judge else None
    table = inputs.table
    counts = {"identities": len(table), "images_per_identity": cfg.samples_per_identity,
              "images": int(stats.num_rows), "shards": len(shards)}
    expected = len(table) * cfg.samples_per_identity
    if counts["images"] != expected:
        raise RuntimeError(f"{parquet_url}: the shards hold {counts['images']} rows, the plan "
                           f"{expected}")
    leakage = table.attributes.get("leakage_max")
    hashes = run.pop("shard_sha256", {})
    return {
        "format": card.MANIFEST_FORMAT,
        "name": cfg.out.rstrip("/").rsplit("/", 1)[-1],
        "created_unix": round(time.time(), 3),
        "config": json.loads(cfg.to_json()),
        "plan": fingerprint,
        "lineage": inputs.hashes,
        "schedule": cfg.schedule.describe(),
        "image_size": inputs.image_size,
        "counts": counts,
        "shards": [{"name": s.name, "first": s.first, "last": s.last,
                    "rows": shard_num_rows(u), **({"sha256": hashes[s.name]}
                                                  if s.name in hashes else {})}
                   for s, u in zip(shards, urls, strict=True)],
        "similarity": card.similarity_groups(target, achieved, within, judge),
        "sources": dict(Counter(table.sources).most_common(20)),
        "attributes": card.attribute_summary(table.attributes),
        "leakage": card.leakage_summary(leakage, inputs.audit, cfg.leakage_audit),
        "run": run,
    }, target, achieved


def run(cfg: GenerateConfig) -> dict:
    """Generate (or complete) the dataset at `cfg.out`; returns a summary of the run."""
    from cemiray.pipeline.generate import dataset_card as card
    from cemiray.pipeline.generate import shard_plan as sp
    from cemiray.pipeline.generate.exporters import export_imagefolder, export_recordio
    from cemiray.runtime.cluster import init_ray

    t0 = time.perf_counter()
    cfg = absolute_paths(cfg)
    inputs = prepare_inputs(cfg)
    fingerprint = sp.plan_fingerprint(json.loads(cfg.to_json()), inputs.hashes)
    plan_sha = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    parquet_url = storage.join(cfg.out, "parquet")
    if not sp.check_plan(cfg.out, parquet_url, fingerprint):
        storage.makedirs(cfg.out)
        sp.write_plan(cfg.out, fingerprint)
    cfg.save(cfg.out)
    storage.makedirs(parquet_url)
    shards = sp.plan_shards(len(inputs.table), cfg.identities_per_shard)
    stale = sp.remove_stale_temporaries(parquet_url)
    done = sp.complete_shards(parquet_url, shards)
    stale += remove_finished_parts(cfg.out, [s for s in shards if s.index in done])
    pending = [s for s in shards if s.index not in done]
    run_info: dict[str, Any] = {"shards_skipped": len(done), "stale_temporaries_removed": stale}
    if pending:
        init_ray(cfg.ray)
        run_info.update(generate_shards(cfg, inputs, pending, parquet_url, plan_sha))
        remove_finished_parts(cfg.out, [])
    else:
        run_info.update(shards_written=0, images_generated=0, generation_seconds=0.0,
                        images_per_s=None, first_images_after_seconds=None,
                        steady_images_per_s=None, duplicates_dropped=0, peak_open_images=0,
                        parts_reused=0, images_reused=0, sampler_workers={})
    manifest, target, achieved = _manifest(cfg, inputs, fingerprint, shards, parquet_url,
                                           run_info)
    urls = [storage.join(parquet_url, s.name) for s in shards]
    card.write_histogram(storage.join(cfg.out, card.HISTOGRAM_NAME), target, achieved)
    card.write_preview_grid(storage.join(cfg.out, card.GRID_NAME), urls,
                            cfg.preview_identities, cfg.preview_samples)
    exports = {}
    if "recordio" in cfg.exports:
        exports["recordio"] = storage.join(cfg.out, "recordio")
        export_recordio(parquet_url, exports["recordio"], len(inputs.table), inputs.image_size)
    if "imagefolder" in cfg.exports:
        exports["imagefolder"] = storage.join(cfg.out, "imagefolder")
        export_imagefolder(parquet_url, exports["imagefolder"])
    manifest["exports"] = exports
    manifest["run"]["wall_seconds"] = round(time.perf_counter() - t0, 3)
    card.write_card(cfg.out, manifest)
    manifest_url = card.write_manifest(cfg.out, manifest)
    counts = manifest["counts"]
    rate = run_info["images_per_s"]
    steady = run_info["steady_images_per_s"]
    print(f"generate: {counts['images']} images ({counts['identities']} identities × "
          f"{counts['images_per_identity']}), {run_info['images_generated']} generated this run"
          f" at {rate if rate is not None else '-'} img/s ({steady if steady else '-'} img/s "
          f"after the first images), {len(done)} shard(s) kept; "
          f"wall {manifest['run']['wall_seconds']:.1f} s → {cfg.out}")
    return {"out": cfg.out, "parquet": parquet_url, "manifest": manifest_url,
            "card": storage.join(cfg.out, card.CARD_NAME), "counts": counts, "exports": exports,
            **manifest["run"]}
