"""Attribute probe for seeds (eval part): a seed's missing attribute predicted from its embedding.

Fitted on labelled data (group, age, sex, ...), with its accuracy on held-out identities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cemiray.eval.seed_filters import unit_rows
from cemiray.eval.seed_quotas import cell_key, parse_scalar, sort_key


class AttributeProbe:
    """Predicts a categorical attribute from unit embeddings: nearest class centroid (cosine)
    or multinomial logistic regression (full-batch gradient descent with momentum on
    standardised inputs, L2-regularised)."""

    def __init__(self, kind: str = "centroid", l2: float = 1e-3, iterations: int = 300,
                 lr: float = 0.5):
        if kind not in ("centroid", "logistic"):
            raise ValueError(f"probe kind must be 'centroid' or 'logistic', got {kind!r}")
        self.kind, self.l2, self.iterations, self.lr = kind, l2, iterations, lr
        self.classes: list[Any] = []
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    def fit(self, embeddings: np.ndarray, values: Sequence[Any]) -> AttributeProbe:
        x = unit_rows(embeddings, "probe embeddings")
        keys = [cell_key([v]) for v in values]
        self.classes = sorted(set(keys), key=sort_key)
        if len(self.classes) < 2:
            raise ValueError(f"probe: need at least 2 attribute values, got {self.classes}")
        y = np.asarray([self.classes.index(k) for k in keys])
        if self.kind == "centroid":
            sums = np.zeros((len(self.classes), x.shape[1]))
            np.add.at(sums, y, x)
            self.weight, self.bias = unit_rows(sums, "probe centroids"), np.zeros(len(sums))
            return self
        # Standardised inputs make plain gradient descent converge in a few hundred steps; the
        # scaling is folded back into the weights so `predict` takes unit embeddings as they are.
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mean) / std
        onehot = np.eye(len(self.classes))[y]
        w = np.zeros((len(self.classes), x.shape[1]))
        b = np.zeros(len(self.classes))
        vw, vb = np.zeros_like(w), np.zeros_like(b)
        for _ in range(self.iterations):
            logits = z @ w.T + b
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            grad = (p - onehot) / len(z)
            vw = 0.9 * vw - self.lr * (grad.T @ z + 2 * self.l2 * w)
            vb = 0.9 * vb - self.lr * grad.sum(axis=0)
            w, b = w + vw, b + vb
        weight = w / std
        self.weight, self.bias = weight, b - weight @ mean
        return self

    def predict(self, embeddings: np.ndarray) -> list[Any]:
        if self.weight is None:
            raise RuntimeError("probe: fit it before predict")
        scores = unit_rows(embeddings, "embeddings to probe") @ self.weight.T + self.bias
        return [parse_scalar(self.classes[i]) for i in scores.argmax(axis=1)]


def probe_with_holdout(embeddings: np.ndarray, values: Sequence[Any], groups: np.ndarray,
                       kind: str = "centroid", holdout: float = 0.2,
                       seed: int = 0) -> tuple[AttributeProbe, dict]:
    """A probe fitted on all rows, and its accuracy on held-out groups (identities, drawn with
    `seed`) when fitted without them, next to chance (the majority value's share among the
    held-out rows)."""
    groups = np.asarray(groups)
    names = np.unique(groups)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(names, size=max(1, round(holdout * len(names))),
                          replace=False).tolist()) if len(names) > 1 else set()
    test = np.asarray([g in held for g in groups])
    report: dict = {"kind": kind, "rows": len(groups)}
    keys = [cell_key([v]) for v in values]
    if test.any() and (~test).any() and len(set(np.asarray(keys)[~test])) > 1:
        train = np.flatnonzero(~test)
        part = AttributeProbe(kind).fit(embeddings[train], [values[i] for i in train])
        predicted = [cell_key([v]) for v in part.predict(embeddings[test])]
        truth = [keys[i] for i in np.flatnonzero(test)]
        report["holdout_accuracy"] = float(np.mean([p == t for p, t in zip(predicted, truth,
                                                                             strict=True)]))
        report["holdout_chance"] = float(max(truth.count(k) for k in set(truth)) / len(truth))
        report["holdout_rows"] = len(truth)
    return AttributeProbe(kind).fit(embeddings, values), report
