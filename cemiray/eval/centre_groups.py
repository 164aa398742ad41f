"""Images grouped by similarity to their identity's centre (eval): CemiFace's Table 1 analysis.

Images grouped by their cosine similarity to their identity's centre: the analysis behind
CemiFace's Table 1, where face-recognition models trained on moderately similar images beat
those trained on the easiest (most similar) and the hardest ones.

A centre is a row of a trained margin head (label i ↔ row i, as train-fr exports it; the
paper used a pretrained AdaFace classifier's weights) or, without a head, the mean of the
identity's embeddings. Group 0 holds the least similar images, group k−1 the most similar.

Two splits:

- `per_identity` (default): each identity's images are ranked by similarity and cut into k
  equal runs, so every identity appears in every group with the same count. When an identity's
  n images do not divide by k, n mod k images are left out (group −1), taken at evenly spaced
  ranks so each group stays a contiguous rank range; `CentreGroups.unassigned` counts them.
- `global`: cut at the quantiles of all similarities (group sizes differ by at most one);
  identities may be missing from some groups.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import numpy as np

from cemiray.data import storage

SPLITS = ("per_identity", "global")
HEAD_WEIGHT_KEY = "weight"


class CentreError(ValueError):
    """Embeddings, labels, centres or split options that cannot be grouped; the message says
    which."""


def unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    """Rows scaled to unit length (float64); non-finite values or zero rows are errors."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise CentreError(f"{what} must be a non-empty N x D array, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise CentreError(f"{what}: rows {bad[:10].tolist()} hold NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise CentreError(f"{what}: rows {zero[:10].tolist()} are zero vectors (no direction)")
    return x / norms


def check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise CentreError(f"labels must hold one value per embedding ({n}), got shape "
                          f"{labels.shape}")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise CentreError(f"labels must be integers, got {labels.dtype}")
    if n and labels.min() < 0:
        raise CentreError(f"labels must be >= 0 (identity labels), got {int(labels.min())}; "
                          "unlabelled rows (-1, e.g. a verification .bin) have no centre")
    return labels.astype(np.int64)


def load_centres(url: str) -> np.ndarray:
    """Class centres (C x D, unit rows; row i is label i) from a margin head exported by
    train-fr (a folder of `config.json` + `model.safetensors`, tensor `weight`), a
    `.safetensors` file (its `weight` tensor, or its only tensor) or a `.npy` array."""
    from cemiray.models.serialization import CONFIG_NAME, WEIGHTS_NAME, parse_safetensors

    if url.endswith(".npy"):
        if not storage.exists(url):
            raise FileNotFoundError(f"{url}: no such file")
        try:
            array = np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
        except ValueError as exc:
            raise CentreError(f"{url}: not a plain .npy array ({exc})") from exc
        return unit_rows(array, f"{url} centres")
    weights_url = url if url.endswith(".safetensors") else storage.join(url, WEIGHTS_NAME)
    if not storage.exists(weights_url):
        raise FileNotFoundError(f"{url}: expected a head folder ({CONFIG_NAME} + {WEIGHTS_NAME}), "
                                "a .safetensors file or a .npy array; found none")
    tensors = parse_safetensors(storage.read_bytes(weights_url), weights_url)
    if HEAD_WEIGHT_KEY in tensors:
        weight = tensors[HEAD_WEIGHT_KEY]
    elif len(tensors) == 1:
        weight = next(iter(tensors.values()))
    else:
        raise CentreError(f"{weights_url}: no {HEAD_WEIGHT_KEY!r} tensor among "
                          f"{sorted(tensors)}; which one holds the centres?")
    return unit_rows(weight.float().numpy(), f"{weights_url} centres")


def identity_mean_centres(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit centres indexed by label (rows of absent labels are NaN): the normalised mean of
    each identity's unit embeddings."""
    unit = unit_rows(embeddings, "embeddings")
    labels = check_labels(labels, len(unit))
    sums = np.zeros((int(labels.max()) + 1, unit.shape[1]))
    np.add.at(sums, labels, unit)
    present = np.unique(labels)
    centres = np.full_like(sums, np.nan)
    norms = np.linalg.norm(sums[present], axis=1, keepdims=True)
    cancelled = present[norms[:, 0] < 1e-12]
    if cancelled.size:
        raise CentreError(f"labels {cancelled[:10].tolist()}: the embeddings cancel out, so the "
                          "identity has no mean direction")
    centres[present] = sums[present] / norms
    return centres


def centre_similarity(embeddings: np.ndarray, labels: np.ndarray,
                      centres: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity (float64, N) of each embedding to the centre of its label: row
    `label` of `centres`, or the identity's mean embedding when `centres` is None."""
    unit = unit_rows(embeddings, "embeddings")
    labels = check_labels(labels, len(unit))
    if centres is None:
        centre_rows = identity_mean_centres(unit, labels)
    else:
        centre_rows = unit_rows(centres, "centres")
        if centre_rows.shape[1] != unit.shape[1]:
            raise CentreError(f"centres have {centre_rows.shape[1]} dimensions but the "
                              f"embeddings {unit.shape[1]}: not the same model's head?")
        missing = np.unique(labels[labels >= len(centre_rows)])
        if missing.size:
            raise CentreError(f"labels {missing[:10].tolist()} have no centre: the head holds "
                              f"{len(centre_rows)} centres (labels 0-{len(centre_rows) - 1})")
    return np.einsum("nd,nd->n", unit, centre_rows[labels])


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise CentreError(f"k={k!r}: need an integer number of groups >= 2")
    return int(k)


def split_by_similarity(similarity: np.ndarray, labels: np.ndarray, k: int,
                        split: str = "per_identity") -> np.ndarray:
    """Group index (int64, N) per image: 0 least similar … k−1 most similar; −1 for the
    per-identity remainder left out (see the module docstring). Ties keep input order."""
    k = check_k(k)
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 1 or not np.isfinite(similarity).all():
        raise CentreError(f"similarity must be a finite 1-D array, got shape {similarity.shape}")
    labels = check_labels(labels, len(similarity))
    groups = np.full(len(similarity), -1, dtype=np.int64)
    if split == "global":
        if len(similarity) < k:
            raise CentreError(f"k={k} groups from {len(similarity)} images: need at least k")
        order = np.argsort(similarity, kind="stable")
        groups[order] = np.arange(len(order)) * k // len(order)
        return groups
    if split != "per_identity":
        raise CentreError(f"split={split!r}: choose one of {SPLITS}")
    present, counts = np.unique(labels, return_counts=True)
    short = present[counts < k]
    if short.size:
        fewest = int(counts.min())
        raise CentreError(f"k={k} is larger than the images of identities {short[:10].tolist()} "
                          f"(fewest: {fewest}); a per-identity split needs >= k images each: "
                          f"lower k or use split='global'")
    by_label = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    for start, stop in itertools.pairwise(starts):
        members = by_label[start:stop]
        ranked = members[np.argsort(similarity[members], kind="stable")]
        n = len(ranked)
        per_group = n // k
        kept = np.arange(per_group * k)
        positions = (2 * kept + 1) * n // (2 * per_group * k)
        groups[ranked[positions]] = kept // per_group
    return groups


@dataclass(frozen=True)
class CentreGroups:
    """Per image: label, similarity to its centre and group (−1: left out)."""

    labels: np.ndarray
    similarity: np.ndarray
    group: np.ndarray
    k: int
    split: str
    centre_source: str

    @property
    def unassigned(self) -> int:
        return int((self.group < 0).sum())

    def members(self, g: int) -> np.ndarray:
        """Indices of the images of group `g`, in input order."""
        if not 0 <= g < self.k:
            raise CentreError(f"group {g}: only groups 0-{self.k - 1} exist")
        return np.flatnonzero(self.group == g)

    def summary(self) -> list[dict]:
        """One dict per group: images, identities and the mean/std/min/max similarity."""
        rows = []
        for g in range(self.k):
            sims = self.similarity[self.members(g)]
            rows.append({
                "group": g,
                "images": int(sims.size),
                "identities": int(np.unique(self.labels[self.members(g)]).size),
                "mean_similarity": float(sims.mean()),
                "std_similarity": float(sims.std()),
                "min_similarity": float(sims.min()),
                "max_similarity": float(sims.max()),
            })
        return rows


def group_by_centre_similarity(embeddings: np.ndarray, labels: np.ndarray, k: int = 4,
                               split: str = "per_identity",
                               centres: np.ndarray | None = None) -> CentreGroups:
    """Similarity of each embedding to its class centre (`centres` row per label, or the
    identity mean when None) and its group among k."""
    check_k(k)
    if split not in SPLITS:
        raise CentreError(f"split={split!r}: choose one of {SPLITS}")
    labels = check_labels(labels, len(np.asarray(embeddings)))
    similarity = centre_similarity(embeddings, labels, centres)
    group = split_by_similarity(similarity, labels, k, split)
    return CentreGroups(labels=labels, similarity=similarity, group=group, k=int(k), split=split,
                        centre_source="identity_mean" if centres is None else "head")
