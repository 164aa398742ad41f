"""label-attr: a Ray Data pass labels every image of a source with the shipped attribute
model; the Parquet rows equal the model's own predictions, carry a key the owner can join on,
and the report's agreement with the source's labels is a recount. An image folder (no labels)
is labelled too; a finished folder is never overwritten."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from cemiray.assets import TOYFACES_ATTRIBUTES
from cemiray.data.images import decode_image
from cemiray.data.sources import Source
from cemiray.eval.attributes import predict_images
from cemiray.models.attributes import load_attribute_model
from cemiray.pipeline.label_attr import LabelAttrConfig, run

DATA = "toyfaces:?seed=0&ids=35000-35011&samples=3&size=32"


@pytest.fixture(scope="module")
def labelled(ray_cluster, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("label") / "out"
    return {"result": run(LabelAttrConfig(out=str(out), data=DATA, rows_per_task=10,
                                          batch_size=8, probabilities=True)), "out": out}


def test_rows_hold_the_model_s_predictions_and_a_join_key(labelled):
    table = pq.read_table(labelled["out"] / "labels").to_pandas().sort_values("index")
    rows = list(Source.parse(DATA).iter_rows())
    assert list(table["index"]) == list(range(36)) and "image" not in table.columns
    assert list(table["key"]) == [f"{r['identity']}/{r['sample']}" for r in rows]
    pred = predict_images(load_attribute_model(TOYFACES_ATTRIBUTES),
                          np.stack([decode_image(r["image"]) for r in rows]))
    assert [json.loads(v) for v in table["group"]] == [int(v) for v in pred["group"]]
    np.testing.assert_allclose(table["yaw"].to_numpy(), pred["yaw"], rtol=1e-4, atol=1e-3)
    probs = np.stack(table["group:p"].to_numpy())
    np.testing.assert_allclose(probs, pred["group:p"], atol=1e-5)


def test_the_report_s_agreement_is_a_recount(labelled):
    report = json.loads((labelled["out"] / "label_report.json").read_text())
    table = pq.read_table(labelled["out"] / "labels").to_pandas()
    truth = {f"{r['identity']}/{r['sample']}": r for r in Source.parse(DATA).iter_rows()}
    agree = np.mean([json.loads(g) == truth[k]["group"] for k, g in
                     zip(table["key"], table["group"], strict=True)])
    assert report["rows"] == 36 and report["attributes"]["group"]["agreement"] == pytest.approx(agree)
    assert report["attributes"]["glasses"]["labelled_in_source"] == 36  # nested per-image labels
    assert not [p for p in labelled["out"].iterdir() if p.name.startswith(".labels-")]


def test_an_unlabelled_source_is_labelled_and_a_finished_one_kept(labelled, tmp_path, orl_root):
    result = run(LabelAttrConfig(out=str(tmp_path / "orl"), data=f"orl:{orl_root}",
                                 rows_per_task=100, batch_size=64, resize="crop"))
    table = pq.read_table(tmp_path / "orl" / "labels").to_pandas()
    assert result["rows"] == len(table) == 400
    assert sorted(table["key"])[:2] == ["0/0", "0/1"]  # subject − 1 / image − 1
    assert result["attributes"]["group"]["labelled_in_source"] == 0
    with pytest.raises(FileExistsError, match="already labelled"):
        run(LabelAttrConfig(out=str(labelled["out"]), data=DATA))
