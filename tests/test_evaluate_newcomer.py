"""`cemiray evaluate` as a newcomer meets it: only the sets named are evaluated, a `.bin` gets a
score distribution, report.json names its units, TAR at a FAR its impostor pairs cannot measure is
marked so, report.html is written, and a run with nothing to evaluate is refused up front."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from test_evaluate_job import write_toyfaces_bin

from cemiray.apps.evaluate import EvaluateConfig, run
from cemiray.data import storage
from cemiray.data.verification_bin import load_bin
from cemiray.eval.score_distributions import pair_score_report
from cemiray.eval.verification import tar_at_far_table
from cemiray.models import get_backbone
from cemiray.models.serialization import save_model_folder
from cemiray.runtime.config import ConfigError, load_config

PAIRS = 240  # 120 impostor pairs: FAR 1e-2 is measurable (>= 1/120), 1e-3 and 1e-4 are not


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    import torch

    root = tmp_path_factory.mktemp("evaluate_newcomer")
    torch.manual_seed(0)
    model = get_backbone("iresnet18", input_size=16, num_features=32)
    model_url = str(root / "recognizer")
    save_model_folder(model, model_url, model.config)
    bin_path = str(root / "toy_test.bin")
    write_toyfaces_bin(bin_path, range(20, 30), samples=4, num_pairs=PAIRS)
    return {"root": root, "model": model_url, "bin": bin_path}


@pytest.fixture(scope="module")
def evaluated(ray_cluster, inputs) -> dict:
    """`evaluate model=... verification=[bin]` with nothing else set (but the small actor pool
    a 2-core machine needs), as the command line builds it."""
    out = str(inputs["root"] / "run")
    cfg = load_config(EvaluateConfig, None, [
        f"out={out}", f"model={inputs['model']}", f"verification=[{inputs['bin']}]",
        "batch_size=64", "num_actors_max=1"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = run(cfg)
    return {"out": out, "summary": summary, "printed": printed.getvalue(),
            "report": json.loads(storage.read_text(storage.join(out, "report.json"))),
            "html": storage.read_text(storage.join(out, "report.html"))}


def test_only_the_named_set_is_evaluated(evaluated, inputs) -> None:
    report = evaluated["report"]
    assert set(report["verification"]) == {"toy_test"}
    assert report["datasets"] == {} and report["comparisons"] == []
    assert report["images"] == 2 * PAIRS
    saved = json.loads(storage.read_text(storage.join(evaluated["out"], "config.json")))
    assert (saved["datasets"], saved["reference"]) == ([], None)
    assert saved["verification"] == [inputs["bin"]]
    v = report["verification"]["toy_test"]
    assert v["num_pairs"] == PAIRS and 0.0 <= v["accuracy_mean"] <= 1.0


def test_bin_gets_a_score_distribution(evaluated, inputs) -> None:
    _, issame = load_bin(inputs["bin"])
    same = np.asarray(issame, bool)
    v = evaluated["report"]["verification"]["toy_test"]
    d = v["score_distribution"]
    assert (d["num_mated"], d["num_nonmated"]) == (int(same.sum()), int((~same).sum()))
    assert (v["num_genuine_pairs"], v["num_impostor_pairs"]) == (d["num_mated"],
                                                                 d["num_nonmated"])
    assert d["num_images"] == 2 * PAIRS and d["num_identities"] is None
    assert sum(d["histogram"]["mated"]) == d["num_mated"]
    assert sum(d["histogram"]["nonmated"]) == d["num_nonmated"]
    for key in ("mated_mean", "mated_std", "nonmated_mean", "nonmated_std", "d_prime"):
        assert math.isfinite(d[key]), key
    assert d["eer"] == pytest.approx(v["eer"]) and 0.0 <= d["eer"] <= 1.0
    assert [t["threshold"] for t in d["rates"]] == [0.2, 0.3, 0.4, 0.5]
    files = evaluated["report"]["files"]
    for key in ("scores_toy_test", "scores", "det"):
        with Image.open(io.BytesIO(storage.read_bytes(files[key]))) as image:
            image.load()
            assert image.format == "PNG" and min(image.size) > 100
    compact = evaluated["summary"]["verification"]["toy_test"]["score_distribution"]
    assert "histogram" not in compact and compact["num_mated"] == d["num_mated"]


def test_report_names_its_units(evaluated) -> None:
    report = evaluated["report"]
    fields = report["units"]["fields"]
    assert fields["verification.<set>.best_thresholds"] == "squared_l2_distance"
    assert fields["verification.<set>.eer_threshold"] == "cosine_similarity"
    assert fields["verification.<set>.tar_at_far.<far>.threshold"] == "cosine_similarity"
    assert fields["verification.<set>.score_distribution.eer_threshold"] == "cosine_similarity"
    assert fields["datasets.<set>.rates[].threshold"] == "cosine_similarity"
    assert {"cosine_similarity", "squared_l2_distance"} <= set(report["units"])
    v = report["verification"]["toy_test"]
    assert all(0.0 <= t <= 4.0 for t in v["best_thresholds"])  # squared L2 of unit vectors
    assert -1.0 <= v["eer_threshold"] <= 1.0
    printed = evaluated["printed"]
    assert "cosine similarity" in printed and "squared L2 distance" in printed


def test_tar_below_the_measurable_far_is_marked(evaluated) -> None:
    v = evaluated["report"]["verification"]["toy_test"]
    n = PAIRS // 2
    assert v["num_impostor_pairs"] == n and v["min_measurable_far"] == pytest.approx(1 / n)
    tars = v["tar_at_far"]
    assert set(tars) == {"0.01", "0.001", "0.0001"}
    assert tars["0.01"]["measurable"] is True and 0.0 <= tars["0.01"]["tar"] <= 1.0
    assert -1.0 <= tars["0.01"]["threshold"] <= 1.0
    for far in ("0.001", "0.0001"):
        entry = tars[far]
        assert entry["measurable"] is False and entry["tar"] is None, far
        assert entry["min_measurable_far"] == pytest.approx(1 / n)
        assert "not measurable" in entry["note"] and f"1/{n}" in entry["note"]
    # VAL at FAR 1e-3 is read from training folds of ~108 impostor pairs: interpolated, marked
    assert v["val_measurable"] is False and "interpolated" in v["val_note"]
    printed = evaluated["printed"]
    assert "n/m" in printed and "smallest FAR it can measure" in printed
    assert "not measurable" in evaluated["html"]


def test_tar_table_on_the_newcomers_815_impostor_pairs() -> None:
    rng = np.random.default_rng(0)
    mated, nonmated = rng.normal(0.6, 0.1, 815), rng.normal(0.0, 0.1, 815)
    table = tar_at_far_table(mated, nonmated)
    assert [table[f]["measurable"] for f in ("0.01", "0.001", "0.0001")] == [True, False, False]
    assert table["0.001"]["min_measurable_far"] == pytest.approx(1 / 815)
    assert table["0.0001"]["tar"] is None
    assert tar_at_far_table(mated, np.resize(nonmated, 3000))["0.001"]["measurable"] is True


def test_pair_score_report_splits_same_and_different_pairs() -> None:
    scores = np.array([0.9, 0.1, 0.8, -0.2, 0.7, 0.0])
    report = pair_score_report(scores, [1, 0, 1, 0, 1, 0], "pairs", thresholds=[0.5])
    np.testing.assert_array_equal(report.mated, [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(report.nonmated, [0.1, -0.2, 0.0])
    assert report.summary["eer"] == 0.0 and report.num_images == 12
    assert report.summary["rates"] == [{"threshold": 0.5, "fmr": 0.0, "fnmr": 0.0}]
    with pytest.raises(ValueError, match="both kinds of pairs"):
        pair_score_report(scores, [1] * 6)


def test_html_report_lists_the_set_units_and_figures(evaluated) -> None:
    html = evaluated["html"]
    assert evaluated["report"]["html"].endswith("report.html")
    for text in ("toy_test", "cosine", "squared", "TAR @ FAR=0.0001", "EER", "d′",
                 evaluated["report"]["model"]["uri"]):
        assert text in html, text
    for file in ("det.png", "scores_toy_test.png"):  # scores.png (all sets) repeats the one
        assert f'src="{file}"' in html and storage.exists(storage.join(evaluated["out"], file))
    assert "<script" in html and "http://" not in html and "https://" not in html


def test_nothing_to_evaluate_is_refused_with_both_keys(inputs, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="nothing to evaluate") as caught:
        load_config(EvaluateConfig, None, [f"model={inputs['model']}"])
    assert "`verification`" in str(caught.value) and "`datasets`" in str(caught.value)
    with pytest.raises(ValueError, match="nothing to evaluate.*`verification`.*`datasets`"):
        EvaluateConfig(model=inputs["model"], out=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="model: Field required"):
        load_config(EvaluateConfig, None, [f"verification=[{inputs['bin']}]"])

    from cemiray.cli import main

    assert main(["evaluate", f"model={inputs['model']}"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_bin_is_named_before_the_model_loads(tmp_path) -> None:
    cfg = EvaluateConfig(model=str(tmp_path / "no_model"), out=str(tmp_path / "out"),
                         verification=[str(tmp_path / "lfw.bin")])
    with pytest.raises(FileNotFoundError, match="lfw.bin: verification .bin not found"):
        run(cfg)


def test_named_datasets_and_reference_only(ray_cluster, inputs) -> None:
    """With datasets and a reference named, those and nothing else are scored; the .bin's pairs
    sit beside them on the page but are not compared to the reference."""
    out = str(inputs["root"] / "with_datasets")
    synthetic, real = "toyfaces:?ids=0-7&samples=4&size=32", "toyfaces:?ids=8-15&samples=4&size=32"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run(EvaluateConfig(out=out, model=inputs["model"], verification=[inputs["bin"]],
                           datasets=[synthetic], reference=real,
                           labels={synthetic: "synthetic", real: "real"}, batch_size=64,
                           num_actors_max=1))
    report = json.loads(storage.read_text(storage.join(out, "report.json")))
    assert set(report["datasets"]) == {"synthetic", "real"}
    assert [(c["a"], c["b"]) for c in report["comparisons"]] == [("real", "synthetic")]
    assert report["images"] == 2 * PAIRS + 64
    html = storage.read_text(storage.join(out, "report.html"))
    for text in ("synthetic", "real", "toy_test", "Distances to the reference", 'src="scores.png"',
                 'src="scores_real.png"', "FMR / FNMR at cosine thresholds"):
        assert text in html, text
    assert "synthetic" in printed.getvalue() and "real vs" not in printed.getvalue()
