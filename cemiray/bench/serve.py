"""`cemiray bench-serve`: what serving over HTTP costs over calling the models in-process.

1. Embedding efficiency: images/s through `POST /v1/embed` with `clients` concurrent clients
   (threads with keep-alive sessions on loopback, one PNG per request, at most
   `requests_per_client` requests or `max_seconds` each) ÷ images/s of `Recognizer.embed` on the
   same model in this process, in batches of the server's `max_batch_size` and with the
   replica's torch threads (Ray's OMP_NUM_THREADS = floor(num_cpus), at least 1).
   HTTP and in-process runs alternate; the figure is the median of the per-repeat ratios.
   Request latency p50/p99 comes from every timed HTTP request.
2. Generation latency: `POST /v1/generate` for 1 and 8 images (one client, sequential) and the
   same sampler call in-process, alternating; p50 of each and their ratio.
3. Hostile traffic (`hostile=true`, cemiray.bench.serve_hostile): /healthz with N stalled
   clients open, and the answers to oversized requests.

Every request goes through the production guards: an API key, the body deadline, the part, item
and pixel limits.

The app is started on a free loopback port of the local (or joined) Ray cluster and Serve is
shut down at the end. Models default to random ones written under `out/inputs` (speed does not
depend on the weights); `recognizer=` / `generator=` take real ones.
"""

from __future__ import annotations

import base64
import math
import os
import socket
import threading
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field, PositiveInt

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

GOAL_EFFICIENCY = 0.80
BENCH_KEY = "cemiray-bench-key"


class BenchServeConfig(JobConfig):
    out: str = "runs/bench_serve"
    recognizer: str | None = Field(None, description="recogniser URI; None: random iresnet18")
    generator: str | None = Field(None, description="pipeline folder; None: random generator")
    recognizer_size: int = Field(112, ge=16, description="input size of the random iresnet18")
    id_dim: int = Field(512, ge=1, description="embedding size of the random recogniser")
    generator_preset: Literal["tiny", "small", "paper"] = "tiny"
    clients: int = Field(16, ge=1)
    requests_per_client: int = Field(16, ge=1)
    max_seconds: float = Field(60.0, gt=0, description="time bound of one HTTP measurement")
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    num_cpus: float = Field(0.25, gt=0, description="CPUs per replica")
    repeats: int = Field(2, ge=1)
    generate_counts: list[PositiveInt] = Field(default_factory=lambda: [1, 8], min_length=1)
    generate_requests: int = Field(3, ge=1, description="timed requests per count and repeat")
    generate_steps: int = Field(20, ge=1)
    port: int | None = Field(None, ge=1, le=65535, description="None: a free port")
    hostile: bool = Field(True, description="also measure slow clients and oversized requests")
    slow_clients: list[PositiveInt] = Field(default_factory=lambda: [32, 128, 240, 300])
    body_timeout_s: float = Field(10.0, gt=0)
    results: str | None = Field(None, description="also write the result JSON here (e.g. "
                                "docs/results/serve.json)")
    ray: RayConfig = Field(default_factory=RayConfig)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def replica_threads(num_cpus: float) -> int:
    """Torch threads of a Serve replica: Ray sets OMP_NUM_THREADS = floor(num_cpus), ≥ 1."""
    return max(1, math.floor(num_cpus))


def write_models(cfg: BenchServeConfig, folder: str) -> tuple[str, str]:
    """Random models in their real formats, for the URIs the config leaves unset."""
    import torch

    from cemiray.diffusion import (
        CemiFacePipeline,
        build_generator,
        build_sample_scheduler,
        save_pipeline,
    )
    from cemiray.models import get_backbone, load_recognizer, save_model_folder

    torch.manual_seed(0)
    recognizer = cfg.recognizer
    if recognizer is None:
        recognizer = storage.join(folder, "recognizer")
        model = get_backbone("iresnet18", input_size=cfg.recognizer_size, num_features=cfg.id_dim)
        save_model_folder(model, recognizer, model.config)
    generator = cfg.generator
    if generator is None:
        generator = storage.join(folder, "generator")
        dim = load_recognizer(recognizer).dim
        unet, encoder = build_generator(cfg.generator_preset, id_dim=dim)
        pipe = CemiFacePipeline(unet=unet.eval(), condition_encoder=encoder.eval(),
                                scheduler=build_sample_scheduler(cfg.generator_preset, id_dim=dim))
        save_pipeline(pipe, generator)
    return recognizer, generator


def probe_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image of the recogniser's input size (no resize server-side)."""
    from cemiray.data.images import resize

    coarse = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return resize(coarse, size)


class Clients:
    """`clients` threads posting to one URL at once; each stops after `count` requests or when
    `max_seconds` have passed since the common start."""

    def __init__(self, url: str, body: bytes, clients: int, key: str = BENCH_KEY) -> None:
        self.url, self.body, self.clients, self.key = url, body, clients, key

    def run(self, count: int, max_seconds: float) -> dict[str, Any]:
        import requests

        start_line = threading.Barrier(self.clients + 1)
        latencies: list[list[float]] = [[] for _ in range(self.clients)]
        ends: list[float] = [0.0] * self.clients
        errors: list[str] = []
        deadline = [0.0]

        def client(i: int) -> None:
            with requests.Session() as session:
                session.headers["Content-Type"] = "application/json"
                session.headers["X-API-Key"] = self.key
                start_line.wait()
                for _ in range(count):
                    if time.perf_counter() > deadline[0]:
                        break
                    t0 = time.perf_counter()
                    reply = session.post(self.url, data=self.body, timeout=max_seconds + 60)
                    if reply.status_code != 200:
                        errors.append(f"HTTP {reply.status_code}: {reply.text[:200]}")
                        return
                    latencies[i].append(time.perf_counter() - t0)
                ends[i] = time.perf_counter()

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(self.clients)]
        for t in threads:
            t.start()
        begin = time.perf_counter()
        deadline[0] = begin + max_seconds
        start_line.wait()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"bench-serve: {self.url} failed: {errors[0]}")
        done = [x for per in latencies for x in per]
        return {"requests": len(done), "seconds": max(ends) - begin, "latencies": done}


def inprocess_img_per_s(recognizer: Any, image: np.ndarray, images: int, batch: int,
                        threads: int) -> float:
    """`Recognizer.embed` on `images` copies of the image in batches of `batch`."""
    import torch

    stack = np.repeat(image[None], batch, axis=0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        recognizer.embed(stack, batch_size=batch)
        start, done = time.perf_counter(), 0
        while done < images:
            n = min(batch, images - done)
            recognizer.embed(stack[:n], batch_size=batch)
            done += n
        return done / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)


def embed_efficiency(cfg: BenchServeConfig, base_url: str, recognizer: Any) -> dict[str, Any]:
    """HTTP and in-process embedding throughput, alternating, after one warm-up round; the
    recogniser replica's batch sizes (from /v1/models) cover the warm-up and timed requests."""
    import json

    import requests

    from cemiray.bench.common import median_ratio
    from cemiray.data.images import encode_png

    image = probe_image(recognizer.input_size)
    body = json.dumps({"images": [{"data": base64.b64encode(encode_png(image)).decode()}]})
    clients = Clients(f"{base_url}/v1/embed", body.encode(), cfg.clients)
    clients.run(2, cfg.max_seconds)
    threads = replica_threads(cfg.num_cpus)
    http, local, latencies = [], [], []
    for rep in range(cfg.repeats):
        result = clients.run(cfg.requests_per_client, cfg.max_seconds)
        http.append(result["requests"] / result["seconds"])
        latencies += result["latencies"]
        local.append(inprocess_img_per_s(recognizer, image, result["requests"],
                                         cfg.max_batch_size, threads))
        print(f"bench-serve: repeat {rep}: HTTP {http[-1]:.1f} img/s ({result['requests']} "
              f"requests), in-process {local[-1]:.1f} img/s", flush=True)
    batches = requests.get(f"{base_url}/v1/models", timeout=60, headers={
        "X-API-Key": BENCH_KEY}).json()["recognizer"]["details"]
    ratio = median_ratio(http, local)
    ms = np.asarray(latencies) * 1e3
    return {"http_img_per_s": http, "inprocess_img_per_s": local, "http_over_inprocess": ratio,
            "goal": GOAL_EFFICIENCY, "meets_goal": ratio >= GOAL_EFFICIENCY,
            "inprocess_spread": max(local) / min(local),
            "latency_ms_p50": float(np.percentile(ms, 50)),
            "latency_ms_p99": float(np.percentile(ms, 99)), "timed_requests": len(latencies),
            "mean_batch": batches["items"] / max(1, batches["batches"]),
            "largest_batch": batches["largest_batch"], "inprocess_torch_threads": threads,
            "image_size": int(recognizer.input_size)}


def http_generate_seconds(session: Any, url: str, body: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    reply = session.post(url, json=body, timeout=600)
    if reply.status_code != 200:
        raise RuntimeError(f"bench-serve: {url}: HTTP {reply.status_code}: {reply.text[:200]}")
    return time.perf_counter() - t0


def local_generate_seconds(pipe: Any, ids: Any, seeds: list[int], steps: int, recognizer: Any,
                           threads: int) -> float:
    """The generator deployment's sampler call, in this process with the replica's threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        pipe(ids, 0.5, seeds, num_inference_steps=steps, recognizer=recognizer)
        return time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def generate_latency(cfg: BenchServeConfig, base_url: str, generator: str,
                     recognizer: Any) -> dict[str, Any]:
    """p50 latency of /v1/generate and of the same sampler call in-process, per image count,
    alternating (HTTP, in-process, ...) after one warm-up of each."""
    import requests
    import torch

    from cemiray.bench.common import median_ratio
    from cemiray.diffusion.pipeline import load_pipeline

    pipe = load_pipeline(generator)
    identity = np.random.default_rng(3).standard_normal(recognizer.dim)
    identity /= np.linalg.norm(identity)
    threads = replica_threads(cfg.num_cpus)
    url = f"{base_url}/v1/generate"
    out: dict[str, Any] = {"steps": cfg.generate_steps}
    with requests.Session() as session:
        session.headers["X-API-Key"] = BENCH_KEY
        for n in cfg.generate_counts:
            body = {"embedding": identity.tolist(), "m": [0.5], "images_per_m": n,
                    "steps": cfg.generate_steps}
            ids = torch.from_numpy(np.repeat(identity[None].astype(np.float32), n, axis=0))
            served, inproc = [], []
            for i in range(1 + cfg.generate_requests * cfg.repeats):
                seed = 100 * i
                served.append(http_generate_seconds(session, url, {**body, "seed": seed}))
                inproc.append(local_generate_seconds(pipe, ids, list(range(seed, seed + n)),
                                                     cfg.generate_steps, recognizer, threads))
            served, inproc = served[1:], inproc[1:]
            out[str(n)] = {"http_latency_ms_p50": float(np.median(served) * 1e3),
                           "inprocess_latency_ms_p50": float(np.median(inproc) * 1e3),
                           "http_over_inprocess_latency": median_ratio(served, inproc)}
            print(f"bench-serve: generate {n} image(s), {cfg.generate_steps} steps: HTTP p50 "
                  f"{out[str(n)]['http_latency_ms_p50']:.0f} ms, in-process p50 "
                  f"{out[str(n)]['inprocess_latency_ms_p50']:.0f} ms", flush=True)
    return out


def run(cfg: BenchServeConfig) -> dict:
    import hashlib

    from ray import serve

    from cemiray.bench.common import write_result
    from cemiray.models.recognizer import load_recognizer
    from cemiray.serve.app import ServeConfig
    from cemiray.serve.app import run as start_app

    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out),
                                 "recognizer": storage.absolute(cfg.recognizer),
                                 "generator": storage.absolute(cfg.generator)})
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    recognizer_uri, generator_uri = write_models(cfg, storage.join(cfg.out, "inputs"))
    longest = max(cfg.generate_counts)
    serve_cfg = ServeConfig(
        recognizer=recognizer_uri, generator=generator_uri, ray=cfg.ray, host="127.0.0.1",
        port=cfg.port or free_port(), block=False, num_cpus=cfg.num_cpus,
        max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s,
        default_steps=min(20, cfg.generate_steps), max_steps=max(50, cfg.generate_steps),
        max_images_per_request=max(32, longest),
        max_image_steps=max(2048, longest * cfg.generate_steps), body_timeout_s=cfg.body_timeout_s,
        api_key_sha256=hashlib.sha256(BENCH_KEY.encode()).hexdigest())
    recognizer = load_recognizer(recognizer_uri)
    load = os.getloadavg()[0]
    try:
        base_url = start_app(serve_cfg)
        figures = {"embed": embed_efficiency(cfg, base_url, recognizer),
                   "generate": generate_latency(cfg, base_url, generator_uri, recognizer),
                   "clients": cfg.clients, "max_batch_size": cfg.max_batch_size}
        if cfg.hostile:
            from cemiray.bench.serve_hostile import hostile_figures

            figures["hostile"] = hostile_figures(base_url, BENCH_KEY, cfg.slow_clients,
                                                 cfg.body_timeout_s, 32)
    finally:
        serve.shutdown()
    figures["load_average_1m"] = {"start": load, "end": os.getloadavg()[0]}
    url = write_result(cfg.out, "bench_serve", cfg.model_dump(mode="json"), figures)
    if cfg.results:
        storage.atomic_write_text(cfg.results, storage.read_text(url))
    e = figures["embed"]
    print(f"bench-serve: HTTP/in-process embedding = {e['http_over_inprocess']:.3f} (goal ≥ "
          f"{GOAL_EFFICIENCY}), p50 {e['latency_ms_p50']:.0f} ms, p99 {e['latency_ms_p99']:.0f} "
          f"ms with {cfg.clients} clients, mean recogniser batch {e['mean_batch']:.1f} → {url}",
          flush=True)
    return figures
