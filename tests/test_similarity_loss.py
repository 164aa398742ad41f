"""CemiFace's L_MSE + λ·L_SimMat term by term against a hand computation; the training step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TINY
from torch import nn

from cemiray.diffusion import (
    SimilarityLoss,
    build_generator,
    build_train_scheduler,
    m_grid,
    sample_m_grid,
    training_step,
)


class TinyRecognizer(nn.Module):
    """A stand-in E_id: conv + batch norm + linear, unit-norm output."""

    def __init__(self, dim: int = 32, size: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * (size // 2) ** 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc(F.relu(self.norm(self.conv(x))).flatten(1)), dim=1)


def flatten_normalize(x: torch.Tensor) -> torch.Tensor:
    """A parameter-free E_id whose cosine is easy to compute by hand."""
    return F.normalize(x.flatten(1), dim=1)


def test_m_grid_values_count_endpoints():
    grid = m_grid(0.04)
    assert len(grid) == 51
    assert grid[0] == -1.0 and grid[-1] == 1.0
    assert 0.0 in grid
    np.testing.assert_allclose(np.diff(grid), 0.04, atol=1e-12)
    assert len(m_grid(0.02)) == 101 and len(m_grid(0.5)) == 5
    for bad in (0.03, 0.0, -0.04, 3.0, math.nan):
        with pytest.raises(ValueError):
            m_grid(bad)


def test_sample_m_grid_is_uniform_on_the_grid_and_seeded():
    grid = m_grid(0.04)
    draws = sample_m_grid(51 * 400, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.float32 and draws.shape == (51 * 400,)
    index = np.rint((draws.numpy().astype(np.float64) + 1.0) / 0.04).astype(int)
    np.testing.assert_allclose(draws.numpy(), grid[index], atol=1e-6)
    counts = np.bincount(index, minlength=51)
    assert len(counts) == 51 and counts.min() > 0
    chi2 = float(((counts - 400.0) ** 2 / 400.0).sum())
    assert chi2 < 100.0, chi2  # 50 degrees of freedom: p ≈ 5e-5 at 100
    again = sample_m_grid(51 * 400, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_loss_term_by_term_against_hand_computation():
    alphas_cumprod = torch.tensor([0.9, 0.7, 0.5, 0.3])
    T = 4
    loss = SimilarityLoss(flatten_normalize, alphas_cumprod, lambda_sim=0.05)
    x0 = torch.tensor(
        [[[[0.5, -0.2]], [[0.1, 0.3]], [[-0.4, 0.2]]], [[[0.2, 0.6]], [[-0.3, 0.1]], [[0.4, -0.5]]]]
    )  # 2×3×1×2
    noise = torch.tensor(
        [[[[0.3, -1.0]], [[0.5, 0.2]], [[-0.7, 0.1]]], [[[1.2, -0.4]], [[0.0, 0.9]], [[-0.2, 0.3]]]]
    )
    eps_hat = noise + 0.25 * torch.arange(12.0).view(2, 3, 1, 2) / 12
    t = torch.tensor([0, T - 1])
    x_t = torch.empty_like(x0)
    x_t[0] = x0[0] * math.sqrt(0.9) + noise[0] * math.sqrt(0.1)
    x_t[1] = torch.tensor([[[2.5, 0.3]], [[-0.1, 0.2]], [[0.6, -2.4]]])  # x̂0 leaves [-1, 1]
    m = torch.tensor([0.8, -0.2])
    out = loss(eps_hat, noise, x0, x_t, t, m)

    a = np.array([0.9, 0.3])
    xt, eh, x0n = (
        x_t.numpy().reshape(2, -1),
        eps_hat.numpy().reshape(2, -1),
        x0.numpy().reshape(2, -1),
    )
    raw = (xt - np.sqrt(1 - a)[:, None] * eh) / np.sqrt(a)[:, None]
    assert raw[1].max() > 1.0 and raw[1].min() < -1.0  # the clipping case really clips
    x0_hat = np.clip(raw, -1.0, 1.0)
    s = (x0n * x0_hat).sum(1) / (np.linalg.norm(x0n, axis=1) * np.linalg.norm(x0_hat, axis=1))
    gamma = np.array([0.0, 3 / 4])
    per_sample = (1 - gamma) * (1 - s) ** 2 + gamma * (m.numpy() - s) ** 2
    mse = ((eh - noise.numpy().reshape(2, -1)) ** 2).mean()

    clipped, _ = loss.predicted_x0_and_eps(eps_hat, x_t, t)
    np.testing.assert_allclose(clipped.numpy().reshape(2, -1), x0_hat, atol=1e-6)
    np.testing.assert_allclose(out["mse"].item(), mse, rtol=1e-5)
    np.testing.assert_allclose(out["simmat"].item(), per_sample.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["s_mean"].item(), s.mean(), rtol=1e-5)
    np.testing.assert_allclose(out["total"].item(), mse + 0.05 * per_sample.mean(), rtol=1e-5)
    assert out["total"].requires_grad is False  # no parameter in the graph here
    # γ_0 = 0: the t = 0 sample ignores m; γ_{T-1} = (T-1)/T weighs m for the other.
    other_m = loss(eps_hat, noise, x0, x_t, t, torch.tensor([-0.9, -0.2]))
    np.testing.assert_allclose(other_m["simmat"].item(), out["simmat"].item(), rtol=1e-6)
    moved_m = loss(eps_hat, noise, x0, x_t, t, torch.tensor([0.8, 0.7]))
    expected = ((1 - s[1]) ** 2 / 4 + 3 / 4 * (0.7 - s[1]) ** 2 + per_sample[0]) / 2
    np.testing.assert_allclose(moved_m["simmat"].item(), expected, rtol=1e-5)


def test_v_prediction_derives_eps_and_x0():
    alphas_cumprod = torch.linspace(0.99, 0.05, 10)
    loss = SimilarityLoss(flatten_normalize, alphas_cumprod, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 3, 4, 4, generator=g) * 1.8 - 0.9
    noise = torch.randn(3, 3, 4, 4, generator=g)
    t = torch.tensor([0, 4, 9])
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    x0_hat, eps_hat = loss.predicted_x0_and_eps(v, x_t, t)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=1e-5, rtol=0)
    out = loss(v, noise, x0, x_t, t, torch.zeros(3))
    assert out["mse"].item() < 1e-10
    np.testing.assert_allclose(out["s_mean"].item(), 1.0, atol=1e-5)


def test_window_and_warmup():
    alphas_cumprod = torch.linspace(0.99, 0.05, 10)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 4, 4, generator=g)
    eps_hat = torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([1, 8])
    x_t = torch.randn(2, 3, 4, 4, generator=g)
    m = torch.tensor([0.0, 0.0])
    full = SimilarityLoss(flatten_normalize, alphas_cumprod)(eps_hat, noise, x0, x_t, t, m)
    windowed = SimilarityLoss(flatten_normalize, alphas_cumprod, simmat_min_t=5)
    part = windowed(eps_hat, noise, x0, x_t, t, m)
    only_late = SimilarityLoss(flatten_normalize, alphas_cumprod)(
        eps_hat[1:], noise[1:], x0[1:], x_t[1:], t[1:], m[1:]
    )
    np.testing.assert_allclose(part["simmat"].item(), only_late["simmat"].item() / 2, rtol=1e-5)
    assert full["simmat"].item() > part["simmat"].item()

    ramp = SimilarityLoss(
        flatten_normalize, alphas_cumprod, lambda_sim=0.1, simmat_warmup_steps=100
    )
    assert ramp.lambda_at(0) == 0.0 and ramp.lambda_at(50) == pytest.approx(0.05)
    assert ramp.lambda_at(1000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="training step"):
        ramp(eps_hat, noise, x0, x_t, t, m)
    warm = ramp(eps_hat, noise, x0, x_t, t, m, step=0)
    np.testing.assert_allclose(warm["total"].item(), warm["mse"].item(), rtol=1e-6)

    with pytest.raises(ValueError):
        SimilarityLoss(flatten_normalize, alphas_cumprod, simmat_min_t=6, simmat_max_t=3)
    with pytest.raises(ValueError):
        SimilarityLoss(flatten_normalize, alphas_cumprod, prediction_type="sample")


def test_training_step_updates_unet_never_the_recognizer():
    torch.manual_seed(0)
    unet, encoder = build_generator("tiny", **TINY)
    scheduler = build_train_scheduler("tiny")
    recognizer = TinyRecognizer()
    recognizer.train()
    loss_fn = SimilarityLoss.from_scheduler(recognizer, scheduler, lambda_sim=0.05)
    assert not recognizer.training
    assert all(not p.requires_grad for p in recognizer.parameters())
    stats_before = recognizer.norm.running_mean.clone()
    params_before = [p.clone() for p in recognizer.parameters()]

    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        ids = recognizer(images)
    m = sample_m_grid(4, generator=g)
    out = training_step(unet, encoder, scheduler, images, ids, m, loss_fn, generator=g)
    assert set(out) == {"total", "mse", "simmat", "s_mean", "lambda_sim"}
    assert all(torch.isfinite(v) for v in out.values())
    out["total"].backward()

    assert all(p.grad is None for p in recognizer.parameters())
    assert torch.equal(recognizer.norm.running_mean, stats_before)
    assert all(torch.equal(a, b) for a, b in zip(params_before, recognizer.parameters()))
    unet_grads = [p.grad for p in unet.parameters() if p.grad is not None]
    assert unet_grads and sum(float(gr.abs().sum()) for gr in unet_grads) > 0
    assert encoder.to_tokens.weight.grad is not None

    # The SimMat term reaches the UNet through E_id: with λ = 0 the gradient differs.
    grad_with = unet.conv_out.weight.grad.clone()
    unet.zero_grad()
    encoder.zero_grad()
    plain = SimilarityLoss.from_scheduler(recognizer, scheduler, lambda_sim=0.0)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    m = sample_m_grid(4, generator=g)
    training_step(unet, encoder, scheduler, images, ids, m, plain, generator=g)["total"].backward()
    assert not torch.allclose(unet.conv_out.weight.grad, grad_with)

    wrong_T = SimilarityLoss(recognizer, torch.linspace(0.99, 0.1, 10))
    with pytest.raises(ValueError, match="T=1000"):
        training_step(unet, encoder, scheduler, images, ids, m, wrong_T, generator=g)
