"""The experiment's config (apps): models, synthetic sets, sampling spec and FR recipe.

Which models to start from, the synthetic sets to make and how their images are sampled (one
SamplingSpec, handed unchanged to `generate`), and one FR recipe shared by every recognition
model the loop trains (so only the training data differs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cemiray.assets import (
    TOYFACES_ATTRIBUTES,
    TOYFACES_ATTRIBUTES_JUDGE,
    TOYFACES_GAN,
    TOYFACES_GENERATOR,
    TOYFACES_JUDGE,
    TOYFACES_RECOGNIZER,
)
from cemiray.diffusion.sampling import SamplingSpec, lift_sampling_keys
from cemiray.pipeline.generate.variation_plan import VariationPlan
from cemiray.runtime.config import JobConfig, RayConfig, WorldConfig
from cemiray.train.settings import DistributedConfig

REAL = "real"  # the label of the real training set in every table
PAPER_SWEEP = (-0.2, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_MIXTURES = ((0.0, 0.5), (0.0, 0.5, 0.9, 1.0))


def _one_worker() -> DistributedConfig:
    return DistributedConfig(num_workers=1, cpus_per_worker=1.0, zero_stage=1, torch_threads=2,
                             checkpoint_every=10**6)


class FRRecipe(BaseModel):
    """Every FR model of the loop trains with these settings; only `data` changes."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "iresnet18"
    width: int = Field(16, ge=4)
    embedding_dim: int = Field(512, ge=8)
    head: str = "cosface"
    margin: float = 0.4
    scale: float = 64.0
    epochs: int = Field(20, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(0.1, gt=0)
    warmup_steps: int = Field(20, ge=0)
    eval_every: int = Field(10**6, ge=1, description="evaluate during training (the end always)")
    distributed: DistributedConfig = Field(default_factory=_one_worker)


class SyntheticSet(BaseModel):
    """One synthetic training set: every identity gets images at these similarities, in equal
    shares (one value: a constant m; several: the paper's mixtures), and optionally a variation
    plan (GANDiffFace's intra-class variation; a `target` plan without a table copies the real
    training set's distribution as `variation_labeller` reads it)."""

    model_config = ConfigDict(extra="forbid")

    m: list[float] = Field(min_length=1)
    name: str | None = None
    variation: VariationPlan | None = None

    @field_validator("m")
    @classmethod
    def _check_m(cls, value: list[float]) -> list[float]:
        for m in value:
            if not -1.0 <= m <= 1.0:
                raise ValueError(f"m={m}: similarities lie in [-1, 1]")
        return [float(m) for m in value]

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        text = f"m={self.m[0]:g}" if len(self.m) == 1 else \
            "m={" + ",".join(f"{m:g}" for m in self.m) + "}"
        return text + (f" +{self.variation.kind} variation" if self.variation else "")


def _sampling() -> SamplingSpec:
    return SamplingSpec(steps=10, scheduler="dpmsolver++")


def _default_sets() -> list[SyntheticSet]:
    return [SyntheticSet(m=[m]) for m in PAPER_SWEEP] + [SyntheticSet(m=list(m))
                                                          for m in PAPER_MIXTURES]


class ExperimentConfig(JobConfig):
    out: str = "runs/experiment"
    world: WorldConfig = Field(default_factory=WorldConfig)
    recognizer: str | None = Field(TOYFACES_RECOGNIZER, description="E_id: conditions the "
                                   "generator and picks the seeds (a cemiray model folder); None: "
                                   "train one on the real split first")
    judge: str | None = Field(TOYFACES_JUDGE, description="the independent judge: measures every "
                              "generated image and every set's score distributions, and "
                              "conditions, trains and selects nothing; None: E_id judges "
                              "(reported as not independent)")
    generator: str | None = Field(TOYFACES_GENERATOR, description="CemiFace pipeline "
                                  "folder; None: train one with train-gen first")
    recognizer_identities: int = Field(500, ge=2, description="real identities E_id trains on "
                                       "(ToyFaces ids 0…n−1), also the seeds' leakage reference")
    recognizer_samples: int = Field(20, ge=2)
    recognizer_epochs: int = Field(8, ge=1)
    generator_training: dict[str, Any] = Field(
        default_factory=lambda: {"max_minutes": 120.0, "batch_size": 32},
        description="train-gen options when the generator is trained here")
    test_identities: int = Field(100, ge=2, description="held-out identities of the .bin")
    test_samples: int = Field(10, ge=2)
    bin_pairs: int = Field(2000, ge=20)
    identities: int = Field(100, ge=2, description="identities of every training set")
    candidates_per_identity: int = Field(3, ge=1, description="new identities drawn per seed kept")
    identity_source: Literal["toyfaces", "gan"] = Field(
        "toyfaces", description="where new identities come from: ToyFaces' new-identity range "
        "(one image each) or the GAN (GANDiffFace's identity stage), its samples labelled by "
        "attribute_model and aimed at the quota cells")
    gan: str = Field(TOYFACES_GAN, description="StyleGAN generator folder (identity_source=gan)")
    attribute_model: str = Field(TOYFACES_ATTRIBUTES, description="labels the GAN samples for "
                                 "the quotas (identity_source=gan)")
    gan_condition_psi: float = Field(1.0, ge=0, le=1, description="pull of each GAN sample "
                                     "toward its quota cell's mean w")
    quotas: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {"group": {str(g): 0.25 for g in range(4)},
                                 "sex": {"0": 0.5, "1": 0.5}},
        description="demographic balance of the seeds (GANDiffFace)")
    uniqueness_threshold: float = Field(0.7, ge=-1, le=1, description="seeds more alike than "
                                        "this (E_id cosine) count as one identity")
    leakage_threshold: float = Field(0.8, ge=-1, le=1, description="seeds this close to a "
                                     "training identity's centre are refused; ToyFaces' real "
                                     "genuine pairs average ≈ 0.55 under E_id")
    samples_per_identity: int = Field(10, ge=1)
    sets: list[SyntheticSet] = Field(default_factory=_default_sets)
    real_baseline: bool = Field(True, description="train FR on as many real images: the same "
                                "identities × images budget as each synthetic set")
    real_first_identity: int | None = Field(
        None, ge=0, description="first ToyFaces identity of the real baseline; default: right "
        "after E_id's and the test identities, so the baseline shares no identity with E_id, "
        "the generator, the test pairs or the seeds")
    scaling: list[int] = Field(default_factory=list, description="also train on the real set "
                               "and on `scaling_set` at these multiples of `identities`, with the "
                               "same images per identity (e.g. [2, 4]): the claim that more "
                               "synthetic identities close the gap to real data")
    scaling_set: str | None = Field(None, description="the synthetic set that is scaled (its "
                                    "label; default: the first single-m set with m < 1)")
    trainings: int = Field(3, ge=1, description="FR trainings per training set, with seeds "
                           "0…n−1 (initialisation, augmentation, data order); rows report the "
                           "mean with its 95% CI and the claims a paired t-test")
    sampling: SamplingSpec = Field(
        default_factory=_sampling, description="how every synthetic image is sampled (steps, "
        "scheduler, guidance, closed loop; the flat keys steps=, scheduler=, ... are read into "
        "it). DPM-Solver++ at 10 steps controls similarity as DDIM at 20 does (mean |achieved "
        "− m| 0.195 vs 0.193, shipped generator) at half the cost")
    images_per_call: int = Field(50, ge=1)
    sampler_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    fr: FRRecipe = Field(default_factory=FRRecipe)
    variation_labeller: str = Field(TOYFACES_ATTRIBUTES, description="attribute model that "
                                    "labels the real set for a target variation plan")
    variation_estimator: str | None = Field(TOYFACES_ATTRIBUTES_JUDGE, description="independent "
                                            "attribute model recording what each generated "
                                            "image shows (sets with variation)")
    grid_identities: int = Field(6, ge=1, description="rows of the sample grid")
    report: bool = True
    summary_json: str | None = Field(None, description="also write the figures a README table "
                                     "quotes (rows, claims, calibration, models) to this small "
                                     "JSON, e.g. docs/results/quickstart.json")
    screenshot: bool = Field(False, description="render the report in headless Chromium")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _flat_sampling_keys(cls, data: Any) -> Any:
        return lift_sampling_keys(data, _sampling())

    def real_identities(self) -> range:
        """The real baseline's identities: disjoint from every model's and from the test's."""
        first = self.real_first_identity
        if first is None:
            first = self.recognizer_identities + self.test_identities
        return range(first, first + self.identities)

    def scaled_set(self) -> SyntheticSet:
        """The synthetic set the `scaling` multiples apply to."""
        if self.scaling_set is not None:
            return next(s for s in self.sets if s.label == self.scaling_set)
        semi = [s for s in self.sets if len(s.m) == 1 and s.m[0] < 1.0]
        return (semi or self.sets)[0]

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        labels = [s.label for s in self.sets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"sets: two sets share a name ({labels})")
        if "real" in labels:
            raise ValueError("sets: 'real' names the real-data baseline")
        if not self.sets and not self.real_baseline:
            raise ValueError("nothing to train: no sets and no real baseline")
        if any(k < 2 for k in self.scaling) or len(set(self.scaling)) != len(self.scaling):
            raise ValueError(f"scaling={self.scaling}: distinct multiples of at least 2")
        if self.scaling and not self.sets:
            raise ValueError("scaling: needs a synthetic set to scale")
        if self.scaling_set is not None and self.scaling_set not in labels:
            raise ValueError(f"scaling_set={self.scaling_set!r}: not one of the sets {labels}")
        taken = self.recognizer_identities + self.test_identities
        if self.real_first_identity is not None and self.real_first_identity < taken:
            raise ValueError(f"real_first_identity={self.real_first_identity}: identities "
                             f"0…{taken - 1} belong to E_id, the generator and the test pairs")
        if self.generator is None:
            from cemiray.train.gen import TrainGenConfig

            try:  # checked now, not after hours of E_id training
                TrainGenConfig.model_validate({"recognizer": "E_id", **self.generator_training})
            except ValueError as exc:
                raise ValueError(f"generator_training: {exc}") from None
        return self
