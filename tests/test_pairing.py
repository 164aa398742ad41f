"""Pair-supervised conditioning: which (inquiry, target, m) examples the generator trains on, and
the generalised SimMat loss (s_t for identity keeping, s_q for the m-part)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY

from cemiray.data.toyfaces import ToyFacesWorld
from cemiray.diffusion import (
    SimilarityLoss,
    build_generator,
    build_train_scheduler,
    m_grid,
    training_step,
)
from cemiray.diffusion.pairing import (
    GENUINE,
    IMPOSTOR,
    SELF,
    PairBank,
    PairSampler,
    build_pair_bank,
    candidate_pairs,
    snap_to_grid,
)


def flatten_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=1)


def spread_bank(identities: int = 40, per_identity: int = 10, dim: int = 8) -> PairBank:
    """Embeddings whose genuine similarities range from ~0.2 to 1 (noise level varies per image)
    and whose impostor similarities spread around 0 (random centres in 8 dimensions)."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(identities, dim, generator=g), dim=1)
    labels = torch.arange(identities).repeat_interleave(per_identity)
    sigma = torch.rand(len(labels), 1, generator=g) * 1.5
    noise = torch.randn(len(labels), dim, generator=g) / 3
    emb = F.normalize(centres[labels] + sigma * noise, dim=1)
    images = torch.randint(0, 256, (len(labels), 3, 4, 4), dtype=torch.uint8, generator=g)
    return PairBank(images=images, labels=labels, embeddings=emb)


def test_snap_to_grid_takes_grid_values():
    grid = m_grid(0.04)
    snapped = snap_to_grid(torch.tensor([-1.3, -0.999, -0.021, 0.019, 0.5, 0.9999, 1.0, 7.0]))
    np.testing.assert_allclose(snapped.numpy(), [-1, -1, -0.04, 0.0, 0.52, 1, 1, 1], atol=1e-6)
    assert all(float(v) in grid.astype(np.float32) for v in snapped)


def test_candidate_pairs_kinds_and_self_pairs_have_m_one():
    world = ToyFacesWorld(seed=0, size=16)
    ids = [i for i in range(6) for _ in range(4)]
    images, _ = world.render_batch(ids, [s for _ in range(6) for s in range(4)])
    bank = build_pair_bank(images, ids, flatten_normalize)
    assert bank.images.shape == (24, 3, 16, 16) and bank.images.dtype == torch.uint8
    torch.testing.assert_close(bank.pixels(torch.tensor([0])),
                               torch.from_numpy(images[:1]).permute(0, 3, 1, 2) / 127.5 - 1)
    table = candidate_pairs(bank, genuine_per_image=2, impostors_per_image=3,
                            generator=torch.Generator().manual_seed(0))
    labels = bank.labels
    is_self, genuine, impostor = (table.kind == k for k in (SELF, GENUINE, IMPOSTOR))
    assert int(is_self.sum()) == 24 and int(genuine.sum()) == 24 * 2 and int(impostor.sum()) == 72
    assert torch.equal(table.inquiry[is_self], table.target[is_self])
    assert (table.m[is_self] == 1.0).all()
    assert (labels[table.inquiry[genuine]] == labels[table.target[genuine]]).all()
    assert (table.inquiry[genuine] != table.target[genuine]).all()
    assert (labels[table.inquiry[impostor]] != labels[table.target[impostor]]).all()
    cos = (bank.embeddings[table.inquiry] * bank.embeddings[table.target]).sum(1)
    assert ((table.m - cos).abs() <= 0.02 + 1e-6).all(), "m is not the snapped similarity"
    every_genuine = candidate_pairs(bank, genuine_per_image=99, impostors_per_image=0)
    assert len(every_genuine) == 24 + 24 * 3


def test_identity_sampler_balances_m_over_the_range():
    bank = spread_bank()
    sampler = PairSampler(bank, "identity", m_range=(-0.2, 1.0), num_bins=12, self_fraction=0.25,
                          min_bin_pairs=16, seed=0)
    assert (sampler.bin_counts >= 16).all(), sampler.bin_counts
    idx = sampler.sample(12_000, torch.Generator().manual_seed(1))
    grid = set(m_grid(0.04).astype(np.float32).tolist())
    assert set(idx.m.tolist()) <= grid
    is_self = idx.inquiry == idx.target
    assert abs(float(is_self.float().mean()) - 0.25) < 0.02
    assert (idx.m[is_self] == 1.0).all()
    others = idx.m[~is_self]
    counts = torch.histc(others.clamp(-0.2, 0.9999), bins=12, min=-0.2, max=1.0)
    share = counts / counts.sum()
    assert share.min() > 0.5 / 12 and share.max() < 1.6 / 12, share
    cos = (bank.embeddings[idx.inquiry] * bank.embeddings[idx.target]).sum(1)
    assert ((idx.m - cos).abs() <= 0.02 + 1e-6).all()
    assert float(others.min()) <= -0.2 and float(others.max()) >= 0.9

    again = PairSampler(bank, "identity", min_bin_pairs=16, seed=0).sample(
        12_000, torch.Generator().manual_seed(1))
    assert torch.equal(idx.inquiry, again.inquiry) and torch.equal(idx.m, again.m)
    other = sampler.sample(12_000, torch.Generator().manual_seed(2))
    assert not torch.equal(idx.inquiry, other.inquiry)

    x_t, e_q, e_t, m = sampler.batch(sampler.sample(5, torch.Generator().manual_seed(3)))
    assert x_t.shape == (5, 3, 4, 4) and -1 <= float(x_t.min()) and float(x_t.max()) <= 1
    assert e_q.shape == e_t.shape == (5, 8) and m.shape == (5,)


def test_self_sampler_is_the_paper():
    bank = spread_bank()
    idx = PairSampler(bank, "self").sample(5_100, torch.Generator().manual_seed(0))
    assert torch.equal(idx.inquiry, idx.target)
    index = np.rint((idx.m.numpy().astype(np.float64) + 1) / 0.04).astype(int)
    counts = np.bincount(index, minlength=51)
    assert len(counts) == 51 and counts.min() > 40
    with pytest.raises(ValueError, match="pairing"):
        PairSampler(bank, "labels")
    with pytest.raises(ValueError, match="m_range"):
        PairSampler(bank, "identity", m_range=(0.5, 0.2))


def test_generalised_simmat_by_hand():
    alphas_cumprod = torch.tensor([0.9, 0.7, 0.5, 0.3])
    g = torch.Generator().manual_seed(0)
    x0, x_q = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    noise, eps_hat = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 2, 2, 2, generator=g)
    t, m = torch.tensor([0, 2, 3]), torch.tensor([0.2, -0.4, 0.6])
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    loss = SimilarityLoss(flatten_normalize, alphas_cumprod, lambda_sim=0.5)
    out = loss(eps_hat, noise, x0, x_t, t, m, target_embeddings=flatten_normalize(x0),
               inquiry_embeddings=flatten_normalize(x_q))

    x0_hat = ((x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()).clamp(-1, 1)
    e_hat = flatten_normalize(x0_hat).numpy()
    s_t = (e_hat * flatten_normalize(x0).numpy()).sum(1)
    s_q = (e_hat * flatten_normalize(x_q).numpy()).sum(1)
    gamma = t.numpy() / 4
    simmat = ((1 - gamma) * (1 - s_t) ** 2 + gamma * (m.numpy() - s_q) ** 2).mean()
    mse = ((eps_hat - noise) ** 2).mean().item()
    np.testing.assert_allclose(out["simmat"].item(), simmat, rtol=1e-5)
    np.testing.assert_allclose(out["total"].item(), mse + 0.5 * simmat, rtol=1e-5)
    np.testing.assert_allclose(out["s_mean"].item(), s_t.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["s_inquiry_mean"].item(), s_q.mean(), rtol=1e-5)
    paper = loss(eps_hat, noise, x0, x_t, t, m, target_embeddings=flatten_normalize(x0))
    assert abs(paper["simmat"].item() - out["simmat"].item()) > 1e-3
    with pytest.raises(ValueError, match="inquiry_embeddings"):
        loss(eps_hat, noise, x0, x_t, t, m, inquiry_embeddings=torch.zeros(3, 5))


def test_pair_step_with_target_equal_to_inquiry_is_the_paper_step():
    torch.manual_seed(0)
    unet, encoder = build_generator("tiny", **TINY)
    scheduler = build_train_scheduler("tiny", **TINY)

    def embed(x):
        return F.normalize(x.flatten(1)[:, :32], dim=1)

    loss = SimilarityLoss.from_scheduler(embed, scheduler, lambda_sim=0.05)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    ids, m = embed(x), torch.tensor([1.0, 0.4, 0.0, -0.2])
    paper = training_step(unet, encoder, scheduler, x, ids, m, loss,
                          generator=torch.Generator().manual_seed(5))
    pair = training_step(unet, encoder, scheduler, x, ids, m, loss,
                         generator=torch.Generator().manual_seed(5), target_embeddings=ids)
    for key in ("total", "mse", "simmat", "s_mean"):
        assert torch.equal(paper[key], pair[key]), key
    assert torch.equal(pair["s_inquiry_mean"], pair["s_mean"])
    other = training_step(unet, encoder, scheduler, x, ids.roll(1, 0), m, loss,
                          generator=torch.Generator().manual_seed(5), target_embeddings=ids)
    assert not torch.equal(other["simmat"], paper["simmat"])
