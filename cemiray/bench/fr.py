"""`cemiray bench-fr`: the recognition benchmark.

1. Efficiency: img/s of the Ray Train + DeepSpeed loop (1 worker) ÷ img/s of a plain
   single-process torch loop on the same model, batch, data decoding and augmentation, measured
   in one run with alternating repeats (median of the per-repeat ratios). Steady-state rates:
   the first logging window of each run (start-up, first batches) is left out.
2. Calibration: IResNet-18 trained by `train-fr` on the ToyFaces train split, verification
   accuracy on a held-out-identity `.bin`.
3. The score-distribution report of the ORL real faces under the trained model."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

from pydantic import Field

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig, WorldConfig
from cemiray.train.settings import DistributedConfig


def _one_worker() -> DistributedConfig:
    """ZeRO stage 0: one rank partitions nothing, and stage 1 copies every gradient into its flat
    buffer (5.8% of the worker's samples at width 16, docs/experiments/benchmarks.md)."""
    return DistributedConfig(num_workers=1, cpus_per_worker=1, torch_threads=2, zero_stage=0,
                             checkpoint_every=10**6)


class BenchFRConfig(JobConfig):
    out: str = "runs/bench_fr"
    world: WorldConfig = Field(default_factory=WorldConfig)
    train_identities: int = Field(500, ge=2)
    samples_per_identity: int = Field(20, ge=2)
    test_identities: int = Field(100, ge=2)
    bin_pairs: int = Field(3000, ge=20)
    backbone: str = "iresnet18"
    width: int = Field(64, ge=4, description="first-stage channels (16: the shipped recogniser)")
    batch_size: int = Field(128, ge=2)
    epochs: int = Field(8, ge=1)
    ratio_identities: int = Field(100, ge=2, description="identities of the efficiency runs")
    ratio_steps: int = Field(40, ge=10)
    ratio_repeats: int = Field(2, ge=1)
    scaling_workers: int = Field(2, ge=1, description="also time this many Ray Train workers, "
                                 "the threads of the 1-worker run split between them (1: skip)")
    shuffle_buffer: int = Field(1024, ge=0, description="train-fr's Ray Data shuffle buffer")
    prefetch_batches: int = Field(4, ge=0, description="train-fr's Ray Data prefetch")
    profile_seconds: float = Field(0, ge=0, description="also sample the training thread of "
                                   "the Ray Train worker and of the plain loop with py-spy for "
                                   "this long, in the first repeat (0: no profile)")
    calibrate: bool = True
    results: str | None = Field(None, description="also write the JSON here")
    orl: str = "orl:"
    distributed: DistributedConfig = Field(default_factory=_one_worker)
    ray: RayConfig = Field(default_factory=RayConfig)


def _fr_config(cfg: BenchFRConfig, out: str, data: str, **kw):
    from cemiray.train.fr import TrainFRConfig

    return TrainFRConfig(out=out, data=data, backbone=cfg.backbone, width=cfg.width,
                         input_size=cfg.world.size, shuffle_buffer=cfg.shuffle_buffer,
                         prefetch_batches=cfg.prefetch_batches, batch_size=cfg.batch_size,
                         distributed=cfg.distributed, ray=cfg.ray, **kw)


def _toyfaces(cfg: BenchFRConfig, first: int, count: int):
    from cemiray.data.sources import Source

    w = cfg.world
    return Source.toyfaces(range(first, first + count), samples=cfg.samples_per_identity,
                           seed=w.seed, size=w.size, difficulty=w.difficulty)


def plain_loop_img_per_s(fr_cfg, rows: list[dict], steps: int, log_every: int) -> float:
    """The same step as the Ray Train loop, in this process, without Ray or DeepSpeed."""
    import torch

    from cemiray.data.augment import augment
    from cemiray.train.face_data import decode_batch
    from cemiray.train.fr import build_model, make_optimizer

    if fr_cfg.distributed.torch_threads:
        torch.set_num_threads(fr_cfg.distributed.torch_threads)
    num_classes = max(r["label"] for r in rows) + 1
    model = build_model(fr_cfg, num_classes)
    optimizer = make_optimizer(fr_cfg, model.parameters())
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(rows), generator=gen).tolist()
    b, rates, t0, seen = fr_cfg.batch_size, [], time.perf_counter(), 0
    for step in range(1, steps + 1):
        start = (step * b) % max(1, len(rows) - b)
        batch = [rows[i] for i in order[start:start + b]]
        x = augment(decode_batch([r["image"] for r in batch], fr_cfg.input_size), fr_cfg.augment, gen)
        y = torch.as_tensor([r["label"] for r in batch], dtype=torch.long)
        loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if fr_cfg.grad_clip > 0:  # DeepSpeed's clipping, as the Ray Train loop's engine does
            torch.nn.utils.clip_grad_norm_(model.parameters(), fr_cfg.grad_clip)
        optimizer.step()
        seen += b
        if step % log_every == 0:
            rates.append(seen / (time.perf_counter() - t0))
            t0, seen = time.perf_counter(), 0
    return statistics.median(rates[1:] or rates)


def plain_in_worker(fr_cfg, rows: list[dict], steps: int, log_every: int) -> float:
    """The plain loop in a Ray worker process: Ray runs its workers at OS niceness 15, so on a
    shared machine a loop in the driver (niceness 0) would win CPU the Ray Train loop cannot
    get. The loop itself uses no Ray."""
    import ray

    task = ray.remote(num_cpus=fr_cfg.distributed.cpus_per_worker)(plain_loop_img_per_s)
    return ray.get(task.remote(fr_cfg, rows, steps, log_every))


def ray_train_img_per_s(fr_cfg) -> float:
    from cemiray.train.engine import read_metrics
    from cemiray.train.fr import run

    run(fr_cfg)
    rates = [r["img_per_s"] for r in read_metrics(storage.join(fr_cfg.out, "metrics.jsonl"))
             if r["event"] == "train" and "img_per_s" in r]
    return statistics.median(rates[1:] or rates)


@contextmanager
def _profiled(cfg: BenchFRConfig, rep: int, title: str, thread: str | None, into: dict,
              key: str):
    """py-spy on the loop started inside the block (first repeat, when asked)."""
    if not cfg.profile_seconds or rep:
        yield
        return
    from pathlib import Path

    from cemiray.bench.fr_profile import Sampler

    sampler = Sampler(title, cfg.profile_seconds, Path(cfg.out) / f"profile_{key}.txt", thread)
    with sampler:
        yield
    into[key] = sampler.result()


def efficiency(cfg: BenchFRConfig) -> dict:
    source = _toyfaces(cfg, 0, cfg.ratio_identities)
    rows = list(source.iter_rows())
    log_every = max(2, cfg.ratio_steps // 5)
    ray_rates, plain_rates, scaled_rates = [], [], []
    threads = cfg.distributed.torch_threads or 2
    scaled = cfg.distributed.model_copy(update={
        "num_workers": cfg.scaling_workers, "cpus_per_worker": 1.0 / cfg.scaling_workers,
        "torch_threads": max(1, threads // cfg.scaling_workers)})
    profile: dict = {}
    for rep in range(cfg.ratio_repeats):
        fr_cfg = _fr_config(cfg, storage.join(cfg.out, f"ratio_ray_{rep}"), source.uri,
                            max_steps=cfg.ratio_steps, log_every=log_every, epochs=1)
        with _profiled(cfg, rep, "ray::RayTrainWorker", "TrainingThread", profile, "ray_train"):
            ray_rates.append(ray_train_img_per_s(fr_cfg))
        with _profiled(cfg, rep, "ray::plain_loop", None, profile, "plain"):
            plain_rates.append(plain_in_worker(fr_cfg, rows, cfg.ratio_steps, log_every))
        line = (f"bench-fr: repeat {rep}: ray+deepspeed {ray_rates[-1]:.1f} img/s, "
                f"plain {plain_rates[-1]:.1f} img/s")
        if cfg.scaling_workers > 1:
            two = fr_cfg.model_copy(update={"out": storage.join(cfg.out, f"ratio_scaled_{rep}"),
                                            "distributed": scaled})
            scaled_rates.append(ray_train_img_per_s(two))
            line += f", {cfg.scaling_workers} workers {scaled_rates[-1]:.1f} img/s"
        print(line, flush=True)
    from cemiray.bench.common import median_ratio

    out = {"ray_train_img_per_s": ray_rates, "plain_img_per_s": plain_rates,
           "ray_over_plain": median_ratio(ray_rates, plain_rates),
           "ray_over_plain_per_repeat": [round(a / b, 3) for a, b in zip(ray_rates, plain_rates,
                                                                         strict=True)],
           "threads_per_run": threads}
    if profile:
        out["profile_shares"] = profile
    if scaled_rates:
        out.update({"scaling_workers": cfg.scaling_workers,
                    "scaled_img_per_s": scaled_rates,
                    "scaled_over_one_worker": median_ratio(scaled_rates, ray_rates)})
    return out


def orl_report(cfg: BenchFRConfig, backbone_url: str) -> dict:
    import numpy as np

    from cemiray.data.images import decode_image
    from cemiray.data.sources import Source
    from cemiray.eval.score_distributions import (
        plot_det,
        plot_distributions,
        save_report_json,
        score_report,
    )
    from cemiray.models.recognizer import load_recognizer

    recognizer = load_recognizer(backbone_url)
    rows = list(Source.parse(cfg.orl).iter_rows())
    images = np.stack([decode_image(r["image"]) for r in rows])
    report = score_report(recognizer.embed(images), [r["label"] for r in rows], name="orl")
    save_report_json(report, storage.join(cfg.out, "orl_scores.json"))
    plot_distributions(report, storage.join(cfg.out, "orl_scores.png"))
    plot_det(report, storage.join(cfg.out, "orl_det.png"))
    summary = report.to_dict()
    return {k: v for k, v in summary.items() if not isinstance(v, (list, dict)) or k == "rates"}


def run(cfg: BenchFRConfig) -> dict:
    from cemiray.bench.common import write_result
    from cemiray.pipeline.render import RenderConfig
    from cemiray.pipeline.render import run as render
    from cemiray.runtime.cluster import init_ray

    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out)})
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    figures: dict = {"efficiency": efficiency(cfg)}
    if cfg.calibrate:
        test = render(RenderConfig(out=storage.join(cfg.out, "test"), world=cfg.world,
                                   first_identity=cfg.train_identities,
                                   num_identities=cfg.test_identities,
                                   samples_per_identity=cfg.samples_per_identity,
                                   formats=["bin"], bin_pairs=cfg.bin_pairs, ray=cfg.ray))
        fr_cfg = _fr_config(cfg, storage.join(cfg.out, "calibration"),
                            _toyfaces(cfg, 0, cfg.train_identities).uri,
                            verification=test["bin"],
                            epochs=cfg.epochs, warmup_steps=50, eval_every=100, log_every=20)
        from cemiray.train.fr import run as train_fr

        t0 = time.perf_counter()
        result = train_fr(fr_cfg)
        figures["calibration"] = {"val_acc": result.get("val_acc"),
                                  "val_acc_std": result.get("val_acc_std"),
                                  "difficulty": cfg.world.difficulty,
                                  "backbone": cfg.backbone, "width": cfg.width,
                                  "train_images": cfg.train_identities * cfg.samples_per_identity,
                                  "minutes": round((time.perf_counter() - t0) / 60, 1)}
        figures["orl"] = orl_report(cfg, result["backbone"])
    url = write_result(cfg.out, "bench_fr", cfg.model_dump(mode="json"), figures)
    if cfg.results:
        storage.atomic_write_text(cfg.results, storage.read_text(url))
    eff = figures["efficiency"]
    line = f"bench-fr: ray+deepspeed/plain = {eff['ray_over_plain']:.3f}"
    if "scaled_over_one_worker" in eff:
        line += f"; {eff['scaling_workers']} workers/1 = {eff['scaled_over_one_worker']:.3f}"
    if "calibration" in figures:
        line += (f"; {cfg.backbone} (width {cfg.width}) ToyFaces verification accuracy "
                 f"{figures['calibration']['val_acc']:.4f}"
                 f"; ORL d'={figures['orl'].get('d_prime', float('nan')):.2f}")
    print(line + f" → {url}", flush=True)
    return figures
