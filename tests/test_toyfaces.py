"""ToyFaces: determinism, shapes, attribute structure, identity-over-nuisance, splits, pairs."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cemiray.bench.render import benchmark_render
from cemiray.data.toyfaces import (
    ToyFacesSplit,
    ToyFacesWorld,
    verification_pairs,
)

ROOT = Path(__file__).resolve().parents[1]


def rms_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square pixel distance between every image of a and every image of b."""
    x = a.reshape(len(a), -1).astype(np.float64) / 255.0
    y = b.reshape(len(b), -1).astype(np.float64) / 255.0
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2.0 * x @ y.T
    return np.sqrt(np.maximum(sq, 0.0) / x.shape[1])


def test_same_pixels_twice_from_fresh_worlds():
    ids, samples = [3, 11, 3, 250], [0, 5, 7, 2]
    a, nuis_a = ToyFacesWorld(seed=7, size=32).render_batch(ids, samples)
    b, nuis_b = ToyFacesWorld(seed=7, size=32).render_batch(ids, samples)
    assert np.array_equal(a, b)
    assert nuis_a == nuis_b


@pytest.mark.parametrize("size", [16, 45, 112])
def test_pixels_independent_of_batch_composition_and_order(size):
    world = ToyFacesWorld(seed=1, size=size)
    ids = [k % 9 for k in range(30)]
    samples = [k // 9 for k in range(30)]
    batch, nuisances = world.render_batch(ids, samples)
    order = np.random.default_rng(0).permutation(30)
    shuffled, _ = world.render_batch([ids[k] for k in order], [samples[k] for k in order])
    assert np.array_equal(batch[order], shuffled)
    for k in (0, 13, 29):
        image, nuisance = world.render(ids[k], samples[k])
        assert np.array_equal(image, batch[k])
        assert nuisance == nuisances[k] == world.nuisance(ids[k], samples[k])


def test_different_seeds_differ():
    a, _ = ToyFacesWorld(seed=0, size=32).render(5, 0)
    b, _ = ToyFacesWorld(seed=1, size=32).render(5, 0)
    assert not np.array_equal(a, b)
    assert ToyFacesWorld(seed=0).identity_params(5) != ToyFacesWorld(seed=1).identity_params(5)
    assert ToyFacesWorld(seed=0).nuisance(5, 0) != ToyFacesWorld(seed=0).nuisance(5, 1)


@pytest.mark.parametrize("size", [16, 32, 112])
def test_shapes_and_dtype(size):
    world = ToyFacesWorld(size=size)
    images, nuisances = world.render_batch([0, 1, 2], [0, 0, 1])
    assert images.shape == (3, size, size, 3) and images.dtype == np.uint8
    assert len(nuisances) == 3
    image, _ = world.render(4, 2)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert world.render_canonical(4).shape == (size, size, 3)
    assert image.std() > 10, "an image should not be flat"
    empty, none = world.render_batch([], [])
    assert empty.shape == (0, size, size, 3) and none == []


def test_params_and_nuisance_are_json_serialisable():
    world = ToyFacesWorld(size=32)
    for value in (world.identity_params(12), world.nuisance(12, 3)):
        assert all(type(v) in (int, float) for v in value.values())
        assert json.loads(json.dumps(value)) == value
    params = world.identity_params(12)
    for key in (
        "face_width",
        "face_height",
        "jaw",
        "skin_tone",
        "eye_dx",
        "eye_w",
        "iris_radius",
        "brow_thick",
        "nose_w",
        "mouth_w",
        "ear_size",
        "hair_style",
        "hair_r",
        "mole_count",
        "freckles",
        "scar",
        "wrinkles",
        "hair_grey",
    ):
        assert key in params
    nuisance = world.nuisance(12, 3)
    for key in (
        "yaw",
        "roll",
        "shift_x",
        "shift_y",
        "scale",
        "smile",
        "eye_open",
        "brow_raise",
        "light_x",
        "light_strength",
        "bg_r",
        "glasses",
        "hat",
        "mask",
        "blur",
        "noise_std",
    ):
        assert key in nuisance


def test_attributes_in_range_and_shift_the_distributions():
    world = ToyFacesWorld(seed=0)
    params = [world.identity_params(i) for i in range(400)]
    attrs = [world.attributes(i) for i in range(400)]
    assert all(a == {k: p[k] for k in ("group", "age", "sex")} for a, p in zip(attrs, params))
    for key, values in (("group", {0, 1, 2, 3}), ("age", {0, 1, 2}), ("sex", {0, 1})):
        assert {a[key] for a in attrs} == values

    def mean(key, **where):
        chosen = [p[key] for p in params if all(p[k] == v for k, v in where.items())]
        return float(np.mean(chosen))

    tones = [mean("skin_tone", group=g) for g in range(4)]
    assert all(b - a > 0.15 for a, b in itertools.pairwise(tones)), tones
    darkness = [mean("hair_r", group=g) for g in range(4)]
    assert darkness[0] > darkness[3] + 0.15, darkness
    assert mean("jaw", sex=1) > mean("jaw", sex=0) + 0.05
    assert mean("brow_thick", sex=0) > mean("brow_thick", sex=1)
    assert mean("hair_grey", age=2) > mean("hair_grey", age=0) + 0.3
    assert mean("wrinkles", age=2) > mean("wrinkles", age=1) > mean("wrinkles", age=0) == 0.0


def test_difficulty_zero_is_nuisance_free():
    world = ToyFacesWorld(seed=2, size=32, difficulty=0.0)
    images, nuisances = world.render_batch([8] * 5, range(5))
    assert all(np.array_equal(images[0], image) for image in images[1:])
    assert np.array_equal(images[0], ToyFacesWorld(seed=2, size=32).render_canonical(8))
    for nuisance in nuisances:
        assert nuisance["yaw"] == nuisance["roll"] == nuisance["smile"] == 0.0
        assert nuisance["scale"] == nuisance["eye_open"] == 1.0
        assert nuisance["glasses"] == nuisance["hat"] == nuisance["mask"] == 0
        assert nuisance["blur"] == nuisance["noise_std"] == nuisance["light_strength"] == 0.0
    other, _ = world.render(9, 0)
    assert not np.array_equal(images[0], other)


def test_difficulty_scales_the_same_draws():
    half = ToyFacesWorld(seed=0, difficulty=0.5).nuisance(3, 4)
    full = ToyFacesWorld(seed=0, difficulty=1.0).nuisance(3, 4)
    for key in ("yaw", "roll", "shift_x", "brow_raise", "light_strength", "noise_std"):
        assert math.isclose(half[key], 0.5 * full[key], abs_tol=1e-12), key


def test_identity_dominates_nuisance():
    """Same-identity images are closer than different identities at difficulty 1, and nearest
    canonical image names the identity far above chance, though pixels vary a lot."""
    world = ToyFacesWorld(seed=0, size=32, difficulty=1.0)
    n_ids, n_samples = 50, 4
    ids = np.repeat(np.arange(n_ids), n_samples)
    samples = np.tile(np.arange(n_samples), n_ids)
    images, _ = world.render_batch(ids.tolist(), samples.tolist())
    dist = rms_distances(images, images)
    same = ids[:, None] == ids[None]
    not_self = ~np.eye(len(ids), dtype=bool)
    genuine, impostor = dist[same & not_self].mean(), dist[~same].mean()
    assert genuine > 0.1, "nuisances should change pixels a lot"
    assert genuine < 0.95 * impostor, (genuine, impostor)
    gallery = np.stack([world.render_canonical(i) for i in range(n_ids)])
    nearest = rms_distances(images, gallery).argmin(1)
    assert (nearest == ids).mean() > 0.25


def test_splits_are_disjoint():
    split = ToyFacesSplit(num_train=100, num_test=20)
    train, test, new = set(split.train_ids()), set(split.test_ids()), set(split.new_ids(30))
    assert len(train) == 100 and len(test) == 20 and len(new) == 30
    assert not (train & test) and not (train & new) and not (test & new)
    assert min(test) == 100 and min(new) == 1_000_000
    with pytest.raises(ValueError, match="overlaps"):
        ToyFacesSplit(num_train=10, num_test=5, new_offset=12)
    with pytest.raises(ValueError, match="num_test"):
        ToyFacesSplit(num_train=10, num_test=-1)


def test_verification_pairs_balanced_and_deterministic():
    ids = list(range(100, 130))
    pairs = verification_pairs(ids, samples_per_identity=5, num_pairs=400, seed=3)
    assert len(pairs) == 400
    assert sum(same for _, _, same in pairs) == 200
    for (ia, sa), (ib, sb), same in pairs:
        assert ia in ids and ib in ids and 0 <= sa < 5 and 0 <= sb < 5
        assert (ia, sa) != (ib, sb)
        assert (ia == ib) == same
    assert pairs == verification_pairs(ids, 5, 400, seed=3)
    assert pairs != verification_pairs(ids, 5, 400, seed=4)
    labels = [same for _, _, same in pairs]
    assert labels[:200] != [True] * 200, "genuine and impostor pairs should be shuffled"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ToyFacesWorld(size=15), "size must be in"),
        (lambda: ToyFacesWorld(size=113), "size must be in"),
        (lambda: ToyFacesWorld(difficulty=-0.1), "difficulty must be >= 0"),
        (lambda: ToyFacesWorld(difficulty=float("nan")), "difficulty must be finite"),
        (lambda: ToyFacesWorld(seed=-1), "seed must be >= 0"),
        (lambda: ToyFacesWorld().render(-1, 0), "identity must be >= 0"),
        (lambda: ToyFacesWorld().render(0, -2), "sample must be >= 0"),
        (lambda: ToyFacesWorld().identity_params(-5), "identity must be >= 0"),
        (lambda: ToyFacesWorld().nuisance(1, -1), "sample must be >= 0"),
        (lambda: ToyFacesWorld().render_batch([1, 2], [0]), "differ in length"),
        (lambda: verification_pairs([1, 2], 3, 7), "num_pairs must be even"),
        (lambda: verification_pairs([1], 3, 4), "at least 2 identities"),
        (lambda: verification_pairs([1, 2], 1, 4), "samples_per_identity must be >= 2"),
        (lambda: verification_pairs([1, 1], 3, 4), "must not repeat"),
        (lambda: benchmark_render(sizes=(8,), seconds=0.01), "size must be in"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_types_raise():
    with pytest.raises(TypeError, match="size must be an integer"):
        ToyFacesWorld(size=32.0)
    with pytest.raises(TypeError, match="identity must be an integer"):
        ToyFacesWorld().render(1.5, 0)


def test_benchmark_job_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_render", ROOT / "jobs" / "bench_render.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = tmp_path / "bench" / "render.json"
    rates = job.main(
        ["--sizes", "16", "32", "--batch", "4", "--seconds", "0.05", "--out", str(out)]
    )
    assert set(rates) == {16, 32} and all(r > 0 for r in rates.values())
    report = json.loads(out.read_text())
    assert set(report["img_per_s"]) == {"16", "32"} and report["batch"] == 4
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("size  16px")
