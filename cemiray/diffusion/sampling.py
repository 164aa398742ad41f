"""The sampling options of the CemiFace generator as one value (diffusion): `SamplingSpec`.

One spec is declared here and carried unchanged from a job's config (`generate`, `experiment`)
to the sampler actor, and from a `/v1/generate` request to the generator deployment; the code
that samples reads it (`cemiray.diffusion.closed_loop.sample`). Pure: pydantic only.

A spec holds what is the same for every image of a call. Per-image conditions (the target m,
the variation attributes) are data: the generate plan computes them (pipeline.generate.schedules)
and they travel in the chunk rows with the identities.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEDULER_NAMES = ("ddim", "dpmsolver++", "euler", "ddpm")
"""The samplers a spec may name; the keys of cemiray.diffusion.pipeline.SCHEDULERS."""
SchedulerName = Literal[SCHEDULER_NAMES]  # type: ignore[valid-type]


class ClosedLoopSpec(BaseModel):
    """Re-sample images whose achieved similarity misses the target by more than `tolerance`,
    at most `max_tries` draws each; the closest draw is kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tolerance: float = Field(0.05, ge=0, allow_inf_nan=False)
    max_tries: int = Field(4, ge=1)


class SamplingSpec(BaseModel):
    """How each image is sampled: steps and scheduler of the reverse process, similarity
    guidance, and the optional closed loop. Frozen and hashable: images sharing a spec are
    sampled together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(20, ge=1, description="sampler steps")
    scheduler: SchedulerName | None = Field(
        "ddim", description="sampler; None: the one stored with the generator")
    guidance_scale: float = Field(1.0, ge=0, allow_inf_nan=False,
                                  description="similarity guidance (1: none; otherwise the UNet "
                                              "runs twice a step)")
    guidance_m: float = Field(0.0, ge=-1, le=1, allow_inf_nan=False,
                              description="reference m of the guidance")
    closed_loop: ClosedLoopSpec | None = None

    @property
    def tries(self) -> int:
        """Most draws of one image."""
        return self.closed_loop.max_tries if self.closed_loop else 1

    @property
    def unet_passes(self) -> int:
        """UNet evaluations per step: guidance runs it twice."""
        return 1 if self.guidance_scale == 1.0 else 2

    def pipeline_options(self) -> dict[str, Any]:
        """The keyword arguments of a CemiFacePipeline call that this spec sets."""
        return {"num_inference_steps": self.steps, "scheduler": self.scheduler,
                "guidance_scale": self.guidance_scale, "guidance_m": self.guidance_m}


SAMPLING_KEYS = tuple(SamplingSpec.model_fields)


def lift_sampling_keys(data: Any, default: SamplingSpec, field: str = "sampling") -> Any:
    """For a config's `mode="before"` validator: the spec's keys given at the top level (the
    flat keys configs always took: `steps=10`, `closed_loop.max_tries=3`) moved into the
    `sampling` section, on top of the section as given or else of the config's own default
    (a key given both ways takes the top-level value)."""
    if not isinstance(data, dict) or not any(k in data for k in SAMPLING_KEYS):
        return data
    out = dict(data)
    given = out.get(field)
    if isinstance(given, SamplingSpec):
        given = given.model_dump(exclude_unset=True)
    elif given is not None and not isinstance(given, dict):
        return data  # leave the error to the field's own validation
    section = dict(default.model_dump(exclude_unset=True) if given is None else given)
    for key in SAMPLING_KEYS:
        if key in out:
            section[key] = out.pop(key)
    out[field] = section
    return out


__all__ = ["SAMPLING_KEYS", "SCHEDULER_NAMES", "ClosedLoopSpec", "SamplingSpec",
           "SchedulerName", "lift_sampling_keys"]
