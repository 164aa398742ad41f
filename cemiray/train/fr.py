"""`cemiray train-fr` (train part): an IResNet backbone + margin head on Ray Train + DeepSpeed.

The same code runs on 2 CPU workers here and on N GPU workers in a cluster: only the
`distributed` section changes. Progress is counted in images seen so it does not depend on the
number of workers; the final backbone (and the head's class centres) are exported as folders of
`config.json` + safetensors. With `partial_fc` the class centres are sharded across the workers
(cemiray.train.fr_model.CentreShard) for many-identity synthetic sets; the export is the same."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig
from cemiray.train.settings import AugmentConfig, DistributedConfig, grad_clip_field


class TrainFRConfig(JobConfig):
    out: str = "runs/train_fr"
    data: str = Field("toyfaces:?seed=0&ids=0-499&samples=20&size=32", description="face "
                      "source URI: parquet:/imagefolder:/recordio:/orl:<path or URL>, or "
                      "toyfaces:?ids=..&samples=..")
    verification: str | None = Field(None, description="a verification .bin evaluated during training")
    backbone: str = "iresnet18"
    input_size: int = Field(32, ge=16, le=112)
    resize: Literal["stretch", "crop", "pad"] = Field(
        "stretch", description="how images of another size become input_size x input_size: "
        "stretch (aspect lost), crop (centre square) or pad (black borders)")
    width: int = Field(64, ge=4, description="first-stage channels (64 = arcface_torch)")
    embedding_dim: int = Field(512, ge=8)
    head: str = Field("cosface", description="arcface | cosface | adaface")
    margin: float = 0.4
    scale: float = 64.0
    partial_fc: bool = Field(False, description="shard the class centres across the workers "
                             "(Partial FC), outside DeepSpeed; the backbone stays data-parallel")
    sample_rate: float = Field(1.0, gt=0, le=1, description="Partial FC: share of each shard's "
                               "centres used per step (every positive, then random negatives)")
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(64, ge=2, description="micro-batch per worker")
    optimizer: str = Field("sgd", description="sgd | adamw")
    lr: float = Field(0.1, gt=0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.9],
                                       description="fractions of training where lr ×= lr_gamma")
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    grad_clip: float = grad_clip_field()
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    read_parts: int = Field(4, ge=1)
    shuffle_buffer: int = Field(1024, ge=0, description="rows of Ray Data's local shuffle "
                                "buffer per worker (0: blocks in order)")
    prefetch_batches: int = Field(4, ge=0, description="batches Ray Data prepares ahead in a "
                                  "background thread (0: none). With 1 the training thread "
                                  "waited for its next batch in 7.5% of its samples on 2 cores "
                                  "(docs/experiments/benchmarks.md)")
    resume_from: str | None = Field(None, description="a train-fr checkpoint folder to continue "
                                    "(OUT/checkpoint.json names the last one); only checkpoints "
                                    "whose pickles hold data are loaded")
    seed: int = 0
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> TrainFRConfig:
        if self.sample_rate < 1 and not self.partial_fc:
            raise ValueError("sample_rate < 1 samples Partial FC's negative centres: set "
                             "partial_fc=true")
        return self


def fr_config(recipe: BaseModel | dict[str, Any], **run: Any) -> TrainFRConfig:
    """The train-fr config of one run of a study: the study's shared FR recipe (a model or a
    dict whose fields are all TrainFRConfig fields) with this run's fields (out, data, ...)
    on top."""
    fields = recipe.model_dump() if isinstance(recipe, BaseModel) else dict(recipe)
    unknown = sorted(set(fields) - set(TrainFRConfig.model_fields))
    if unknown:
        raise ValueError(f"FR recipe: {unknown} are not TrainFRConfig fields")
    return TrainFRConfig(**{**fields, **run})


def build_model(cfg: TrainFRConfig, num_classes: int):
    """`FaceRecognitionModel` (cemiray.train.fr_model) from the config; with `partial_fc` its
    head is this worker's centre shard."""
    from cemiray.train.fr_model import build_face_model

    return build_face_model(backbone=cfg.backbone, input_size=cfg.input_size,
                            embedding_dim=cfg.embedding_dim, width=cfg.width, head=cfg.head,
                            num_classes=num_classes, scale=cfg.scale, margin=cfg.margin,
                            partial_fc=cfg.partial_fc, sample_rate=cfg.sample_rate,
                            seed=cfg.seed,
                            dtype="bfloat16" if cfg.distributed.bf16 else "float32")


def lr_lambda(cfg: TrainFRConfig, total_steps: int):
    milestones = sorted(int(f * total_steps) for f in cfg.lr_milestones)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return warm * cfg.lr_gamma ** sum(step >= m for m in milestones)

    return factor


def make_optimizer(cfg, params):
    import torch

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer: unknown {cfg.optimizer!r} (sgd | adamw)")


class VerificationProbe:
    """Verification accuracy of the backbone on a `.bin` set (arcface_torch protocol)."""

    def __init__(self, url: str, size: int):
        from cemiray.data import pixels
        from cemiray.data.verification_bin import decode_bin
        from cemiray.eval.verification import check_folds

        images, self.issame = decode_bin(url, size)
        check_folds(self.issame, where=url)
        self.x = pixels.from_numpy(images)

    def __call__(self, backbone, device) -> dict:
        import torch

        from cemiray.eval.verification import evaluate_pairs, flip_sum

        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            embs = []
            for chunk in self.x.split(256):
                chunk = chunk.to(device)
                embs.append(flip_sum(backbone, chunk).float().cpu())
            emb = torch.nn.functional.normalize(torch.cat(embs), dim=1).numpy()
        backbone.train(was_training)
        result = evaluate_pairs(emb[0::2], emb[1::2], self.issame)
        return {"val_acc": float(result["accuracy_mean"]), "val_acc_std": float(result["accuracy_std"])}


def export_model(model, cfg: TrainFRConfig, num_classes: int, meta: dict) -> None:
    from cemiray.models.serialization import save_model_folder

    backbone_config = {**model.backbone.config, "dtype": "float32"}  # fp32 weights, any use
    save_model_folder(model.backbone, storage.join(cfg.out, "backbone"), backbone_config)
    save_model_folder(model.head, storage.join(cfg.out, "head"), {**model.head.config, **meta})


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import torch

    from cemiray.data.augment import augment
    from cemiray.train import engine as eng
    from cemiray.train.face_data import decode_batch
    from cemiray.train.fr_model import CentreShard, FaceRecognitionModel

    cfg = TrainFRConfig.model_validate(config["cfg"])
    rank, world, device, total_steps = eng.worker_context(
        cfg.distributed, cfg.max_steps, cfg.epochs, config["steps_per_epoch"])
    torch.manual_seed(cfg.seed)
    num_classes = config["num_classes"]

    model = build_model(cfg, num_classes).to(device)
    # Partial FC: DeepSpeed trains (and all-reduces) the backbone only; the centre shard has
    # its own optimizer and its own file in every checkpoint.
    centres = CentreShard(model.head, make_optimizer(cfg, model.head.parameters()),
                          lr_lambda(cfg, total_steps)) if cfg.partial_fc else None
    trained = model.backbone if centres else model
    optimizer = make_optimizer(cfg, trained.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    # bf16 is autocast inside the backbone over float32 weights (as arcface_torch runs fp16), not
    # DeepSpeed's bf16: that casts the BatchNorm weights but not their running statistics, and
    # the first step fails ("expected scalar type BFloat16 but found Float").
    engine, _, _ = eng.initialize(trained, optimizer, cfg.distributed, cfg.batch_size, scheduler,
                                  grad_clip=cfg.grad_clip, bf16=False)
    state = eng.restore(engine, cfg.resume_from, centres.load if centres else None) or {}
    step, images_seen = int(state.get("step", 0)), int(state.get("images_seen", 0))
    eng.record_worker(cfg.out, rank)
    log = eng.MetricsLog(storage.join(cfg.out, "metrics.jsonl"), enabled=rank == 0)
    if rank == 0:
        log.write({"event": "start", "step": step, "resumed": bool(state), "world_size": world,
                   "total_steps": total_steps})
    probe = VerificationProbe(cfg.verification, cfg.input_size) if cfg.verification and rank == 0 else None
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank + 7919 * step)
    shard = ray.train.get_dataset_shard("train")

    t_window, n_window = time.perf_counter(), 0
    metrics: dict = {}
    while step < total_steps:
        epoch_batches = 0
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                        drop_last=True, prefetch_batches=cfg.prefetch_batches,
                                        local_shuffle_buffer_size=cfg.shuffle_buffer or None,
                                        local_shuffle_seed=cfg.seed + step):
            epoch_batches += 1
            x = augment(decode_batch(batch["image"], cfg.input_size, cfg.resize), cfg.augment,
                        gen)
            y = torch.as_tensor(batch["label"], dtype=torch.long, device=device)
            x = x.to(device)
            loss = model.head(engine(x), y) if centres else engine(x, y)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()  # before step() counts it
            engine.step()
            if not boundary:
                continue
            if centres:
                centres.step()
            step += 1
            images_seen += cfg.batch_size * cfg.distributed.grad_accum * world
            n_window += cfg.batch_size * cfg.distributed.grad_accum * world
            metrics = {"step": step, "loss": float(loss.detach().float()),
                       "lr": scheduler.get_last_lr()[0], "images_seen": images_seen}
            if step % cfg.log_every == 0 or log.due():
                elapsed = time.perf_counter() - t_window
                metrics["img_per_s"] = n_window / max(elapsed, 1e-9)
                t_window, n_window = time.perf_counter(), 0
                log.write({"event": "train", **metrics})
            if probe and (step % cfg.eval_every == 0 or step == total_steps):
                log.write({"event": "eval", "step": step, **probe(model.backbone, device)})
            if step % cfg.distributed.checkpoint_every == 0 or step == total_steps:
                eng.save_and_report(engine, metrics, {"step": step, "images_seen": images_seen},
                                    centres.save if centres else None)
            if step >= total_steps:
                break
        if epoch_batches == 0:
            raise ValueError(f"train-fr: the data shard of rank {rank} holds fewer than one batch "
                             f"of {cfg.batch_size} images; lower batch_size or add data")
    meta = {"steps": step, "images_seen": images_seen}
    if centres:  # every rank sends its rows; rank 0 exports the whole head as without Partial FC
        model = FaceRecognitionModel(model.backbone, centres.full_head())
        meta["partial_fc"] = {"workers": world, "sample_rate": cfg.sample_rate}
    if rank == 0:
        if probe:
            metrics.update(probe(model.backbone, device))
        export_model(model, cfg, num_classes, meta)
        log.write({"event": "done", **metrics})


def run(cfg: TrainFRConfig) -> dict:
    from cemiray.data.sources import Source
    from cemiray.runtime.cluster import init_ray
    from cemiray.train.checkpoint_check import verify_resume_from
    from cemiray.train.engine import fit_job
    from cemiray.train.face_data import face_dataset, fit_note, num_classes

    verify_resume_from(cfg.resume_from)  # a refused checkpoint fails before Ray starts
    source = Source.parse(cfg.data)
    cfg = cfg.model_copy(update={
        "out": storage.absolute(cfg.out),
        "verification": storage.absolute(cfg.verification),
        "resume_from": storage.absolute(cfg.resume_from),
        "data": source.uri,
    })
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    t0 = time.perf_counter()
    ds = face_dataset(source, parts=cfg.read_parts)
    n_rows, n_classes = ds.count(), num_classes(ds)
    steps_per_epoch = max(1, n_rows // (cfg.batch_size * cfg.distributed.num_workers
                                        * cfg.distributed.grad_accum))
    print(f"train-fr: {n_rows} images, {n_classes} identities, {steps_per_epoch} steps/epoch, "
          f"{cfg.distributed.num_workers} workers, ZeRO-{cfg.distributed.zero_stage}", flush=True)
    note = fit_note("train-fr", ds, cfg.input_size, cfg.resize)
    if note:
        print(note, flush=True)
    return fit_job("train-fr", train_loop,
                   {"cfg": cfg.model_dump(mode="json"), "num_classes": n_classes,
                    "steps_per_epoch": steps_per_epoch},
                   cfg.distributed, ds, cfg.out, t0, ("backbone", "backbone"))
