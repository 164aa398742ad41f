"""The inputs of `cemiray generate` (pipeline): models and seed table, checked and hashed.

Every file the job reads is opened, checked against the others and named by content hash
(cemiray.models.hashing.model_hash) before anything is written; those hashes are the lineage
columns of every row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cemiray.data import storage
from cemiray.pipeline.generate.config import OUTPUT_COLUMNS, GenerateConfig

if TYPE_CHECKING:
    from cemiray.pipeline.seeds.table import SeedTable


@dataclass
class Inputs:
    """Everything the job reads, validated and hashed before anything is written."""

    table: SeedTable
    id_dim: int
    image_size: int
    hashes: dict[str, str | None]
    audit: dict[str, Any] | None
    variation: Any = None  # a ResolvedPlan (cemiray.pipeline.generate.variation_plan)


def absolute_paths(cfg: GenerateConfig) -> GenerateConfig:
    """Relative local paths made absolute: Ray workers run in other folders."""
    from cemiray.pipeline.generate.null_sampler import is_null

    fields = ("out", "seeds", "generator", "recognizer", "judge", "leakage_audit",
              "variation_estimator")
    return cfg.model_copy(update={f: storage.absolute(getattr(cfg, f)) for f in fields
                                  if not (f == "generator" and is_null(cfg.generator))})


def _null_inputs(cfg: GenerateConfig) -> Inputs:
    """The inputs of a run with the null generator: the seed table only."""
    from cemiray.pipeline.generate.null_sampler import null_hash, null_size
    from cemiray.pipeline.seeds.table import read_seed_table

    size = null_size(cfg.generator)
    given = [name for name in ("judge", "variation", "variation_estimator")
             if getattr(cfg, name)] + (["closed_loop"] if cfg.sampling.closed_loop else [])
    if given:
        raise ValueError(f"generator {cfg.generator}: the null generator measures the pipeline "
                         f"only and takes no {', '.join(given)}")
    table = read_seed_table(cfg.seeds, reserved=OUTPUT_COLUMNS)
    return Inputs(table=table, id_dim=int(table.embeddings.shape[1]), image_size=size,
                  hashes={"seeds": table.sha256, "generator": null_hash(cfg.generator),
                          "recognizer": None, "judge": None, "variation_estimator": None},
                  audit=None)


def _generator_facts(url: str) -> dict[str, Any]:
    """id_dim, variation attributes and image size from the generator folder's configs."""
    index = storage.join(url, "model_index.json")
    if not storage.exists(index):
        raise FileNotFoundError(f"{url}: not a CemiFace pipeline folder (no model_index.json)")
    try:
        encoder = json.loads(storage.read_text(storage.join(url, "condition_encoder",
                                                            "config.json")))
        unet = json.loads(storage.read_text(storage.join(url, "unet", "config.json")))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{url}: unreadable component config ({exc})") from exc
    return {"id_dim": int(encoder["id_dim"]),
            "variation_attrs": int(encoder.get("num_variation_attrs", 0)),
            "variation_spec": encoder.get("variation_spec"),
            "image_size": int(unet["sample_size"])}


def prepare_inputs(cfg: GenerateConfig) -> Inputs:
    """Open, validate and hash every input; raises with the file named on the first problem."""
    from cemiray.models.hashing import model_hash
    from cemiray.models.recognizer import load_recognizer
    from cemiray.pipeline.generate.null_sampler import is_null
    from cemiray.pipeline.seeds.table import read_seed_table

    if is_null(cfg.generator):
        return _null_inputs(cfg)
    if not cfg.recognizer:
        raise ValueError(f"generator {cfg.generator}: a recognizer is needed (the one the "
                         "generator was conditioned with)")
    facts = _generator_facts(cfg.generator)
    variation = None
    if cfg.variation:
        from cemiray.diffusion.variation import VariationSpec
        from cemiray.pipeline.generate.variation_plan import ResolvedPlan

        if not facts["variation_spec"]:
            raise ValueError(f"variation planned but the generator {cfg.generator} was trained "
                             f"without a variation condition (train-gen variation=[...])")
        variation = ResolvedPlan(cfg.variation, VariationSpec.from_config(facts["variation_spec"]))
        if variation.clipped:
            print(f"generate: variation.table: {variation.clipped} values outside the "
                  f"generator's trained ranges are clipped to them", flush=True)
    if cfg.variation_estimator:
        from cemiray.models.attributes import load_attribute_model

        if not cfg.variation:
            raise ValueError("variation_estimator given without a variation plan")
        readable = {s.name for s in load_attribute_model(cfg.variation_estimator).specs}
        if not readable & {a.name for a in variation.attributes}:
            raise ValueError(f"variation_estimator {cfg.variation_estimator} reads "
                             f"{sorted(readable)}, none of the planned attributes")
    recognizer = load_recognizer(cfg.recognizer, "cpu")
    if recognizer.dim != facts["id_dim"]:
        raise ValueError(f"recognizer {cfg.recognizer} embeds to {recognizer.dim} values but the "
                         f"generator {cfg.generator} is conditioned on {facts['id_dim']}")
    if cfg.judge:
        load_recognizer(cfg.judge, "cpu")  # refused now if it cannot load, not in every actor
    audit = None
    if cfg.leakage_audit:
        try:
            audit = json.loads(storage.read_text(cfg.leakage_audit))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg.leakage_audit}: unreadable leakage audit ({exc})") from exc
        if not isinstance(audit, dict):
            raise ValueError(f"{cfg.leakage_audit}: a leakage audit must be a JSON object")
    table = read_seed_table(cfg.seeds, expected_dim=facts["id_dim"],
                            need_images=cfg.judge is not None, reserved=OUTPUT_COLUMNS)
    hashes = {"seeds": table.sha256, "generator": model_hash(cfg.generator),
              "recognizer": model_hash(cfg.recognizer),
              "judge": model_hash(cfg.judge) if cfg.judge else None,
              "variation_estimator": (model_hash(cfg.variation_estimator)
                                      if cfg.variation_estimator else None)}
    return Inputs(table=table, id_dim=facts["id_dim"], image_size=facts["image_size"],
                  hashes=hashes, audit=audit, variation=variation)
