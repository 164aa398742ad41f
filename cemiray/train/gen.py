"""`cemiray train-gen` (train part): the CemiFace generator trained on Ray Train + DeepSpeed.

The generator (UNet + condition encoder) is conditioned on a frozen recogniser's identity
embedding and a similarity m; its train module is cemiray.train.diffusion_modules.

Each worker reads its share of the data once into a `PairBank` (uint8 images + E_id embeddings,
see cemiray.diffusion.pairing for the memory cost) and draws its examples from it with a seeded
generator: `pairing="self"` is the paper (target = inquiry, m uniform on the grid), `"identity"`
pair-supervised conditioning. E_id stays frozen on the worker's device, outside the DeepSpeed
engine; gradients flow through it into x̂0 only. Weights are averaged (EMA) on every rank, the
average travels in the checkpoints and is what gets exported: a diffusers-style pipeline folder
(`unet/`, `condition_encoder/`, `scheduler/`, model_index.json) at `out/generator`.

With `variation=[names]` every image also carries its variation attributes (from the source,
or a `variation_table` for real data; cemiray.train.variation_data) and the generator learns them
as a condition beside C_id and m, the target image's variation (what x_t shows), with whole and
per-attribute dropout so that "unspecified" stays a valid request. Their scaling is measured from
the data here and saved in the condition encoder's config (cemiray.diffusion.variation).

Runs continue across jobs: `out/checkpoint.json` names the last checkpoint, which a later run
takes as `resume_from` (weights, optimizer, EMA, step); `init_from` starts from the weights of a
generator folder instead. `max_minutes` ends a run cleanly (checkpoint + export) at a deadline.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig
from cemiray.train.ema import EmaWeights, start_ema_training
from cemiray.train.settings import DistributedConfig, grad_clip_field


class TrainGenConfig(JobConfig):
    out: str = "runs/train_gen"
    data: str = Field("toyfaces:?seed=0&ids=0-499&samples=20&size=32",
                      description="face source URI with identity labels")
    recognizer: str = Field(..., description="frozen E_id: cemiray folder, .pth?arch=…, .onnx "
                                             "is refused (not differentiable)")
    preset: str = "tiny"
    preset_overrides: dict[str, Any] = Field(default_factory=dict,
                                             description="GeneratorPreset fields to replace")
    pairing: Literal["self", "identity"] | None = Field(
        None, description="self (paper) | identity (pair-supervised); None: the preset's")
    lambda_sim: float = Field(0.05, ge=0)
    m_step: float = Field(0.04, gt=0, le=2)
    m_range: tuple[float, float] = (-0.2, 1.0)
    m_bins: int = Field(12, ge=1)
    self_fraction: float = Field(0.25, ge=0, le=1, description="share of x_t = x_q examples")
    genuine_per_image: int = Field(32, ge=0)
    impostors_per_image: int = Field(16, ge=0)
    min_bin_pairs: int = Field(64, ge=1, description="bins with fewer pairs are drawn less often")
    simmat_min_t: int = Field(0, ge=0)
    simmat_max_t: int | None = Field(None, ge=0)
    simmat_warmup_steps: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = grad_clip_field()
    batch_size: int = Field(32, ge=1, description="micro-batch per worker")
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop at this optimizer step "
                                                          "(counted across resumed runs)")
    max_minutes: float | None = Field(None, gt=0, description="stop (checkpoint + export) this "
                                                              "long after the job started")
    ema_decay: float = Field(0.999, ge=0, lt=1)
    log_every: int = Field(10, ge=1)
    read_parts: int = Field(4, ge=1)
    resume_from: str | None = Field(None, description="a train-gen checkpoint (see "
                                                      "out/checkpoint.json)")
    init_from: str | None = Field(None, description="a generator folder to start from (one "
                                  "trained without variation may be; its variation layers start "
                                  "at zero)")
    variation: list[str] = Field(default_factory=list, description="variation attributes to "
                                 "condition on, e.g. [yaw, glasses] (the source's own values or "
                                 "variation_table's columns)")
    variation_table: str | None = Field(None, description="Parquet file/folder or CSV with a "
                                        "key column and one column per variation attribute")
    variation_key: str = Field("key", description="variation_table's key column (label-attr's "
                               "`key`: class/filename, identity/sample, ...)")
    variation_route: Literal["tokens", "pooled", "both"] = Field(
        "pooled", description="how the variation reaches the UNet: cross-attention tokens, the "
        "pooled vector (timestep modulation), or both")
    variation_dropout: float = Field(0.1, ge=0, le=1, description="share of examples whose "
                                     "whole variation is dropped")
    variation_attr_dropout: float = Field(0.3, ge=0, le=1, description="share of attribute "
                                          "values dropped one by one")
    variation_guide: str | None = Field(None, description="attribute model (train-attr) that "
                                        "reads x̂0's attributes for an attribute loss toward the "
                                        "requested variation (cemiray.diffusion.variation_guide); "
                                        "never the estimator that later measures the results")
    variation_guide_weight: float = Field(0.1, ge=0)
    variation_guide_max_t: int = Field(600, ge=0, description="the attribute loss applies at "
                                       "t <= this (x̂0 is mostly noise above)")
    variation_lr_scale: float = Field(1.0, gt=0, description="learning-rate multiplier of the "
                                      "variation layers (new layers fine-tuned into a trained "
                                      "generator learn faster with a larger one)")
    seed: int = 0
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("m_range")
    @classmethod
    def _check_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not -1.0 <= value[0] < value[1] <= 1.0:
            raise ValueError(f"m_range must satisfy -1 <= low < high <= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainGenConfig:
        if self.distributed.zero_stage > 2:
            raise ValueError("train-gen keeps a full EMA copy on every rank: use ZeRO stage 0-2 "
                             "(the generator's parameters fit one device)")
        if self.resume_from and self.init_from:
            raise ValueError("give resume_from or init_from, not both")
        if len(set(self.variation)) != len(self.variation):
            raise ValueError(f"variation names repeat: {self.variation}")
        if self.variation_guide and not self.variation:
            raise ValueError("variation_guide given without variation")
        if self.variation_table and not self.variation:
            raise ValueError("variation_table given without variation: name the attributes "
                             "(its columns) to condition on")
        return self

    def variation_overrides(self, spec) -> dict[str, Any]:
        """The preset fields that give the generator this variation condition."""
        return {"num_variation_attrs": len(spec), "variation_spec": spec.to_config(),
                "variation_route": self.variation_route,
                "variation_dropout_prob": self.variation_dropout,
                "variation_attr_dropout_prob": self.variation_attr_dropout}

    def resolved_preset(self):
        from cemiray.diffusion.presets import resolve_preset

        return resolve_preset(self.preset, **self.preset_overrides)

    def resolved_pairing(self) -> str:
        return self.pairing or self.resolved_preset().pairing


def load_generator_weights(module, url: str) -> None:
    """Weights of a generator folder into the train module (its architecture must match, except
    that a generator without variation may start one with it: those layers keep their zeros)."""
    from cemiray.diffusion.pipeline import load_pipeline

    pipe = load_pipeline(url)
    for name, source in (("unet", pipe.unet), ("condition_encoder", pipe.condition_encoder)):
        target = getattr(module, name)
        state = source.state_dict()
        new_variation = (name == "condition_encoder"
                         and source.config.num_variation_attrs == 0
                         and target.config.num_variation_attrs > 0)
        try:
            result = target.load_state_dict(state, strict=not new_variation)
        except RuntimeError as exc:
            raise ValueError(f"init_from {url}: {name} does not fit the preset ({exc})") from exc
        wrong = [k for k in result.missing_keys if not k.startswith("variation_")]
        if wrong or result.unexpected_keys:
            raise ValueError(f"init_from {url}: {name} does not fit the preset (missing "
                             f"{wrong}, unexpected {result.unexpected_keys})")


def export_generator(module, ema: EmaWeights, cfg: TrainGenConfig, meta: dict) -> str:
    """The EMA weights as a pipeline folder at out/generator (+ training.json beside them)."""
    import torch

    from cemiray.diffusion.pipeline import CemiFacePipeline, save_pipeline
    from cemiray.diffusion.presets import build_generator, build_sample_scheduler

    preset = cfg.resolved_preset()
    holder = torch.nn.Module()
    holder.unet, holder.condition_encoder = build_generator(preset)
    holder.load_state_dict({k: v.detach().float().cpu() for k, v in module.state_dict().items()})
    ema.copy_to(holder)
    pipe = CemiFacePipeline(unet=holder.unet.eval(),
                            condition_encoder=holder.condition_encoder.eval(),
                            scheduler=build_sample_scheduler(preset))
    url = storage.join(cfg.out, "generator")
    save_pipeline(pipe, url)
    storage.atomic_write_text(storage.join(url, "training.json"),
                              json.dumps({**meta, "ema_decay": cfg.ema_decay}, indent=2) + "\n")
    return url


def read_shard(shard, size: int, variation: list[str] = ()):
    """Every row of this worker's data shard as (uint8 N×S×S×3 images, int64 labels, {name:
    float64 N values, NaN unknown} of the `variation` attributes)."""
    import numpy as np

    from cemiray.data.images import decode_image, resize

    images, labels, values = [], [], {name: [] for name in variation}
    for batch in shard.iter_batches(batch_size=256, batch_format="numpy"):
        for data in batch["image"]:
            arr = decode_image(bytes(data), where=f"train-gen row {len(images)}")
            images.append(resize(arr, size) if arr.shape[:2] != (size, size) else arr)
        labels.extend(int(v) for v in batch["label"])
        for name in variation:
            values[name].extend(float(v) for v in batch[f"v:{name}"])
    if not images:
        raise ValueError("train-gen: this worker's data shard is empty; add data or workers")
    columns = {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}
    return np.stack(images), np.asarray(labels, dtype=np.int64), columns


def encoder_spec(preset):
    """The preset's VariationSpec, or None when it has no variation condition."""
    from cemiray.diffusion.variation import VariationSpec

    return VariationSpec.from_config(preset.variation_spec) if preset.variation_spec else None


def stop_now(deadline: float | None, device) -> bool:
    """Rank 0's clock decides for every rank (they must stop at the same step)."""
    import torch
    import torch.distributed as dist

    if deadline is None:
        return False
    flag = torch.tensor([float(time.time() >= deadline)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import torch

    from cemiray.diffusion.pairing import PairSampler, build_pair_bank
    from cemiray.diffusion.presets import build_generator, build_train_scheduler
    from cemiray.diffusion.similarity_loss import SimilarityLoss
    from cemiray.models.recognizer import load_recognizer
    from cemiray.train import engine as eng
    from cemiray.train.diffusion_modules import GeneratorTrainModule

    cfg = TrainGenConfig.model_validate(config["cfg"])
    preset = cfg.resolved_preset()
    rank, world, device, total_steps = eng.worker_context(
        cfg.distributed, cfg.max_steps, cfg.epochs, config["steps_per_epoch"])

    recognizer = load_recognizer(cfg.recognizer, device=device)
    images, labels, columns = read_shard(ray.train.get_dataset_shard("train"), preset.image_size,
                                         cfg.variation)
    spec = encoder_spec(preset)
    bank = build_pair_bank(images, labels, recognizer, device=device,
                           variation=spec.encode_columns(columns) if spec else None)
    del images
    sampler = PairSampler(
        bank, cfg.resolved_pairing(), m_step=cfg.m_step, m_range=cfg.m_range,
        num_bins=cfg.m_bins, self_fraction=cfg.self_fraction,
        genuine_per_image=cfg.genuine_per_image, impostors_per_image=cfg.impostors_per_image,
        min_bin_pairs=cfg.min_bin_pairs, seed=cfg.seed * 1000 + rank,
    )

    torch.manual_seed(cfg.seed)
    unet, encoder = build_generator(preset)
    noise_scheduler = build_train_scheduler(preset)
    loss_fn = SimilarityLoss.from_scheduler(
        recognizer, noise_scheduler, lambda_sim=cfg.lambda_sim, simmat_min_t=cfg.simmat_min_t,
        simmat_max_t=cfg.simmat_max_t, simmat_warmup_steps=cfg.simmat_warmup_steps,
    )
    if cfg.variation_guide:
        from cemiray.diffusion.variation_guide import VariationGuide
        from cemiray.models.attributes import load_attribute_model

        loss_fn.variation_guide = VariationGuide(
            load_attribute_model(cfg.variation_guide, device), spec,
            cfg.variation_guide_weight, cfg.variation_guide_max_t)
    model = GeneratorTrainModule(unet, encoder, noise_scheduler, loss_fn)
    if cfg.init_from:
        load_generator_weights(model, cfg.init_from)
    model = model.to(device)
    # the condition encoder's variation layers (variation_mlp, variation_out)
    engine, scheduler, ema, state, log = start_ema_training(
        model, cfg, rank, lr_scales={".variation_": cfg.variation_lr_scale})
    step, images_seen = int(state.get("step", 0)), int(state.get("images_seen", 0))
    if rank == 0:
        bank_info = {"rows": len(bank), "bank_mb": round(bank.nbytes / 2**20, 1)}
        if sampler.table is not None:
            bank_info.update(pairs=len(sampler.table), bin_counts=sampler.bin_counts.tolist())
        log.write({"event": "start", "step": step, "resumed": bool(state), "world_size": world,
                   "total_steps": total_steps, "pairing": cfg.resolved_pairing(),
                   "init_from": cfg.init_from, **bank_info})
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * step)
    dtype = torch.bfloat16 if cfg.distributed.bf16 else torch.float32
    per_step = cfg.batch_size * cfg.distributed.grad_accum * world

    t_window, n_window, sums = time.perf_counter(), 0, {}
    metrics: dict = {"step": step, "images_seen": images_seen}
    stopped = False
    while step < total_steps and not stopped:
        index = sampler.sample(cfg.batch_size, gen)
        x_t, e_q, e_t, m = sampler.batch(index, device)
        terms = engine(x_t.to(dtype), e_q, e_t, m, generator=gen, step=step,
                       variation=sampler.variation(index, device))
        engine.backward(terms["total"])
        boundary = engine.is_gradient_accumulation_boundary()  # before step() counts it
        engine.step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach().float())
        n_window += 1
        if not boundary:
            continue
        step += 1
        images_seen += per_step
        ema.update(model, step)
        stopped = stop_now(config.get("deadline"), device)
        metrics = {"step": step, "images_seen": images_seen, "lr": scheduler.get_last_lr()[0]}
        if step % cfg.log_every == 0 or step == total_steps or stopped or log.due():
            elapsed = time.perf_counter() - t_window
            metrics.update({k: v / n_window for k, v in sums.items()})
            metrics["img_per_s"] = n_window * cfg.batch_size * world / max(elapsed, 1e-9)
            t_window, n_window, sums = time.perf_counter(), 0, {}
            log.write({"event": "train", **metrics})
        if step % cfg.distributed.checkpoint_every == 0 or step == total_steps or stopped:
            eng.save_and_report(engine, metrics, {"step": step, "images_seen": images_seen,
                                                  "ema": ema.state_dict()})
    if rank == 0:
        url = export_generator(model, ema, cfg, {"step": step, "images_seen": images_seen})
        log.write({"event": "done", **metrics, "generator": url, "deadline_hit": stopped})


def run(cfg: TrainGenConfig) -> dict:
    from cemiray.data.sources import Source
    from cemiray.models.recognizer import load_recognizer
    from cemiray.runtime.cluster import init_ray
    from cemiray.train.checkpoint_check import verify_resume_from
    from cemiray.train.engine import fit_job
    from cemiray.train.face_data import face_dataset, num_classes

    verify_resume_from(cfg.resume_from)  # a refused checkpoint fails before Ray starts
    t0, started = time.perf_counter(), time.time()
    # Ray workers run elsewhere: local paths must not depend on the driver's directory.
    cfg = cfg.model_copy(update={k: storage.absolute(getattr(cfg, k))
                                 for k in ("out", "recognizer", "resume_from", "init_from",
                                           "variation_table", "variation_guide")})
    preset = cfg.resolved_preset()
    source = Source.parse(cfg.data)
    recognizer = load_recognizer(cfg.recognizer)
    if recognizer.dim != preset.id_dim:
        raise ValueError(f"recognizer {cfg.recognizer} embeds to {recognizer.dim} dimensions but "
                         f"preset {preset.name} takes id_dim={preset.id_dim}; set "
                         f"preset_overrides.id_dim")
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    if cfg.variation:
        from cemiray.diffusion.variation import VariationSpec
        from cemiray.train.variation_data import variation_columns, variation_dataset

        ds = variation_dataset(source, cfg.variation, cfg.variation_table, cfg.variation_key,
                               cfg.read_parts)
        spec = VariationSpec.measure(cfg.variation, variation_columns(ds, cfg.variation))
        cfg = cfg.model_copy(update={"preset_overrides": {**cfg.preset_overrides,
                                                          **cfg.variation_overrides(spec)}})
        preset = cfg.resolved_preset()
        if cfg.variation_guide:  # refused now, not in every worker
            from cemiray.diffusion.variation_guide import VariationGuide
            from cemiray.models.attributes import load_attribute_model

            guided = VariationGuide(load_attribute_model(cfg.variation_guide), spec).names
            print(f"train-gen: attribute loss on {guided} read by {cfg.variation_guide}",
                  flush=True)
        print("train-gen: variation " + ", ".join(
            f"{a.name} ({a.kind}" + (f" {a.low:.3g}..{a.high:.3g}" if a.kind == "continuous"
                                     else "") + ")" for a in spec.attributes)
              + f", route {cfg.variation_route}", flush=True)
    else:
        ds = face_dataset(source, parts=cfg.read_parts)
    cfg.save(cfg.out)
    n_rows, n_classes = ds.count(), num_classes(ds)
    if cfg.resolved_pairing() == "identity" and n_classes < 2:
        raise ValueError(f"train-gen: pairing 'identity' needs >= 2 identities in {cfg.data}")
    dist = cfg.distributed
    steps_per_epoch = max(1, n_rows // (cfg.batch_size * dist.num_workers * dist.grad_accum))
    print(f"train-gen: {n_rows} images, {n_classes} identities, {steps_per_epoch} steps/epoch, "
          f"preset {preset.name}, pairing {cfg.resolved_pairing()}, {dist.num_workers} workers, "
          f"ZeRO-{dist.zero_stage}", flush=True)
    deadline = started + 60 * cfg.max_minutes if cfg.max_minutes else None
    return fit_job("train-gen", train_loop,
                   {"cfg": cfg.model_dump(mode="json"), "steps_per_epoch": steps_per_epoch,
                    "deadline": deadline},
                   dist, ds, cfg.out, t0, ("generator", "generator"))
