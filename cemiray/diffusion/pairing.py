"""Which (inquiry, target, m) examples the CemiFace generator trains on.

`self` is the paper: the target is the inquiry image and m is drawn uniformly from the m grid.
The loss alone must then teach what m means, and on a small CPU budget it does not: the tiny
preset made faces but ignored m (achieved similarity 0.07–0.24 for every m).

`identity` is pair-supervised conditioning, for data with identity labels: the target x_t is the
inquiry x_q itself (m = 1), another image of the same identity (genuine similarities) or an image
of another identity (impostor similarities, around 0 and below), and m is the frozen recogniser's
measured cos(E_id(x_q), E_id(x_t)) snapped to the m grid. Plain MSE on x_t then already teaches
"produce an image whose similarity to the inquiry is m". Non-self pairs are drawn so that their
m histogram is roughly flat over `m_range`: candidate pairs are binned by m and bins are drawn
uniformly (sparse bins less often, so that a handful of pairs is not repeated endlessly).

A worker keeps its rows in memory (`PairBank`): uint8 images, labels and unit embeddings computed
once with E_id — N·3·S² + 4·N·D bytes (10,000 ToyFaces at 32 px with D = 512: 31 MB + 20 MB) —
plus the candidate table, 20 bytes per pair (about (1 + genuine_per_image + impostors_per_image)
pairs per image: 10,000 images → ≈ 10 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cemiray.data import pixels
from cemiray.diffusion.presets import PAIRINGS
from cemiray.diffusion.similarity_loss import (
    IdentityEncoder,
    as_identity_encoder,
    m_grid,
    sample_m_grid,
)

SELF, GENUINE, IMPOSTOR = 0, 1, 2


@dataclass
class PairBank:
    """A worker's training rows: `images` uint8 N×3×H×W, `labels` int64 N (identity),
    `embeddings` float32 N×D unit vectors E_id(image) and optionally `variation` float32 N×A
    (each image's normalised variation attributes, NaN where unknown), all on the CPU."""

    images: Tensor
    labels: Tensor
    embeddings: Tensor
    variation: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0] if self.images.ndim == 4 else -1
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"PairBank: images must be uint8 N×3×H×W, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if n < 1:
            raise ValueError("PairBank: no images")
        if self.labels.shape != (n,) or self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
            raise ValueError(
                f"PairBank: {n} images but labels {tuple(self.labels.shape)} and embeddings "
                f"{tuple(self.embeddings.shape)}"
            )
        self.labels = self.labels.long()
        self.embeddings = self.embeddings.float()
        if self.variation is not None:
            self.variation = torch.as_tensor(self.variation, dtype=torch.float32)
            if self.variation.ndim != 2 or self.variation.shape[0] != n:
                raise ValueError(f"PairBank: {n} images but variation "
                                 f"{tuple(self.variation.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        parts = [self.images, self.labels, self.embeddings]
        parts += [self.variation] if self.variation is not None else []
        return sum(t.numel() * t.element_size() for t in parts)

    def pixels(self, index: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Images `index` as float N×3×H×W in [−1, 1] (cemiray.data.pixels) on `device`."""
        return pixels.normalize(self.images[index].to(device))


def embed_images(
    identity_encoder: IdentityEncoder | object,
    images: Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Unit embeddings (float32 N×D, CPU) of uint8 N×3×H×W images, without gradient."""
    encode = as_identity_encoder(identity_encoder)
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = pixels.normalize(chunk.to(device))
            out.append(torch.nn.functional.normalize(encode(x).float(), dim=1).cpu())
    return torch.cat(out)


def build_pair_bank(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    identity_encoder: IdentityEncoder | object,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    variation: np.ndarray | Tensor | None = None,
) -> PairBank:
    """A bank from uint8 images (numpy N×H×W×3 or torch N×3×H×W), identity labels and optional
    per-image variation; the embeddings are computed here once with the frozen E_id."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"build_pair_bank: expected uint8 N×H×W×3 images, got {images.dtype} "
                f"{images.shape}"
            )
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"build_pair_bank: no images (shape {tuple(images.shape)})")
    embeddings = embed_images(identity_encoder, images, batch_size, device)
    if variation is not None:
        variation = torch.as_tensor(np.asarray(variation), dtype=torch.float32)
    return PairBank(images=images, labels=labels, embeddings=embeddings, variation=variation)


def snap_to_grid(values: Tensor, step: float = 0.04) -> Tensor:
    """Each value replaced by the nearest point of `m_grid(step)` (values outside [−1, 1] go to
    the ends), as float32 values taken from the grid itself."""
    grid = torch.as_tensor(m_grid(step), dtype=torch.float32)
    index = torch.round((values.double().clamp(-1.0, 1.0) + 1.0) / step).long()
    return grid[index.clamp(0, len(grid) - 1)]


@dataclass
class PairTable:
    """Candidate pairs of a bank: row indices of inquiry and target, snapped m and the kind
    (SELF, GENUINE, IMPOSTOR)."""

    inquiry: Tensor
    target: Tensor
    m: Tensor
    kind: Tensor

    def __len__(self) -> int:
        return self.inquiry.shape[0]


def candidate_pairs(
    bank: PairBank,
    genuine_per_image: int = 32,
    impostors_per_image: int = 16,
    m_step: float = 0.04,
    generator: torch.Generator | None = None,
) -> PairTable:
    """Every image paired with itself, with up to `genuine_per_image` other images of its
    identity (all of them when the identity has fewer) and with `impostors_per_image` random
    images of other identities; m = cos(E(x_q), E(x_t)) snapped to the grid."""
    n = len(bank)
    labels = bank.labels
    inquiry, target, kind = [torch.arange(n)], [torch.arange(n)], [torch.full((n,), SELF)]

    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    for group in torch.split(order, counts.tolist()):
        k = len(group)
        if k < 2:
            continue
        q = group.repeat_interleave(k - 1)
        shift = torch.arange(1, k).repeat(k)
        t = group[(torch.arange(k).repeat_interleave(k - 1) + shift) % k]
        if k - 1 > genuine_per_image:
            keep = torch.rand(k, k - 1, generator=generator).argsort(dim=1)[:, :genuine_per_image]
            keep = (keep + torch.arange(k)[:, None] * (k - 1)).flatten()
            q, t = q[keep], t[keep]
        inquiry.append(q)
        target.append(t)
        kind.append(torch.full((len(q),), GENUINE))

    if impostors_per_image > 0 and len(counts) > 1:
        q = torch.arange(n).repeat_interleave(impostors_per_image)
        t = torch.randint(0, n, (len(q),), generator=generator)
        clash = labels[t] == labels[q]
        for _ in range(64):
            if not clash.any():
                break
            t[clash] = torch.randint(0, n, (int(clash.sum()),), generator=generator)
            clash = labels[t] == labels[q]
        inquiry.append(q[~clash])
        target.append(t[~clash])
        kind.append(torch.full((int((~clash).sum()),), IMPOSTOR))

    inquiry_t, target_t = torch.cat(inquiry), torch.cat(target)
    cos = (bank.embeddings[inquiry_t] * bank.embeddings[target_t]).sum(dim=1)
    m = snap_to_grid(cos, m_step)
    m[torch.cat(kind) == SELF] = 1.0
    return PairTable(inquiry=inquiry_t, target=target_t, m=m, kind=torch.cat(kind))


@dataclass
class PairIndex:
    """A batch of examples: bank rows of the inquiry and target images, and m per example."""

    inquiry: Tensor
    target: Tensor
    m: Tensor


class PairSampler:
    """Draws training examples from a bank. `pairing="self"`: target = inquiry, m uniform on the
    grid (CemiFace). `pairing="identity"`: a fraction `self_fraction` of examples are self pairs
    (m = 1); the others come from genuine/impostor pairs whose m histogram is balanced over
    `m_range` in `num_bins` bins (pairs outside the range count in the end bins). A bin with
    fewer than `min_bin_pairs` pairs is drawn proportionally less often."""

    def __init__(
        self,
        bank: PairBank,
        pairing: str = "identity",
        m_step: float = 0.04,
        m_range: tuple[float, float] = (-0.2, 1.0),
        num_bins: int = 12,
        self_fraction: float = 0.25,
        genuine_per_image: int = 32,
        impostors_per_image: int = 16,
        min_bin_pairs: int = 64,
        seed: int = 0,
    ):
        if pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
        lo, hi = m_range
        if not -1.0 <= lo < hi <= 1.0:
            raise ValueError(f"m_range must satisfy -1 <= low < high <= 1, got {m_range}")
        if num_bins < 1 or min_bin_pairs < 1:
            raise ValueError("num_bins and min_bin_pairs must be >= 1")
        if not 0.0 <= self_fraction <= 1.0:
            raise ValueError(f"self_fraction must lie in [0, 1], got {self_fraction}")
        m_grid(m_step)
        self.bank, self.pairing, self.m_step = bank, pairing, m_step
        self.self_fraction = self_fraction if pairing == "identity" else 1.0
        self.table: PairTable | None = None
        self.bin_counts = torch.zeros(num_bins, dtype=torch.long)
        if pairing == "self":
            return
        table = candidate_pairs(
            bank, genuine_per_image, impostors_per_image, m_step,
            torch.Generator().manual_seed(seed),
        )
        others = table.kind != SELF
        table = PairTable(
            table.inquiry[others], table.target[others], table.m[others], table.kind[others]
        )
        bins = ((table.m - lo) / (hi - lo) * num_bins).floor().long().clamp(0, num_bins - 1)
        order = torch.argsort(bins, stable=True)
        self.table = PairTable(
            table.inquiry[order], table.target[order], table.m[order], table.kind[order]
        )
        self.bin_counts = torch.bincount(bins, minlength=num_bins)
        self.bin_offsets = torch.cumsum(self.bin_counts, 0) - self.bin_counts
        self.bin_weights = (self.bin_counts.float() / min_bin_pairs).clamp(max=1.0)
        if len(self.table) == 0:
            self.self_fraction = 1.0

    def sample(self, n: int, generator: torch.Generator | None = None) -> PairIndex:
        """`n` examples, reproducible for a seeded CPU `generator`."""
        rows = len(self.bank)
        inquiry = torch.randint(0, rows, (n,), generator=generator)
        if self.pairing == "self":
            m = sample_m_grid(n, self.m_step, generator)
            return PairIndex(inquiry=inquiry, target=inquiry.clone(), m=m)
        target, m = inquiry.clone(), torch.ones(n)
        is_pair = torch.rand(n, generator=generator) >= self.self_fraction
        k = int(is_pair.sum())
        if k:
            b = torch.multinomial(self.bin_weights, k, replacement=True, generator=generator)
            within = (torch.rand(k, generator=generator) * self.bin_counts[b]).long()
            row = self.bin_offsets[b] + within.clamp(max=self.bin_counts[b] - 1)
            inquiry[is_pair] = self.table.inquiry[row]
            target[is_pair] = self.table.target[row]
            m[is_pair] = self.table.m[row]
        return PairIndex(inquiry=inquiry, target=target, m=m)

    def batch(
        self, index: PairIndex, device: torch.device | str = "cpu"
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_t in [−1, 1], E(x_q), E(x_t), m) on `device` for `training_step`'s pair mode."""
        bank = self.bank
        return (
            bank.pixels(index.target, device),
            bank.embeddings[index.inquiry].to(device),
            bank.embeddings[index.target].to(device),
            index.m.to(device),
        )

    def variation(self, index: PairIndex, device: torch.device | str = "cpu") -> Tensor | None:
        """The target images' variation (what x_t shows), or None when the bank has none. With
        self pairs the target is the inquiry, so the paper's self-target recipe conditions on
        the inquiry's own variation."""
        if self.bank.variation is None:
            return None
        return self.bank.variation[index.target].to(device)
