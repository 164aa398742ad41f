"""bench-variation on a small variation-conditioned generator: requests by column, every
attribute measured by the shipped independent estimator and judge, the figures' arithmetic,
and a generator without variation refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import TINY

from cemiray.bench.variation import BenchVariationConfig, measure, requests_for, run
from cemiray.diffusion.pipeline import CemiFacePipeline, save_pipeline
from cemiray.diffusion.presets import build_generator, build_sample_scheduler, resolve_preset
from cemiray.diffusion.variation import VariationSpec


def spec():
    rng = np.random.default_rng(0)
    return VariationSpec.measure(["yaw", "glasses"], {"yaw": rng.normal(0, 15, 500),
                                                      "glasses": rng.random(500) < 0.3})


def save_generator(path, variation: bool):
    overrides = {**TINY, "image_size": 32, "id_dim": 512}
    if variation:
        overrides.update(num_variation_attrs=2, variation_spec=spec().to_config(),
                         variation_route="both")
    preset = resolve_preset("tiny", **overrides)
    torch.manual_seed(0)
    unet, encoder = build_generator(preset)
    if variation:
        with torch.no_grad():
            encoder.variation_out.weight.normal_(0, 0.5)
    save_pipeline(CemiFacePipeline(unet.eval(), encoder.eval(), build_sample_scheduler(preset)),
                  str(path))


def test_requests_and_measures():
    columns = requests_for(spec(), ["yaw", "glasses"], levels=3)
    assert columns[0] == ("none", None, columns[0][2]) and np.isnan(columns[0][2])
    assert [c[0] for c in columns[1:]] == ["yaw"] * 3 + ["glasses"] * 2
    assert columns[-1][1] == {"glasses": True} and columns[-2][1] == {"glasses": False}
    rows = measure(
        {"yaw": "continuous", "glasses": "binary"},
        {"yaw": [-10.0, 0.0, 10.0, -10.0, 0.0, 10.0], "glasses": [0.0, 1.0, 0.0, 1.0]},
        {"yaw": [-8.0, 1.0, 9.0, -12.0, 0.0, 11.0], "glasses": [0, 1, 1, 1]},
        {"yaw": np.array([[0.5, 0.5, 0.5], [0.4, 0.4, 0.4]]),
         "glasses": np.array([[0.6, 0.6], [0.5, 0.5]])},
        none_sim=np.array([0.6, 0.5]),
    )
    assert rows["yaw"]["correlation"] > 0.98 and rows["yaw"]["mae"] == pytest.approx(7 / 6)
    assert rows["yaw"]["identity_drop"] == pytest.approx(0.1)
    assert rows["glasses"]["present_when_requested"] == 1.0
    assert rows["glasses"]["absent_when_requested_absent"] == 0.5
    assert rows["glasses"]["identity_drop"] == pytest.approx(0.0)


def test_bench_variation_measures_with_the_independent_models(tmp_path):
    save_generator(tmp_path / "gen", variation=True)
    out = tmp_path / "bench"
    summary = run(BenchVariationConfig(generator=str(tmp_path / "gen"), out=str(out),
                                       identities=2, levels=2, steps=1, real_samples=2,
                                       results=str(tmp_path / "variation.json")))
    result = json.loads((tmp_path / "variation.json").read_text())
    figures = result["figures"]
    assert set(figures["per_attribute"]) == {"yaw", "glasses"}
    assert figures["images"] == 2 * (1 + 2 + 2) and figures["route"] == "both"
    assert -1 <= figures["per_attribute"]["yaw"]["correlation"] <= 1
    assert 0 <= figures["per_attribute"]["glasses"]["present_when_requested"] <= 1
    assert set(figures["estimator_on_real_images"]) == {"yaw", "glasses"}
    assert set(summary) >= {"binary_shares", "continuous_correlations", "identity_kept"}
    assert (out / "variation_grid.png").read_bytes()[:4] == b"\x89PNG"

    save_generator(tmp_path / "plain", variation=False)
    with pytest.raises(ValueError, match="no variation spec"):
        run(BenchVariationConfig(generator=str(tmp_path / "plain"), out=str(out)))
    with pytest.raises(ValueError, match="attributes \\['tilt'\\]"):
        run(BenchVariationConfig(generator=str(tmp_path / "gen"), out=str(out),
                                 attributes=["tilt"]))
