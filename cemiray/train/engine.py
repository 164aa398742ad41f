"""The trainers' shared engine (train part): DeepSpeed inside Ray Train workers, checkpoints.

What every training job shares: the DeepSpeed engine inside a Ray Train worker, checkpoints
through `ray.train.report`, resume after a worker failure, metrics as JSON lines, the trainer.

Checkpoints: every rank calls `engine.save_checkpoint` into its own temporary folder and reports
it; Ray merges the ranks' files into one checkpoint under `storage_path`. On a restart (worker
failure, `FailureConfig`) `ray.train.get_checkpoint()` returns the latest one and every rank loads
it with `engine.load_checkpoint`, after cemiray.train.checkpoint_check has refused any pickle in
it that names code (the same for `resume_from`), and with DeepSpeed's reads weights-only."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from cemiray.data import storage
from cemiray.models.serialization import CheckpointError
from cemiray.train.checkpoint_check import CHECKPOINT_TAG, restricted_loads, verify_checkpoint
from cemiray.train.settings import DistributedConfig


def deepspeed_config(dist: DistributedConfig, micro_batch: int, grad_clip: float = 0.0,
                     bf16: bool | None = None) -> dict:
    """`grad_clip` is always written: left out, DeepSpeed clips the gradient norm at 1.0."""
    world = dist.num_workers
    cfg: dict = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": dist.grad_accum,
        "train_batch_size": micro_batch * dist.grad_accum * world,
        "zero_optimization": {"stage": dist.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": dist.bf16 if bf16 is None else bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "gradient_clipping": grad_clip,  # 0: none
    }
    return cfg


def worker_device(dist: DistributedConfig) -> torch.device:
    if dist.use_gpu and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if dist.torch_threads:
        torch.set_num_threads(dist.torch_threads)
    return torch.device("cpu")


def initialize(model, optimizer, dist: DistributedConfig, micro_batch: int, lr_scheduler=None,
               grad_clip: float = 0.0, bf16: bool | None = None):
    """`deepspeed.initialize` inside the worker loop (it reuses Ray Train's process group);
    `bf16` overrides `dist.bf16` for DeepSpeed (a model that autocasts itself)."""
    if not dist.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if not dist.use_gpu and not dist.cpu_shm_comm:
        skip_shm_comm_build()

    engine, optimizer, _, lr_scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        config=deepspeed_config(dist, micro_batch, grad_clip, bf16),
    )
    if dist.num_workers == 1 and dist.zero_stage == 0:
        # One rank: DeepSpeed's gradient all-reduce would flatten every gradient, all-reduce the
        # buffer with itself and copy it back (5% of a small model's step on a CPU); skipped, the
        # step is the plain optimizer's on the model's own gradients.
        engine.enable_backward_allreduce = False
    return engine, optimizer, lr_scheduler


def skip_shm_comm_build() -> None:
    """DeepSpeed's CPU backend compiles its shared-memory all-reduce extension when it starts
    (minutes on a fresh machine, silently); marking the op unavailable makes it use torch's gloo
    all-reduce instead, which is what the op falls back to where it cannot build."""
    import deepspeed.ops

    compatible = deepspeed.ops.__compatible_ops__
    compatible["deepspeed_shm_comm"] = False


def restore(engine, resume_from: str | None = None,
            load_more: Callable[[str], None] | None = None) -> dict | None:
    """Load the latest checkpoint of this run (after a failure) or `resume_from`; return the client
    state saved with it, or None for a fresh start. `load_more(folder)` reads what the worker
    saved beside the engine (see `save_and_report`). Either folder is checked first
    (`load_verified`); a remote one after Ray has downloaded it."""
    import ray.train

    ckpt, what = ray.train.get_checkpoint(), "checkpoint"
    if ckpt is None and resume_from:
        ckpt, what = ray.train.Checkpoint(resume_from), "resume_from"
    if ckpt is None:
        return None
    with ckpt.as_directory() as folder:
        return load_verified(engine, folder, what, load_more)


def load_verified(engine, folder: str, what: str = "checkpoint",
                  load_more: Callable[[str], None] | None = None) -> dict:
    """`engine.load_checkpoint(folder)` and `load_more(folder)` once every pickle in `folder`
    passed cemiray.train.checkpoint_check (a refusal raises before anything is loaded), with
    DeepSpeed's own reads weights-only (a file swapped after the check is refused too)."""
    verify_checkpoint(folder, what)
    with restricted_loads(engine, what):
        loaded, client_state = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
    if loaded is None:
        raise CheckpointError(f"{what} {folder}: DeepSpeed loaded nothing from it (see its "
                              "warning above)")
    if load_more:
        load_more(folder)
    return client_state or {}


def save_and_report(engine, metrics: dict, client_state: dict,
                    save_more: Callable[[str], None] | None = None) -> None:
    """Every rank saves its part of the engine state and reports it with the metrics.
    `save_more(folder)` adds this rank's state that lives outside the engine (files named by
    rank: Ray merges every rank's folder into one checkpoint). DeepSpeed keeps `client_state`
    from rank 0 only."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="cemiray-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state=client_state)
        if save_more:
            save_more(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def record_worker(out_url: str, rank: int) -> None:
    """Note which process serves which rank (operators kill or profile workers by it)."""
    import socket

    info = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    storage.atomic_write_text(storage.join(out_url, "workers", f"rank-{rank}.json"), json.dumps(info))


class MetricsLog:
    """JSON lines of progress written by rank 0 (the file is rewritten whole, atomically, so it
    works on object stores too)."""

    def __init__(self, url: str, enabled: bool = True):
        self.url, self.enabled, self.last = url, enabled, time.monotonic()
        self.lines: list[str] = []
        if enabled and storage.exists(url):
            self.lines = [ln for ln in storage.read_text(url).splitlines() if ln.strip()]

    def due(self, seconds: float = 20.0) -> bool:
        """True when this (enabled) log has written nothing for `seconds`: the loops then log a
        step early, so the driver's progress lines never go stale."""
        return self.enabled and time.monotonic() - self.last >= seconds

    def write(self, record: dict, echo: bool = True) -> None:
        if not self.enabled:
            return
        self.last = time.monotonic()
        record = {"time": round(time.time(), 3), **record}
        self.lines.append(json.dumps(record, sort_keys=True))
        storage.atomic_write_text(self.url, "\n".join(self.lines) + "\n")
        if echo:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()
                     if k != "time"}
            print(json.dumps(shown), flush=True)


def read_metrics(url: str) -> list[dict]:
    return [json.loads(ln) for ln in storage.read_text(url).splitlines() if ln.strip()]


def run_trainer(loop, loop_config: dict, dist: DistributedConfig, name: str | None, out: str,
                datasets: dict | None = None):
    """Run `loop(config)` on `dist.num_workers` Ray Train workers; return the Result. Checkpoints
    go to `dist.storage_path`, by default under the job's `out`."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": dist.cpus_per_worker}
    if dist.use_gpu:
        resources["GPU"] = 1
    storage_path = dist.storage_path or storage.join(out, "ray_results")
    if "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=dist.num_workers, use_gpu=dist.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            # Reusing a run name silently resumes that run: fresh runs get a unique one.
            name=name or f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=dist.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=dist.keep_checkpoints),
        ),
        datasets=datasets,
    )
    return trainer.fit()


def fit_job(job: str, loop, loop_config: dict, dist: DistributedConfig, ds, out: str,
            started: float, artefact: tuple[str, str]) -> dict:
    """The driver side every training job shares: run `loop` on Ray Train over dataset `ds`,
    raise if it failed, and return the last "done" record of `out/metrics.jsonl` with the wall
    time and `artefact` (key, folder name under `out`). The last checkpoint is named in
    `out/checkpoint.json`, which a later run takes as `resume_from`."""
    from cemiray.runtime.progress import follow_metrics, since_launch

    metrics_url = storage.join(out, "metrics.jsonl")
    with follow_metrics(job, metrics_url, dist.progress_every_s, dist.progress_every_s > 0):
        result = run_trainer(loop, loop_config, dist, name=None, out=out, datasets={"train": ds})
    if result.error:
        raise RuntimeError(f"{job} failed: {result.error}")
    done = [r for r in read_metrics(metrics_url) if r["event"] == "done"]
    key, folder = artefact
    summary = {**(done[-1] if done else {}), "seconds": round(time.perf_counter() - started, 1),
               key: storage.join(out, folder)}
    if result.checkpoint is not None:
        summary["checkpoint"] = result.checkpoint.path
        storage.atomic_write_text(
            storage.join(out, "checkpoint.json"),
            json.dumps({"path": result.checkpoint.path, "step": summary.get("step")}) + "\n")
    print(f"{job}: done in {since_launch():.0f} s since launch ({summary['seconds']} s after "
          f"Ray's start-up) → {summary[key]}", flush=True)
    return summary


def worker_context(dist: DistributedConfig, max_steps: int | None, epochs: int,
                   steps_per_epoch: int) -> tuple[int, int, torch.device, int]:
    """Inside a Ray Train worker: (rank, world size, device, total optimizer steps)."""
    import ray.train

    ctx = ray.train.get_context()
    total = max_steps or epochs * steps_per_epoch
    return ctx.get_world_rank(), ctx.get_world_size(), worker_device(dist), total
