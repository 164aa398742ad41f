"""`cemiray seeds` with an attribute model and gan_condition: GAN rows aimed at quota cells by
class-conditional truncation, labelled by the attribute model in the embedder actors, the
quotas filled from them; the report says how many aimed samples landed. Bad inputs (a cell no
sample reaches, a model that does not predict the quota's attribute, missing pieces) are refused
before Ray starts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cemiray.eval.attributes import cell_labeller
from cemiray.models.attributes import (
    AttributeNet,
    AttributeSpec,
    load_attribute_model,
    save_attribute_model,
)
from cemiray.models.iresnet import get_backbone
from cemiray.models.serialization import save_model_folder
from cemiray.models.stylegan import Generator
from cemiray.models.stylegan_io import load_gan, save_gan
from cemiray.models.stylegan_targets import cell_centroids
from cemiray.pipeline.seeds.gan_condition import CALIBRATION_SEED, pulled_images, row_cells
from cemiray.pipeline.seeds.job import SeedsConfig
from cemiray.pipeline.seeds.job import run as run_seeds
from cemiray.pipeline.seeds.table import read_seed_table

TINY = {"image_size": 16, "channels": (32, 16, 8), "z_dim": 32, "w_dim": 32}


def varied_predictor(gen: Generator, specs: list[AttributeSpec], seed: int = 1) -> AttributeNet:
    """An untrained predictor whose classes vary with the image: the trunk's last BatchNorm is
    set to standardise its features on 100 of the GAN's images, the heads are N(0, 1)."""
    from cemiray.data import pixels
    from cemiray.models.stylegan_targets import mapped, render

    torch.manual_seed(seed)
    net = AttributeNet({"name": "iresnet18", "input_size": 16, "num_features": 8, "width": 4},
                       specs).eval()
    with torch.no_grad():
        f = net.backbone(pixels.from_numpy(render(gen.eval(), mapped(gen, range(100)))))
        net.backbone.features.running_mean.copy_(f.mean(0))
        net.backbone.features.running_var.copy_(f.var(0))
        for head in net.heads.values():
            head.weight.normal_()
            head.bias.zero_()
    return net


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("gan_condition")
    torch.manual_seed(3)
    gen = Generator("compact", **TINY)
    with torch.no_grad():
        gen.mapping.w_avg.normal_()
    gan = save_gan(str(tmp / "gan"), gen, meta={"step": 0})
    net = varied_predictor(gen, [AttributeSpec("group", "categorical", classes=[0, 1, 2, 3]),
                                 AttributeSpec("yaw", "continuous", mean=0.0, std=10.0)])
    save_attribute_model(net, str(tmp / "attr"))
    torch.manual_seed(0)
    rec = get_backbone("iresnet18", input_size=16, num_features=32)
    save_model_folder(rec, str(tmp / "rec"), dict(rec.config))
    cells_of = cell_labeller(load_attribute_model(str(tmp / "attr")), ["group"])
    found = cell_centroids(load_gan(gan)[0], cells_of,
                           [CALIBRATION_SEED + k for k in range(40)])
    two = sorted(found, key=lambda c: -found[c]["count"])[:2]
    return {"gan": gan, "attr": str(tmp / "attr"), "rec": str(tmp / "rec"), "cells": two,
            "tmp": tmp}


def test_row_cells_follow_the_shares_and_interleave():
    cells = row_cells({"a": 0.5, "b": 0.25, "c": 0.25, "d": 0.0}, 8)
    assert sorted(cells) == ["a"] * 4 + ["b", "b", "c", "c"]
    assert cells[:4].count("a") == 2  # every prefix near the proportions
    assert row_cells({"x": 1.0}, 3) == ["x", "x", "x"]


def test_pulled_images_at_psi_zero_are_the_cell_mean_s_image(models):
    gen = load_gan(models["gan"])[0]
    probe = {"cells": ["c", "d"], "weight": [[0.0] * TINY["w_dim"]] * 2, "bias": [1.0, 0.0]}
    located = {"centroids": {"c": torch.randn(TINY["w_dim"]).tolist()}, "probe": probe}
    a, used, tries = pulled_images(gen, [1, 2], ["c", "c"], located, 0.0, tries=4)
    assert np.array_equal(a[0], a[1]) and used == [1, 2] and tries == [1, 1]


def test_screening_picks_seeds_the_w_probe_puts_in_the_cell(models):
    from cemiray.models.stylegan_targets import SEED_STRIDE, locate, mapped, probe_cells, screened

    gen = load_gan(models["gan"])[0]
    cells_of = cell_labeller(load_attribute_model(models["attr"]), ["group"])
    found, probe = locate(gen, cells_of, [CALIBRATION_SEED + k for k in range(200)])
    w = mapped(gen, [CALIBRATION_SEED + k for k in range(200)])
    named = probe_cells(probe, w)
    truth = cells_of(__import__("cemiray.models.stylegan_targets", fromlist=["render"]).render(
        gen, w))
    assert np.mean([a == b for a, b in zip(named, truth, strict=True)]) > max(
        f["share"] for f in found.values())  # the probe beats guessing the largest cell
    target = min(found, key=lambda c: found[c]["count"])
    used, tries = screened(gen, probe, list(range(40)), [target] * 40, tries=8)
    hits = [c == target for c in probe_cells(probe, mapped(gen, used))]
    unscreened = np.mean([c == target for c in probe_cells(probe, mapped(gen, range(40)))])
    assert np.mean(hits) > 2 * unscreened and np.mean(hits) > 0.5
    assert all(h or t == 8 for h, t in zip(hits, tries, strict=True))  # a miss used every try
    assert all((u - k) % SEED_STRIDE == 0 and (u - k) // SEED_STRIDE == t - 1
               for k, (u, t) in enumerate(zip(used, tries, strict=True)))


def test_torch_keeps_a_seed_s_low_32_bits_and_the_streams_respect_it():
    from cemiray.models.noise_seeds import aliases
    from cemiray.models.stylegan_targets import SEED_STRIDE

    draw = [torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in (5, 5 + 2**32)]
    assert torch.equal(*draw) and aliases(5, 5 + 2**32) and not aliases(5, 6)
    assert not any(aliases(CALIBRATION_SEED + k, j) for k in (0, 1999) for j in (0, 10**6))
    # try j of row k meets row k ± d only if j · stride ≡ ±d (mod 2**32): never for d < 10**6
    assert all(10**6 <= (j * SEED_STRIDE) % 2**32 <= 2**32 - 10**6 for j in range(1, 16))


def test_seeds_fill_a_quota_from_aimed_gan_samples(ray_cluster, models, tmp_path):
    assert len(models["cells"]) == 2, "the tiny predictor puts every sample in one cell"
    first, second = models["cells"]
    out = tmp_path / "seeds"
    result = run_seeds(SeedsConfig(
        out=str(out), recognizer=models["rec"], inquiry=[], leakage_data=None,
        gan=models["gan"], gan_samples=24, generator_batch=8, attribute_model=models["attr"],
        attributes=["group"], quotas={"group": {first: 0.5, second: 0.5}}, num_identities=4,
        gan_condition=True, gan_calibration=40, require_target=False,
        uniqueness_threshold=1.0, batch_size=8, num_actors_max=1))
    report = json.loads((out / "seeds_report.json").read_text())
    cond = report["gan_condition"]
    assert cond["aimed"] == 24 and cond["samples"] == 40 and cond["psi"] == 1.0
    assert {c: v["aimed"] for c, v in cond["per_cell"].items()} == {first: 12, second: 12}
    assert 0 <= cond["hit_rate"] <= 1
    table = read_seed_table(result["table"], expected_dim=32)
    kept_groups = [str(g) for g in table.attributes["group"]]
    assert set(kept_groups) <= {first, second} and len(kept_groups) == result["kept"]
    assert set(table.attributes["attributes_from"]) == {"model"}
    # each kept image is labelled as the table says by the same model
    labels = cell_labeller(load_attribute_model(models["attr"]), ["group"])
    from cemiray.data.images import decode_image

    assert labels(np.stack([decode_image(im) for im in table.images])) == kept_groups


def test_gan_condition_inputs_are_checked_before_ray(models):
    base = {"recognizer": models["rec"], "inquiry": [], "leakage_data": None,
            "gan": models["gan"], "gan_samples": 8, "num_identities": 2,
            "quotas": {"group": {"0": 1.0}}}
    with pytest.raises(ValueError, match="give gan, attribute_model and quotas"):
        SeedsConfig(**base, gan_condition=True)
    with pytest.raises(ValueError, match="one quota"):
        SeedsConfig(**{**base, "quotas": {"group": {"0": 1.0}, "sex": {"1": 1.0}}},
                    attribute_model=models["attr"], gan_condition=True)
    out = models["tmp"] / "never"
    with pytest.raises(ValueError, match=r"cell\(s\) \['9'\] never appear among 16 gan samples"):
        run_seeds(SeedsConfig(**{**base, "quotas": {"group": {"9": 1.0}}}, out=str(out),
                              attribute_model=models["attr"], gan_condition=True,
                              gan_calibration=16))
    with pytest.raises(ValueError, match=r"does not predict \['sex'\]"):
        run_seeds(SeedsConfig(**{**base, "quotas": {"sex": {"1": 1.0}}}, out=str(out),
                              attribute_model=models["attr"], gan_condition=True,
                              attributes=["sex"]))
    assert not out.exists()
