"""The GAN benchmark's parts: set metrics against known answers, class-conditional truncation
in W, and (slow: three seeds runs and CemiFace sampling) one small bench-gan run end to end on a
tiny GAN, tiny attribute predictors and the shipped judge, E_id and CemiFace generator (figures
checked for consistency, not quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cemiray.bench.gan import BenchGANConfig, run
from cemiray.eval.set_metrics import (
    centre_similarity,
    fisher_ratio,
    frechet_distance,
    shares,
    total_variation,
)
from cemiray.models.attributes import AttributeSpec, save_attribute_model
from cemiray.models.stylegan import Generator
from cemiray.models.stylegan_io import save_gan
from cemiray.models.stylegan_targets import cell_centroids, mapped, pulled, render

TINY = {"image_size": 16, "channels": (32, 16, 8), "z_dim": 32, "w_dim": 32}


def tiny_gan() -> Generator:
    torch.manual_seed(3)
    gen = Generator("compact", **TINY).eval()
    with torch.no_grad():
        gen.mapping.w_avg.normal_()
    return gen


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) * 2 + 1
    # N(0, I) vs N(1, 4I): |μ|² = 4, tr = 4 + 16 − 2·tr((4I)^½) = 20 − 16 = 4 → 8
    assert frechet_distance(a, b) == pytest.approx(8.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, b[:, :3])


def test_fisher_ratio_and_centre_similarity_on_planted_identities():
    rng = np.random.default_rng(1)
    centres = np.eye(8)[:4]  # four orthogonal identities
    labels = np.repeat(np.arange(4), 50)
    tight = centres[labels] + 0.05 * rng.normal(size=(200, 8))
    loose = centres[labels] + 0.5 * rng.normal(size=(200, 8))
    assert fisher_ratio(tight, labels) > 10 * fisher_ratio(loose, labels)
    sim = centre_similarity(tight, labels)
    assert sim["identities"] == 4 and abs(sim["mean"]) < 0.05 and sim["max"] < 0.1
    with pytest.raises(ValueError, match="≥ 2 images"):
        fisher_ratio(tight[:5], np.arange(5))


def test_total_variation_and_shares():
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)
    assert total_variation({"a": 2, "b": 2}, {"a": 0.5, "b": 0.5}) == pytest.approx(0.0)
    assert shares([1, 1, 2, 3]) == {"1": 0.5, "2": 0.25, "3": 0.25}


def test_conditional_truncation_pulls_toward_the_cell():
    gen = tiny_gan()

    def brightness_cell(images: np.ndarray) -> list[str]:  # a plain rule as the "classifier"
        return ["bright" if im.mean() > 127 else "dark" for im in images]

    found = cell_centroids(gen, brightness_cell, list(range(200)))
    assert set(found) <= {"bright", "dark"} and sum(f["count"] for f in found.values()) == 200
    w = mapped(gen, range(200))
    for cell, f in found.items():
        rows = torch.as_tensor([c == cell for c in brightness_cell(render(gen, w))])
        assert torch.allclose(f["w"], w[rows].mean(0), atol=1e-5)
    cell = max(found, key=lambda c: found[c]["count"])
    centroid = found[cell]["w"][None].repeat(3, 1)
    # ψ = 0: every seed becomes the centroid's image; ψ = 1: the seeds' own w, untouched
    images = pulled(gen, [5, 6, 7], centroid, psi=0.0)
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[1], images[2])
    assert np.array_equal(pulled(gen, [5, 6], centroid[:2], psi=1.0),
                          render(gen, mapped(gen, [5, 6])))
    # a pull halfway moves the share landing in the cell up
    seeds = list(range(1000, 1200))
    before = np.mean([c == cell for c in brightness_cell(render(gen, mapped(gen, seeds)))])
    after = np.mean([c == cell for c in brightness_cell(
        pulled(gen, seeds, found[cell]["w"][None].repeat(200, 1), psi=0.5))])
    assert after > before
    with pytest.raises(ValueError, match="truncation"):
        pulled(gen, [5], centroid[:1], psi=1.5)


def attribute_model(url: str, seed: int) -> str:
    from test_seeds_gan_condition import varied_predictor

    net = varied_predictor(tiny_gan(), [AttributeSpec("group", "categorical",
                                                      classes=[0, 1, 2, 3])], seed)
    save_attribute_model(net, url)
    return url


@pytest.mark.slow
def test_bench_gan_end_to_end_on_tiny_models(ray_cluster, tmp_path):
    gan = save_gan(str(tmp_path / "gan"), tiny_gan(), meta={"step": 0})
    selector = attribute_model(str(tmp_path / "sel"), 1)
    measurer = attribute_model(str(tmp_path / "judge"), 2)
    from cemiray.eval.attributes import cell_labeller
    from cemiray.models.attributes import load_attribute_model
    from cemiray.pipeline.seeds.gan_condition import CALIBRATION_SEED

    seen = cell_centroids(tiny_gan(), cell_labeller(load_attribute_model(selector), ["group"]),
                          [CALIBRATION_SEED + k for k in range(40)])
    common = sorted(seen, key=lambda c: -seen[c]["count"])[:2]
    assert len(common) == 2
    target = {common[0]: 0.5, common[1]: 0.5}
    results = tmp_path / "gan.json"
    cfg = BenchGANConfig(
        out=str(tmp_path / "bench"), results=str(results), gan=gan, attributes=selector,
        attributes_judge=measurer, samples=24, speed_images=8, ddpm_steps=2, repeats=1,
        real="toyfaces:?seed=0&ids=40000-40023&samples=1&size=32",
        real_floor="toyfaces:?seed=0&ids=42000-42023&samples=1&size=32",
        train_data="toyfaces:?seed=0&ids=20000-20009&samples=2&size=32",
        target=target, identities=8, overshoot=2, project_to=80, calibration=40,
        generated_identities=4, images_per_identity=2, truncations=[1.0, 0.5])
    figures = run(cfg)
    saved = json.loads(results.read_text())
    assert saved["figures"]["speed"]["ratio"] == pytest.approx(figures["speed"]["ratio"])
    speed = figures["speed"]
    assert speed["ratio"] > 1 and speed["gan_images"] == 8 and not speed["ddpm_trained"]
    realism = figures["realism"]
    assert realism["frechet_real_vs_real"] > 0 and set(realism["gan"]) == {"1.0", "0.5"}
    for v in realism["gan"].values():
        assert v["frechet_over_floor"] == pytest.approx(v["frechet"] / realism[
            "frechet_real_vs_real"])
        assert 0 <= v["quality_pass"] <= 1
    novelty = figures["novelty"]
    assert novelty["training_identities"] == 10
    assert novelty["real_unseen"]["max"] <= 1 and "gan_0.5" in novelty
    assert novelty["real_unseen"]["share_over_bar"] <= 0.05
    demo = figures["demographics"]
    cond, rej = demo["conditional"], demo["rejection_only"]
    assert cond["candidates"] == rej["candidates"] == 16
    assert cond["gan_condition"]["aimed"] == 16 and rej["gan_condition"] is None
    for part in (cond, rej):
        assert part["kept"] <= 8
        assert part["rejection_rate"] == pytest.approx(1 - part["kept"] / 16)
        if part["kept"]:
            assert part["total_variation"] == pytest.approx(total_variation(
                target, part["achieved_by_judge"]))
            assert set(part["achieved_by_selector"]) <= set(target)
    projected = demo["projection"]
    assert projected["identities"] == 80 and projected["candidates"] == 160
    assert set(projected["measured"]) == {"4", "8"}  # max(4, 8 // 20) and 8
    gen = demo["generated_gan"]
    assert gen["images"] == gen["identities"] * 2 and 0 <= gen["group_kept_share"] <= 1
    assert demo["generated_real"]["identities"] == gen["identities"]


def test_an_unreachable_target_cell_is_refused_before_sampling(ray_cluster, tmp_path):
    gan = save_gan(str(tmp_path / "gan"), tiny_gan(), meta={"step": 0})
    cfg = BenchGANConfig(
        out=str(tmp_path / "bench"), gan=gan, attributes=attribute_model(str(tmp_path / "a"), 1),
        attributes_judge=attribute_model(str(tmp_path / "b"), 2), target={"7": 1.0},
        calibration=16, identities=4, samples=10)
    from cemiray.bench.gan_targets import demographics

    with pytest.raises(ValueError, match=r"cell\(s\) \['7'\] never appear"):
        demographics(cfg, tiny_gan(), {})
    assert not (tmp_path / "bench" / "seeds_small").exists()
