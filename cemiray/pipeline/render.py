"""`cemiray render` (pipeline part): a ToyFaces split rendered as a dataset.

Parquet shards written by Ray tasks (one shard per fixed block of identities, atomic, skipped
when already complete), optionally exported to insightface RecordIO and ImageFolder, and a
verification `.bin` of held-out identities."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from pydantic import Field

from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig, WorldConfig

if TYPE_CHECKING:
    from cemiray.data.sources import Source


class RenderConfig(JobConfig):
    out: str = "runs/render"
    world: WorldConfig = Field(default_factory=WorldConfig)
    first_identity: int = Field(0, ge=0)
    num_identities: int = Field(200, ge=1)
    samples_per_identity: int = Field(10, ge=1)
    shard_identities: int = Field(50, ge=1, description="identities per Parquet shard")
    formats: list[str] = Field(default_factory=lambda: ["parquet"])
    bin_pairs: int = Field(0, ge=0, description="pairs of a verification .bin among these identities")
    ray: RayConfig = Field(default_factory=RayConfig)


EXPORT_FORMATS = ("parquet", "recordio", "imagefolder", "bin")


def shard_name(first: int, last: int) -> str:
    """Deterministic name of the shard holding identities first..last-1."""
    return f"shard-{first:08d}-{last:08d}.parquet"


def toyfaces_source(world: WorldConfig, identities: range, samples: int) -> Source:
    from cemiray.data.sources import Source

    return Source.toyfaces(identities, samples=samples, seed=world.seed, size=world.size,
                           difficulty=world.difficulty)


def toyfaces_rows(world: WorldConfig, identities: range, samples: int, label_offset: int):
    """Face rows of `identities` × `samples`, labelled identity − label_offset so that shards of
    one dataset share one contiguous label space."""
    source = toyfaces_source(world, identities, samples)
    return [{**row, "label": row["identity"] - label_offset} for row in source.iter_rows()]


def _render_shard(block: dict) -> dict:
    from cemiray.data.parquet_shards import write_shard

    url = block["url"]
    if storage.exists(url):
        return {**block, "skipped": True}
    rows = toyfaces_rows(
        WorldConfig(**block["world"]),
        range(block["first"], block["last"]),
        block["samples"],
        block["label_offset"],
    )
    write_shard(url, rows, metadata={"world": json.dumps(block["world"])})
    return {**block, "skipped": False, "rows": len(rows)}


def render_parquet(cfg: RenderConfig, folder_url: str) -> list[dict]:
    """Write the Parquet shards with one Ray task per shard; complete shards are kept."""
    import ray

    first, n, step = cfg.first_identity, cfg.num_identities, cfg.shard_identities
    blocks = []
    for start in range(first, first + n, step):
        stop = min(start + step, first + n)
        blocks.append(
            {
                "url": storage.join(folder_url, shard_name(start, stop)),
                "first": start,
                "last": stop,
                "samples": cfg.samples_per_identity,
                "label_offset": first,
                "world": cfg.world.model_dump(),
            }
        )
    task = ray.remote(num_cpus=1, max_retries=3)(_render_shard)
    return ray.get([task.remote(b) for b in blocks])


def write_verification_bin(cfg: RenderConfig, url: str) -> int:
    """A `.bin` of genuine and impostor pairs (half each) among the config's identities."""
    from cemiray.data.images import encode_png
    from cemiray.data.toyfaces import ToyFacesWorld, verification_pairs
    from cemiray.data.verification_bin import write_bin

    world = ToyFacesWorld(seed=cfg.world.seed, size=cfg.world.size, difficulty=cfg.world.difficulty)
    identities = range(cfg.first_identity, cfg.first_identity + cfg.num_identities)
    pairs = verification_pairs(list(identities), cfg.samples_per_identity, cfg.bin_pairs,
                               seed=cfg.world.seed)
    ids = [i for a, b, _ in pairs for i in (a[0], b[0])]
    samples = [s for a, b, _ in pairs for s in (a[1], b[1])]
    images, _ = world.render_batch(ids, samples)
    write_bin(url, [encode_png(im) for im in images], [same for _, _, same in pairs])
    return len(pairs)


def run(cfg: RenderConfig) -> dict:
    from cemiray.data.imagefolder import write_imagefolder
    from cemiray.data.parquet_shards import iter_rows
    from cemiray.data.recordio import write_recordio
    from cemiray.runtime.cluster import init_ray

    unknown = set(cfg.formats) - set(EXPORT_FORMATS)
    if unknown:
        raise ValueError(f"formats: unknown {sorted(unknown)}; choose from {EXPORT_FORMATS}")
    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out)})
    init_ray(cfg.ray)
    t0 = time.perf_counter()
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    summary: dict = {}
    if cfg.bin_pairs:
        summary["bin"] = storage.join(cfg.out, "verification.bin")
        summary["bin_pairs"] = write_verification_bin(cfg, summary["bin"])
    if set(cfg.formats) - {"bin"}:
        summary["parquet"] = storage.join(cfg.out, "parquet")
        summary["shards"] = len(render_parquet(cfg, summary["parquet"]))
    if "recordio" in cfg.formats or "imagefolder" in cfg.formats:
        rows = list(iter_rows(summary["parquet"]))
        if "recordio" in cfg.formats:
            summary["recordio"] = storage.join(cfg.out, "recordio")
            write_recordio(summary["recordio"], rows, num_classes=cfg.num_identities,
                           image_size=cfg.world.size)
        if "imagefolder" in cfg.formats:
            summary["imagefolder"] = storage.join(cfg.out, "imagefolder")
            write_imagefolder(summary["imagefolder"], rows)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"render: {cfg.num_identities} identities × {cfg.samples_per_identity} images "
          f"→ {cfg.out} ({summary['seconds']} s)")
    return summary
