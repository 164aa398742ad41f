"""`cemiray train-attr` (train part): a face-attribute predictor on Ray Train + DeepSpeed.

Trains cemiray.models.attributes.AttributeNet (an IResNet trunk, one head per attribute) from
any labelled face source whose rows carry the attributes: ToyFaces' group/age/sex at the top of
each row and its per-image nuisances (yaw, roll, smile, glasses, ...) under `nuisance`, or a
Parquet set with attribute columns. A row missing an attribute is unlabelled for it (masked out
of that head's loss). The classes of a categorical attribute and the mean and std of a
continuous one are read from the data by Ray Data before training. When `holdout` is given, the
exported model is scored on it (identities the predictor never saw) and the scores go into
OUT/metrics.jsonl's "done" record and OUT/attributes/scores.json.

Horizontal flips are off by default: a flip negates yaw and roll, so it would teach the heads
noise."""

from __future__ import annotations

import json
import time

from pydantic import Field, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig
from cemiray.train.settings import AugmentConfig, DistributedConfig, grad_clip_field

DEFAULT_DATA = "toyfaces:?seed=0&ids=30000-30999&samples=10&size=32"
DEFAULT_HOLDOUT = "toyfaces:?seed=0&ids=31000-31199&samples=5&size=32"


class TrainAttrConfig(JobConfig):
    out: str = "runs/train_attr"
    data: str = Field(DEFAULT_DATA, description="labelled face source URI; default: 1,000 "
                      "ToyFaces identities no other model here trains on")
    holdout: str | None = Field(DEFAULT_HOLDOUT, description="face source of other identities "
                                "the exported predictor is scored on; None: no scores")
    categorical: list[str] = Field(default_factory=lambda: ["group", "age", "sex"],
                                   description="attributes predicted as classes")
    continuous: list[str] = Field(default_factory=list, description="attributes predicted as "
                                  "numbers (e.g. yaw, roll, smile)")
    backbone: str = "iresnet18"
    width: int = Field(32, ge=4, description="first-stage channels of the trunk")
    embedding_dim: int = Field(128, ge=8, description="trunk features the heads read")
    input_size: int = Field(32, ge=16, le=112)
    resize: str = Field("stretch", description="stretch | crop | pad (see train-fr)")
    epochs: int = Field(4, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=2, description="micro-batch per worker")
    optimizer: str = Field("adamw", description="sgd | adamw")
    lr: float = Field(2e-3, gt=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: list[float] = Field(default_factory=lambda: [0.6, 0.85])
    lr_gamma: float = 0.1
    warmup_steps: int = 50
    grad_clip: float = grad_clip_field()
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(flip=False))
    log_every: int = Field(10, ge=1)
    read_parts: int = Field(4, ge=1)
    resume_from: str | None = Field(None, description="a train-attr checkpoint folder")
    seed: int = 0
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainAttrConfig:
        names = [*self.categorical, *self.continuous]
        if not names:
            raise ValueError("give at least one attribute in categorical or continuous")
        if len(set(names)) != len(names):
            raise ValueError(f"an attribute is listed twice: {names}")
        if self.resize not in ("stretch", "crop", "pad"):
            raise ValueError(f"resize: {self.resize!r} is not stretch, crop or pad")
        return self

    @property
    def names(self) -> list[str]:
        return [*self.categorical, *self.continuous]


def labelled_rows(categorical: list[str], continuous: list[str]):
    """A read transform: rows → {image, c:<name> (JSON text of the value), x:<name> (float)},
    None where a row lacks the attribute."""

    from cemiray.eval.attributes import truth_value as attribute_value

    def transform(part, rows: list[dict]) -> list[dict]:
        out = []
        for row in rows:
            item = {"image": row["image"]}
            for name in categorical:
                value = attribute_value(row, name)
                item[f"c:{name}"] = None if value is None else json.dumps(value)
            for name in continuous:
                value = attribute_value(row, name)
                item[f"x:{name}"] = None if value is None else float(value)
            out.append(item)
        return out

    return transform


def attribute_dataset(source, cfg: TrainAttrConfig, parts: int):
    from cemiray.runtime.reader import plan_reads, read_parts

    plan, _ = plan_reads([source], parts=parts)
    return read_parts(plan, columns=None, index=False,
                      transform=labelled_rows(cfg.categorical, cfg.continuous))


def label_counts(categorical: list[str], continuous: list[str]):
    """A map_batches function: one row per batch with the batch's label statistics (value
    counts of each categorical attribute; count, sum and sum of squares of each continuous one)
    as JSON, so one pass over the data gives every spec."""

    def count(batch: dict) -> dict:
        import numpy as np

        stats: dict = {}
        for name in categorical:
            # JSON texts; a column no row of the block has comes back as nulls (None or NaN)
            values, counts = np.unique([v for v in batch[f"c:{name}"] if isinstance(v, str)],
                                       return_counts=True)
            stats[f"c:{name}"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
        for name in continuous:
            x = np.array([v for v in batch[f"x:{name}"] if v is not None], dtype=np.float64)
            x = x[np.isfinite(x)]
            stats[f"x:{name}"] = [len(x), float(x.sum()), float((x ** 2).sum())]
        return {"stats": np.array([json.dumps(stats)], dtype=object)}

    return count


def attribute_specs(ds, cfg: TrainAttrConfig) -> list:
    """The specs read from the data in one pass: each categorical attribute's classes, each
    continuous one's mean and std; an attribute no row carries is refused naming it."""
    import math

    from cemiray.models.attributes import CATEGORICAL, CONTINUOUS, AttributeSpec

    columns = [*(f"c:{n}" for n in cfg.categorical), *(f"x:{n}" for n in cfg.continuous)]
    totals: dict = {c: ({} if c.startswith("c:") else [0, 0.0, 0.0]) for c in columns}
    parts = ds.select_columns(columns).map_batches(
        label_counts(cfg.categorical, cfg.continuous), batch_format="numpy", batch_size=4096)
    for row in parts.iter_rows():
        for column, value in json.loads(row["stats"]).items():
            if column.startswith("c:"):
                for v, c in value.items():
                    totals[column][v] = totals[column].get(v, 0) + c
            else:
                totals[column] = [a + b for a, b in zip(totals[column], value, strict=True)]
    specs = []
    for name in cfg.categorical:
        if not totals[f"c:{name}"]:
            raise ValueError(f"train-attr: no row of {cfg.data} has attribute {name!r}")
        classes = sorted((json.loads(v) for v in totals[f"c:{name}"]),
                         key=lambda v: (str(type(v)), v))
        specs.append(AttributeSpec(name, CATEGORICAL, classes=classes))
    for name in cfg.continuous:
        n, total, squares = totals[f"x:{name}"]
        if n == 0:
            raise ValueError(f"train-attr: no row of {cfg.data} has attribute {name!r}")
        mean = total / n
        std = math.sqrt(max(squares - n * mean * mean, 0.0) / max(n - 1, 1))
        specs.append(AttributeSpec(name, CONTINUOUS, mean=mean, std=std))
    return specs


def batch_targets(batch: dict, specs: list, device) -> dict:
    """The batch's targets as tensors: class indices (−1 unlabelled), standardised values
    (NaN unlabelled)."""
    import numpy as np
    import torch

    from cemiray.models.attributes import CATEGORICAL

    targets = {}
    for spec in specs:
        if spec.kind == CATEGORICAL:
            index = {json.dumps(c): i for i, c in enumerate(spec.classes)}
            y = [index.get(v, -1) if isinstance(v, str) else -1 for v in batch[f"c:{spec.name}"]]
            targets[spec.name] = torch.as_tensor(y, dtype=torch.long, device=device)
        else:
            x = np.array([np.nan if v is None else v for v in batch[f"x:{spec.name}"]],
                         dtype=np.float32)
            targets[spec.name] = torch.as_tensor((x - spec.mean) / spec.std, device=device)
    return targets


def build_net(cfg: TrainAttrConfig, specs: list):
    from cemiray.models.attributes import AttributeNet

    return AttributeNet({"name": cfg.backbone, "input_size": cfg.input_size,
                         "num_features": cfg.embedding_dim, "width": cfg.width}, specs)


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import torch

    from cemiray.data.augment import augment
    from cemiray.models.attributes import AttributeSpec, save_attribute_model
    from cemiray.train import engine as eng
    from cemiray.train.face_data import decode_batch
    from cemiray.train.fr import lr_lambda, make_optimizer

    cfg = TrainAttrConfig.model_validate(config["cfg"])
    specs = [AttributeSpec(**s) for s in config["specs"]]
    rank, world, device, total_steps = eng.worker_context(
        cfg.distributed, cfg.max_steps, cfg.epochs, config["steps_per_epoch"])
    torch.manual_seed(cfg.seed)
    model = build_net(cfg, specs).to(device)
    optimizer = make_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    engine, _, _ = eng.initialize(model, optimizer, cfg.distributed, cfg.batch_size, scheduler,
                                  grad_clip=cfg.grad_clip)
    state = eng.restore(engine, cfg.resume_from) or {}
    step = int(state.get("step", 0))
    eng.record_worker(cfg.out, rank)
    log = eng.MetricsLog(storage.join(cfg.out, "metrics.jsonl"), enabled=rank == 0)
    if rank == 0:
        log.write({"event": "start", "step": step, "resumed": bool(state), "world_size": world,
                   "total_steps": total_steps})
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * step)
    shard = ray.train.get_dataset_shard("train")
    dtype = torch.bfloat16 if cfg.distributed.bf16 else torch.float32
    t_window, n_window, metrics = time.perf_counter(), 0, {}
    while step < total_steps:
        batches = 0
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                        drop_last=True, local_shuffle_buffer_size=1024,
                                        local_shuffle_seed=cfg.seed + step):
            batches += 1
            x = augment(decode_batch(batch["image"], cfg.input_size, cfg.resize), cfg.augment,
                        gen).to(device, dtype)
            loss, parts = engine.module.loss(engine(x), batch_targets(batch, specs, device))
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            if not boundary:
                continue
            step += 1
            n_window += cfg.batch_size * cfg.distributed.grad_accum * world
            metrics = {"step": step, "loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                       **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}}
            if step % cfg.log_every == 0 or log.due():
                metrics["img_per_s"] = n_window / max(time.perf_counter() - t_window, 1e-9)
                t_window, n_window = time.perf_counter(), 0
                log.write({"event": "train", **metrics})
            if step % cfg.distributed.checkpoint_every == 0 or step == total_steps:
                eng.save_and_report(engine, metrics, {"step": step})
            if step >= total_steps:
                break
        if batches == 0:
            raise ValueError(f"train-attr: the data shard of rank {rank} holds fewer than one "
                             f"batch of {cfg.batch_size} images; lower batch_size or add data")
    if rank == 0:
        save_attribute_model(model, storage.join(cfg.out, "attributes"),
                             {"steps": step, "data": cfg.data, "trainer": "train-attr"})
        log.write({"event": "done", **metrics})


def run(cfg: TrainAttrConfig) -> dict:
    from cemiray.data.sources import Source
    from cemiray.eval.attributes import score_predictor
    from cemiray.models.attributes import load_attribute_model
    from cemiray.runtime.cluster import init_ray
    from cemiray.train.checkpoint_check import verify_resume_from
    from cemiray.train.engine import MetricsLog, fit_job

    verify_resume_from(cfg.resume_from)
    source = Source.parse(cfg.data)
    holdout = Source.parse(cfg.holdout) if cfg.holdout else None
    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out), "data": source.uri,
                                 "holdout": holdout.uri if holdout else None,
                                 "resume_from": storage.absolute(cfg.resume_from)})
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    t0 = time.perf_counter()
    ds = attribute_dataset(source, cfg, cfg.read_parts).materialize()
    specs = attribute_specs(ds, cfg)
    n_rows = ds.count()
    steps_per_epoch = max(1, n_rows // (cfg.batch_size * cfg.distributed.num_workers
                                        * cfg.distributed.grad_accum))
    print(f"train-attr: {n_rows} images, attributes "
          + ", ".join(f"{s.name} ({len(s.classes)} classes)" if s.classes else
                      f"{s.name} (mean {s.mean:.3g}, std {s.std:.3g})" for s in specs)
          + f", {steps_per_epoch} steps/epoch", flush=True)
    summary = fit_job("train-attr", train_loop,
                      {"cfg": cfg.model_dump(mode="json"), "steps_per_epoch": steps_per_epoch,
                       "specs": [s.__dict__ for s in specs]},
                      cfg.distributed, ds, cfg.out, t0, ("attributes", "attributes"))
    if holdout is not None:
        model = load_attribute_model(summary["attributes"])
        scores = score_predictor(model, holdout, cfg.resize)
        storage.atomic_write_text(storage.join(summary["attributes"], "scores.json"),
                                  json.dumps(scores, indent=2) + "\n")
        MetricsLog(storage.join(cfg.out, "metrics.jsonl")).write(
            {"event": "holdout", "holdout": holdout.uri, **scores}, echo=False)
        summary["holdout"] = scores
        print("train-attr: held-out " + ", ".join(
            f"{k} {v['accuracy']:.3f}" if "accuracy" in v else f"{k} MAE {v['mae']:.3g}"
            for k, v in scores["attributes"].items()), flush=True)
    return summary
