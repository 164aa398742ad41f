"""The report's variation grid: rows = identities (their seed image first), one labelled column
per requested variation, made by the generator at the varied set's m; none without a varied set."""

from __future__ import annotations

import numpy as np
import torch
from helpers import TINY

from cemiray.apps.experiment.config import ExperimentConfig
from cemiray.apps.experiment.results import variation_grid
from cemiray.data.images import decode_image, encode_png
from cemiray.diffusion.pipeline import CemiFacePipeline, save_pipeline
from cemiray.diffusion.presets import build_generator, build_sample_scheduler, resolve_preset
from cemiray.pipeline.seeds.table import random_identities, write_seed_table

SPEC = {"attributes": [{"name": "yaw", "kind": "continuous", "mean": 0.0, "std": 15.0,
                        "low": -30.0, "high": 30.0}, {"name": "glasses", "kind": "binary"}]}


def test_the_variation_grid_has_a_labelled_column_per_request(tmp_path):
    preset = resolve_preset("tiny", **{**TINY, "num_variation_attrs": 2, "variation_spec": SPEC,
                                       "variation_route": "pooled"})
    torch.manual_seed(0)
    unet, encoder = build_generator(preset)
    save_pipeline(CemiFacePipeline(unet.eval(), encoder.eval(), build_sample_scheduler(preset)),
                  str(tmp_path / "gen"))
    rng = np.random.default_rng(0)
    images = [encode_png(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(3)]
    write_seed_table(str(tmp_path / "seeds.parquet"), [5, 6, 7],
                     random_identities(3, TINY["id_dim"], seed=1), images=images)
    cfg = ExperimentConfig(grid_identities=2, steps=1, sets=[
        {"m": [0.6]}, {"m": [0.4], "variation": {"kind": "target", "attributes": ["glasses"]}}])
    grid = variation_grid(cfg, str(tmp_path / "gen"), str(tmp_path / "seeds.parquet"),
                          str(tmp_path / "fig"))
    assert "m = 0.4" in grid["caption"] and "seed image first" in grid["caption"]
    png = decode_image((tmp_path / "fig" / "variation_grid.png").read_bytes())
    # 2 rows, 4 columns (inquiry, nothing, no glasses, glasses) of 96 px cells, titles on top
    assert png.shape[1] == 4 * 96 and png.shape[0] > 2 * 96
    plain = ExperimentConfig(sets=[{"m": [0.6]}])
    assert variation_grid(plain, str(tmp_path / "gen"), str(tmp_path / "seeds.parquet"),
                          str(tmp_path / "fig")) is None


def test_the_results_compare_requested_with_measured_variation(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from cemiray.apps.experiment.cache import StageResult
    from cemiray.apps.experiment.results import variation_section

    requested = [{"glasses": 1.0, "yaw": 10.0}, {"glasses": 0.0, "yaw": -10.0},
                 {"glasses": 1.0}, {}]
    measured = [{"glasses": 1, "yaw": 8.0}, {"glasses": 0, "yaw": -9.0},
                {"glasses": 0, "yaw": 1.0}, {"glasses": 0, "yaw": 0.0}]
    folder = tmp_path / "parquet"
    folder.mkdir()
    pq.write_table(pa.table({"variation": [json.dumps(r) for r in requested],
                             "variation_measured": [json.dumps(m) for m in measured]}),
                   folder / "shard-00000.parquet")
    cfg = ExperimentConfig(sets=[{"m": [0.6]}, {"m": [0.6], "variation": {"kind": "target"}}])
    stage = StageResult("g", "k", str(tmp_path), {"parquet": str(folder)}, False, 0.0, {})
    out = variation_section(cfg, {"m=0.6 +target variation": stage})
    rows = out["m=0.6 +target variation"]["attributes"]
    assert rows["glasses"] == {"requested_share": 2 / 3, "measured_share": 1 / 3, "images": 3}
    assert rows["yaw"]["requested_mean"] == 0.0 and rows["yaw"]["images"] == 2
    assert rows["yaw"]["correlation"] > 0.99
