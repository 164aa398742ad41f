"""The main job on the embedded default: ToyFaces on a local in-process Ray cluster.

Renders the ToyFaces train split as Parquet shards (Ray tasks) and exports them as an insightface
RecordIO pair, renders a verification `.bin` of held-out identities, reads every artefact back
and prints a summary."""

from __future__ import annotations

import time

from pydantic import Field

from cemiray import storage
from cemiray.config import JobConfig, RayConfig, WorldConfig


class QuickstartConfig(JobConfig):
    out: str = "runs/quickstart"
    world: WorldConfig = Field(default_factory=WorldConfig)
    train_identities: int = Field(200, ge=2)
    test_identities: int = Field(50, ge=2)
    samples_per_identity: int = Field(10, ge=2)
    verification_pairs: int = Field(600, ge=2)
    shard_identities: int = Field(50, ge=1)
    from_scratch: bool = Field(False, description="retrain every model instead of the shipped ones")
    ray: RayConfig = Field(default_factory=RayConfig)


def run(cfg: QuickstartConfig) -> dict:
    import numpy as np

    from cemiray.data.images import decode_image
    from cemiray.data.parquet_shards import iter_rows
    from cemiray.data.recordio import RecordIODataset
    from cemiray.data.verification_bin import load_bin
    from cemiray.pipeline.cluster import init_ray
    from cemiray.pipeline.render import RenderConfig
    from cemiray.pipeline.render import run as render

    cfg = cfg.model_copy(update={"out": storage.absolute(cfg.out)})
    t0 = time.perf_counter()
    init_ray(cfg.ray)
    storage.makedirs(cfg.out)
    cfg.save(cfg.out)
    train = render(
        RenderConfig(
            out=storage.join(cfg.out, "toyfaces_train"),
            world=cfg.world,
            num_identities=cfg.train_identities,
            samples_per_identity=cfg.samples_per_identity,
            shard_identities=cfg.shard_identities,
            formats=["parquet", "recordio"],
            ray=cfg.ray,
        )
    )
    test = render(
        RenderConfig(
            out=storage.join(cfg.out, "toyfaces_test"),
            world=cfg.world,
            first_identity=cfg.train_identities,
            num_identities=cfg.test_identities,
            samples_per_identity=cfg.samples_per_identity,
            formats=["bin"],
            bin_pairs=cfg.verification_pairs,
            ray=cfg.ray,
        )
    )
    bin_url, n_pairs = test["bin"], test["bin_pairs"]

    parquet_rows = list(iter_rows(train["parquet"]))
    rec = RecordIODataset(train["recordio"])
    mismatched = sum(
        not np.array_equal(decode_image(p["image"]), decode_image(rec[i]["image"]))
        or p["label"] != rec[i]["label"]
        for i, p in enumerate(parquet_rows)
    )
    bins, issame = load_bin(bin_url)
    summary = {
        "parquet_rows": len(parquet_rows),
        "parquet_shards": train["shards"],
        "classes": len({r["label"] for r in parquet_rows}),
        "recordio_records": len(rec),
        "recordio_mismatches": mismatched,
        "bin_pairs": n_pairs,
        "bin_genuine": int(sum(issame)),
        "bin_images": len(bins),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if mismatched or len(rec) != len(parquet_rows) or len(bins) != 2 * n_pairs:
        raise RuntimeError(f"quickstart: artefacts disagree: {summary}")
    print("quickstart summary")
    for key, value in summary.items():
        print(f"  {key:<20} {value}")
    print(f"  outputs              {cfg.out}")
    return summary
