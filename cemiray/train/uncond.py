"""`cemiray train-uncond` (train part): the unconditional DDPM face generator on Ray Train.

The generator (cemiray.diffusion.unconditional) trains with DeepSpeed on the same engine as
train-fr and train-gen; its train module is cemiray.train.diffusion_modules.

Its samples are identity seeds that belong to no real person (`cemiray seeds generator=…`).
Identity labels are not used: every image is a training target. Weights are averaged (EMA) on
every rank; the average travels in the checkpoints and is what gets exported, as a generator
folder (`unet/`, `scheduler/`, `unconditional.json`) at `out/generator`.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig
from cemiray.train.settings import DistributedConfig, grad_clip_field


class TrainUncondConfig(JobConfig):
    out: str = "runs/train_uncond"
    data: str = Field("toyfaces:?seed=0&ids=0-499&samples=20&size=32",
                      description="face source URI (labels are ignored)")
    preset: str = "tiny"
    preset_overrides: dict[str, Any] = Field(default_factory=dict,
                                             description="UncondPreset fields to replace")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = grad_clip_field()
    batch_size: int = Field(32, ge=1, description="micro-batch per worker")
    flip: bool = Field(True, description="random horizontal flips")
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop at this optimizer step")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    log_every: int = Field(10, ge=1)
    read_parts: int = Field(4, ge=1)
    resume_from: str | None = Field(None, description="a train-uncond checkpoint (see "
                                                      "out/checkpoint.json)")
    seed: int = 0
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainUncondConfig:
        if self.distributed.zero_stage > 2:
            raise ValueError("train-uncond keeps a full EMA copy on every rank: use ZeRO stage "
                             "0-2 (the UNet fits one device)")
        return self

    def resolved_preset(self):
        from cemiray.diffusion.unconditional import resolve_uncond_preset

        return resolve_uncond_preset(self.preset, **self.preset_overrides)


def export_generator(model, ema, cfg: TrainUncondConfig, meta: dict) -> str:
    """The EMA weights as a generator folder at out/generator."""
    from cemiray.diffusion.unconditional import (
        UnconditionalGenerator,
        build_noise_scheduler,
        build_unet,
        save_unconditional,
    )
    from cemiray.train.diffusion_modules import UncondTrainModule

    preset = cfg.resolved_preset()
    holder = UncondTrainModule(build_unet(preset), None)
    holder.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    ema.copy_to(holder)
    unet = holder.unet
    url = storage.join(cfg.out, "generator")
    save_unconditional(UnconditionalGenerator(unet.eval(), build_noise_scheduler(preset),
                                              {**meta, "preset": preset.name,
                                               "ema_decay": cfg.ema_decay, "data": cfg.data}),
                       url)
    return url


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import torch

    from cemiray.diffusion.unconditional import build_noise_scheduler, build_unet
    from cemiray.train import engine as eng
    from cemiray.train.diffusion_modules import UncondTrainModule
    from cemiray.train.ema import start_ema_training
    from cemiray.train.face_data import decode_batch

    cfg = TrainUncondConfig.model_validate(config["cfg"])
    preset = cfg.resolved_preset()
    rank, world, device, total_steps = eng.worker_context(
        cfg.distributed, cfg.max_steps, cfg.epochs, config["steps_per_epoch"])

    torch.manual_seed(cfg.seed)
    model = UncondTrainModule(build_unet(preset), build_noise_scheduler(preset)).to(device)
    engine, scheduler, ema, state, log = start_ema_training(model, cfg, rank)
    step, images_seen = int(state.get("step", 0)), int(state.get("images_seen", 0))
    if rank == 0:
        log.write({"event": "start", "step": step, "resumed": bool(state), "world_size": world,
                   "total_steps": total_steps, "preset": preset.name})
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * step)
    shard = ray.train.get_dataset_shard("train")
    dtype = torch.bfloat16 if cfg.distributed.bf16 else torch.float32
    per_step = cfg.batch_size * cfg.distributed.grad_accum * world

    t_window, n_window, loss_sum = time.perf_counter(), 0, 0.0
    metrics: dict = {"step": step, "images_seen": images_seen}
    while step < total_steps:
        epoch_batches = 0
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                        drop_last=True, local_shuffle_buffer_size=1024,
                                        local_shuffle_seed=cfg.seed + step):
            epoch_batches += 1
            x = decode_batch(batch["image"], preset.image_size)
            if cfg.flip:
                mirror = torch.rand(len(x), generator=gen) < 0.5
                x[mirror] = x[mirror].flip(-1)
            loss = engine(x.to(device, dtype), generator=gen)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()  # before step() counts it
            engine.step()
            loss_sum += float(loss.detach().float())
            n_window += 1
            if not boundary:
                continue
            step += 1
            images_seen += per_step
            ema.update(model, step)
            metrics = {"step": step, "images_seen": images_seen,
                       "lr": scheduler.get_last_lr()[0]}
            if step % cfg.log_every == 0 or step == total_steps or log.due():
                elapsed = time.perf_counter() - t_window
                metrics["loss"] = loss_sum / n_window
                metrics["img_per_s"] = n_window * cfg.batch_size * world / max(elapsed, 1e-9)
                t_window, n_window, loss_sum = time.perf_counter(), 0, 0.0
                log.write({"event": "train", **metrics})
            if step % cfg.distributed.checkpoint_every == 0 or step == total_steps:
                eng.save_and_report(engine, metrics, {"step": step, "images_seen": images_seen,
                                                      "ema": ema.state_dict()})
            if step >= total_steps:
                break
        if epoch_batches == 0:
            raise ValueError(f"train-uncond: the data shard of rank {rank} holds fewer than one "
                             f"batch of {cfg.batch_size} images; lower batch_size or add data")
    if rank == 0:
        url = export_generator(model, ema, cfg, {"step": step, "images_seen": images_seen})
        log.write({"event": "done", **metrics, "generator": url})


def run(cfg: TrainUncondConfig) -> dict:
    from cemiray.data.sources import Source
    from cemiray.runtime.cluster import init_ray
    from cemiray.train.checkpoint_check import verify_resume_from
    from cemiray.train.engine import fit_job
    from cemiray.train.face_data import face_dataset

    verify_resume_from(cfg.resume_from)  # a refused checkpoint fails before Ray starts
    source = Source.parse(cfg.data)
    cfg = cfg.model_copy(update={
        "out": storage.absolute(cfg.out),
        "resume_from": storage.absolute(cfg.resume_from),
        "data": source.uri,
    })
    t0 = time.perf_counter()
    preset = cfg.resolved_preset()  # an unknown preset or field fails before any Ray work
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    ds = face_dataset(source, parts=cfg.read_parts)
    n_rows = ds.count()
    dist = cfg.distributed
    steps_per_epoch = max(1, n_rows // (cfg.batch_size * dist.num_workers * dist.grad_accum))
    print(f"train-uncond: {n_rows} images, {steps_per_epoch} steps/epoch, preset "
          f"{preset.name}, {dist.num_workers} workers, ZeRO-{dist.zero_stage}",
          flush=True)
    return fit_job("train-uncond", train_loop,
                   {"cfg": cfg.model_dump(mode="json"), "steps_per_epoch": steps_per_epoch},
                   dist, ds, cfg.out, t0, ("generator", "generator"))
