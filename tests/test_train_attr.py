"""train-attr: a real 2-worker Ray Train + DeepSpeed run on ToyFaces labels (categorical and
continuous, one attribute nested per image), the exported folder, its held-out scores checked
against a recount, and the refusals (an attribute no row has, a folder that is not a
predictor, mismatched weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cemiray.data.sources import Source
from cemiray.eval.attributes import predict_images
from cemiray.eval.attributes import truth_value as attribute_value
from cemiray.models.attributes import (
    AttributeNet,
    AttributeSpec,
    load_attribute_model,
    save_attribute_model,
)
from cemiray.models.serialization import CheckpointError
from cemiray.train.attr import TrainAttrConfig, run

HOLDOUT = "toyfaces:?seed=0&ids=31000-31005&samples=3&size=16"


def tiny_config(tmp, **over) -> TrainAttrConfig:
    fields = {"out": str(tmp / "attr"),
              "data": "toyfaces:?seed=0&ids=30000-30015&samples=4&size=16",
              "holdout": HOLDOUT, "categorical": ["group", "glasses"], "continuous": ["yaw"],
              "width": 8, "embedding_dim": 16, "input_size": 16, "batch_size": 8,
              "max_steps": 4, "log_every": 1, "read_parts": 2,
              "distributed": {"num_workers": 2, "checkpoint_every": 2, "torch_threads": 1,
                              "progress_every_s": 0}}
    return TrainAttrConfig(**{**fields, **over})


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("train_attr")
    return {"summary": run(tiny_config(tmp)), "tmp": tmp}


def test_train_attr_exports_a_predictor_with_the_data_s_classes(trained):
    summary = trained["summary"]
    model = load_attribute_model(summary["attributes"])
    specs = {s.name: s for s in model.specs}
    rows = list(Source.parse("toyfaces:?seed=0&ids=30000-30015&samples=4&size=16").iter_rows())
    assert specs["group"].classes == sorted({r["group"] for r in rows})
    assert specs["glasses"].classes == sorted({r["nuisance"]["glasses"] for r in rows})
    yaws = np.array([r["nuisance"]["yaw"] for r in rows])
    assert specs["yaw"].mean == pytest.approx(yaws.mean(), rel=1e-6)
    assert specs["yaw"].std == pytest.approx(yaws.std(ddof=1), rel=1e-3)
    assert summary["step"] == 4
    metrics = [json.loads(ln) for ln in (trained["tmp"] / "attr" / "metrics.jsonl").read_text()
               .splitlines()]
    train = [m for m in metrics if m["event"] == "train"]
    assert train and all(np.isfinite(m["loss_yaw"]) and m["loss_group"] > 0 for m in train)


def test_held_out_scores_match_a_recount(trained):
    model = load_attribute_model(trained["summary"]["attributes"])
    scores = json.loads((trained["tmp"] / "attr" / "attributes" / "scores.json").read_text())
    assert scores == trained["summary"]["holdout"] and scores["images"] == 18
    rows = list(Source.parse(HOLDOUT).iter_rows())
    from cemiray.data.images import decode_image

    pred = predict_images(model, np.stack([decode_image(r["image"]) for r in rows]))
    group = scores["attributes"]["group"]
    assert group["accuracy"] == pytest.approx(np.mean(
        [p == r["group"] for p, r in zip(pred["group"], rows, strict=True)]))
    assert np.sum(group["confusion"]) == 18
    yaw = scores["attributes"]["yaw"]
    assert yaw["mae"] == pytest.approx(np.mean(
        [abs(p - r["nuisance"]["yaw"]) for p, r in zip(pred["yaw"], rows, strict=True)]), rel=1e-5)
    assert np.allclose(pred["group:p"].sum(1), 1, atol=1e-5)


def test_an_attribute_no_row_has_is_refused(ray_cluster, tmp_path):
    with pytest.raises(ValueError, match="no row of .* has attribute 'hair_length'"):
        run(tiny_config(tmp_path, categorical=["group", "hair_length"], continuous=[]))
    assert not (tmp_path / "attr" / "attributes").exists()


def test_unlabelled_rows_do_not_train_their_head():
    specs = [AttributeSpec("group", "categorical", classes=[0, 1, 2]),
             AttributeSpec("yaw", "continuous", mean=0.0, std=10.0)]
    net = AttributeNet({"name": "iresnet18", "input_size": 16, "num_features": 8, "width": 4},
                       specs)
    x = torch.randn(4, 3, 16, 16)
    targets = {"group": torch.tensor([0, 2, 1, 0]), "yaw": torch.full((4,), float("nan"))}
    total, parts = net.loss(net(x), targets)
    total.backward()
    assert float(parts["yaw"]) == 0 and net.heads["yaw"].weight.grad.abs().sum() == 0
    assert net.heads["group"].weight.grad.abs().sum() > 0


def test_folders_that_are_not_predictors_are_refused(tmp_path):
    from cemiray.models.serialization import save_model_folder

    specs = [AttributeSpec("sex", "categorical", classes=[0, 1])]
    net = AttributeNet({"name": "iresnet18", "input_size": 16, "num_features": 8, "width": 4},
                       specs)
    save_model_folder(torch.nn.Linear(2, 2), str(tmp_path / "linear"), {"kind": "other"})
    with pytest.raises(CheckpointError, match="not an attribute predictor"):
        load_attribute_model(str(tmp_path / "linear"))
    save_attribute_model(net, str(tmp_path / "ok"))
    assert load_attribute_model(str(tmp_path / "ok")).specs == specs
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    config["attributes"][0]["classes"] = [0, 1, 2]  # head now expects 3 outputs
    (tmp_path / "ok" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_attribute_model(str(tmp_path / "ok"))
    with pytest.raises(ValueError, match="at least 2 values"):
        AttributeSpec("sex", "categorical", classes=[1])


def test_attribute_values_come_from_columns_then_nested_labels():
    row = {"group": 2, "nuisance": json.dumps({"yaw": 3.5})}
    assert attribute_value(row, "group") == 2 and attribute_value(row, "yaw") == 3.5
    assert attribute_value(row, "smile") is None and attribute_value({}, "yaw") is None
