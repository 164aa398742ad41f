"""Driver-side accumulators of `cemiray seeds` (pipeline part): embedded rows routed by role.

Seed candidates are gathered whole (they are filtered together); the leakage reference is summed
per label as batches arrive (O(labels x D), never held whole); probe rows are kept as arrays."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cemiray.eval.seed_filters import unit_rows
from cemiray.pipeline.seeds.plan import CENTRES, PROBE, SEED


class Candidates:
    """Seed candidates gathered on the driver: conditioning embeddings, judge embeddings (only
    with a judge of its own), raw norms, images and attributes."""

    def __init__(self, judged: bool):
        self.judged = judged
        self.index: list[np.ndarray] = []
        self.source: list[np.ndarray] = []
        self.label: list[np.ndarray] = []
        self.embedding: list[np.ndarray] = []
        self.space: list[np.ndarray] = []
        self.norm: list[np.ndarray] = []
        self.images: list[Any] = []
        self.attrs: list[dict] = []

    def add(self, index, source, label, embedding, space, norm, images, attrs) -> None:
        self.index.append(np.asarray(index, np.int64))
        self.source.append(np.asarray(source, np.int64))
        self.label.append(np.asarray(label, np.int64))
        self.embedding.append(np.asarray(embedding, np.float32))
        if self.judged:
            self.space.append(np.asarray(space, np.float32))
        self.norm.append(np.asarray(norm, np.float32))
        self.images.extend(images)
        self.attrs.extend(attrs)

    def finish(self) -> dict[str, Any]:
        """Arrays in index order, the first row of each (source, label) of an inquiry source."""
        index = np.concatenate(self.index)
        order = np.argsort(index, kind="stable")
        source, label = np.concatenate(self.source)[order], np.concatenate(self.label)[order]
        index = index[order]
        repeated = index[1:][index[1:] == index[:-1]]
        if repeated.size:
            raise ValueError(f"rows with index {np.unique(repeated)[:10].tolist()} came back "
                             "more than once")
        first = np.ones(len(index), dtype=bool)
        seen: set[tuple[int, int]] = set()
        for i, key in enumerate(zip(source.tolist(), label.tolist(), strict=True)):
            first[i] = key not in seen
            seen.add(key)
        pick = order[first]
        embedding = np.concatenate(self.embedding)[pick]
        return {
            "index": index[first], "source": source[first], "label": label[first],
            "embedding": embedding,
            "space": np.concatenate(self.space)[pick] if self.judged else embedding,
            "norm": np.concatenate(self.norm)[pick],
            "images": [self.images[i] for i in pick],
            "attrs": [self.attrs[i] for i in pick],
        }


class CentreSums:
    """Per-label sums of unit embeddings, accumulated batch by batch (O(labels x D))."""

    def __init__(self, num_labels: int, dim: int):
        self.sums = np.zeros((num_labels, dim), dtype=np.float64)
        self.counts = np.zeros(num_labels, dtype=np.int64)

    def add(self, labels: np.ndarray, embeddings: np.ndarray) -> None:
        if labels.min() < 0:
            raise ValueError(f"training data: label {int(labels.min())} is negative; centres "
                             "need identity labels")
        top = int(labels.max()) + 1
        if top > len(self.sums):
            size = max(top, 2 * len(self.sums))
            sums = np.zeros((size, self.sums.shape[1]), dtype=np.float64)
            counts = np.zeros(size, dtype=np.int64)
            sums[:len(self.sums)], counts[:len(self.counts)] = self.sums, self.counts
            self.sums, self.counts = sums, counts
        np.add.at(self.sums, labels, embeddings)
        np.add.at(self.counts, labels, 1)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.flatnonzero(self.counts)
        return unit_rows(self.sums[labels], "training centres"), labels


def consume(ds, candidates: Candidates):
    """Route the embedded rows: seeds to `candidates`, centre rows into per-label sums, probe
    rows into arrays. Returns (CentreSums or None, probe rows or None)."""
    sums: CentreSums | None = None
    probe: dict[str, list] = {"embedding": [], "label": [], "attrs": []}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        roles = np.asarray(batch["roles"], dtype=np.int64)
        space = batch["judge_embedding"] if "judge_embedding" in batch else batch["embedding"]
        seed = np.flatnonzero(roles & SEED)
        if seed.size:
            candidates.add(batch["index"][seed], batch["source"][seed], batch["label"][seed],
                           batch["embedding"][seed], space[seed], batch["feature_norm"][seed],
                           [bytes(batch["image"][i]) or None for i in seed],
                           [json.loads(batch["attributes"][i]) for i in seed])
        centre = np.flatnonzero(roles & CENTRES)
        if centre.size:
            if sums is None:
                sums = CentreSums(0, space.shape[1])
            sums.add(np.asarray(batch["label"][centre], np.int64), space[centre])
        rows = np.flatnonzero(roles & PROBE)
        if rows.size:
            probe["embedding"].append(batch["embedding"][rows])
            probe["label"].append(np.asarray(batch["label"][rows], np.int64))
            probe["attrs"].extend(json.loads(batch["attributes"][i]) for i in rows)
    if probe["embedding"]:
        probe = {"embedding": np.concatenate(probe["embedding"]),
                 "label": np.concatenate(probe["label"]), "attrs": probe["attrs"]}
    else:
        probe = None
    return sums, probe
