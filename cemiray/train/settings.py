"""Config sections shared by the training jobs (no Ray import: the CLI reads these at once)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DistributedConfig(BaseModel):
    """How a training run is spread: the only part that changes between this CPU and a GPU cluster.

    On a 2-core machine each worker reserves half a CPU so Ray Data's read tasks still get one
    (a pipeline whose workers reserve every CPU hangs without an error)."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    zero_stage: int = Field(2, ge=0, le=3, description="DeepSpeed ZeRO stage; at one worker "
                            "nothing is partitioned and 0 costs least (no gradient copies)")
    bf16: bool = False
    grad_accum: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=-1, description="worker failures to recover from")
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    storage_path: str | None = Field(
        None, description="Ray Train's checkpoint storage (local or s3/gs); None: OUT/ray_results")
    torch_threads: int | None = Field(None, description="intra-op threads per worker (CPU)")
    cpu_shm_comm: bool = Field(
        False, description="CPU workers: DeepSpeed's shared-memory all-reduce, a C++ extension "
        "compiled on first use (minutes on a fresh machine, then cached in TORCH_EXTENSIONS_DIR); "
        "off: torch's gloo all-reduce, nothing to compile")
    progress_every_s: float = Field(
        15.0, ge=0, description="seconds between the driver's progress lines; 0: none")


class AugmentConfig(BaseModel):
    """The CemiFace FR recipe: flip, random resized crop 0.9–1, colour jitter, random erasing."""

    model_config = ConfigDict(extra="forbid")

    flip: bool = True
    crop_min_scale: float = Field(0.9, gt=0, le=1)
    color_jitter: float = Field(0.2, ge=0, le=1)
    erase_prob: float = Field(0.25, ge=0, le=1)


def grad_clip_field() -> Any:
    """Every trainer's `grad_clip`: the engine always writes it into DeepSpeed's config."""
    return Field(1.0, ge=0, description="clip the gradient norm at this (0: none); 1.0 is "
                 "DeepSpeed's own default, which every shipped model trained with")
