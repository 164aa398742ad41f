"""The HTML report: a self-contained folder whose PNGs decode, whose report.json holds every
figure, whose text is escaped, whose optional sections appear only when present, and which
headless Chromium renders with every image loaded."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cemiray.apps.report import ResultsError, render_in_chromium, write_report
from cemiray.eval.score_distributions import compare_reports, score_report

HOSTILE = '<script>alert("x")</script>&m=$0.4^{$'
SECTION_ORDER = ["accuracy", "m-sweep", "calibration", "sample-grids", "scores", "seeds",
                 "leakage", "centres", "provenance"]


def _grid_png(path: Path, rows: int = 3, columns: int = 4, tile: int = 24) -> None:
    """A small sample grid: one colour family per row (identity), darker towards higher m."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((rows * tile, columns * tile, 3), dtype=np.uint8)
    for r in range(rows):
        base = rng.integers(60, 255, size=3)
        for c in range(columns):
            noise = rng.integers(0, 30, size=(tile, tile, 3))
            pixels[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = np.clip(
                base * (1 - 0.2 * c) + noise, 0, 255)
    Image.fromarray(pixels).save(path)


def _scores(name: str, spread: float, seed: int):
    """A ScoreReport of clustered embeddings: tighter clusters give better separated scores."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 16))
    labels = np.repeat(np.arange(12), 5)
    embeddings = centres[labels] + spread * rng.normal(size=(labels.size, 16))
    return score_report(embeddings, labels, name=name)


def _results(grid: Path) -> dict:
    real, m04, m07 = _scores("real", 0.5, 1), _scores("m=0.4", 0.9, 2), _scores("m=0.7", 0.6, 3)
    distances = {}
    for report in (m04, m07):
        comparison = compare_reports(report, real)
        distances[report.name] = {"mated": comparison["mated"],
                                  "nonmated": comparison["nonmated"]}
    sets = [
        {"name": "real", "kind": "real", "m": None, "images": 2000, "identities": 100,
         "accuracy": 0.93, "accuracy_std": 0.012, "tar_at_far": {"1e-2": 0.8, "1e-3": 0.6},
         "eer": 0.07, "wall_seconds": 120.0},
        {"name": "m=0.4", "kind": "synthetic", "m": [0.4], "images": 1800, "identities": 90,
         "accuracy": 0.81, "accuracy_std": 0.02, "tar_at_far": {"1e-2": 0.5, "1e-3": 0.3},
         "eer": 0.19, "wall_seconds": 100.0},
        {"name": "m=0.7", "kind": "synthetic", "m": [0.7], "images": 1800, "identities": 90,
         "accuracy": 0.86, "accuracy_std": 0.015, "eer": 0.14, "wall_seconds": 101.0},
        {"name": "m={0,0.5}", "kind": "synthetic", "m": [0.0, 0.5], "images": 1800,
         "identities": 90, "accuracy": 0.84, "accuracy_std": 0.018, "wall_seconds": 99.0},
    ]
    return {
        "title": "cemiray experiment (test)",
        "created": "2026-11-22T12:00:00Z",
        "machine": {"host": "testbox", "cpus": 2, "gpu": None},
        "training_sets": sets,
        "calibration": [{"target": t, "achieved_mean": t - 0.03, "achieved_std": 0.08, "n": 40}
                        for t in (0.0, 0.2, 0.4, 0.6, 0.8)],
        "sample_grids": [{"caption": "rows: identities, columns: m", "png": str(grid)}],
        "score_distributions": {r.name: r.to_dict(histogram_bins=50) for r in (real, m04, m07)},
        "distances": distances,
        "seed_attributes": {"group": {"0": {"target": 0.25, "achieved": 0.24},
                                      "1": {"target": 0.75, "achieved": 0.76}},
                            "sex": {"f": {"target": 0.5, "achieved": 0.47},
                                    "m": {"target": 0.5, "achieved": 0.53}}},
        "leakage": {"threshold": 0.3, "max_similarity": 0.21, "flagged": 0, "checked": 100},
        "centres": {"groups": [{"group": 0, "mean_similarity": 0.2, "accuracy": 0.8,
                                "accuracy_std": 0.02, "images": 500}]},
        "provenance": {"configs": {"train_fr": {"lr": 0.1, "epochs": 2}},
                       "hashes": {"train_fr": "ab12cd34"}, "versions": {"numpy": np.__version__},
                       "wall_times": {"train_fr": 12.3, "generate": 4.5}, "commit": "d5ac1ef"},
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("report")
    _grid_png(root / "grid.png")
    results = _results(root / "grid.png")
    url = write_report(results, str(root / "out"))
    assert url == str(root / "out" / "report.html")
    return root / "out", results


def _image_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_every_figure_is_written_decodes_and_is_listed(report):
    out, results = report
    document = json.loads((out / "report.json").read_text())
    assert document["results"]["title"] == results["title"]
    listed = [entry["file"] for entry in document["figures"]]
    on_disk = sorted(f"figures/{name}" for name in os.listdir(out / "figures"))
    assert sorted(listed) == on_disk
    # accuracy, m-sweep, calibration, 1 grid, 3 score histograms, seed attributes
    assert len(listed) == 8
    for entry in document["figures"]:
        with Image.open(out / entry["file"]) as image:
            image.load()
            assert image.width > 50 and image.height > 50
        assert entry["data"], entry["file"]
    page = (out / "report.html").read_text()
    assert sorted(_image_sources(page)) == sorted(listed)
    grid = next(e for e in document["figures"] if e["section"] == "sample_grids")
    assert (out / grid["file"]).read_bytes() == Path(results["sample_grids"][0]["png"]).read_bytes()
    sweep = next(e for e in document["figures"] if e["section"] == "m_sweep")
    assert sweep["data"]["m"] == [0.4, 0.7]
    assert sweep["data"]["real"][0]["accuracy_percent"] == pytest.approx(93.0)


def test_page_has_sections_in_schema_order_and_formatted_numbers(report):
    out, _ = report
    page = (out / "report.html").read_text()
    positions = [page.index(f'<section id="{anchor}">') for anchor in SECTION_ORDER]
    assert positions == sorted(positions)
    assert "93.00% ± 1.20%" in page and "81.00% ± 2.00%" in page
    assert "testbox" in page and "2026-11-22T12:00:00Z" in page
    assert "data-images" not in page and "naturalWidth" in page


def test_hostile_names_are_escaped(tmp_path):
    _grid_png(tmp_path / "grid.png")
    results = _results(tmp_path / "grid.png")
    results["title"] = HOSTILE
    results["training_sets"][1]["name"] = HOSTILE
    results["score_distributions"][HOSTILE] = results["score_distributions"].pop("m=0.4")
    results["distances"][HOSTILE] = results["distances"].pop("m=0.4")
    results["sample_grids"][0]["caption"] = HOSTILE
    results["seed_attributes"][HOSTILE] = {HOSTILE: {"target": 1.0, "achieved": 0.9}}
    write_report(results, str(tmp_path / "out"))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script>alert" not in page
    assert page.count("<script>") == 1
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;m=$0.4^{$" in page
    for source in _image_sources(page):
        assert "://" not in source and not source.startswith("/")
        assert (tmp_path / "out" / source).is_file()


def test_missing_optional_sections_are_omitted(tmp_path):
    results = {"title": "minimal", "training_sets": [
        {"name": "real", "kind": "real", "m": None, "accuracy": 0.9, "accuracy_std": 0.01},
        {"name": "m={0,0.5}", "kind": "synthetic", "m": [0.0, 0.5], "accuracy": 0.8}]}
    write_report(results, str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert re.findall(r'<section id="([^"]+)"', page) == ["accuracy"]
    document = json.loads((tmp_path / "report.json").read_text())
    assert [e["section"] for e in document["figures"]] == ["accuracy"]
    assert "80.00%" in page


def test_bad_input_names_the_field(tmp_path):
    _grid_png(tmp_path / "grid.png")
    results = _results(tmp_path / "grid.png")
    broken = copy.deepcopy(results)
    del broken["training_sets"][2]["accuracy"]
    with pytest.raises(ResultsError, match=r"training_sets\[2\]\.accuracy: missing"):
        write_report(broken, str(tmp_path / "a"))
    broken = copy.deepcopy(results)
    (tmp_path / "grid.txt").write_text("not a png")
    broken["sample_grids"][0]["png"] = str(tmp_path / "grid.txt")
    with pytest.raises(ResultsError, match=r"sample_grids\[0\].*not a PNG"):
        write_report(broken, str(tmp_path / "b"))
    broken = copy.deepcopy(results)
    broken["score_distributions"]["m=0.7"]["histogram"]["mated"] = [1, 2]
    with pytest.raises(ResultsError, match=r"score_distributions\['m=0.7'\]\.histogram\.mated"):
        write_report(broken, str(tmp_path / "c"))


def test_chromium_renders_every_image(report, tmp_path):
    assert os.path.exists("/usr/bin/chromium"), (
        "/usr/bin/chromium is missing: `make chromium` (apt-get install chromium) installs it")
    out, _ = report
    shot = tmp_path / "shot.png"
    rendered = render_in_chromium(str(out / "report.html"), str(shot))
    assert rendered["images_total"] == 8
    assert rendered["images_loaded"] == rendered["images_total"]
    assert rendered["bytes"] == shot.stat().st_size
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1280)
    assert pixels.std() > 5.0
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    victim = min((broken / "figures").iterdir())
    victim.unlink()
    again = render_in_chromium(str(broken / "report.html"), str(tmp_path / "shot2.png"))
    assert (again["images_loaded"], again["images_total"]) == (7, 8)
