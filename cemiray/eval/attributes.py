"""Attribute predictions and their scores (eval part): how well a predictor reads attributes.

`predict_images` runs an AttributeNet (cemiray.models.attributes) over uint8 images;
`score_predictor` compares its predictions on a labelled face source with the source's own
labels: accuracy, balanced accuracy and the confusion matrix of a categorical attribute, mean
absolute error and R² of a continuous one."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from cemiray.data import pixels
from cemiray.data.images import decode_image, fit_square
from cemiray.models.attributes import CATEGORICAL


def predict_images(model, images: np.ndarray, batch_size: int = 256, resize: str = "stretch",
                   device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """The model's predictions (cemiray.models.attributes.AttributeNet.predict) for uint8
    images N×H×W×3, fitted to its input size by `resize`."""
    size = model.input_size
    out: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        chunk = [im if im.shape[:2] == (size, size) else fit_square(im, size, resize)
                 for im in images[start:start + batch_size]]
        pred = model.predict(pixels.from_numpy(np.stack(chunk)).to(device))
        for key, value in pred.items():
            out.setdefault(key, []).append(value)
    return {k: np.concatenate(v) for k, v in out.items()}


def plain_value(value: Any) -> Any:
    """A prediction as a JSON value (numpy scalars → Python; class values stay as they are)."""
    return value.item() if hasattr(value, "item") else value


def read_attributes(model, images: np.ndarray, names: list[str],
                    device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Per image, the model's reading of `names` as JSON values: what a generated image shows,
    recorded beside what was requested (generate's rows, served responses)."""
    pred = predict_images(model, images, device=device)
    return [{n: plain_value(pred[n][i]) for n in names} for i in range(len(images))]


def truth_value(row: dict, name: str) -> Any:
    """`name` of a source row: a column, else a key of its nested per-image attributes
    (ToyFaces' `nuisance`), else None (unlabelled)."""
    if name in row:
        return row[name]
    nested = row.get("nuisance")
    if isinstance(nested, str):
        nested = json.loads(nested)
    return nested.get(name) if isinstance(nested, dict) else None


def score_attribute(spec, predicted: np.ndarray, truth: list) -> dict:
    known = np.array([t is not None for t in truth])
    if not known.any():
        return {"n": 0}
    if spec.kind == CATEGORICAL:
        classes = [json.dumps(c) for c in spec.classes]
        t = np.array([classes.index(json.dumps(v)) if json.dumps(v) in classes else -1
                      for v, k in zip(truth, known, strict=True) if k])
        p = np.array([classes.index(json.dumps(v)) for v in predicted[known]])
        confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
        seen = t >= 0
        np.add.at(confusion, (t[seen], p[seen]), 1)
        recalls = [confusion[i, i] / confusion[i].sum() for i in range(len(classes))
                   if confusion[i].sum()]
        return {"n": int(known.sum()), "accuracy": float((t == p).mean()),
                "balanced_accuracy": float(np.mean(recalls)), "classes": spec.classes,
                "confusion": confusion.tolist()}
    t = np.array([float(v) for v, k in zip(truth, known, strict=True) if k])
    p = predicted[known].astype(np.float64)
    var = float(t.var())
    return {"n": int(known.sum()), "mae": float(np.abs(p - t).mean()),
            "r2": float(1 - ((p - t) ** 2).mean() / var) if var > 0 else None,
            "truth_std": float(np.sqrt(var))}


def score_predictor(model, source, resize: str = "stretch", limit: int | None = None) -> dict:
    """Scores of `model` on a labelled face source (a cemiray.data.sources.Source), read here
    in one process: every attribute the model predicts that the rows carry."""
    images, rows = [], []
    for row in source.iter_rows(shard=0, num_shards=1):
        images.append(decode_image(bytes(row["image"]), where=f"{source.uri} row {len(rows)}"))
        rows.append({k: v for k, v in row.items() if k != "image"})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise ValueError(f"{source.uri}: no rows to score the attribute predictor on")
    pred = predict_images(model, np.stack(images) if len({im.shape for im in images}) == 1
                          else images, resize=resize)
    scores = {s.name: score_attribute(s, pred[s.name], [truth_value(r, s.name) for r in rows])
              for s in model.specs}
    return {"images": len(rows), "attributes": scores}


def cell_labeller(model, attributes, device: str | torch.device = "cpu"):
    """images → each image's cell under `model`: its predicted `attributes` joined as seed
    quotas name cells ("2", or "2,1" for group and sex)."""
    from cemiray.eval.seed_quotas import cell_key

    missing = [a for a in attributes if a not in {s.name for s in model.specs}]
    if missing:
        raise ValueError(f"the attribute predictor does not predict {missing} (it predicts "
                         f"{[s.name for s in model.specs]})")

    def cells_of(images: np.ndarray) -> list[str]:
        pred = predict_images(model, images, device=device)
        return [cell_key(v) for v in zip(*(pred[a] for a in attributes), strict=True)]

    return cells_of
