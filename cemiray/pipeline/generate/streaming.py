"""The streaming part of `cemiray generate` (pipeline): Ray Data pipeline and shard writer.

The pipeline goes from chunk rows to encoded image rows; the driver loop writes each shard, with
its lineage columns, the moment its last image arrives (cemiray.pipeline.generate.job says why
the driver writes).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from cemiray.data import storage
from cemiray.pipeline.generate.config import GenerateConfig
from cemiray.pipeline.generate.inputs import Inputs


def build_dataset(cfg: GenerateConfig, inputs: Inputs, items: list[dict]):
    """The Ray Data pipeline from chunk rows to encoded image rows (lazy)."""
    import ray

    from cemiray.pipeline.generate.sampler_actor import SamplerActor, encode_pngs

    pool = cfg.distributed
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ctx = ds.context  # shared by the datasets derived below, and only by them
    ctx.target_max_block_size = pool.block_mb * 2**20
    if pool.object_store_budget_mb:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=pool.object_store_budget_mb * 2**20)
    ds = ds.map_batches(
        SamplerActor,
        compute=ray.data.ActorPoolStrategy(
            min_size=pool.min_workers,
            max_size=pool.num_workers,
            initial_size=pool.initial_workers or pool.min_workers,
            max_tasks_in_flight_per_actor=pool.tasks_in_flight_per_worker,
        ),
        batch_size=1,
        batch_format="numpy",
        num_cpus=pool.cpus_per_worker,
        num_gpus=1 if pool.use_gpu else 0,
        fn_constructor_kwargs={
            "generator": cfg.generator, "recognizer": cfg.recognizer, "judge": cfg.judge,
            "hashes": inputs.hashes, "sampling": cfg.sampling, "use_gpu": pool.use_gpu,
            "images_per_call": cfg.images_per_call,
            "variation_estimator": cfg.variation_estimator,
        },
    )
    return ds.map_batches(encode_pngs, batch_size=pool.encode_batch or cfg.images_per_call,
                          batch_format="numpy", num_cpus=pool.cpus_per_encode_task)


def shard_rows(rows: list[dict], cfg: GenerateConfig, inputs: Inputs):
    """The stored rows of one shard: generated values, identity fields and lineage."""
    table, hashes, sampling = inputs.table, inputs.hashes, cfg.sampling
    for r in rows:
        label = int(r["label"])
        out = {
            "image": bytes(r["image"]),
            "label": label,
            "sample": int(r["sample"]),
            "seed_id": int(table.seed_ids[label]),
            "source": table.sources[label],
            "target_m": float(r["target_m"]),
            "similarity": float(r["similarity"]),
        }
        if cfg.judge:
            out["judge_similarity"] = float(r["judge_similarity"])
        out["seed"] = int(r["seed"])
        out["tries"] = int(r["tries"])
        if sampling.closed_loop:
            out["within_tolerance"] = bool(r["within_tolerance"])
        if cfg.variation:
            out["variation"] = str(r["variation"])
        if cfg.variation_estimator:
            out["variation_measured"] = str(r["variation_measured"])
        out.update(scheduler=sampling.scheduler, steps=sampling.steps)
        if sampling.guidance_scale != 1.0:
            out.update(guidance_scale=sampling.guidance_scale, guidance_m=sampling.guidance_m)
        out.update(generator_sha256=hashes["generator"], recognizer_sha256=hashes["recognizer"])
        if cfg.judge:
            out["judge_sha256"] = hashes["judge"]
        for name, values in table.attributes.items():
            out[name] = values[label]
        yield out


def write_generated_shard(url: str, rows: list[dict], cfg: GenerateConfig, inputs: Inputs,
                          spec: Any, plan_sha: str) -> bool:
    """Write one complete shard; False when its file already exists (a concurrent writer)."""
    from cemiray.data.parquet_shards import write_shard

    if storage.exists(url):
        return False
    write_shard(url, shard_rows(rows, cfg, inputs),
                metadata={"shard": spec.name, "first": spec.first, "last": spec.last,
                          "plan_sha256": plan_sha})
    return True


def generate_shards(cfg: GenerateConfig, inputs: Inputs, pending: list, parquet_url: str,
                    plan_sha: str) -> dict[str, Any]:
    """Stream every pending shard through the pool and write each as soon as it is complete."""
    from cemiray.pipeline.generate.shard_plan import (
        ShardCollector,
        ShardPlanError,
        identities_per_chunk,
        work_items,
    )

    per_chunk = identities_per_chunk(cfg.samples_per_identity, cfg.images_per_call)
    items = [item for spec in pending for item in work_items(
        spec, inputs.table, cfg.samples_per_identity, cfg.schedule, cfg.seed, per_chunk,
        variation=inputs.variation, with_images=cfg.judge is not None)]
    from cemiray.runtime.progress import count_line, ticker

    collector = ShardCollector(pending, cfg.samples_per_identity)
    workers: Counter[int] = Counter()
    written = 0
    t0 = time.perf_counter()
    first = None
    images = sum(s.num_identities for s in pending) * cfg.samples_per_identity

    def line(waited: float) -> str:
        return count_line("generate", sum(workers.values()), images, "images", waited,
                          f"{written}/{len(pending)} shards written")

    with ticker(line, cfg.progress_every_s):
        for batch in build_dataset(cfg, inputs, items).iter_batches(batch_size=None,
                                                                    batch_format="numpy"):
            first = first if first is not None else (time.perf_counter(), len(batch["label"]))
            columns = list(batch)
            for i in range(len(batch["label"])):
                row = {key: batch[key][i] for key in columns}
                workers[int(row["worker_pid"])] += 1
                spec = collector.add(row)
                if spec is not None:
                    url = storage.join(parquet_url, spec.name)
                    written += write_generated_shard(url, collector.pop(spec), cfg, inputs,
                                                     spec, plan_sha)
    seconds = time.perf_counter() - t0
    missing = collector.missing()
    if missing:
        raise ShardPlanError(f"the pipeline ended with {len(missing)} shard(s) incomplete "
                             f"({dict(list(missing.items())[:5])} images missing); nothing of "
                             "them was written — rerun to complete them")
    steady_seconds = t0 + seconds - first[0]
    return {"shards_written": written, "images_generated": images,
            "generation_seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
            "first_images_after_seconds": round(first[0] - t0, 3),
            "steady_images_per_s": (round((images - first[1]) / steady_seconds, 2)
                                    if steady_seconds > 0 else None),
            "duplicates_dropped": collector.duplicates,
            "peak_buffered_images": collector.peak_buffered,
            "sampler_workers": {str(pid): n for pid, n in sorted(workers.items())}}
