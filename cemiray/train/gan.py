"""`cemiray train-gan` (train part): the StyleGAN identity generator on Ray Train.

The shipped 32 px asset is trained on this 2-core CPU with the defaults below (a later session):

    cemiray train-gan out=runs/train_gan_compact max_minutes=240 distributed.torch_threads=1

then `cemiray seeds gan=runs/train_gan_compact/generator gan_samples=N truncation=0.7 ...`.

GANDiffFace's identity stage: a GAN (cemiray.models.stylegan) trained on faces of identities no
recogniser here learns from (ToyFaces 20,000–20,999; E_id has 0–499, the test pairs 500–599, the
real baseline 600 onwards, the judge 10,000–10,999, the seeds' inquiry images 1,000,000 on), whose
samples become new identities (`cemiray seeds gan=<folder>`). Labels are not used.

Each step (StyleGAN2, cemiray.models.stylegan_training): a G step on the non-saturating loss, a D
step on the logistic loss, and every `r1_every` steps an R1 step on real images; Adam with
β = (0, 0.99); an EMA of G counted in images; style mixing and x-flips optional.

Why plain torch.distributed and not DeepSpeed or the DDP wrapper: two networks and two optimizers
take turns (each is frozen while the other trains, yet runs in its graph), and R1 differentiates
D's input gradient (`autograd.grad(create_graph=True)`, then backward). torch's DDP reducer gets
that wrong: measured here (torch 2.13, 2 gloo ranks, a 2-layer net), its R1 gradients differed
from the correctly averaged ones by up to 0.035 at a gradient norm of 0.73 (pytorch#47562), and
it expects every parameter of a forward to get a gradient. DeepSpeed wraps one model and one optimizer per engine and pickles its
optimizer state. So, as StyleGAN2-ADA's own training loop does, every rank runs the networks
unwrapped and the gradients of the network being stepped are averaged with one flat `all_reduce`
over the process group Ray Train sets up (gloo on CPU, NCCL on GPU); parameters are broadcast
from rank 0 at the start and w̄ is averaged each step, so every rank holds the same weights. At
1.6 M parameters nothing needs sharding.

Checkpoints (rank 0, every `distributed.checkpoint_every` steps and at the end, through
`ray.train.report`) hold no pickle: safetensors for the three networks and both optimizers and a
JSON record (stylegan_training); a resumed one (`resume_from`, or Ray's after a worker failure)
is checked tensor by tensor before anything loads, a local `resume_from` before Ray starts.
`out/metrics.jsonl` gets "start" (with total_steps), "train" and "done" records; the EMA
generator is exported as a StyleGAN folder at `out/generator` (stylegan_io)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

DEFAULT_DATA = "toyfaces:?seed=0&ids=20000-20999&samples=10&size=32"


class GANDistributedConfig(BaseModel):
    """How the run is spread over Ray Train workers (plain torch.distributed: no DeepSpeed keys).
    On a 2-core machine each worker reserves half a CPU so Ray Data's read tasks still get one."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    max_failures: int = Field(2, ge=-1, description="worker failures to recover from")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    storage_path: str | None = Field(
        None, description="Ray Train's checkpoint storage (local or s3/gs); None: OUT/ray_results")
    torch_threads: int | None = Field(None, description="intra-op threads per worker (CPU)")
    progress_every_s: float = Field(
        15.0, ge=0, description="seconds between the driver's progress lines; 0: none")


class TrainGANConfig(JobConfig):
    out: str = "runs/train_gan"
    data: str = Field(DEFAULT_DATA, description="face source URI (labels are ignored); "
                      "default: 1,000 ToyFaces identities no recogniser here trains on")
    preset: str = Field("compact", description="compact (32 px, CPU) | gpu112 (112 px)")
    preset_overrides: dict[str, Any] = Field(default_factory=dict,
                                             description="StyleGANPreset fields to replace")
    batch_size: int = Field(32, ge=2, description="images per worker per step")
    lr: float = Field(0.0025, gt=0, description="Adam lr of G and D (D's scaled for lazy R1)")
    r1_gamma: float = Field(0.1, ge=0, description="R1 weight γ; on 32 px ToyFaces 0.1 kept D "
                            "and G balanced where StyleGAN2-ADA's CIFAR 0.01 let D run away")
    r1_every: int = Field(16, ge=1, description="steps between R1 steps (lazy regularisation)")
    style_mixing: float = Field(0.0, ge=0, le=1, description="probability of style mixing")
    mirror: bool = Field(True, description="random horizontal flips of the real images")
    ema_kimg: float = Field(10.0, gt=0, description="half-life of G's EMA in thousand images")
    ema_rampup: float | None = Field(0.05, gt=0, description="EMA half-life at most this "
                                     "fraction of the images seen so far; None: none")
    max_steps: int = Field(20000, ge=1, description="stop at this step (counted across "
                                                    "resumed runs)")
    max_minutes: float | None = Field(None, gt=0, description="stop (checkpoint + export) this "
                                                              "long after the job started")
    log_every: int = Field(50, ge=1)
    read_parts: int = Field(4, ge=1)
    resume_from: str | None = Field(None, description="a train-gan checkpoint (see "
                                                      "out/checkpoint.json)")
    seed: int = 0
    distributed: GANDistributedConfig = Field(default_factory=GANDistributedConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    def resolved_preset(self):
        from cemiray.models.stylegan import resolve_stylegan_preset

        return resolve_stylegan_preset(self.preset, **self.preset_overrides)


def build_state(preset, lr: float, r1_every: int, device="cpu"):
    """(networks by name, optimizers by key) as the trainer holds them."""
    import copy

    from cemiray.models.stylegan import Discriminator, Generator
    from cemiray.models.stylegan_training import build_optimizers

    generator, discriminator = Generator(preset).to(device), Discriminator(preset).to(device)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    opt_g, opt_d = build_optimizers(generator, discriminator, lr, r1_every)
    nets = {"generator": generator, "discriminator": discriminator, "generator_ema": ema}
    return nets, {"G": opt_g, "D": opt_d}


def verify_resume_from(cfg: TrainGANConfig) -> None:
    """The driver's check of a local `resume_from` before Ray starts: every file is read and
    checked against the configured architecture (on throw-away networks)."""
    from cemiray.models.stylegan_training import load_training_state

    url = cfg.resume_from
    if not url or ("://" in url and not url.startswith("file://")):
        return  # a remote checkpoint is checked by the workers once Ray has downloaded it
    nets, opts = build_state(cfg.resolved_preset(), cfg.lr, cfg.r1_every)
    load_training_state(url.removeprefix("file://"), nets, opts, "resume_from")


def read_images(shard, size: int):
    """Every image of this worker's data shard, uint8 N×size×size×3."""
    import numpy as np

    from cemiray.data.images import decode_image, fit_square

    images = []
    for batch in shard.iter_batches(batch_size=256, batch_format="numpy"):
        for data in batch["image"]:
            arr = decode_image(bytes(data), where=f"train-gan row {len(images)}")
            images.append(arr if arr.shape[:2] == (size, size) else fit_square(arr, size))
    if not images:
        raise ValueError("train-gan: this worker's data shard is empty; add data or use fewer "
                         "workers")
    return np.stack(images)


def all_reduce_grads(module, world: int) -> None:
    """Average the gradients of `module`'s trainable parameters over the ranks (one flat
    all_reduce; a missing gradient counts as zero, non-finite entries are zeroed)."""
    import torch
    import torch.distributed as dist

    params = [p for p in module.parameters() if p.requires_grad]
    if world > 1:
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                          for p in params])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)


def broadcast_state(nets: dict, world: int) -> None:
    """Rank 0's parameters and buffers to every rank."""
    import torch.distributed as dist

    if world < 2:
        return
    for net in nets.values():
        for t in [*net.parameters(), *net.buffers()]:
            dist.broadcast(t.data, src=0)


def average_w_avg(generator, world: int) -> None:
    import torch.distributed as dist

    if world > 1:
        dist.all_reduce(generator.mapping.w_avg)
        generator.mapping.w_avg.div_(world)


def restore(cfg: TrainGANConfig, nets: dict, optimizers: dict) -> dict:
    """The latest checkpoint of this run (after a failure) or `resume_from`, loaded and checked;
    its JSON record, or {} for a fresh start."""
    import ray.train

    from cemiray.models.stylegan_training import load_training_state

    ckpt, what = ray.train.get_checkpoint(), "checkpoint"
    if ckpt is None and cfg.resume_from:
        ckpt, what = ray.train.Checkpoint(cfg.resume_from), "resume_from"
    if ckpt is None:
        return {}
    with ckpt.as_directory() as folder:
        return load_training_state(folder, nets, optimizers, what)


def report(nets: dict, optimizers: dict, metrics: dict, rank: int, info: dict) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (all ranks hold the same state)."""
    import tempfile

    import ray.train

    from cemiray.models.stylegan_training import save_training_state

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="cemiray-gan-ckpt-") as tmp:
        save_training_state(tmp, nets, optimizers, info)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import torch

    from cemiray.data import pixels
    from cemiray.models.stylegan import parameter_count
    from cemiray.models.stylegan_io import save_gan
    from cemiray.models.stylegan_training import (
        ADAM_BETAS,
        d_logistic_loss,
        ema_beta,
        g_nonsaturating_loss,
        lazy_gain,
        r1_penalty,
        update_ema,
    )
    from cemiray.train import engine as eng
    from cemiray.train.gen import stop_now

    cfg = TrainGANConfig.model_validate(config["cfg"])
    preset = cfg.resolved_preset()
    rank, world, device, total_steps = eng.worker_context(cfg.distributed, cfg.max_steps, 1, 1)
    bank = torch.from_numpy(read_images(ray.train.get_dataset_shard("train"), preset.image_size))
    torch.manual_seed(cfg.seed)
    nets, optimizers = build_state(preset, cfg.lr, cfg.r1_every, device)
    state = restore(cfg, nets, optimizers)
    c = lazy_gain(cfg.r1_every)  # the configured lr wins over a resumed checkpoint's
    for opt, lr, betas in ((optimizers["G"], cfg.lr, ADAM_BETAS),
                           (optimizers["D"], cfg.lr * c, tuple(b**c for b in ADAM_BETAS))):
        for group in opt.param_groups:
            group.update(lr=lr, betas=betas)
    broadcast_state(nets, world)
    G, D, G_ema = nets["generator"], nets["discriminator"], nets["generator_ema"]
    eng.record_worker(cfg.out, rank)
    log = eng.MetricsLog(storage.join(cfg.out, "metrics.jsonl"), enabled=rank == 0)
    step, images_seen = int(state.get("step", 0)), int(state.get("images_seen", 0))
    if rank == 0:
        log.write({"event": "start", "step": step, "resumed": bool(state), "world_size": world,
                   "total_steps": total_steps, "preset": preset.name, "images": len(bank),
                   "g_params": parameter_count(G), "d_params": parameter_count(D)})
    torch.manual_seed(cfg.seed * 1000 + rank + 7919 * step)
    per_step, z_dim, n = cfg.batch_size * world, preset.z_dim, cfg.batch_size

    def reals():
        x = pixels.normalize(bank[torch.randint(len(bank), (n,))].permute(0, 3, 1, 2))
        if cfg.mirror:
            flip = torch.rand(n) < 0.5
            x[flip] = x[flip].flip(-1)
        return x.to(device)

    t_window, sums, count, r1_last = time.perf_counter(), {}, 0, None
    metrics: dict = {"step": step, "images_seen": images_seen}
    stopped = False
    while step < total_steps and not stopped:
        G.train()
        D.train()
        D.requires_grad_(False)  # G step: D runs in the graph, frozen
        fake_logits = D(G(torch.randn(n, z_dim, device=device), mixing_prob=cfg.style_mixing))
        loss_g = g_nonsaturating_loss(fake_logits)
        optimizers["G"].zero_grad(set_to_none=True)
        loss_g.backward()
        all_reduce_grads(G, world)
        optimizers["G"].step()
        D.requires_grad_(True)

        with torch.no_grad():  # D step: G makes the fakes and tracks w̄
            fake = G(torch.randn(n, z_dim, device=device), update_w_avg=True,
                     mixing_prob=cfg.style_mixing)
        average_w_avg(G, world)
        real = reals()
        real_logits, fake_logits = D(real), D(fake)
        loss_d = d_logistic_loss(real_logits, fake_logits)
        optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        all_reduce_grads(D, world)
        optimizers["D"].step()

        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:  # lazy R1 on real images
            penalty, _ = r1_penalty(D, real)
            optimizers["D"].zero_grad(set_to_none=True)
            (penalty * (cfg.r1_gamma / 2) * cfg.r1_every).backward()
            all_reduce_grads(D, world)
            optimizers["D"].step()
            r1_last = float(penalty.detach())

        step += 1
        images_seen += per_step
        update_ema(G_ema, G, ema_beta(per_step, images_seen, cfg.ema_kimg, cfg.ema_rampup))
        for key, value in (("loss_g", loss_g), ("loss_d", loss_d),
                           ("d_real", real_logits.mean()), ("d_fake", fake_logits.mean())):
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        count += 1
        stopped = stop_now(config.get("deadline"), device)
        metrics = {"step": step, "images_seen": images_seen}
        if step % cfg.log_every == 0 or step == total_steps or stopped or log.due():
            elapsed = time.perf_counter() - t_window
            metrics.update({k: v / count for k, v in sums.items()})
            metrics.update(r1=r1_last, img_per_s=count * per_step / max(elapsed, 1e-9))
            t_window, sums, count = time.perf_counter(), {}, 0
            log.write({"event": "train", **metrics})
        if step % cfg.distributed.checkpoint_every == 0 or step == total_steps or stopped:
            report(nets, optimizers, metrics, rank,
                   {"step": step, "images_seen": images_seen, "world_size": world})
    if rank == 0:
        url = save_gan(storage.join(cfg.out, "generator"), G_ema.cpu(), D.cpu(),
                       {"step": step, "images_seen": images_seen, "data": cfg.data,
                        "trainer": "train-gan", "r1_gamma": cfg.r1_gamma, "lr": cfg.lr,
                        "ema_kimg": cfg.ema_kimg, "batch": per_step})
        log.write({"event": "done", **metrics, "generator": url, "deadline_hit": stopped})


def run(cfg: TrainGANConfig) -> dict:
    from cemiray.data.sources import Source
    from cemiray.runtime.cluster import init_ray
    from cemiray.train.engine import fit_job
    from cemiray.train.face_data import face_dataset

    t0, started = time.perf_counter(), time.time()
    # Ray workers run elsewhere: local paths must not depend on the driver's directory.
    cfg = cfg.model_copy(update={k: storage.absolute(getattr(cfg, k))
                                 for k in ("out", "resume_from")})
    preset = cfg.resolved_preset()  # an unknown preset or field fails before any Ray work
    verify_resume_from(cfg)  # a refused checkpoint fails before Ray starts
    source = Source.parse(cfg.data)
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    ds = face_dataset(source, parts=cfg.read_parts)
    n_rows, dist = ds.count(), cfg.distributed
    if n_rows < dist.num_workers:
        raise ValueError(f"train-gan: {cfg.data} holds {n_rows} images, fewer than the "
                         f"{dist.num_workers} workers")
    print(f"train-gan: {n_rows} images, preset {preset.name} ({preset.image_size} px), "
          f"{dist.num_workers} workers × batch {cfg.batch_size}, {cfg.max_steps} steps",
          flush=True)
    deadline = started + 60 * cfg.max_minutes if cfg.max_minutes else None
    return fit_job("train-gan", train_loop,
                   {"cfg": cfg.model_dump(mode="json"), "deadline": deadline},
                   dist, ds, cfg.out, t0, ("generator", "generator"))
