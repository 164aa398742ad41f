"""The main job on the embedded default: ToyFaces on a local in-process Ray cluster.

First the data: renders the ToyFaces train split as Parquet shards (Ray tasks), exports them as
an insightface RecordIO pair, renders a verification `.bin` of held-out identities and reads
every artefact back. Then the CemiFace loop at tiny scale (cemiray.apps.experiment): the shipped
ToyFaces recogniser and generator (or, with `from_scratch`, both retrained first) → seeds from
new identities → synthetic sets → FR trained on each and on as many real images → accuracy on
the held-out `.bin` → HTML report. Prints the table and the report's path."""

from __future__ import annotations

import time

from pydantic import Field

from cemiray.apps.experiment.config import ExperimentConfig, FRRecipe, SyntheticSet
from cemiray.data import storage
from cemiray.runtime.config import JobConfig, RayConfig, WorldConfig
from cemiray.runtime.progress import since_launch


def quickstart_loop() -> ExperimentConfig:
    """The loop at the quickstart's size: 50 new identities × 10 images per set, a semi-hard and
    an easy similarity, each against 500 real images."""
    return ExperimentConfig(out="", identities=50, samples_per_identity=10, bin_pairs=1000,
                            sets=[SyntheticSet(m=[0.6]), SyntheticSet(m=[1.0])],
                            fr=FRRecipe(epochs=20),
                            generator_training={"max_minutes": 60.0, "batch_size": 32})


class QuickstartConfig(JobConfig):
    out: str = "runs/quickstart"
    world: WorldConfig = Field(default_factory=WorldConfig)
    train_identities: int = Field(200, ge=2)
    test_identities: int = Field(50, ge=2)
    samples_per_identity: int = Field(10, ge=2)
    verification_pairs: int = Field(600, ge=2)
    shard_identities: int = Field(50, ge=1)
    from_scratch: bool = Field(False, description="retrain every model instead of the shipped ones")
    loop: bool = Field(True, description="run the CemiFace loop after the data")
    experiment: ExperimentConfig = Field(default_factory=quickstart_loop,
                                         description="the loop; its `out` is OUT/experiment")
    ray: RayConfig = Field(default_factory=RayConfig)


def run(cfg: QuickstartConfig) -> dict:
    import numpy as np

    from cemiray.data.images import decode_image
    from cemiray.data.parquet_shards import iter_rows
    from cemiray.data.recordio import RecordIODataset
    from cemiray.data.verification_bin import load_bin
    from cemiray.pipeline.render import RenderConfig
    from cemiray.pipeline.render import run as render
    from cemiray.runtime.cluster import init_ray

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
    print("quickstart data")
    for key, value in summary.items():
        print(f"  {key:<20} {value}")
    if cfg.loop:
        summary["experiment"] = run_loop(cfg)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"quickstart: done in {since_launch():.0f} s since launch; outputs in {cfg.out}")
    if "experiment" in summary and "report" in summary["experiment"]:
        print(f"quickstart report: {summary['experiment']['report']}")
    return summary


def run_loop(cfg: QuickstartConfig) -> dict:
    from cemiray.apps.experiment.loop import run

    update: dict = {"out": storage.join(cfg.out, "experiment"), "world": cfg.world,
                    "ray": cfg.ray}
    if cfg.from_scratch:
        update.update(recognizer=None, generator=None)
    return run(cfg.experiment.model_copy(update=update))
