"""Configuration of `cemiray seeds` (pipeline part): the seed sources, filters and Ray settings.

Source fields stay URI strings for the command line; `sources()` parses them once and the job
passes the parsed `Source` objects on. Imported by the CLI for `--dry-run`: no Ray, no torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig

if TYPE_CHECKING:
    from cemiray.data.sources import Source

DEFAULT_INQUIRY = "toyfaces:?seed=0&ids=1000000-1000999&samples=1&size=32"
DEFAULT_TRAINING = "toyfaces:?seed=0&ids=0-499&samples=5&size=32"
TABLE_COLUMNS = ("seed_id", "embedding", "source", "image", "source_label", "feature_norm",
                 "leakage_max", "leakage_nearest", "uniqueness_max", "attributes_from")


class SeedsConfig(JobConfig):
    out: str = "runs/seeds"
    recognizer: str = Field(..., description="conditioning recogniser: its unit embeddings go "
                                             "into the table (cemiray folder, .pth?arch=, .onnx)")
    judge: str | None = Field(None, description="recogniser for uniqueness and leakage "
                                                "(default: the conditioning one)")
    inquiry: list[str] = Field(default_factory=lambda: [DEFAULT_INQUIRY],
                               description="face source URIs; first image per label")
    embedding_files: list[str] = Field(default_factory=list,
                                       description=".npy or Parquet (`embedding` column) files")
    generator: str | None = Field(None, description="unconditional generator folder")
    generator_samples: int = Field(0, ge=0)
    generator_steps: int = Field(50, ge=1)
    generator_sampler: Literal["ddim", "ddpm"] = "ddim"
    generator_seed: int = Field(0, ge=0, description="sample k uses noise seed generator_seed+k "
                                "(generator and gan)")
    generator_batch: int = Field(32, ge=1, description="images per sampler call (generator and "
                                 "gan)")
    gan: str | None = Field(None, description="StyleGAN generator folder (`cemiray train-gan` "
                            "writes one at OUT/generator): a fast source of new identities")
    gan_samples: int = Field(0, ge=0)
    truncation: float = Field(1.0, ge=0, le=1, description="the gan's truncation psi: "
                              "w = w_avg + psi (w - w_avg); 1: none, lower trades identity "
                              "diversity for cleaner faces")
    gan_condition: bool = Field(False, description="fill the quotas from the gan by aiming "
                                "each sample at a cell: its seed screened by a linear "
                                "discriminant in W, its w optionally pulled toward the cell's "
                                "mean w (needs attribute_model and quotas)")
    gan_condition_psi: float = Field(1.0, ge=0, le=1, description="pull toward the cell: "
                                     "w = c + psi (w - c); 1: none")
    gan_calibration: int = Field(2000, ge=10, description="gan samples (noise seeds from "
                                 "3.5e9) that locate each cell in W")
    gan_condition_tries: int = Field(16, ge=1, description="seeds screened per aimed row by the "
                                     "linear discriminant in W before one is rendered")
    attribute_model: str | None = Field(None, description="attribute predictor folder "
                                        "(`cemiray train-attr`): predicts the attributes a "
                                        "candidate lacks (gan and generator samples, unlabelled "
                                        "data) from its image, before any probe")
    attributes: list[str] = Field(default_factory=lambda: ["group", "age", "sex"],
                                  description="attribute columns carried into the table")
    order: Literal["given", "interleaved", "shuffled"] = Field(
        "given", description="candidates in source order, one from each source in turn, or "
                             "shuffled with order_seed")
    order_seed: int = 0
    num_identities: int | None = Field(None, ge=1, description="seeds to keep (None: all)")
    require_target: bool = Field(True, description="fail when num_identities or a quota cell "
                                                   "cannot be filled (the report is written)")
    uniqueness_threshold: float = Field(0.3, ge=-1, le=1)
    leakage_threshold: float = Field(0.3, ge=-1, le=1)
    leakage_data: str | None = Field(DEFAULT_TRAINING, description="training face source whose "
                                     "identity centres seeds must stay away from")
    leakage_centres: str | None = Field(None, description="centres file instead (.npy, Parquet)")
    quality_min_norm: float | None = Field(None, ge=0)
    quality_max_norm: float | None = Field(None, ge=0)
    quotas: dict[str, dict[str, float]] = Field(
        default_factory=dict, description='{"group": {"0": 0.25, ...}} or joint '
                                          '{"group,sex": {"0,1": 0.125, ...}}')
    probe_data: str | None = Field(None, description="labelled face source with the attributes, "
                                                     "to predict missing ones from embeddings")
    probe_kind: Literal["centroid", "logistic"] = "centroid"
    keep_images: bool = True
    seed_id_offset: int = Field(0, ge=0)
    block_size: int = Field(1024, ge=1, description="candidates per similarity block")
    batch_size: int = Field(64, ge=1, description="images per embedder call")
    rows_per_task: int = Field(500, ge=1)
    num_actors_min: int = Field(1, ge=1)
    num_actors_max: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, ge=0, description="≤ 0.5 on a 2-core machine")
    use_gpu: bool = False
    gpus_per_actor: float = Field(0.5, gt=0, le=1, description="sampler and embedder actors "
                                                              "share a GPU at 0.5")
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _centres_replace_data(cls, data: Any) -> Any:
        """A centres file replaces the default leakage data (it is not a second reference)."""
        if isinstance(data, dict) and data.get("leakage_centres") and "leakage_data" not in data:
            return {**data, "leakage_data": None}
        return data

    @field_validator("quotas", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(k): ({str(c): f for c, f in v.items()} if isinstance(v, dict) else v)
                for k, v in value.items()}

    @model_validator(mode="after")
    def _check(self) -> SeedsConfig:
        if not (self.inquiry or self.embedding_files or self.generator or self.gan):
            raise ValueError("no seed sources: give inquiry, embedding_files, generator or gan")
        if bool(self.generator) != (self.generator_samples > 0):
            raise ValueError("give generator together with generator_samples > 0")
        if bool(self.gan) != (self.gan_samples > 0):
            raise ValueError("give gan together with gan_samples > 0")
        if self.gan_condition and not (self.gan and self.attribute_model and self.quotas):
            raise ValueError("gan_condition fills quotas from the gan: give gan, "
                             "attribute_model and quotas")
        if self.gan_condition and len(self.quotas) != 1:
            raise ValueError(f"gan_condition pulls each sample toward one cell: give one quota "
                             f"(a joint one for several attributes), got {sorted(self.quotas)}")
        if self.leakage_data and self.leakage_centres:
            raise ValueError("give leakage_data or leakage_centres, not both")
        if self.quotas and self.num_identities is None:
            raise ValueError("quotas need num_identities (the counts are fractions of it)")
        if self.num_actors_max < self.num_actors_min:
            raise ValueError("num_actors_max is below num_actors_min")
        if self.embedding_files and self.judge and self.judge != self.recognizer:
            raise ValueError("embedding_files hold no images for the judge to embed; leave "
                             "judge unset (the conditioning recogniser judges) or drop them")
        lo, hi = self.quality_min_norm, self.quality_max_norm
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"quality_min_norm {lo} exceeds quality_max_norm {hi}")
        from cemiray.pipeline.generate.job import OUTPUT_COLUMNS

        clash = sorted(set(self.attributes) & set(TABLE_COLUMNS + OUTPUT_COLUMNS))
        if clash:
            raise ValueError(f"attributes {clash} clash with columns of the seed table or of "
                             "the generated rows")
        for name in self.quotas:
            missing = [a.strip() for a in name.split(",")
                       if a.strip() not in self.attributes]
            if missing:
                raise ValueError(f"quota {name!r}: attribute(s) {missing} are not in "
                                 f"attributes={self.attributes}")
        return self

    def resolved(self) -> SeedsConfig:
        """This config with local paths made absolute (Ray workers run in other folders) and a
        judge equal to the conditioning recogniser dropped (it judges by default)."""
        recognizer, judge = storage.absolute(self.recognizer), storage.absolute(self.judge)
        return self.model_copy(update={
            "out": storage.absolute(self.out),
            "recognizer": recognizer,
            "judge": None if judge == recognizer else judge,
            "generator": storage.absolute(self.generator),
            "gan": storage.absolute(self.gan),
            "attribute_model": storage.absolute(self.attribute_model),
            "leakage_centres": storage.absolute(self.leakage_centres),
            "embedding_files": [storage.absolute(u) for u in self.embedding_files],
        })

    def sources(self) -> tuple[list[Source], Source | None, Source | None]:
        """The face sources, parsed (once): inquiry, leakage data and probe data."""
        from cemiray.data.sources import Source

        def parse(uri: str | None) -> Source | None:
            return Source.parse(uri) if uri else None

        return ([Source.parse(u) for u in self.inquiry], parse(self.leakage_data),
                parse(self.probe_data))
