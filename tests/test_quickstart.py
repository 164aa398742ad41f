"""The main job end to end at a small size, on the session's Ray cluster: ToyFaces rendered to
Parquet shards by Ray tasks, exported to RecordIO, a verification .bin, all read back; then the
CemiFace loop from the shipped models (seeds → generate → train-fr → judge → HTML report), with
every artefact parsed, and a rerun that redoes nothing."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cemiray.apps.experiment.config import ExperimentConfig, FRRecipe, SyntheticSet
from cemiray.apps.quickstart import QuickstartConfig, run
from cemiray.data.images import decode_image
from cemiray.data.parquet_shards import list_shards

CHROMIUM = Path("/usr/bin/chromium").exists()


def tiny_loop(scaling: list[int]) -> ExperimentConfig:
    return ExperimentConfig(out="", recognizer_identities=20, test_identities=10, test_samples=6,
                            bin_pairs=200, identities=6, samples_per_identity=4,
                            candidates_per_identity=3, quotas={}, sets=[SyntheticSet(m=[0.5])],
                            steps=2, images_per_call=24, sampler_workers=1,
                            fr=FRRecipe(epochs=1, max_steps=2, batch_size=12), trainings=2,
                            scaling=scaling, screenshot=CHROMIUM)


@pytest.mark.ray
@pytest.mark.parametrize("scaled", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["sets", "scaled_sets"])
def test_quickstart_small(ray_cluster, tmp_path, capsys, scaled):
    cfg = QuickstartConfig(out=str(tmp_path / "qs"), train_identities=12, test_identities=6,
                           samples_per_identity=4, verification_pairs=20, shard_identities=5,
                           experiment=tiny_loop([2] if scaled else []).model_copy(
                               update={"summary_json": str(tmp_path / "summary.json")}))
    summary = run(cfg)
    assert summary["parquet_rows"] == 48 and summary["recordio_records"] == 48
    assert summary["parquet_shards"] == 3 and summary["classes"] == 12
    assert summary["bin_pairs"] == 20 and summary["bin_images"] == 40 and summary["bin_genuine"] == 10
    assert json.loads((tmp_path / "qs" / "config.json").read_text())["train_identities"] == 12
    printed = capsys.readouterr().out
    assert "quickstart data" in printed and "quickstart report:" in printed
    assert "real" in printed and "m=0.5" in printed

    exp = tmp_path / "qs" / "experiment"
    results = json.loads((exp / "results.json").read_text())
    rows = {r["name"]: r for r in results["training_sets"]}
    names = ["real", "m=0.5"] + (["real x2", "m=0.5 x2"] if scaled else [])
    assert set(rows) == set(names)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows.values())
    assert [rows[k]["images"] for k in names] == [24, 24, 48, 48][:len(names)]
    for row in rows.values():  # a mean over two trainings (seeds 0, 1) with its interval
        assert row["trainings"] == 2 and len(row["accuracies"]) == 2
        assert row["accuracy"] == pytest.approx(np.mean(row["accuracies"]))
        assert row["accuracy_ci95"] >= 0
    claim, *more = results["claims"]  # no m = 1 set here: synthetic against real (and scaled)
    assert (claim["a"], claim["b"]) == ("m=0.5", "real") and 0 <= claim["p"] <= 1
    assert [(c["a"], c["b"]) for c in more] == ([("m=0.5 x2", "real")] if scaled else [])
    assert claim["verdict"] in printed
    assert results["judge"]["independent"] and "judge_mean" in results["calibration"][0]
    assert -1 <= results["calibration"][0]["judge_mean"] <= 1
    quoted = json.loads((tmp_path / "summary.json").read_text())  # what a README table copies
    assert [r["accuracies"] for r in quoted["training_sets"]] == [
        r["accuracies"] for r in results["training_sets"]]
    assert quoted["claims"][0]["verdict"] == claim["verdict"] and quoted["command"]
    assert quoted["wall_seconds"] == results["provenance"]["wall_seconds"] > 0
    assert quoted["stages_cached"] == 0
    assert [c["target"] for c in results["calibration"]] == [0.5]
    assert results["calibration"][0]["n"] == 24 + 48 * scaled
    assert set(results["score_distributions"]) == set(rows)
    assert set(results["distances"]) == set(rows) - {"real"}
    assert results["leakage"]["checked"] == 18 * (1 + scaled)  # 3 candidates × 6 seeds per pool
    prov = results["provenance"]
    stems = ["real", "m_0.5"] + (["real_x2", "m_0.5_x2"] if scaled else [])
    assert set(prov["hashes"]) == {
        "test-bin", "seeds", "generate-m_0.5", "judge",
        *(["seeds-6", "generate-m_0.5_x2"] if scaled else []),
        *(f"fr-{name}-seed{s}" for name in stems for s in (0, 1))}
    # the real baseline's identities follow E_id's (0-19) and the test's (20-29)
    assert "ids=30-35" in prov["configs"]["judge"]["datasets"]["real"]
    assert prov["models"]["judge"]["sha256"] != prov["models"]["recognizer"]["sha256"]
    assert prov["cached"] == [] and len(prov["models"]["generator"]["sha256"]) == 64

    generated = next((exp / "stages").glob("generate-m_0.5-*"))
    table = pq.read_table(generated / "parquet")
    assert table.num_rows == 24 and set(table.column("target_m").to_pylist()) == {0.5}
    if scaled:  # the base set's identities are the scaled set's first
        assert set(table.column("seed_id").to_pylist()) < set(
            pq.read_table(next((exp / "stages").glob("generate-m_0.5_x2-*")) / "parquet")
            .column("seed_id").to_pylist())
    report = exp / "report"
    html = (report / "report.html").read_text()
    figures = json.loads((report / "report.json").read_text())["figures"]
    assert figures and all(f["file"] in html for f in figures)
    for figure in figures:
        image = decode_image((report / figure["file"]).read_bytes())
        assert image.ndim == 3 and image.shape[2] == 3 and np.asarray(image).std() > 0
    if CHROMIUM:
        shot = summary["experiment"]["screenshot"]
        assert shot["images_loaded"] == shot["images_total"] == len(figures)

    shards = list_shards(str(tmp_path / "qs" / "toyfaces_train" / "parquet"))
    before = {s: (tmp_path / s).stat().st_mtime_ns for s in shards}
    run(cfg)  # a rerun keeps every complete shard and every finished stage as it is
    assert {s: (tmp_path / s).stat().st_mtime_ns for s in shards} == before
    again = json.loads((exp / "results.json").read_text())["provenance"]
    assert sorted(again["cached"]) == sorted(prov["hashes"]) and again["hashes"] == prov["hashes"]
    assert json.loads((tmp_path / "summary.json").read_text())["stages_cached"] == len(prov["hashes"])
