"""`cemiray bench-pipeline` (bench): what the `generate` pipeline itself can carry.

The null generator (`generator=null:<size>`, no model) makes sampling cost nothing, so what is
measured is Ray Data, PNG encoding, the workers' part writes, the shard joins and the driver's
bookkeeping. For each image count (10K, 50K, 200K by default, 112 px):

- pipeline img/s: the `generate` job's steady rate between the moments 10% and 90% of the
  images were written, each completion record's images spread over its task's interval
  (generate/throughput.py; the rate with start-up, and the rate counting whole records, are
  reported beside it), on every CPU of the local cluster, its driver a process of its own as
  under `ray job submit`;
- bare img/s: the same work in one process, no Ray — plan → null images → PNG → stored rows →
  one Parquet shard per shard — on one core, timed just before and just after each pipeline run
  (10K images each by default) and averaged, so that machine drift cancels;
- their ratio per CPU core used: (pipeline img/s ÷ cluster CPUs) ÷ bare img/s;
- the driver's peak resident memory and the object store's peak bytes in use (polled), which
  must stay flat as the image count grows;
- CPU seconds per image by stage (sampler, PNG encoding, part writing, shard joining, driver),
  from the stages' own process-time counters, and from them the CPU cores per node that
  encoding and writing need to keep 8 GPUs fed at a given rate per GPU.

    cemiray bench-pipeline results=docs/results/pipeline.json
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from pydantic import Field

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

GOAL_PER_CORE = 0.8
GOAL_FLAT = 1.10  # driver peak RSS at the largest count ÷ at the smallest
GPU_RATE = 250.0  # the project's goal per H100 at paper size, img/s
GPUS_PER_NODE = 8


class BenchPipelineConfig(JobConfig):
    out: str = "runs/bench_pipeline"
    image_size: int = Field(112, ge=8, le=1024)
    sizes: list[int] = Field(default_factory=lambda: [10_000, 50_000, 200_000],
                             description="image counts, smallest first")
    samples_per_identity: int = Field(50, ge=1)
    identities_per_shard: int = Field(20, ge=1, description="20 × 50 = 1,000 images per shard "
                                      "(25 MB at 112 px)")
    images_per_call: int = Field(1000, ge=1, description="images per null-sampler call")
    images_per_chunk: int | None = Field(None, ge=1, description="None: one call; a chunk "
                                         "that is a whole shard is written as the shard")
    block_mb: int = Field(64, ge=1, description="Ray Data block cap: a whole chunk must fit "
                                                "one block to be written as one file")
    sampler_workers: int = Field(1, ge=1)
    cpus_per_worker: float = Field(0.25, ge=0)
    cpus_per_encode_task: float = Field(0.5, gt=0)
    object_store_budget_mb: int | None = Field(256, ge=1, description="Ray Data's object-store "
                                               "budget: the queue of sampled images it may hold")
    bare_max_images: int | None = Field(10_000, ge=1, description="images of each bare-loop "
                                        "timing, one just before and one just after each "
                                        "pipeline run (None: all of them); their mean is the "
                                        "bare rate, so a machine that drifts during the run "
                                        "biases both sides alike")
    ceiling_images: int = Field(10_000, ge=100, description="images per bare loop in the "
                                "machine's parallel-ceiling measurement")
    keep_outputs: bool = Field(False, description="keep each size's dataset (disk: ~25 KB/img)")
    poll_seconds: float = Field(0.5, gt=0)
    results: str | None = Field(None, description="also write the JSON here")
    ray: RayConfig = Field(default_factory=RayConfig)


def write_seeds(url: str, images: int, samples: int) -> int:
    """A seed table of ceil(images / samples) random identities; returns their number."""
    from cemiray.pipeline.seeds.table import random_identities, write_seed_table

    n = math.ceil(images / samples)
    write_seed_table(url, list(range(n)), random_identities(n, 16, seed=n))
    return n


def generate_config(cfg: BenchPipelineConfig, seeds: str, out: str):
    from cemiray.pipeline.generate.job import GenerateConfig

    return GenerateConfig(
        out=out, seeds=seeds, generator=f"null:{cfg.image_size}",
        samples_per_identity=cfg.samples_per_identity,
        identities_per_shard=cfg.identities_per_shard, images_per_call=cfg.images_per_call,
        images_per_chunk=cfg.images_per_chunk,
        preview_identities=2, preview_samples=2, progress_every_s=30, ray=cfg.ray,
        distributed={"num_workers": cfg.sampler_workers, "min_workers": cfg.sampler_workers,
                     "cpus_per_worker": cfg.cpus_per_worker,
                     "cpus_per_encode_task": cfg.cpus_per_encode_task, "block_mb": cfg.block_mb,
                     "object_store_budget_mb": cfg.object_store_budget_mb})


def bare_loop(gen_cfg: Any, out: str, max_images: int | None) -> dict[str, float]:
    """The pipeline's work in one process: img/s and CPU seconds per image."""
    import numpy as np

    from cemiray.data.images import encode_png
    from cemiray.data.parquet_shards import write_shard
    from cemiray.pipeline.generate.inputs import prepare_inputs
    from cemiray.pipeline.generate.null_sampler import NullSampler
    from cemiray.pipeline.generate.shard_plan import identities_per_chunk, plan_shards, work_items
    from cemiray.pipeline.generate.streaming import row_context

    inputs = prepare_inputs(gen_cfg)
    shards = plan_shards(len(inputs.table), gen_cfg.identities_per_shard)
    context = row_context(gen_cfg, inputs, shards)
    sampler = NullSampler(gen_cfg.generator, images_per_call=gen_cfg.images_per_call)
    per_chunk = identities_per_chunk(gen_cfg.samples_per_identity, gen_cfg.chunk_images)
    storage.makedirs(out)
    images, t0, cpu0 = 0, time.perf_counter(), time.process_time()
    for spec in shards:
        rows: list[dict] = []
        for item in work_items(spec, inputs.table, gen_cfg.samples_per_identity,
                               gen_cfg.schedule, gen_cfg.seed, per_chunk):
            for batch in sampler.generate_chunk(item):
                pngs = [encode_png(p) for p in batch["pixels"]]
                rows += context.rows(batch, pngs, np.arange(len(pngs)))
        write_shard(storage.join(out, spec.name), rows)
        images += len(rows)
        if max_images and images >= max_images:
            break
    seconds = time.perf_counter() - t0
    return {"images": images, "img_per_s": images / seconds,
            "cpu_s_per_image": (time.process_time() - cpu0) / images}


DRIVER = """
import json, sys
from cemiray.pipeline.generate.job import GenerateConfig, run
summary = run(GenerateConfig.model_validate_json(sys.argv[1]))
print("SUMMARY " + json.dumps(summary, default=str))
"""


def driver_process(gen_cfg: Any, poll_seconds: float) -> tuple[dict, Any]:
    """Run `generate` as its own driver process on this cluster (as `ray job submit` would),
    so that its resident memory is its own; returns its summary and the memory monitor."""
    import json
    import subprocess
    import sys

    import ray

    from cemiray.bench.generate import MemoryMonitor

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, gen_cfg.model_dump_json()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    with MemoryMonitor(poll_seconds, driver_pid=proc.pid) as monitor:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("generate:"):
                print(line, end="", flush=True)
        proc.wait()
    summary = next((json.loads(line[8:]) for line in lines if line.startswith("SUMMARY ")), None)
    if proc.returncode or summary is None:
        raise RuntimeError(f"the generate driver failed (exit {proc.returncode}):\n"
                           + "".join(lines[-30:]))
    return summary, monitor


def _bare_process(args: tuple) -> dict[str, float]:
    gen_json, out, max_images = args
    from cemiray.pipeline.generate.job import GenerateConfig

    return bare_loop(GenerateConfig.model_validate_json(gen_json), out, max_images)


def parallel_ceiling(cfg: BenchPipelineConfig, cores: int) -> dict[str, Any]:
    """How much of a core each of `cores` bare loops run at once gets, against one alone: the
    per-core ratio no pipeline on this machine can pass (shared caches, memory bandwidth, the
    hypervisor), measured on the same work."""
    import multiprocessing

    folder = storage.join(cfg.out, "ceiling")
    images = cfg.ceiling_images
    seeds = storage.join(folder, "seeds.parquet")
    write_seeds(seeds, images, cfg.samples_per_identity)
    gen_json = generate_config(cfg, seeds, storage.join(folder, "dataset")).model_dump_json()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cores) as pool:
        alone = pool.map(_bare_process, [(gen_json, storage.join(folder, "alone"), images)])[0]
        together = pool.map(_bare_process, [(gen_json, storage.join(folder, f"p{i}"), images)
                                            for i in range(cores)])
    storage.remove(folder, recursive=True)
    each = [t["img_per_s"] for t in together]
    return {"processes": cores, "images_each": images,
            "alone_img_per_s": round(alone["img_per_s"], 2),
            "together_img_per_s_each": [round(r, 2) for r in each],
            "ceiling_per_core": round(sum(each) / cores / alone["img_per_s"], 3)}


def per_size(cfg: BenchPipelineConfig, size: int, cores: float) -> dict[str, Any]:
    folder = storage.join(cfg.out, f"n{size}")
    seeds = storage.join(folder, "seeds.parquet")
    identities = write_seeds(seeds, size, cfg.samples_per_identity)
    gen_cfg = generate_config(cfg, seeds, storage.join(folder, "dataset"))
    storage.remove(gen_cfg.out, recursive=True)
    before = bare_loop(gen_cfg, storage.join(folder, "bare"), cfg.bare_max_images)
    summary, monitor = driver_process(gen_cfg, cfg.poll_seconds)
    after = bare_loop(gen_cfg, storage.join(folder, "bare"), cfg.bare_max_images)
    bare = {"images": before["images"] + after["images"],
            "img_per_s": (before["img_per_s"] + after["img_per_s"]) / 2,
            "cpu_s_per_image": (before["cpu_s_per_image"] + after["cpu_s_per_image"]) / 2}
    images = summary["counts"]["images"]
    rate = summary["images_per_s_steady"]
    cpu = {k: round(v / images, 6) for k, v in summary["cpu_seconds"].items()}
    figures = {
        "images": images, "identities": identities, "shards": summary["counts"]["shards"],
        "pipeline_img_per_s": rate, "pipeline_img_per_s_with_startup": summary["images_per_s"],
        "pipeline_img_per_s_after_first": summary["steady_images_per_s"],
        "pipeline_img_per_s_whole_records_10_90": summary["images_per_s_10_90"],
        "startup_seconds": summary["first_images_after_seconds"],
        "bare_img_per_s": round(bare["img_per_s"], 2), "bare_images": bare["images"],
        "bare_img_per_s_before_after": [round(before["img_per_s"], 2),
                                        round(after["img_per_s"], 2)],
        "cluster_cpus": cores,
        "ratio_per_core": round(rate / cores / bare["img_per_s"], 3),
        "cpu_s_per_image": {**cpu, "bare": round(bare["cpu_s_per_image"], 6)},
        "duplicates_dropped": summary["duplicates_dropped"],
        "peak_open_images": summary["peak_open_images"],
        "bytes_per_image": round(summary["shard_bytes"] / images),
        **monitor.as_dict(),
    }
    print(f"bench-pipeline: {images} images: pipeline {rate} img/s on {cores:g} CPUs, bare "
          f"{bare['img_per_s']:.1f} img/s → {figures['ratio_per_core']} per core; driver peak "
          f"{figures['peak_rss_driver_mb']} MB, object store peak "
          f"{figures['peak_object_store_mb']} MB", flush=True)
    if not cfg.keep_outputs:
        storage.remove(folder, recursive=True)
    return figures


def feeding_table(cpu_per_image: float, img_per_s_per_core: float) -> list[dict[str, Any]]:
    """CPU cores per node that encoding and writing need to keep 8 GPUs fed: from the stages'
    own CPU seconds per image (a lower bound), and from the pipeline's measured img/s per core
    (everything included: Ray, the driver, idle gaps)."""
    rows = []
    for per_gpu in (GPU_RATE, 10 * GPU_RATE):
        rate = per_gpu * GPUS_PER_NODE
        rows.append({"img_per_s_per_gpu": per_gpu, "gpus": GPUS_PER_NODE,
                     "node_img_per_s": rate, "cores_stage_cpu": round(rate * cpu_per_image, 1),
                     "cores_measured": round(rate / img_per_s_per_core, 1)})
    return rows


def run(cfg: BenchPipelineConfig) -> dict:
    import ray

    from cemiray.bench.common import write_result
    from cemiray.runtime.cluster import init_ray

    sizes = sorted(cfg.sizes)
    init_ray(cfg.ray)
    cores = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    every = {str(size): per_size(cfg, size, cores) for size in sizes}
    ceiling = parallel_ceiling(cfg, int(cores))
    small, large = every[str(sizes[0])], every[str(sizes[-1])]
    work = large["cpu_s_per_image"]
    cpu_per_image = sum(work[k] for k in ("encode", "write", "compact", "driver"))
    figures = {
        "image_size": cfg.image_size, "sizes": every,
        "ratio_per_core_min": min(f["ratio_per_core"] for f in every.values()),
        "goal_ratio_per_core": GOAL_PER_CORE,
        "machine_parallel_ceiling": ceiling,
        "ratio_of_ceiling_min": round(min(f["ratio_per_core"] for f in every.values()) /
                                      ceiling["ceiling_per_core"], 3),
        "driver_rss_growth": round(large["peak_rss_driver_mb"] / small["peak_rss_driver_mb"], 3),
        "object_store_growth": (round(large["peak_object_store_mb"] /
                                      small["peak_object_store_mb"], 3)
                                if small["peak_object_store_mb"] else None),
        "goal_growth": GOAL_FLAT,
        "cpu_s_per_image_pipeline_work": round(cpu_per_image, 6),
        "cores_to_feed_8_gpus": feeding_table(cpu_per_image, min(
            f["pipeline_img_per_s"] / cores for f in every.values())),
    }
    figures["meets"] = {"ratio_per_core": figures["ratio_per_core_min"] >= GOAL_PER_CORE,
                        "driver_rss_flat": figures["driver_rss_growth"] <= GOAL_FLAT,
                        "object_store_flat": (figures["object_store_growth"] or 0) <= GOAL_FLAT}
    url = write_result(cfg.out, "bench_pipeline", cfg.model_dump(), figures)
    if cfg.results:
        storage.atomic_write_text(cfg.results, storage.read_text(url))
    print(f"bench-pipeline: per core {figures['ratio_per_core_min']} (goal ≥ {GOAL_PER_CORE}); "
          f"driver RSS ×{figures['driver_rss_growth']}, object store "
          f"×{figures['object_store_growth']} from {sizes[0]} to {sizes[-1]} images (goal ≤ "
          f"{GOAL_FLAT}) → {url}")
    return {"results": url, **figures}
