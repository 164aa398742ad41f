"""`cemiray seeds` (pipeline part): the seed table of identities that `cemiray generate` draws.

The table (cemiray.pipeline.seeds.table) holds the identities a synthetic dataset is made of.

Candidates come from four kinds of source, in this order:
- `inquiry`: face datasets (any source URI); the first image of each label is a 1-shot inquiry
  image (CemiFace's default: new identities of a world the recogniser never saw);
- `embedding_files`: identity embeddings given directly (.npy N x D, or Parquet with an
  `embedding` column and optional attribute columns);
- `generator`: samples of an unconditional face generator (`cemiray train-uncond`), sample k
  drawn from noise seed `generator_seed + k`, so no identity comes from a real person;
- `gan`: samples of a StyleGAN generator (`cemiray train-gan`, GANDiffFace's identity stage),
  sample k from z of seed `generator_seed + k`, truncated by `truncation` (ψ); one forward pass
  per image instead of a DDPM's tens.

One Ray Data pass embeds every image (stages.py); the same pass embeds the reference sets: the
training data whose identity centres the leakage filter compares with (summed per label as
batches arrive, accumulators.py) and the labelled data an attribute probe is fitted on. The
driver then filters (select.py) and writes the table, report and audit (report.py), and
`out/config.json`. Uniqueness and leakage are measured in the judge's space (the conditioning
recogniser's by default).

The CLI imports this module for `--dry-run`: Ray and torch are imported only by `run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cemiray.data import storage
from cemiray.pipeline.seeds.config import SeedsConfig

__all__ = ["SeedsConfig", "run"]


@dataclass
class Inputs:
    """Everything opened before any Ray work: dimensions, embedding files, a centres file and
    the plan of the Ray pass (read parts, seed sources, reference sources)."""

    dim: int
    files: list[tuple[np.ndarray, list[dict]]]
    centres: np.ndarray | None
    centre_labels: np.ndarray | None
    parts: list[Any]
    sources: list[dict]
    references: list[dict]
    gan_cells: dict | None = None  # gan_condition: each cell's mean w and the W probe
    gan_report: dict | None = None


def open_inputs(cfg: SeedsConfig) -> Inputs:
    """Open every input, so a missing or malformed file fails at once with its name."""
    from cemiray.diffusion.unconditional import MARKER_NAME
    from cemiray.models.recognizer import load_recognizer
    from cemiray.pipeline.seeds.plan import plan_sources
    from cemiray.pipeline.seeds.readers import read_centres_file, read_embedding_file

    dim = load_recognizer(cfg.recognizer).dim
    space_dim = load_recognizer(cfg.judge).dim if cfg.judge else dim
    files = [read_embedding_file(u, dim, cfg.attributes) for u in cfg.embedding_files]
    if cfg.generator and not storage.exists(storage.join(cfg.generator, MARKER_NAME)):
        raise FileNotFoundError(f"{cfg.generator}: not an unconditional generator folder (no "
                                f"{MARKER_NAME}; train one with `cemiray train-uncond`)")
    if cfg.gan:  # the whole folder is checked (marker, preset, every tensor) before Ray starts
        from cemiray.models.stylegan_io import load_gan

        load_gan(cfg.gan)
    if cfg.attribute_model:
        from cemiray.models.attributes import load_attribute_model

        predicts = {s.name for s in load_attribute_model(cfg.attribute_model).specs}
        quoted = {a for names in cfg.quotas for a in names.split(",")}
        if cfg.gan_condition and not quoted <= predicts:
            raise ValueError(f"gan_condition: {cfg.attribute_model} does not predict "
                             f"{sorted(quoted - predicts)} (it predicts {sorted(predicts)})")
    gan_cells = gan_report = None
    if cfg.gan_condition:
        from cemiray.pipeline.seeds.gan_condition import locate_cells

        gan_cells, gan_report = locate_cells(cfg)
    centres = centre_labels = None
    if cfg.leakage_centres:
        centres, centre_labels = read_centres_file(cfg.leakage_centres, space_dim)
    inquiry, leakage, probe = cfg.sources()
    parts, sources, references = plan_sources(cfg, inquiry, leakage, probe,
                                              [len(f[0]) for f in files])
    return Inputs(dim, files, centres, centre_labels, parts, sources, references, gan_cells,
                  gan_report)


def embed_candidates(cfg: SeedsConfig, inputs: Inputs):
    """The Ray pass and the embedding files: (candidates, centres, centre labels, probe rows)."""
    from cemiray.pipeline.seeds.accumulators import Candidates, consume
    from cemiray.pipeline.seeds.stages import build_dataset
    from cemiray.runtime.cluster import init_ray

    candidates = Candidates(judged=cfg.judge is not None)
    sums = probe = None
    if inputs.parts or cfg.generator or cfg.gan:
        init_ray(cfg.ray)
        sums, probe = consume(build_dataset(cfg, inputs.parts, inputs.sources,
                                            inputs.gan_cells), candidates)
    centres, centre_labels = inputs.centres, inputs.centre_labels
    if cfg.leakage_data:
        if sums is None:
            raise ValueError(f"{cfg.leakage_data}: no rows came back for the leakage centres")
        centres, centre_labels = sums.centres()
    files = [s for s in inputs.sources if s["kind"] == "embeddings"]
    for (emb, attrs), src in zip(inputs.files, files, strict=True):
        number = inputs.sources.index(src)
        candidates.add(src["offset"] + np.arange(len(emb)), np.full(len(emb), number),
                       np.arange(len(emb)), emb, emb, np.full(len(emb), np.nan),
                       [None] * len(emb), attrs)
    if not candidates.index:
        raise ValueError("no seed candidates came back from the sources")
    return candidates.finish(), centres, centre_labels, probe


def run(cfg: SeedsConfig) -> dict:
    from cemiray.pipeline.seeds.report import build_report, print_summary, write_outputs
    from cemiray.pipeline.seeds.select import filter_candidates

    t0 = time.perf_counter()
    cfg = cfg.resolved()
    inputs = open_inputs(cfg)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)

    data, centres, centre_labels, probe = embed_candidates(cfg, inputs)
    t_embed = time.perf_counter() - t0
    filtered = filter_candidates(cfg, data, centres, centre_labels, probe)
    t_filter = time.perf_counter() - t0 - t_embed

    report = build_report(cfg, data, inputs.sources, inputs.references, filtered,
                          0 if centres is None else len(centres),
                          {"embedding_pass": t_embed, "filters": t_filter}, inputs.gan_report)
    report_url = write_outputs(cfg, data, inputs.sources, report, filtered, inputs.dim, t0)
    print_summary(report)
    return {"table": report["table"], "report": report_url, "kept": len(filtered.kept),
            "stages": report["stages"], "quotas_filled": report["quotas_filled"],
            "seconds": report["seconds"]["total"]}
