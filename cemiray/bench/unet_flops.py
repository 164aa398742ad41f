"""`cemiray bench-unet`: how close the CemiFace UNet runs to this machine's dense-matmul speed.

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` over one forward of
one image at one timestep, on the meta device (no memory, no arithmetic; a multiply-add counts
2). The ceiling is measured, not taken from a data sheet: large square matmuls in the same dtype,
timed in the same run. The figure is achieved FLOP/s ÷ GEMM FLOP/s, per preset, with the two
measurements alternated (GEMM, UNet, GEMM, UNet, ...) and the median of the per-repeat ratios
reported, so a machine shared with other work biases both sides alike.

On CUDA the UNet runs as the sampler runs it (bf16 autocast, channels_last; cemiray.diffusion.
pipeline), devices are synchronised only around timed regions, and the whole sampler's img/s at
the paper preset (112², 20 DDIM steps) is measured too; the goal there is ≥ 250 img/s on an H100.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt

from cemiray.data import storage
from cemiray.runtime.config import JobConfig

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")
CPU_BATCH = {"tiny": 16, "small": 8, "paper": 1}
CUDA_BATCH = {"tiny": 256, "small": 256, "paper": 128}
GOAL_PAPER_IMG_PER_S = 250.0


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but torch sees no CUDA device")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 on CUDA (the sampler's autocast dtype), fp32 on the CPU."""
    import torch

    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {DTYPES} or 'auto'")
    return getattr(torch, name)


def synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_unet(preset: str, device: torch.device | str = "cpu", **overrides: Any):
    """A randomly initialised UNet of a preset, in eval mode without gradients."""
    import torch
    from diffusers import UNet2DConditionModel

    from cemiray.diffusion.presets import resolve_preset

    with torch.device(device):
        unet = UNet2DConditionModel(**resolve_preset(preset, **overrides).unet_kwargs())
    return unet.eval().requires_grad_(False)


def unet_inputs(preset: str, batch: int, device: torch.device | str = "cpu",
                **overrides: Any) -> dict[str, torch.Tensor]:
    """Keyword inputs of one UNet forward: noisy images, timesteps and both condition routes."""
    import torch

    from cemiray.diffusion.presets import resolve_preset

    p = resolve_preset(preset, **overrides)
    gen = torch.Generator("cpu").manual_seed(0)
    inputs = {
        "sample": torch.randn(batch, 3, p.image_size, p.image_size, generator=gen),
        "timestep": torch.randint(0, p.num_train_timesteps, (batch,), generator=gen),
        "encoder_hidden_states": torch.randn(batch, p.num_condition_tokens,
                                             p.cross_attention_dim, generator=gen),
    }
    if p.timestep_condition:
        inputs["class_labels"] = torch.randn(batch, p.pooled_dim, generator=gen)
    return {k: v.to(device) for k, v in inputs.items()}


def unet_flops_per_image(preset: str, **overrides: Any) -> float:
    """FLOPs of one UNet forward for one image at one timestep (multiply-add = 2), counted on
    the meta device. The meta device routes attention through its math kernels, so the
    attention matmuls are counted too (the CPU's fused attention kernel has no FLOP formula)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = build_unet(preset, "meta", **overrides)
    inputs = unet_inputs(preset, 1, "meta", **overrides)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(**inputs)
    return float(counter.get_total_flops())


def _timed(fn, calls: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def measured_gemm_peak(device: torch.device | str, dtype: torch.dtype, size: int = 2048,
                       seconds: float = 1.0) -> float:
    """FLOP/s of back-to-back size×size matmuls for about `seconds`: the dense-compute ceiling
    the UNet is compared with. The call count is calibrated first (doubling until a group takes
    a tenth of the time), then one group of about `seconds` is timed with a single sync."""
    import torch

    if size < 1 or seconds <= 0:
        raise ValueError(f"measured_gemm_peak: need size >= 1 and seconds > 0, got {size}, "
                         f"{seconds}")
    device = torch.device(device)
    gen = torch.Generator("cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def call() -> None:
        torch.mm(a, b, out=out)

    _timed(call, 1, device)
    calls = 1
    while (elapsed := _timed(call, calls, device)) < 0.1 * seconds:
        calls *= 2
    calls = max(1, math.ceil(seconds * calls / elapsed))
    return 2.0 * size**3 * calls / _timed(call, calls, device)


class UNetRunner:
    """One UNet and its inputs on a device, run as the sampler runs it: channels_last under
    autocast on CUDA, plain fp32 on the CPU unless another dtype is asked for."""

    def __init__(self, preset: str, batch: int, device: torch.device | str,
                 dtype: torch.dtype, compile: bool = False, **overrides: Any) -> None:
        import torch

        self.device, self.dtype, self.batch = torch.device(device), dtype, int(batch)
        self.unet = build_unet(preset, self.device, **overrides)
        self.inputs = unet_inputs(preset, self.batch, self.device, **overrides)
        if self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.inputs["sample"] = self.inputs["sample"].contiguous(
                memory_format=torch.channels_last)
        if compile:
            self.unet.forward = torch.compile(self.unet.forward)
        self.forward()

    def forward(self) -> None:
        import torch

        precision = (torch.autocast(self.device.type, dtype=self.dtype)
                     if self.dtype != torch.float32 else nullcontext())
        with torch.no_grad(), precision:
            self.unet(**self.inputs)

    def seconds(self, forwards: int) -> float:
        """Wall time of `forwards` back-to-back forwards, synchronised only at both ends."""
        return _timed(self.forward, forwards, self.device)


def unet_throughput(preset: str, batch: int, device: torch.device | str, dtype: torch.dtype,
                    steps: int, runner: UNetRunner | None = None,
                    flops_per_image: float | None = None) -> float:
    """Achieved FLOP/s of `steps` timed UNet forwards of `batch` images (after one warm-up)."""
    if steps < 1:
        raise ValueError(f"unet_throughput: steps must be >= 1, got {steps}")
    runner = runner or UNetRunner(preset, batch, device, dtype)
    flops = flops_per_image if flops_per_image is not None else unet_flops_per_image(preset)
    return flops * runner.batch * steps / runner.seconds(steps)


def pipeline_img_per_s(preset: str, batch: int, device: torch.device | str, steps: int,
                       compile: bool = False) -> float:
    """Images per second of the whole CemiFace sampler (noise, condition encoder, `steps` DDIM
    steps, uint8 output; no recogniser) with a random generator of the preset."""
    import torch

    from cemiray.diffusion import CemiFacePipeline, build_generator, build_sample_scheduler
    from cemiray.pipeline.seeds.table import random_identities

    device = torch.device(device)
    torch.manual_seed(0)
    unet, encoder = build_generator(preset)
    pipe = CemiFacePipeline(unet=unet.eval(), condition_encoder=encoder.eval(),
                            scheduler=build_sample_scheduler(preset)).to(device)
    if compile:
        pipe.unet.forward = torch.compile(pipe.unet.forward)
    ids = torch.from_numpy(random_identities(batch, encoder.config.id_dim))
    seeds = list(range(batch))
    pipe(ids, 0.5, seeds, num_inference_steps=1, device=device)
    synchronize(device)
    start = time.perf_counter()
    pipe(ids, 0.5, seeds, num_inference_steps=steps, device=device)
    synchronize(device)
    return batch / (time.perf_counter() - start)


class BenchUNetConfig(JobConfig):
    out: str = "runs/bench_unet"
    presets: list[Literal["tiny", "small", "paper"]] = Field(
        default_factory=lambda: ["tiny", "small", "paper"], min_length=1)
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:N")
    dtype: str = Field("auto", description="auto (bf16 autocast on CUDA, fp32 on CPU), "
                       "float32, bfloat16, float16")
    batch: dict[str, PositiveInt] = Field(default_factory=dict, description="images per forward by "
                                  f"preset (unset: CPU {CPU_BATCH}, CUDA {CUDA_BATCH})")
    forwards: int = Field(3, ge=1, description="timed forwards per measurement")
    repeats: int = Field(3, ge=1, description="alternating GEMM/UNet repeats per preset")
    gemm_size: int | None = Field(None, ge=64, description="None: 2048 on CPU, 8192 on CUDA")
    gemm_seconds: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="CPU threads (None: torch's)")
    compile: bool = Field(False, description="torch.compile the UNet forward")
    pipeline: bool | None = Field(None, description="time the whole sampler too (None: on CUDA)")
    pipeline_preset: Literal["tiny", "small", "paper"] = "paper"
    pipeline_batch: int | None = Field(None, ge=1, description="None: 128 on CUDA, 1 on CPU")
    pipeline_steps: int = Field(20, ge=1)
    results: str | None = Field(None, description="also write the result JSON here (e.g. "
                                "docs/results/unet.json)")


def bench_preset(cfg: BenchUNetConfig, preset: str, device: torch.device,
                 dtype: torch.dtype) -> dict:
    defaults = CUDA_BATCH if device.type == "cuda" else CPU_BATCH
    batch = cfg.batch.get(preset, defaults[preset])
    gemm_size = cfg.gemm_size or (8192 if device.type == "cuda" else 2048)
    flops = unet_flops_per_image(preset)
    runner = UNetRunner(preset, batch, device, dtype, compile=cfg.compile)
    peaks, achieved = [], []
    for rep in range(cfg.repeats):
        peaks.append(measured_gemm_peak(device, dtype, gemm_size, cfg.gemm_seconds))
        achieved.append(unet_throughput(preset, batch, device, dtype, cfg.forwards, runner, flops))
        print(f"bench-unet: {preset} repeat {rep}: UNet {achieved[-1] / 1e9:.1f} GFLOP/s, "
              f"GEMM {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
    from cemiray.bench.common import median_ratio

    rate = statistics.median(achieved)
    return {"flops_per_image_step": flops, "batch": batch, "gemm_size": gemm_size,
            "unet_flops_per_s": achieved, "gemm_flops_per_s": peaks,
            "unet_over_gemm": median_ratio(achieved, peaks),
            "gemm_spread": max(peaks) / min(peaks),
            "image_steps_per_s": rate / flops,
            "projected_img_per_s": rate / (flops * cfg.pipeline_steps)}


def run(cfg: BenchUNetConfig) -> dict:
    import torch

    from cemiray.bench.common import write_result

    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out)})
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    load = os.getloadavg()[0]
    figures: dict[str, Any] = {"device": str(device), "dtype": str(dtype).removeprefix("torch."),
                               "torch_threads": torch.get_num_threads(),
                               "projected_img_per_s_steps": cfg.pipeline_steps, "presets": {}}
    for preset in cfg.presets:
        figures["presets"][preset] = bench_preset(cfg, preset, device, dtype)
    if cfg.pipeline if cfg.pipeline is not None else device.type == "cuda":
        batch = cfg.pipeline_batch or (128 if device.type == "cuda" else 1)
        rate = pipeline_img_per_s(cfg.pipeline_preset, batch, device, cfg.pipeline_steps,
                                  compile=cfg.compile)
        figures["pipeline"] = {"preset": cfg.pipeline_preset, "batch": batch,
                               "steps": cfg.pipeline_steps, "img_per_s": rate}
        if device.type == "cuda" and cfg.pipeline_preset == "paper":
            figures["pipeline"]["goal_img_per_s"] = GOAL_PAPER_IMG_PER_S
            figures["pipeline"]["meets_goal"] = rate >= GOAL_PAPER_IMG_PER_S
    figures["load_average_1m"] = {"start": load, "end": os.getloadavg()[0]}
    url = write_result(cfg.out, "bench_unet", cfg.model_dump(mode="json"), figures)
    if cfg.results:
        storage.atomic_write_text(cfg.results, storage.read_text(url))
    for preset, f in figures["presets"].items():
        print(f"bench-unet: {preset}: {f['flops_per_image_step'] / 1e9:.3f} GFLOP/image/step, "
              f"batch {f['batch']}, UNet/GEMM = {f['unet_over_gemm']:.3f}, "
              f"{f['projected_img_per_s']:.3g} img/s projected at {cfg.pipeline_steps} steps",
              flush=True)
    if "pipeline" in figures:
        p = figures["pipeline"]
        print(f"bench-unet: sampler {p['preset']} batch {p['batch']}, {p['steps']} steps: "
              f"{p['img_per_s']:.3g} img/s", flush=True)
    print(f"bench-unet: {figures['device']} {figures['dtype']} → {url}", flush=True)
    return figures
