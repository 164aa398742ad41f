"""The streaming part of `cemiray generate` (pipeline): the Ray Data pipeline and its driver loop.

The pipeline goes from chunk rows through the sampler actors to the encode-and-write tasks, which
write every image into part files themselves (cemiray.pipeline.generate.writer) and send the
driver small completion records. The driver counts keys per shard (ShardProgress) and, when a
shard's keys are all written, starts the task that joins its parts into the final shard. No image
reaches the driver.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import numpy as np

from cemiray.data import storage
from cemiray.pipeline.generate.config import GenerateConfig
from cemiray.pipeline.generate.inputs import Inputs
from cemiray.pipeline.generate.null_sampler import is_null
from cemiray.pipeline.generate.throughput import steady_rate
from cemiray.pipeline.generate.writer import RowContext

CPU_STAGES = ("sample", "encode", "write", "compact")


def build_dataset(cfg: GenerateConfig, inputs: Inputs, items: list[dict], context: RowContext):
    """The Ray Data pipeline from chunk rows to completion records (lazy)."""
    import ray

    from cemiray.pipeline.generate.null_sampler import NullSampler
    from cemiray.pipeline.generate.sampler_actor import SamplerActor
    from cemiray.pipeline.generate.writer import encode_and_write

    pool = cfg.distributed
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ctx = ds.context  # shared by the datasets derived below, and only by them
    ctx.target_max_block_size = pool.block_mb * 2**20
    if pool.object_store_budget_mb:
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=pool.object_store_budget_mb * 2**20)
    ds = ds.map_batches(
        NullSampler if is_null(cfg.generator) else SamplerActor,
        compute=ray.data.ActorPoolStrategy(
            min_size=pool.min_workers,
            max_size=pool.num_workers,
            initial_size=pool.initial_workers or pool.min_workers,
            max_tasks_in_flight_per_actor=pool.tasks_in_flight_per_worker,
        ),
        batch_size=1,
        batch_format="numpy",
        num_cpus=pool.cpus_per_worker,
        num_gpus=pool.gpus_per_worker if pool.use_gpu else 0,
        fn_constructor_kwargs={
            "generator": cfg.generator, "recognizer": cfg.recognizer, "judge": cfg.judge,
            "hashes": inputs.hashes, "sampling": cfg.sampling, "use_gpu": pool.use_gpu,
            "images_per_call": cfg.images_per_call,
            "variation_estimator": cfg.variation_estimator,
        },
    )
    return ds.map_batches(encode_and_write, batch_size=pool.encode_batch,
                          batch_format="numpy", num_cpus=pool.cpus_per_encode_task,
                          fn_kwargs={"context": context})


def row_context(cfg: GenerateConfig, inputs: Inputs, pending: list,
                plan_sha: str = "") -> RowContext:
    """The identity fields and lineage the encode tasks add to every row."""
    from cemiray.data.parquet_shards import column_kind

    table, sampling = inputs.table, cfg.sampling
    facts: dict[str, Any] = ({"scheduler": "null", "steps": 0} if is_null(cfg.generator) else
                             {"scheduler": sampling.scheduler, "steps": sampling.steps})
    if sampling.guidance_scale != 1.0:
        facts.update(guidance_scale=sampling.guidance_scale, guidance_m=sampling.guidance_m)
    return RowContext(
        out_url=cfg.out, shards={s.index: s for s in pending},
        samples_per_identity=cfg.samples_per_identity, plan_sha=plan_sha,
        seed_ids=np.asarray(table.seed_ids), sources=list(table.sources),
        attributes={k: list(v) for k, v in table.attributes.items()},
        kinds={k: column_kind("seed table", k, list(v)) for k, v in table.attributes.items()},
        hashes=inputs.hashes, sampling=facts, judge=cfg.judge is not None,
        closed_loop=sampling.closed_loop is not None and not is_null(cfg.generator),
        variation=cfg.variation is not None, variation_measured=bool(cfg.variation_estimator))


class Compactions:
    """The shard-joining tasks in flight: started as shards complete, collected as they end."""

    def __init__(self, cfg: GenerateConfig, parquet_url: str, plan_sha: str) -> None:
        import ray

        from cemiray.pipeline.generate.writer import compact_shard

        self.cfg, self.parquet_url, self.plan_sha = cfg, parquet_url, plan_sha
        self.task = ray.remote(num_cpus=cfg.distributed.cpus_per_encode_task)(compact_shard)
        self.running: dict[Any, str] = {}
        self.results: list[dict] = []

    def start(self, spec: Any) -> None:
        from cemiray.pipeline.generate.writer import parts_folder

        ref = self.task.remote(
            parts_folder(self.cfg.out, spec.name), storage.join(self.parquet_url, spec.name),
            spec.first, spec.last, self.cfg.samples_per_identity,
            {"shard": spec.name, "first": spec.first, "last": spec.last,
             "plan_sha256": self.plan_sha})
        self.running[ref] = spec.name

    def written(self, name: str, record: dict[str, Any]) -> None:
        """A shard its encode task wrote whole: nothing to join."""
        self.results.append({"shard": name, "duplicates": 0, "compact_cpu_s": 0.0, **record})

    def collect(self, wait: bool = False) -> None:
        import ray

        while self.running:
            done, _ = ray.wait(list(self.running), num_returns=1, timeout=None if wait else 0)
            if not done:
                return
            name = self.running.pop(done[0])
            self.results.append({"shard": name, **ray.get(done[0])})


def _resume_parts(cfg: GenerateConfig, pending: list, progress: Any) -> tuple[int, list]:
    """Count the parts a killed run left for pending shards; returns their number and the
    shards those parts already complete."""
    from cemiray.pipeline.generate.writer import part_keys, parts_folder

    reused, complete = 0, []
    for spec in pending:
        for keys in part_keys(parts_folder(cfg.out, spec.name)).values():
            reused += 1
            if progress.add(spec.index, keys[:, 0], keys[:, 1]) is not None:
                complete.append(spec)
    return reused, complete


def generate_shards(cfg: GenerateConfig, inputs: Inputs, pending: list, parquet_url: str,
                    plan_sha: str) -> dict[str, Any]:
    """Stream every pending shard through the pool; shards are joined as soon as complete."""
    import psutil

    from cemiray.pipeline.generate.shard_plan import (
        ShardPlanError,
        ShardProgress,
        identities_per_chunk,
        work_items,
    )
    from cemiray.runtime.progress import count_line, ticker

    progress = ShardProgress(pending, cfg.samples_per_identity)
    parts_reused, complete = _resume_parts(cfg, pending, progress)
    images_reused = progress.counted
    per_chunk = identities_per_chunk(cfg.samples_per_identity, cfg.chunk_images)
    items = [item for spec in pending if spec.index not in progress.done
             for item in work_items(spec, inputs.table, cfg.samples_per_identity, cfg.schedule,
                                    cfg.seed, per_chunk, variation=inputs.variation,
                                    with_images=cfg.judge is not None)
             if not progress.covers(spec.index, item["labels"][item["image_identity"]],
                                    item["samples"])]
    images = sum(len(item["samples"]) for item in items)
    compactions = Compactions(cfg, parquet_url, plan_sha)
    for spec in complete:
        compactions.start(spec)
    workers: Counter[int] = Counter()
    cpu = dict.fromkeys(CPU_STAGES, 0.0)
    made, part_bytes = 0, 0
    driver = psutil.Process()
    driver_cpu = sum(driver.cpu_times()[:2])
    t0 = time.perf_counter()
    first = None
    marks: list[tuple[float, int]] = []  # (time, images) when 10% and 90% were first passed
    intervals: list[tuple[float, float, int]] = []  # (started, finished, images) per record

    def line(waited: float) -> str:
        return count_line("generate", made, images, "images", waited,
                          f"{len(compactions.results)}/{len(pending)} shards written")

    with ticker(line, cfg.progress_every_s):
        if items:
            context = row_context(cfg, inputs, pending, plan_sha)
            for batch in build_dataset(cfg, inputs, items, context).iter_batches(
                    batch_size=None, batch_format="numpy"):
                first = first if first is not None else (time.perf_counter(),
                                                         int(np.sum(batch["rows"])))
                for i in range(len(batch["shard"])):
                    made += int(batch["rows"][i])
                    if len(marks) < 2 and made >= (0.1, 0.9)[len(marks)] * images:
                        marks.append((time.perf_counter(), made))
                    part_bytes += int(batch["bytes"][i])
                    intervals.append((float(batch["started_s"][i]), float(batch["finished_s"][i]),
                                      int(batch["rows"][i])))
                    workers.update({int(k): v for k, v in json.loads(batch["workers"][i]).items()})
                    for stage in ("sample", "encode", "write"):
                        cpu[stage] += float(batch[f"{stage}_cpu_s"][i])
                    spec = progress.add(int(batch["shard"][i]), batch["labels"][i],
                                        batch["samples"][i])
                    if spec is not None and batch["final"][i]:  # written whole by its task
                        compactions.written(spec.name, {"bytes": int(batch["bytes"][i]),
                                                        "sha256": str(batch["sha256"][i])})
                    elif spec is not None:
                        compactions.start(spec)
                compactions.collect()
        missing = progress.missing()
        if missing:
            raise ShardPlanError(f"the pipeline ended with {len(missing)} shard(s) incomplete "
                                 f"({dict(list(missing.items())[:5])} images missing); nothing of "
                                 "them was written as a shard — rerun to complete them")
        compactions.collect(wait=True)
    seconds = time.perf_counter() - t0
    cpu["compact"] = sum(r["compact_cpu_s"] for r in compactions.results)
    first = first or (t0 + seconds, 0)
    steady_seconds = t0 + seconds - first[0]
    return {"shards_written": len(compactions.results), "images_generated": images,
            "generation_seconds": round(seconds, 3),
            "images_per_s": round(images / seconds, 2) if seconds > 0 and images else None,
            "first_images_after_seconds": round(first[0] - t0, 3) if items else None,
            "steady_images_per_s": (round((images - first[1]) / steady_seconds, 2)
                                    if steady_seconds > 0 and items else None),
            # the rate between the records that passed 10% and 90% of the images: no start-up,
            # no tail, and no batch of records that arrived together at the start
            "images_per_s_10_90": (round((marks[1][1] - marks[0][1]) /
                                         (marks[1][0] - marks[0][0]), 2)
                                   if len(marks) == 2 and marks[1][0] > marks[0][0] else None),
            # the same window with each record's images spread over its task's interval
            # (throughput.py): exact however few records there are
            "images_per_s_steady": (round(rate, 2) if (rate := steady_rate(intervals))
                                    else None),
            "duplicates_dropped": progress.duplicates,
            "duplicate_rows_in_parts": sum(r["duplicates"] for r in compactions.results),
            "peak_open_images": progress.peak_open_images,
            "parts_reused": parts_reused,
            "images_reused": images_reused,
            "part_bytes": part_bytes,
            "shard_bytes": sum(r["bytes"] for r in compactions.results),
            "cpu_seconds": {**{k: round(v, 3) for k, v in cpu.items()},
                            "driver": round(sum(driver.cpu_times()[:2]) - driver_cpu, 3)},
            "shard_sha256": {r["shard"]: r["sha256"] for r in compactions.results},
            "sampler_workers": {str(pid): n for pid, n in sorted(workers.items())}}
