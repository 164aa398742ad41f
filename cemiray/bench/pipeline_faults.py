"""`cemiray bench-pipeline-faults` (bench): `generate` at scale under kill -9, then rerun.

A 50K-image null-generator run (its driver a process of its own on this benchmark's local
cluster, as under `ray job submit`) loses, in turn: its sampler actor (once the first shard
exists), a running encode-and-write worker (two shards later) and finally its driver (two shards
later still). Then the same job is run again to the end. What is checked, and written to one
JSON:

- the first run went on after the actor and the worker were killed (shards kept appearing);
- at the driver's death, every file visible under a final shard name is a whole shard (its
  footer holds every planned row) and no temporary carries a final name;
- the rerun skips every shard the killed run finished and leaves their bytes untouched, and
  counts the parts it left instead of sampling them again;
- the result: exactly N × K rows, no duplicate (seed_id, sample), no lost key, no part or
  temporary file left.

By default chunks are a quarter of a shard, so the parts-and-join path is the one exercised.

    cemiray bench-pipeline-faults results=docs/results/pipeline_faults.json
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig


class BenchPipelineFaultsConfig(JobConfig):
    out: str = "runs/bench_pipeline_faults"
    images: int = Field(50_000, ge=1_000)
    image_size: int = Field(112, ge=8, le=1024)
    samples_per_identity: int = Field(50, ge=1)
    identities_per_shard: int = Field(20, ge=1)
    images_per_call: int = Field(250, ge=1)
    images_per_chunk: int | None = Field(250, ge=1, description="a quarter shard: parts + join")
    shards_between_kills: int = Field(2, ge=1)
    timeout_s: float = Field(900, gt=0, description="give up on any wait after this long")
    results: str | None = Field(None, description="also write the JSON here")
    ray: RayConfig = Field(default_factory=RayConfig)


def _shards(parquet: Path) -> set[str]:
    return {p.name for p in parquet.glob("shard-*.parquet")} if parquet.is_dir() else set()


def _wait(what: str, check: Any, proc: subprocess.Popen, timeout_s: float) -> Any:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            raise RuntimeError(f"the generate driver ended (exit {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise TimeoutError(f"no {what} within {timeout_s:.0f} s")


def _sampler_pid() -> int | None:
    import ray._private.state

    pids = [int(info["Pid"]) for info in ray._private.state.actors().values()
            if "NullSampler" in info.get("ActorClassName", "") and info["State"] == "ALIVE"
            and info.get("Pid")]
    return min(pids) if pids else None


def _encode_worker_pid() -> int | None:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if "encode_and_write" in " ".join(proc.info["cmdline"] or []):
            return proc.pid
    return None


def _start_driver(gen_cfg: Any) -> subprocess.Popen:
    import ray

    from cemiray.bench.pipeline import DRIVER

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    return subprocess.Popen([sys.executable, "-c", DRIVER, gen_cfg.model_dump_json()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _visible_shards_whole(parquet: Path, planned_rows: int, last: int) -> dict[str, Any]:
    """Every file under a final shard name has its planned rows; no temporary has such a name."""
    import pyarrow.parquet as pq

    names = sorted(_shards(parquet))
    partial = []
    for name in names:
        first, end = (int(x) for x in name.removesuffix(".parquet").split("-")[1:])
        want = (end - first) * planned_rows
        try:
            rows = pq.ParquetFile(parquet / name).metadata.num_rows
        except Exception:  # noqa: BLE001 - an unreadable file is exactly what is looked for
            rows = -1
        if rows != want:
            partial.append(name)
    return {"visible": len(names), "partial": partial,
            "temporaries": sorted(p.name for p in parquet.glob(".tmp-*"))}


def _final_check(out: Path, n: int, k: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow.parquet as pq

    labels, samples, seed_ids = [], [], []
    for path in sorted((out / "parquet").glob("shard-*.parquet")):
        table = pq.read_table(path, columns=["label", "sample", "seed_id"])
        labels.append(table.column("label").to_numpy())
        samples.append(table.column("sample").to_numpy())
        seed_ids.append(table.column("seed_id").to_numpy())
    label, sample, seed = (np.concatenate(x) for x in (labels, samples, seed_ids))
    keys = np.unique(seed * k + sample)
    planned = set(range(n * k))
    got = set((label * k + sample).tolist())
    leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                       if p.name.startswith(".tmp-") or "parts" in p.relative_to(out).parts)
    return {"rows": len(label), "expected_rows": n * k,
            "duplicates": int(len(label) - len(keys)), "lost": len(planned - got),
            "outside_plan": len(got - planned), "leftover_files": leftovers[:10]}


def run(cfg: BenchPipelineFaultsConfig) -> dict:
    from cemiray.bench.common import write_result
    from cemiray.bench.pipeline import write_seeds
    from cemiray.pipeline.generate.job import GenerateConfig
    from cemiray.runtime.cluster import init_ray

    init_ray(cfg.ray)
    out = Path(storage.absolute(cfg.out))
    dataset = out / "dataset"
    storage.remove(str(dataset), recursive=True)
    n = write_seeds(str(out / "seeds.parquet"), cfg.images, cfg.samples_per_identity)
    k = cfg.samples_per_identity
    gen_cfg = GenerateConfig(
        out=str(dataset), seeds=str(out / "seeds.parquet"), generator=f"null:{cfg.image_size}",
        samples_per_identity=k, identities_per_shard=cfg.identities_per_shard,
        images_per_call=cfg.images_per_call, images_per_chunk=cfg.images_per_chunk,
        preview_identities=2, preview_samples=2, progress_every_s=10,
        distributed={"num_workers": 1, "cpus_per_worker": 0.25, "block_mb": 64,
                     "object_store_budget_mb": 256})
    parquet = dataset / "parquet"
    planned_shards = -(-n // cfg.identities_per_shard)
    proc = _start_driver(gen_cfg)
    kills: dict[str, Any] = {}
    try:
        first = _wait("the first shard", lambda: len(_shards(parquet)), proc, cfg.timeout_s)
        victim = _wait("a live sampler actor", _sampler_pid, proc, cfg.timeout_s)
        os.kill(victim, signal.SIGKILL)
        kills["sampler_actor"] = {"pid": victim, "shards_before": first}
        after = first + cfg.shards_between_kills
        _wait(f"{after} shards", lambda: len(_shards(parquet)) >= after, proc, cfg.timeout_s)
        worker = _wait("a running encode-and-write worker", _encode_worker_pid, proc,
                       cfg.timeout_s)
        os.kill(worker, signal.SIGKILL)
        kills["encode_worker"] = {"pid": worker, "shards_before": len(_shards(parquet))}
        after = kills["encode_worker"]["shards_before"] + cfg.shards_between_kills
        _wait(f"{after} shards", lambda: len(_shards(parquet)) >= after, proc, cfg.timeout_s)
        kills["driver"] = {"pid": proc.pid, "shards_before": len(_shards(parquet))}
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    log = proc.stdout.read()[-2000:]
    time.sleep(2)  # the workers of the dead driver's job are being reaped
    at_kill = _visible_shards_whole(parquet, k, n)
    kept = {name: (parquet / name).stat().st_mtime_ns for name in _shards(parquet)}
    kept_sha = {name: hashlib.sha256((parquet / name).read_bytes()).hexdigest() for name in kept}
    parts_left = sum(1 for _ in (dataset / "parts").rglob("part-*.parquet")) if (
        dataset / "parts").exists() else 0
    if at_kill["visible"] >= planned_shards:
        raise RuntimeError("every shard was written before the driver was killed; raise images")

    from cemiray.bench.pipeline import driver_process

    t0 = time.perf_counter()
    summary, _ = driver_process(gen_cfg, 1.0)
    rerun_seconds = time.perf_counter() - t0
    untouched = all((parquet / name).stat().st_mtime_ns == mtime and hashlib.sha256(
        (parquet / name).read_bytes()).hexdigest() == kept_sha[name]
        for name, mtime in kept.items())
    final = _final_check(dataset, n, k)
    figures = {
        "images": n * k, "identities": n, "shards": planned_shards, "kills": kills,
        "first_run_continued_after_kills": (kills["encode_worker"]["shards_before"] > first and
                                            kills["driver"]["shards_before"] >
                                            kills["encode_worker"]["shards_before"]),
        "at_driver_kill": {**at_kill, "parts_left": parts_left},
        "rerun": {"shards_skipped": summary["shards_skipped"],
                  "shards_written": summary["shards_written"],
                  "images_generated": summary["images_generated"],
                  "images_reused": summary["images_reused"],
                  "parts_reused": summary["parts_reused"],
                  "kept_shards_untouched": untouched, "seconds": round(rerun_seconds, 1)},
        "final": final,
    }
    figures["meets"] = {
        "exact_rows": final["rows"] == final["expected_rows"],
        "no_duplicates": final["duplicates"] == 0, "none_lost": final["lost"] == 0,
        "no_partial_files": not at_kill["partial"] and not final["leftover_files"],
        "finished_shards_reused": (summary["shards_skipped"] == len(kept) and untouched),
        "rerun_sampled_only_the_rest": (summary["images_generated"] + summary["images_reused"]
                                        == (planned_shards - len(kept)) *
                                        cfg.identities_per_shard * k
                                        if n % cfg.identities_per_shard == 0 else None),
    }
    url = write_result(str(out), "bench_pipeline_faults", cfg.model_dump(), figures)
    if cfg.results:
        storage.atomic_write_text(cfg.results, storage.read_text(url))
    print(f"bench-pipeline-faults: killed sampler actor, encode worker and driver at "
          f"{kills['driver']['shards_before']}/{planned_shards} shards; rerun kept "
          f"{summary['shards_skipped']}, reused {summary['images_reused']} images from "
          f"{summary['parts_reused']} parts; final {final['rows']} rows of "
          f"{final['expected_rows']}, {final['duplicates']} duplicates, {final['lost']} lost "
          f"→ {url}\n{'' if all(figures['meets'].values()) else log}")
    return {"results": url, **figures}
