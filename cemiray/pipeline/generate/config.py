"""The config of `cemiray generate` (pipeline): inputs, targets, sampling spec and actor pool.

How each image is sampled is one SamplingSpec (cemiray.diffusion.sampling), carried unchanged to
the sampler actors; the flat keys configs always took (`steps=`, `closed_loop.max_tries=`) are
read into it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cemiray.diffusion.sampling import SamplingSpec, lift_sampling_keys
from cemiray.pipeline.generate.schedules import (
    ConstantSchedule,
    Schedule,
    schedule_shorthand,
)
from cemiray.pipeline.generate.variation_plan import VariationPlan
from cemiray.runtime.config import JobConfig, RayConfig

OUTPUT_COLUMNS = (
    "image", "label", "sample", "seed_id", "source", "target_m", "similarity",
    "judge_similarity", "seed", "tries", "within_tolerance", "variation", "variation_measured",
    "scheduler", "steps",
    "guidance_scale", "guidance_m", "generator_sha256", "recognizer_sha256", "judge_sha256",
    "shard", "worker_pid", "pixels",
)


class SamplerPoolConfig(BaseModel):
    """The sampler actor pool: the part that changes between this CPU and a GPU cluster."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(2, ge=1, description="most sampler actors (one GPU each on GPUs)")
    min_workers: int = Field(1, ge=1, description="fewest sampler actors")
    initial_workers: int | None = Field(None, ge=1, description="actors at start (min if unset)")
    use_gpu: bool = False
    gpus_per_worker: float = Field(1.0, gt=0, le=1, description="GPU share of a sampler actor "
                                   "(0.5: two actors share a GPU); with use_gpu")
    cpus_per_worker: float = Field(0.5, ge=0, description="≤ 0.5 on a 2-core machine")
    tasks_in_flight_per_worker: int = Field(2, ge=1, description="chunks queued per actor")
    cpus_per_encode_task: float = Field(0.5, gt=0)
    encode_batch: int | None = Field(None, ge=1, description="images per encode-and-write "
                                     "task (None: one block as the sampler made it, i.e. one "
                                     "chunk: one part file per chunk)")
    block_mb: int = Field(16, ge=1, description="Ray Data's target max block size")
    object_store_budget_mb: int | None = Field(None, ge=1, description="cap on Ray Data's "
                                               "object-store use (None: Ray Data's default)")

    @model_validator(mode="after")
    def _sizes(self) -> SamplerPoolConfig:
        initial = self.initial_workers or self.min_workers
        if not self.min_workers <= initial <= self.num_workers:
            raise ValueError(f"need min_workers ({self.min_workers}) <= initial_workers "
                             f"({initial}) <= num_workers ({self.num_workers})")
        return self


class GenerateConfig(JobConfig):
    out: str = "runs/generate"
    seeds: str = Field(description="seed table (Parquet) URL: seed_id, embedding, source, ...")
    generator: str = Field(description="CemiFace pipeline folder URL (save_pipeline), or "
                           "null:<size> for the null generator that measures the pipeline")
    recognizer: str | None = Field(None, description="conditioning recogniser URI (folder, "
                                   ".pth?arch=, .onnx); needed unless the generator is null")
    judge: str | None = Field(None, description="optional independent judge recogniser URI")
    samples_per_identity: int = Field(50, ge=1)
    identities_per_shard: int = Field(50, ge=1)
    schedule: Schedule = Field(default_factory=ConstantSchedule)
    variation: VariationPlan | None = Field(None, description="variation plan per identity "
                                            "(grid, uniform or a real set's distribution); "
                                            "needs a variation-conditioned generator")
    variation_estimator: str | None = Field(None, description="independent attribute model "
                                            "that measures each image's variation "
                                            "(recorded beside the request)")
    seed: int = Field(0, ge=0, description="global seed of targets, noise and variation")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="steps, scheduler, "
                                   "guidance and closed loop of every image (the flat keys "
                                   "steps=, scheduler=, closed_loop.*= ... are read into it)")
    images_per_call: int = Field(64, ge=1, description="images per generator call")
    images_per_chunk: int | None = Field(None, ge=1, description="images per chunk, the "
                                         "sampler's unit of work and retry, in whole identities "
                                         "(None: one generator call). A chunk that is a whole "
                                         "shard is written as that shard by one task; smaller "
                                         "chunks are written as parts, joined per shard")
    exports: list[Literal["recordio", "imagefolder"]] = Field(default_factory=list)
    preview_identities: int = Field(8, ge=1)
    preview_samples: int = Field(8, ge=1)
    leakage_audit: str | None = Field(None, description="optional leakage-audit JSON URL")
    progress_every_s: float = Field(15.0, ge=0, description="seconds between progress lines "
                                    "(images, shards written, ETA); 0: none")
    distributed: SamplerPoolConfig = Field(default_factory=SamplerPoolConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @property
    def chunk_images(self) -> int:
        return self.images_per_chunk or self.images_per_call

    @model_validator(mode="before")
    @classmethod
    def _flat_sampling_keys(cls, data: Any) -> Any:
        return lift_sampling_keys(data, SamplingSpec())

    @field_validator("schedule", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return schedule_shorthand(value)
