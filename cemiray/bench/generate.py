"""`cemiray bench-generate` (bench): what the Ray Data `generate` pipeline costs over sampling.

1. Efficiency: img/s of the whole `generate` job (sampler actor pool, PNG encoding tasks, driver
   writing Parquet shards) ÷ img/s of a bare in-process loop calling `CemiFacePipeline` on the
   job's own micro-batches with the same generator, recogniser (the sampler scores every image),
   `images_per_call`, steps and torch threads (a sampler actor runs with Ray's OMP_NUM_THREADS:
   floor(num_cpus), at least 1). Both rates are steady-state, from the jobs' own timings
   (manifest `run`): a job's steady window runs from its first delivered batch to its last
   image, which leaves actor start-up and model loading out. The first delivery comes late (the
   first PNG-encoding task starts cold, so two micro-batches arrive together), so one run's
   images ÷ window overstates the rate by about one micro-batch; the pipeline's rate is
   therefore taken from a run and its half-size twin, (extra images) ÷ (extra window time),
   which cancels that. The single-run figure is reported beside it. The bare loop is timed from
   the end of its first micro-batch to the end of its last.
2. Scaling: img/s with a fixed pool of `scaling_workers` actors ÷ img/s with one.
3. Memory: peak object-store bytes in use (polled from the raylet) and peak resident memory of
   this process and of every process under it (a local cluster's raylet and workers), plus the
   driver's peak shard buffer from the manifest.

Runs alternate (1 actor, bare, 1 actor half, N actors, N actors half; again) and each figure is
the median of the per-repeat ratios. `bare_spread` (fastest ÷ slowest bare-loop repeat) shows how
much the machine itself moved during the run: ratios are only as good as that. The models are random (sampling speed does not depend on
the weights), written in their real formats under `out/inputs`.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from typing import Any, Literal, Self

from pydantic import Field

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

GOAL_EFFICIENCY = 0.90


class BenchGenerateConfig(JobConfig):
    out: str = "runs/bench_generate"
    preset: Literal["tiny", "small", "paper"] = "tiny"
    preset_overrides: dict[str, Any] = Field(default_factory=dict, description="generator preset "
                                             "fields replaced (e.g. block_out_channels=[16,32])")
    id_dim: int = Field(32, ge=1, description="identity embedding size (recogniser output)")
    recognizer_size: int = Field(32, ge=16, description="input size of the random iresnet18")
    identities: int = Field(32, ge=1)
    samples_per_identity: int = Field(8, ge=1)
    identities_per_shard: int = Field(4, ge=1)
    images_per_call: int = Field(16, ge=1)
    steps: int = Field(4, ge=1)
    repeats: int = Field(2, ge=1)
    scaling_workers: int = Field(2, ge=1, description="pool size of the scaling run; 1: no "
                                 "scaling run")
    cpus_per_worker: float = Field(0.5, gt=0, description="≤ 0.5 on a 2-core machine")
    use_gpu: bool = False
    poll_seconds: float = Field(0.5, gt=0, description="memory polling period")
    ray: RayConfig = Field(default_factory=RayConfig)


def actor_threads(cpus_per_worker: float) -> int:
    """The torch threads of a sampler actor: Ray sets OMP_NUM_THREADS = floor(num_cpus), ≥ 1."""
    return max(1, math.floor(cpus_per_worker))


def write_inputs(cfg: BenchGenerateConfig, folder: str) -> dict[str, str]:
    """A random generator of the preset, a random iresnet18 recogniser and two seed tables of
    random identities (all of them, and the first half), saved in their real formats."""
    import torch

    from cemiray.diffusion import (
        CemiFacePipeline,
        build_generator,
        build_sample_scheduler,
        save_pipeline,
    )
    from cemiray.models import get_backbone, save_model_folder
    from cemiray.pipeline.seeds.table import random_identities, write_seed_table

    torch.manual_seed(0)
    overrides = {**cfg.preset_overrides, "id_dim": cfg.id_dim}
    unet, encoder = build_generator(cfg.preset, **overrides)
    pipe = CemiFacePipeline(unet=unet.eval(), condition_encoder=encoder.eval(),
                            scheduler=build_sample_scheduler(cfg.preset, **overrides))
    paths = {"generator": storage.join(folder, "generator"),
             "recognizer": storage.join(folder, "recognizer"),
             "seeds": storage.join(folder, "seeds.parquet"),
             "seeds_half": storage.join(folder, "seeds_half.parquet")}
    save_pipeline(pipe, paths["generator"])
    model = get_backbone("iresnet18", input_size=cfg.recognizer_size, num_features=cfg.id_dim)
    save_model_folder(model, paths["recognizer"], model.config)
    identities = random_identities(cfg.identities, cfg.id_dim, seed=1)
    write_seed_table(paths["seeds"], list(range(cfg.identities)), identities)
    half = cfg.identities // 2
    write_seed_table(paths["seeds_half"], list(range(half)), identities[:half])
    return paths


class MemoryMonitor:
    """Polls, in a thread, the object store's bytes in use (one raylet call per poll) and the
    resident memory of this process and of every process under it, keeping the peaks. Resident
    sizes of processes that map the same shared pages are summed, so the tree figure is an
    upper bound."""

    def __init__(self, period_s: float, driver_pid: int | None = None) -> None:
        self.period_s = period_s
        self.driver_pid = driver_pid  # the driver's process when it is not this one
        self.peak_store_bytes: int | None = None
        self.peak_tree_rss = self.peak_process_rss = self.peak_driver_rss = 0
        self.store_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-monitor", daemon=True)
        self._state = None

    def __enter__(self) -> Self:
        import ray
        from ray._private.internal_api import get_state_from_address

        try:
            self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
        except Exception as exc:  # noqa: BLE001 - a private API; report it instead of failing
            self.store_error = f"{type(exc).__name__}: {exc}"
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self.poll()
            if self._stop.wait(self.period_s):
                self.poll()
                return

    def poll(self) -> None:
        self.poll_rss()
        if self._state is not None and self.store_error is None:
            from ray._private.internal_api import get_memory_info_reply

            try:
                used = get_memory_info_reply(self._state, timeout_seconds=10).store_stats
                self.peak_store_bytes = max(self.peak_store_bytes or 0,
                                            int(used.object_store_bytes_used))
            except Exception as exc:  # noqa: BLE001 - see __enter__
                self.store_error = f"{type(exc).__name__}: {exc}"

    def poll_rss(self) -> None:
        import psutil

        me = psutil.Process()
        sizes = []
        for proc in [me, *me.children(recursive=True)]:
            try:
                sizes.append(proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_tree_rss = max(self.peak_tree_rss, sum(sizes))
        try:
            driver = me if self.driver_pid is None else psutil.Process(self.driver_pid)
            self.peak_driver_rss = max(self.peak_driver_rss, driver.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        self.peak_process_rss = max(self.peak_process_rss, max(sizes))

    def as_dict(self) -> dict[str, Any]:
        mb = 2**20
        return {"peak_object_store_mb": (None if self.peak_store_bytes is None
                                         else round(self.peak_store_bytes / mb, 1)),
                "object_store_poll_error": self.store_error,
                "peak_rss_process_tree_mb": round(self.peak_tree_rss / mb, 1),
                "peak_rss_driver_mb": round(self.peak_driver_rss / mb, 1),
                "peak_rss_largest_process_mb": round(self.peak_process_rss / mb, 1)}


def generate_config(cfg: BenchGenerateConfig, paths: dict[str, str], workers: int, out: str,
                    half: bool = False):
    """The `generate` job of one pipeline run: a fixed pool of `workers` sampler actors, over
    all identities or the first half."""
    from cemiray.pipeline.generate.job import GenerateConfig

    return GenerateConfig(
        out=out, seeds=paths["seeds_half" if half else "seeds"], generator=paths["generator"],
        recognizer=paths["recognizer"], samples_per_identity=cfg.samples_per_identity,
        identities_per_shard=cfg.identities_per_shard, sampling={"steps": cfg.steps},
        images_per_call=cfg.images_per_call, ray=cfg.ray,
        distributed={"num_workers": workers, "min_workers": workers, "initial_workers": workers,
                     "cpus_per_worker": cfg.cpus_per_worker, "use_gpu": cfg.use_gpu})


def pipeline_run(cfg: BenchGenerateConfig, paths: dict[str, str], workers: int, out: str,
                 half: bool = False) -> dict[str, Any]:
    """One `generate` job into a fresh folder, with memory polled while it runs. The steady
    window runs from the first delivered batch to the last image (the job's own timing)."""
    from cemiray.pipeline.generate.job import run as generate

    with MemoryMonitor(cfg.poll_seconds) as monitor:
        summary = generate(generate_config(cfg, paths, workers, out, half))
    rate = summary["steady_images_per_s"]
    if not rate:
        raise ValueError(f"bench-generate: the run in {out} delivered all its images in one "
                         "batch; raise identities or samples_per_identity")
    window = summary["generation_seconds"] - summary["first_images_after_seconds"]
    return {"steady_img_per_s": rate, "window_s": round(window, 3),
            "window_images": round(rate * window),
            "img_per_s_with_startup": summary["images_per_s"],
            "first_images_after_s": summary["first_images_after_seconds"],
            "peak_open_images": summary["peak_open_images"],
            "workers_used": len(summary["sampler_workers"]), **monitor.as_dict()}


def micro_batches(gen_cfg: Any, table: Any) -> list[dict[str, Any]]:
    """The sampler calls of a `generate` job, as its actors make them: the job's chunks
    (shard_plan.work_items) cut into micro-batches of at most `images_per_call` images, each
    with its identities' embeddings, target similarities and noise seeds."""
    from cemiray.pipeline.generate.shard_plan import identities_per_chunk, plan_shards, work_items

    per_chunk = identities_per_chunk(gen_cfg.samples_per_identity, gen_cfg.chunk_images)
    calls = []
    for spec in plan_shards(len(table), gen_cfg.identities_per_shard):
        for item in work_items(spec, table, gen_cfg.samples_per_identity, gen_cfg.schedule,
                               gen_cfg.seed, per_chunk):
            position = item["image_identity"]
            for start in range(0, len(position), gen_cfg.images_per_call):
                part = slice(start, start + gen_cfg.images_per_call)
                calls.append({"ids": item["embeddings"][position[part]],
                              "targets": item["targets"][part],
                              "seeds": item["seeds"][part].tolist()})
    return calls


class BareLoop:
    """The sampler without Ray: the same pipeline and recogniser, called in this process on the
    job's own micro-batches (same embeddings, targets and seeds), with the actor's threads."""

    def __init__(self, cfg: BenchGenerateConfig, paths: dict[str, str]) -> None:
        from cemiray.diffusion.pipeline import load_pipeline
        from cemiray.models.recognizer import load_recognizer
        from cemiray.pipeline.seeds.table import read_seed_table

        gen_cfg = generate_config(cfg, paths, 1, storage.join(cfg.out, "unused"))
        self.device = "cuda" if cfg.use_gpu else "cpu"
        self.pipe = load_pipeline(paths["generator"]).to(self.device)
        self.recognizer = load_recognizer(paths["recognizer"], self.device)
        self.calls = micro_batches(gen_cfg, read_seed_table(paths["seeds"]))
        self.sampling = gen_cfg.sampling
        self.threads = actor_threads(cfg.cpus_per_worker)

    def img_per_s(self) -> float:
        """Images after the first micro-batch ÷ time from its end to the end of the last."""
        import torch

        from cemiray.diffusion.closed_loop import sample

        if len(self.calls) < 2:
            raise ValueError("bench-generate: the work fits one micro-batch; raise identities or "
                             "samples_per_identity so a steady state exists")
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            first_end, images = None, 0
            for call in self.calls:
                out = sample(self.pipe, self.sampling, torch.from_numpy(call["ids"]),
                             torch.as_tensor(call["targets"], dtype=torch.float32),
                             call["seeds"], self.recognizer, output_type="np",
                             device=self.device)
                if first_end is None:
                    first_end = time.perf_counter()
                else:
                    images += len(out.images)
            return images / (time.perf_counter() - first_end)
        finally:
            torch.set_num_threads(before)


def window_rate(full: dict[str, Any], half: dict[str, Any]) -> float:
    """Steady img/s from a run and its half-size twin: extra images in the steady window ÷ extra
    window time. The first delivery comes late (the first PNG-encoding task starts cold, so two
    micro-batches arrive at once), which shortens every window by the same amount; the
    difference cancels it, where a single run's images ÷ window overstates the rate."""
    images = full["window_images"] - half["window_images"]
    seconds = full["window_s"] - half["window_s"]
    if images <= 0 or seconds <= 0:
        raise ValueError(f"bench-generate: the full run ({full['window_images']} images in "
                         f"{full['window_s']} s) is not longer than the half run "
                         f"({half['window_images']} in {half['window_s']} s); raise identities")
    return images / seconds


def run(cfg: BenchGenerateConfig) -> dict:
    from cemiray.bench.common import median_ratio, write_result
    from cemiray.runtime.cluster import init_ray

    if cfg.identities // 2 < 1:
        raise ValueError("bench-generate: identities must be at least 2 (a half-size run is "
                         "compared with the full one)")
    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out)})
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    paths = write_inputs(cfg, storage.join(cfg.out, "inputs"))
    runs_url = storage.join(cfg.out, "runs")
    if storage.exists(runs_url):
        storage.remove(runs_url, recursive=True)
    load = os.getloadavg()[0]
    bare = BareLoop(cfg, paths)
    pools = [1] + ([cfg.scaling_workers] if cfg.scaling_workers > 1 else [])
    runs: dict[int, list[tuple[dict, dict]]] = {w: [] for w in pools}
    bare_rates: list[float] = []
    for rep in range(cfg.repeats):
        line = f"bench-generate: repeat {rep}:"
        for workers in pools:
            folder = storage.join(runs_url, f"{rep}-{workers}actor")
            full = pipeline_run(cfg, paths, workers, folder)
            if workers == 1:
                bare_rates.append(bare.img_per_s())
            half = pipeline_run(cfg, paths, workers, folder + "-half", half=True)
            runs[workers].append((full, half))
            line += f" pipeline ({workers} actor(s)) {window_rate(full, half):.2f} img/s,"
            if workers == 1:
                line += f" bare loop {bare_rates[-1]:.2f} img/s,"
        print(line.rstrip(","), flush=True)
    rates = {w: [window_rate(f, h) for f, h in pairs] for w, pairs in runs.items()}
    first_delivery = [f["steady_img_per_s"] for f, _ in runs[1]]
    figures: dict[str, Any] = {
        "steady_state": "pipeline: (images after the first delivered batch, full run − half "
                        "run) ÷ (first-delivery-to-last-image time, full − half), from the "
                        "jobs' own timings; bare loop: images after its first micro-batch ÷ "
                        "time from its end to the last",
        "bare_loop_torch_threads": bare.threads,
        "images_per_run": {"full": cfg.identities * cfg.samples_per_identity,
                           "half": cfg.identities // 2 * cfg.samples_per_identity},
        "pipeline_img_per_s": rates[1], "bare_img_per_s": bare_rates,
        "pipeline_over_bare": median_ratio(rates[1], bare_rates),
        "pipeline_first_delivery_img_per_s": first_delivery,
        "pipeline_over_bare_first_delivery": median_ratio(first_delivery, bare_rates),
        "goal": GOAL_EFFICIENCY,
        "bare_spread": max(bare_rates) / min(bare_rates),
    }
    figures["meets_goal"] = figures["pipeline_over_bare"] >= GOAL_EFFICIENCY
    if cfg.scaling_workers > 1:
        n = cfg.scaling_workers
        figures.update({"scaling_workers": n, "pipeline_n_actors_img_per_s": rates[n],
                        "scaling_n_over_1": median_ratio(rates[n], rates[1])})
    every = [r for pairs in runs.values() for pair in pairs for r in pair]
    figures["runs"] = {str(w): [{"full": f, "half": h} for f, h in pairs]
                       for w, pairs in runs.items()}
    store = [r["peak_object_store_mb"] for r in every if r["peak_object_store_mb"] is not None]
    figures["peak_object_store_mb"] = max(store) if store else None
    figures["peak_rss_process_tree_mb"] = max(r["peak_rss_process_tree_mb"] for r in every)
    figures["peak_rss_largest_process_mb"] = max(r["peak_rss_largest_process_mb"] for r in every)
    figures["peak_open_images"] = max(r["peak_open_images"] for r in every)
    figures["driver_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                         1)
    figures["load_average_1m"] = {"start": load, "end": os.getloadavg()[0]}
    url = write_result(cfg.out, "bench_generate", cfg.model_dump(mode="json"), figures)
    line = (f"bench-generate: pipeline/bare = {figures['pipeline_over_bare']:.3f} "
            f"(goal ≥ {GOAL_EFFICIENCY}; {figures['pipeline_over_bare_first_delivery']:.3f} from "
            "single runs' first-delivery windows)")
    if cfg.scaling_workers > 1:
        line += f"; {cfg.scaling_workers}/1 actors = {figures['scaling_n_over_1']:.2f}"
    line += (f"; peak object store {figures['peak_object_store_mb']} MB, peak RSS (process "
             f"tree) {figures['peak_rss_process_tree_mb']} MB → {url}")
    print(line, flush=True)
    return figures
