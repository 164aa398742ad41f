"""Margin-based softmax heads for face-recognition training: ArcFace, CosFace and AdaFace.

A *margin* turns the cosine logits between L2-normalised embeddings and class centres into
margin-adjusted, scaled logits. It is separate from the head that owns the centres, so the
same margin serves the full head here and the sharded Partial FC (`partial_fc.py`).
Rows whose label is -1 have no target among the given centres (a Partial FC shard): their
logits are only scaled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def target_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns) of the target logit of every row whose label is not -1."""
    rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
    return rows, labels[rows]


class Margin(nn.Module):
    """Base: `forward(cosine, labels, norms) -> scaled logits` (cosine is N x C)."""

    name = "margin"

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = float(s)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "s": self.s}


class CosFaceMargin(Margin):
    """CosFace (Wang et al. 2018): s * (cos(theta_y) - m) for the target class."""

    name = "cosface"

    def __init__(self, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(s)
        self.m = float(m)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "m": self.m}

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows, cols = target_index(labels)
        target = cosine[rows, cols] - self.m
        return cosine.index_put((rows, cols), target) * self.s


class ArcFaceMargin(Margin):
    """ArcFace (Deng et al. 2019): s * cos(theta_y + m) for the target class.

    theta_y + m is clipped to pi so the target logit never rises again as theta_y grows.
    """

    name = "arcface"

    def __init__(self, s: float = 64.0, m: float = 0.5, eps: float = 1e-7) -> None:
        super().__init__(s)
        self.m = float(m)
        self.eps = float(eps)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "m": self.m}

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        rows, cols = target_index(labels)
        theta = torch.acos(cosine[rows, cols].clamp(-1 + self.eps, 1 - self.eps))
        target = torch.cos((theta + self.m).clamp(max=math.pi))
        return cosine.index_put((rows, cols), target) * self.s


class AdaFaceMargin(Margin):
    """AdaFace (Kim et al. 2022): a margin that adapts to image quality, read from the norm of
    the un-normalised embedding relative to an EMA of the batch norm statistics:

        z = clip(h * (||f|| - mu) / (sigma + eps), -1, 1)
        target = s * (cos(clip(theta_y - m*z, eps, pi - eps)) - (m + m*z))

    The EMA (`batch_mean`, `batch_std` buffers, rate t_alpha) is updated in training mode
    before the margin is computed, as in the reference implementation.
    """

    name = "adaface"

    def __init__(
        self,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
    ) -> None:
        super().__init__(s)
        self.m = float(m)
        self.h = float(h)
        self.t_alpha = float(t_alpha)
        self.eps = float(eps)
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "m": self.m, "h": self.h, "t_alpha": self.t_alpha}

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """z per row; updates the norm statistics first when training."""
        safe_norms = norms.detach().float().clamp(0.001, 100.0)
        if self.training:
            if safe_norms.numel() < 2:
                raise ValueError("AdaFace needs >= 2 embeddings per batch for norm statistics")
            with torch.no_grad():
                rate = self.t_alpha
                self.batch_mean.mul_(1 - rate).add_(rate * safe_norms.mean())
                self.batch_std.mul_(1 - rate).add_(rate * safe_norms.std())
        scaler = (safe_norms - self.batch_mean) / (self.batch_std + self.eps)
        return (scaler * self.h).clamp(-1.0, 1.0)

    def forward(
        self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        if norms is None:
            raise ValueError("AdaFace needs the norms of the un-normalised embeddings")
        scaler = self.margin_scaler(norms)
        cosine = cosine.clamp(-1 + self.eps, 1 - self.eps)
        rows, cols = target_index(labels)
        z = scaler[rows]
        theta = torch.acos(cosine[rows, cols]) - self.m * z
        target = torch.cos(theta.clamp(self.eps, math.pi - self.eps)) - (self.m + self.m * z)
        return cosine.index_put((rows, cols), target) * self.s


MARGINS: dict[str, type[Margin]] = {
    "arcface": ArcFaceMargin,
    "cosface": CosFaceMargin,
    "adaface": AdaFaceMargin,
}


def get_margin(name: str, **kwargs: Any) -> Margin:
    """A margin by name (arcface, cosface, adaface) with its keyword arguments (s, m, ...)."""
    if name not in MARGINS:
        raise ValueError(f"unknown margin {name!r}; available: {', '.join(MARGINS)}")
    return MARGINS[name](**kwargs)


def check_labels(labels: torch.Tensor, batch_size: int, num_classes: int) -> torch.Tensor:
    """Labels as a 1-D int64 tensor of class indices in [0, num_classes)."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    labels = labels.reshape(-1).long()
    if labels.numel() != batch_size:
        raise ValueError(f"{labels.numel()} labels for {batch_size} embeddings")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got range "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


class MarginSoftmaxHead(nn.Module):
    """Class centres (num_classes x embedding_dim) plus a margin; the loss is the softmax
    cross-entropy of the margin logits, averaged over the batch."""

    def __init__(self, num_classes: int, embedding_dim: int, margin: Margin) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.margin = margin
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_classes, self.embedding_dim)))

    @property
    def config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim,
            "margin": self.margin.config(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MarginSoftmaxHead:
        """Rebuild a head (random centres) from its `config`, e.g. before loading weights."""
        margin = dict(config["margin"])
        return get_margin_head(margin.pop("name"), config["num_classes"],
                               config["embedding_dim"], **margin)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each embedding to each class centre (N x C), float32."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must be N x {self.embedding_dim}, got {tuple(embeddings.shape)}"
            )
        weight = F.normalize(self.weight.float(), dim=1)
        return F.linear(F.normalize(embeddings.float(), dim=1), weight).clamp(-1.0, 1.0)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted, scaled logits (N x C)."""
        labels = check_labels(labels, embeddings.shape[0], self.num_classes)
        norms = embeddings.float().norm(dim=1)
        return self.margin(self.cosine(embeddings), labels, norms)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = check_labels(labels, embeddings.shape[0], self.num_classes)
        return F.cross_entropy(self.logits(embeddings, labels), labels)

    def centers(self) -> torch.Tensor:
        """L2-normalised class centres (num_classes x embedding_dim), detached."""
        return F.normalize(self.weight.detach().float(), dim=1)


def get_margin_head(
    name: str, num_classes: int, embedding_dim: int, **kwargs: Any
) -> MarginSoftmaxHead:
    """A head with `num_classes` centres and the named margin (kwargs go to the margin)."""
    return MarginSoftmaxHead(num_classes, embedding_dim, get_margin(name, **kwargs))
