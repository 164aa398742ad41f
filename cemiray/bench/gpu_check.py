"""`cemiray gpu-check` (bench): the project's GPU path measured in one command, one JSON object.

Sections: `sampler` (img/s over a batch sweep in bf16 and fp16 autocast, channels_last, and
torch.compile of the UNet at the fastest point; UNet FLOP/s as cemiray.bench.unet_flops counts
them over a GEMM peak measured in the same dtype), `generate` (two sampler actors sharing one
device), `train_fr` (short bf16 Ray Train + DeepSpeed) and `serve` (one `POST /v1/generate` over
HTTP). CUDA gets the paper's sizes (112², 20 DDIM steps), the CPU the same functions at tiny
sizes, so tests keep every line working but the few marked "CUDA-only". The JSON goes to stdout,
the jobs' progress to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import statistics
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

if TYPE_CHECKING:
    import torch

SECTIONS = ("sampler", "generate", "train_fr", "serve")
SectionName = Literal["sampler", "generate", "train_fr", "serve"]
Preset = Literal["tiny", "small", "paper"]
# The generate job's generator on the CPU: the tiny preset cut to 16 px (tests/test_generate).
CPU_GENERATOR = {"image_size": 16, "block_out_channels": [8, 16], "attention_levels": [1],
                 "attention_heads": 2, "cross_attention_dim": 16, "pooled_dim": 16,
                 "sim_dim": 8, "encoder_hidden_dim": 32}


class Sizes(BaseModel):
    """A section's sizes; an unset key takes the scale's value (SCALES)."""

    model_config = ConfigDict(extra="forbid")


class SamplerCheck(Sizes):
    """The sampler sweep; null: the scale's value."""

    preset: Preset | None = None
    preset_overrides: dict[str, Any] | None = Field(None, description="preset fields replaced")
    batches: list[PositiveInt] | None = Field(None, min_length=1, description="images per call")
    steps: int | None = Field(None, ge=1, description="DDIM steps per call")
    dtypes: list[Literal["bfloat16", "float16"]] = Field(["bfloat16", "float16"], min_length=1)
    repeats: int = Field(2, ge=1, description="timed calls per point (median)")
    compile: bool | None = Field(None, description="time torch.compile (None: on CUDA only)")
    compile_backend: str = Field("inductor", description="'eager': traced, no code generated")
    gemm_size: int | None = Field(None, ge=64, description="side of the peak-measuring matmuls")
    gemm_seconds: float | None = Field(None, gt=0, description="time of one GEMM measurement")


class GenerateCheck(Sizes):
    """The `generate` run and the random models it and `serve` use; null: the scale's value."""

    preset: Preset | None = None
    preset_overrides: dict[str, Any] | None = Field(None, description="preset fields replaced")
    id_dim: int | None = Field(None, ge=1, description="identity embedding size")
    recognizer_size: int | None = Field(None, ge=16, description="random iresnet18's input")
    identities: int | None = Field(None, ge=2)
    samples_per_identity: int | None = Field(None, ge=1)
    images_per_call: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=1)


class TrainCheck(Sizes):
    """The `train-fr` run on ToyFaces, one worker; null: the scale's value."""

    backbone: str | None = None
    width: int | None = Field(None, ge=4, description="first-stage channels")
    input_size: int | None = Field(None, ge=16, le=112, description="ToyFaces size and input")
    identities: int | None = Field(None, ge=2)
    samples_per_identity: int | None = Field(None, ge=2)
    batch_size: int | None = Field(None, ge=2)
    steps: int | None = Field(None, ge=2, description="optimizer steps")
    cpus_per_worker: float | None = Field(None, gt=0, description="it decodes and augments")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads (CPU runs)")
    bf16: bool = Field(True, description="DeepSpeed bf16 (false: fp32)")


class ServeCheck(Sizes):
    """The served `POST /v1/generate`; null: the scale's value."""

    images: int | None = Field(None, ge=1, description="images in the request")
    steps: int | None = Field(None, ge=1)
    num_gpus: float | None = Field(None, gt=0, le=1, description="GPU share per model replica")


SCALES: dict[str, dict[str, Sizes]] = {
    "tiny": {
        "sampler": SamplerCheck(preset="tiny", preset_overrides={}, batches=[2, 4], steps=4,
                                repeats=1, gemm_size=512, gemm_seconds=0.2),
        "generate": GenerateCheck(preset="tiny", preset_overrides=CPU_GENERATOR, id_dim=32,
                                  recognizer_size=32, identities=16, samples_per_identity=4,
                                  images_per_call=4, steps=2),
        "train_fr": TrainCheck(backbone="iresnet18", width=8, input_size=32, identities=8,
                               samples_per_identity=8, batch_size=8, steps=6,
                               cpus_per_worker=1.0, torch_threads=2),
        "serve": ServeCheck(images=2, steps=2, num_gpus=0.5)},
    "paper": {
        "sampler": SamplerCheck(preset="paper", preset_overrides={}, batches=[32, 64, 128, 256],
                                steps=20, gemm_size=8192, gemm_seconds=1.0),
        "generate": GenerateCheck(preset="paper", preset_overrides={}, id_dim=512,
                                  recognizer_size=112, identities=64, samples_per_identity=32,
                                  images_per_call=128, steps=20),
        "train_fr": TrainCheck(backbone="iresnet50", width=64, input_size=112, identities=200,
                               samples_per_identity=10, batch_size=128, steps=60,
                               cpus_per_worker=8.0),
        "serve": ServeCheck(images=8, steps=20, num_gpus=0.5)},
}


class GpuCheckConfig(JobConfig):
    out: str = "runs/gpu_check"
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:N")
    scale: Literal["auto", "tiny", "paper"] = Field(
        "auto", description="sizes of every section: auto → paper on CUDA, tiny on the CPU")
    sections: list[SectionName] = Field(default_factory=lambda: list(SECTIONS), min_length=1)
    sampler: SamplerCheck = Field(default_factory=SamplerCheck)
    generate: GenerateCheck = Field(default_factory=GenerateCheck)
    train_fr: TrainCheck = Field(default_factory=TrainCheck)
    serve: ServeCheck = Field(default_factory=ServeCheck)
    ray: RayConfig = Field(default_factory=RayConfig)


def resolve(cfg: GpuCheckConfig, device: torch.device) -> GpuCheckConfig:
    """The config with its scale chosen and every unset section key taken from the scale."""
    scale = cfg.scale if cfg.scale != "auto" else ("paper" if device.type == "cuda" else "tiny")
    updates: dict[str, Any] = {"scale": scale}
    for name, defaults in SCALES[scale].items():
        section = getattr(cfg, name)
        given = section.model_dump(exclude_unset=True, exclude_none=True)
        updates[name] = type(section)(**{**defaults.model_dump(exclude_none=True), **given})
    if updates["sampler"].compile is None:
        updates["sampler"] = updates["sampler"].model_copy(
            update={"compile": device.type == "cuda"})
    return cfg.model_copy(update=updates)


def device_facts(device: torch.device) -> dict[str, Any]:
    import torch

    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else (  # CUDA-only: the GPU's name
        platform.processor() or platform.machine())
    return {"type": device.type, "cuda": cuda, "name": name, "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda}


def build_sampler(preset: str, overrides: dict[str, Any], device: torch.device):
    """A random CemiFace pipeline of the preset on `device`, its UNet channels_last (the
    pipeline does that itself on CUDA; done here so the CPU runs the same layout)."""
    import torch

    from cemiray.diffusion import CemiFacePipeline, build_generator, build_sample_scheduler

    torch.manual_seed(0)
    unet, encoder = build_generator(preset, **overrides)
    pipe = CemiFacePipeline(unet=unet.eval(), condition_encoder=encoder.eval(),
                            scheduler=build_sample_scheduler(preset, **overrides)).to(device)
    pipe.unet.to(memory_format=torch.channels_last)
    return pipe


def sampler_img_per_s(pipe, batch: int, steps: int, dtype: torch.dtype, device: torch.device,
                      repeats: int) -> tuple[float, float]:
    """(median img/s of `repeats` timed calls, seconds of the one-step warm-up before them).
    The pipeline's `autocast` flag means bf16 on CUDA only, so the flag is off and the call runs
    under torch.autocast in either dtype, on CUDA and CPU alike (the encoder under it too)."""
    import torch

    from cemiray.bench.unet_flops import synchronize
    from cemiray.pipeline.seeds.table import random_identities

    ids = torch.from_numpy(random_identities(batch, pipe.condition_encoder.config.id_dim))
    seeds = list(range(batch))

    def seconds(n_steps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            pipe(ids, 0.5, seeds, num_inference_steps=n_steps, device=device, autocast=False)
        synchronize(device)
        return time.perf_counter() - start

    warm_up = seconds(1)
    return statistics.median(batch / seconds(steps) for _ in range(repeats)), warm_up


def sampler_section(s: SamplerCheck, device: torch.device) -> dict[str, Any]:
    import torch

    from cemiray.bench.unet_flops import measured_gemm_peak, unet_flops_per_image

    flops = unet_flops_per_image(s.preset, **s.preset_overrides)
    pipe = build_sampler(s.preset, s.preset_overrides, device)
    peaks, points = {}, []
    for dtype_name in s.dtypes:
        dtype = getattr(torch, dtype_name)
        peaks[dtype_name] = measured_gemm_peak(device, dtype, s.gemm_size, s.gemm_seconds)
        for batch in s.batches:
            rate, _ = sampler_img_per_s(pipe, batch, s.steps, dtype, device, s.repeats)
            points.append(point(dtype_name, batch, rate, flops * s.steps, peaks[dtype_name],
                                compiled=False))
            print(f"gpu-check: sampler {dtype_name} batch {batch}: {rate:.3g} img/s, "
                  f"{points[-1]['utilisation']:.3f} of the GEMM peak", flush=True)
    fastest = max(points, key=lambda p: p["img_per_s"])
    compiled: dict[str, Any] = {"skipped": "cpu: compile not timed" if device.type == "cpu"
                                else "compile=false"}
    if s.compile:
        compiled = compiled_point(pipe, s, fastest, device, flops * s.steps, peaks)
        fastest = max(fastest, compiled, key=lambda p: p["img_per_s"])
    return {"preset": s.preset, "image_size": pipe.unet.config.sample_size, "steps": s.steps,
            "channels_last": True, "flops_per_image_step": flops,
            "gemm_size": s.gemm_size, "gemm_flops_per_s": peaks, "eager": points,
            "compiled": compiled, "fastest": fastest}


def point(dtype: str, batch: int, rate: float, flops_per_image: float, peak: float,
          **extra: Any) -> dict[str, Any]:
    """One measured point: img/s, the UNet FLOP/s it implies and their share of the peak."""
    achieved = rate * flops_per_image
    return {"dtype": dtype, "batch": batch, "img_per_s": rate, "unet_flops_per_s": achieved,
            "utilisation": achieved / peak, **extra}


def compiled_point(pipe, s: SamplerCheck, at: dict[str, Any], device: torch.device,
                   flops_per_image: float, peaks: dict[str, float]) -> dict[str, Any]:
    """The point `at` again, the UNet's forward under torch.compile (compiled in the warm-up)."""
    import torch

    pipe.unet.forward = torch.compile(pipe.unet.forward, backend=s.compile_backend)
    try:
        rate, first = sampler_img_per_s(pipe, at["batch"], s.steps, getattr(torch, at["dtype"]),
                                        device, s.repeats)
    finally:
        del pipe.unet.forward  # the class's forward again
    return point(at["dtype"], at["batch"], rate, flops_per_image, peaks[at["dtype"]],
                 compiled=True, backend=s.compile_backend, compile_seconds=first,
                 speedup_over_eager=rate / at["img_per_s"])


def generate_section(g: GenerateCheck, paths: dict[str, str], out: str, cuda: bool,
                     ray: RayConfig) -> dict[str, Any]:
    from cemiray.pipeline.generate.job import GenerateConfig
    from cemiray.pipeline.generate.job import run as generate

    summary = generate(GenerateConfig(
        out=out, seeds=paths["seeds"], generator=paths["generator"],
        recognizer=paths["recognizer"], samples_per_identity=g.samples_per_identity,
        identities_per_shard=max(1, g.identities // 4), images_per_call=g.images_per_call,
        sampling={"steps": g.steps}, ray=ray,
        distributed={"num_workers": 2, "min_workers": 2, "use_gpu": cuda,
                     "gpus_per_worker": 0.5, "cpus_per_worker": 0.5}))
    workers = summary["sampler_workers"]
    return {"preset": g.preset, "steps": g.steps, "images": summary["counts"]["images"],
            "images_per_s": summary["images_per_s"],
            "steady_images_per_s": summary["steady_images_per_s"],
            "sampler_workers": len(workers), "images_per_worker": sorted(workers.values())}


def train_section(t: TrainCheck, out: str, cuda: bool, ray: RayConfig) -> dict[str, Any]:
    """Steady img/s of a short train-fr: the median of its logged windows after the first."""
    from cemiray.data.sources import Source
    from cemiray.train.engine import read_metrics
    from cemiray.train.fr import TrainFRConfig
    from cemiray.train.fr import run as train_fr

    source = Source.toyfaces(range(t.identities), samples=t.samples_per_identity,
                             size=t.input_size)
    dist = {"num_workers": 1, "use_gpu": cuda, "cpus_per_worker": t.cpus_per_worker,
            "torch_threads": t.torch_threads, "zero_stage": 1, "bf16": t.bf16,
            "checkpoint_every": 10**6, "progress_every_s": 0}
    summary = train_fr(TrainFRConfig(
        out=out, data=source.uri, backbone=t.backbone, width=t.width, input_size=t.input_size,
        batch_size=t.batch_size, max_steps=t.steps, log_every=max(1, t.steps // 3),
        eval_every=10**6, distributed=dist, ray=ray))
    rates = [r["img_per_s"] for r in read_metrics(storage.join(out, "metrics.jsonl"))
             if r["event"] == "train" and "img_per_s" in r]
    rate = statistics.median(rates[1:] or rates)
    return {"backbone": t.backbone, "width": t.width, "input_size": t.input_size,
            "batch_size": t.batch_size, "bf16": t.bf16, "workers": 1, "steps": summary["step"],
            "img_per_s": rate, "steps_per_s": rate / t.batch_size, "windows": len(rates),
            "seconds": summary["seconds"]}


def serve_section(s: ServeCheck, paths: dict[str, str], id_dim: int, cuda: bool,
                  ray: RayConfig) -> dict[str, Any]:
    """Serve started on a free loopback port, one warm-up and one timed `POST /v1/generate`,
    then Serve shut down: it must not run before (it is ours to shut down)."""
    import numpy as np
    import requests
    from ray import serve

    from cemiray.bench.serve import free_port
    from cemiray.runtime.cluster import init_ray
    from cemiray.serve.app import ServeConfig
    from cemiray.serve.app import run as start_app

    init_ray(ray)
    running = serve.status()
    if running.proxies or running.applications:
        raise ValueError("gpu-check: Ray Serve already runs on this cluster; gpu-check starts "
                         "and shuts down its own, so run it where none runs")
    cfg = ServeConfig(recognizer=paths["recognizer"], generator=paths["generator"], ray=ray,
                      port=free_port(), block=False, app_name="gpu-check", use_gpu=cuda,
                      num_gpus=s.num_gpus, default_steps=s.steps, max_steps=max(50, s.steps),
                      max_images_per_request=max(32, s.images),
                      max_image_steps=max(2048, s.images * s.steps))
    identity = np.random.default_rng(0).standard_normal(id_dim)
    body = {"embedding": identity.tolist(), "m": [0.5], "images_per_m": s.images,
            "steps": s.steps, "seed": 0}
    times: list[float] = []
    try:
        url = start_app(cfg) + "/v1/generate"
        with requests.Session() as session:
            for _ in range(2):  # a first request (models warm up), then the timed one
                start = time.perf_counter()
                reply = session.post(url, json=body, timeout=600)
                times.append(time.perf_counter() - start)
    finally:
        serve.shutdown()
    images = reply.json().get("images", []) if reply.status_code == 200 else []
    return {"status": reply.status_code, "latency_ms": times[-1] * 1e3,
            "first_latency_ms": times[0] * 1e3, "images": len(images), "steps": s.steps}


class GpuCheckFailed(RuntimeError):
    """A section failed; raised once the JSON, with every section's figures or error, is out."""

    def __init__(self, figures: dict[str, Any]) -> None:
        self.figures = figures
        errors = "; ".join(f"{n}: {figures[n]['error']}" for n in figures["failed"])
        super().__init__(f"gpu-check: {errors} (tracebacks above, figures in the JSON)")


def run(cfg: GpuCheckConfig) -> dict:
    """Run the chosen sections in order, write and print one JSON object; raise GpuCheckFailed
    after it if a section failed (the others still run)."""
    import torch

    from cemiray.bench.common import write_result
    from cemiray.bench.generate import BenchGenerateConfig, write_inputs
    from cemiray.bench.unet_flops import resolve_device

    started = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg = resolve(cfg.model_copy(update={"out": storage.absolute(cfg.out)}), device)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    cuda, out, ray = device.type == "cuda", cfg.out, cfg.ray
    g = cfg.generate  # random generator, iresnet18 and seed table, for generate and serve
    models = functools.cache(lambda: write_inputs(BenchGenerateConfig(
        preset=g.preset, preset_overrides=g.preset_overrides, id_dim=g.id_dim,
        recognizer_size=g.recognizer_size, identities=g.identities), fresh(out, "inputs")))
    sections = {
        "sampler": lambda: sampler_section(cfg.sampler, device),
        "generate": lambda: generate_section(g, models(), fresh(out, "generate"), cuda, ray),
        "train_fr": lambda: train_section(cfg.train_fr, fresh(out, "train_fr"), cuda, ray),
        "serve": lambda: serve_section(cfg.serve, models(), g.id_dim, cuda, ray)}
    figures: dict[str, Any] = {"device": {**device_facts(device), "scale": cfg.scale}}
    stdout = sys.stdout  # the JSON's; everything else printed meanwhile goes to stderr (Ray's
    with contextlib.redirect_stdout(sys.stderr):  # late messages may still follow the JSON)
        for name in [n for n in SECTIONS if n in cfg.sections]:
            figures[name] = timed(sections[name])
            torch.cuda.empty_cache()  # a no-op unless CUDA was used: the actors get the memory
        figures["failed"] = [n for n in SECTIONS if "error" in figures.get(n, {})]
        figures["wall_seconds"] = round(time.perf_counter() - started, 1)
        url = write_result(cfg.out, "gpu_check", cfg.model_dump(mode="json"), figures)
        print(storage.read_text(url), end="", file=stdout, flush=True)
    if figures["failed"]:
        raise GpuCheckFailed(figures)
    return figures


def timed(section) -> dict[str, Any]:
    """A section's figures and seconds, or its error (last line; the traceback to stderr)."""
    start = time.perf_counter()
    try:
        figures = section()
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON, raised after it
        traceback.print_exc()
        figures = {"error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[-1]}"}
    return {**figures, "section_seconds": round(time.perf_counter() - start, 1)}


def fresh(out: str, name: str) -> str:
    url = storage.join(out, name)
    if storage.exists(url):  # a rerun must not resume the last run's job
        storage.remove(url, recursive=True)
    return url
