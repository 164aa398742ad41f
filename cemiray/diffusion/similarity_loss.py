"""CemiFace's training objective (MSE + the SimMat similarity term), kept apart from the networks.

    L = L_MSE(ε̂, ε) + λ·L_SimMat
    x̂0 = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t, clipped to [−1, 1]
    s = cos(E_id(x), E_id(x̂0))
    L_SimMat = (1 − γ_t)(1 − s)² + γ_t(m − s)²,   γ_t = t / T

At small t the prediction must keep the identity (s → 1); at large t, where x̂0 is mostly noise,
it is pulled towards the requested similarity m. E_id is a frozen recogniser: gradients pass
through it to x̂0 (hence to the UNet), never into its own weights.

Pair-supervised training (cemiray.diffusion.pairing) denoises a target image x_t that differs
from the inquiry image x_q; the identity-keeping part then uses s_t = cos(E_id(x_t), E_id(x̂0))
and the m-part s_q = cos(E_id(x_q), E_id(x̂0)):

    L_SimMat = (1 − γ_t)(1 − s_t)² + γ_t(m − s_q)²

which is the paper's formula when x_t = x_q.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cemiray.diffusion.presets import PREDICTION_TYPES

IdentityEncoder = Callable[[Tensor], Tensor]
"""Maps images in [−1, 1] (N×3×H×W) to unit embeddings (N×D), differentiably."""


def m_grid(step: float = 0.04) -> np.ndarray:
    """The discrete similarity grid on [−1, 1] with spacing `step`, both endpoints included.

    CemiFace's "step 0.04, 50 values" counts the 50 intervals of [−1, 1]; we take the 51 points
    `linspace(−1, 1, round(2/step) + 1)` so that −1, 0 (the value used for generation) and 1 are
    all on the grid and the grid is symmetric about 0. `2/step` must be (close to) an integer.
    """
    if not (math.isfinite(step) and 0 < step <= 2):
        raise ValueError(f"m grid step must lie in (0, 2], got {step}")
    intervals = round(2.0 / step)
    if abs(intervals * step - 2.0) > 1e-6:
        raise ValueError(f"m grid step {step} does not divide [−1, 1] into equal parts")
    return np.linspace(-1.0, 1.0, intervals + 1)


def sample_m_grid(
    n: int,
    step: float = 0.04,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """`n` values of m drawn uniformly from `m_grid(step)` (float32, on `device`)."""
    if n < 0:
        raise ValueError(f"sample_m_grid: n must be >= 0, got {n}")
    grid = torch.as_tensor(m_grid(step), dtype=torch.float32)
    gen_device = generator.device if generator is not None else "cpu"
    index = torch.randint(0, len(grid), (n,), generator=generator, device=gen_device)
    return grid[index.cpu()].to(device if device is not None else "cpu")


def as_identity_encoder(recognizer: object) -> IdentityEncoder:
    """The E_id callable of `recognizer`: its `embed_tensor` method when it has one (as
    cemiray.models.recognizer.Recognizer does), else the object itself if callable."""
    encode = getattr(recognizer, "embed_tensor", recognizer)
    if not callable(encode):
        raise TypeError(f"{type(recognizer).__name__} is not an identity encoder (not callable)")
    return encode


def freeze_identity_encoder(identity_encoder: IdentityEncoder) -> None:
    """Put E_id (an nn.Module, or a bound method of one) in eval mode without gradients."""
    module = identity_encoder if isinstance(identity_encoder, nn.Module) else None
    owner = getattr(identity_encoder, "__self__", None)
    if module is None and isinstance(owner, nn.Module):
        module = owner
    if module is not None:
        module.eval()
        module.requires_grad_(False)


class SimilarityLoss:
    """`L_MSE + λ·L_SimMat` for one batch; returns the terms separately for logging.

    Options beyond the paper (defaults reproduce it):
    - `simmat_min_t` / `simmat_max_t`: L_SimMat is applied only to samples with t in this closed
      window (others contribute 0), e.g. to skip steps where x̂0 carries no usable identity.
    - `simmat_warmup_steps`: λ ramps linearly from 0 to `lambda_sim` over that many steps.
    - `prediction_type`: "epsilon" (L_MSE on ε) or "v_prediction" (L_MSE on v, the network's own
      target; ε̂ and x̂0 are derived from v̂).
    """

    def __init__(
        self,
        identity_encoder: IdentityEncoder,
        alphas_cumprod: Tensor,
        lambda_sim: float = 0.05,
        prediction_type: str = "epsilon",
        simmat_min_t: int = 0,
        simmat_max_t: int | None = None,
        simmat_warmup_steps: int = 0,
    ):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"SimilarityLoss: prediction_type must be one of {PREDICTION_TYPES}, "
                f"got {prediction_type!r}"
            )
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32).flatten()
        self.num_train_timesteps = len(alphas_cumprod)
        if self.num_train_timesteps < 1:
            raise ValueError("SimilarityLoss: alphas_cumprod is empty")
        max_t = self.num_train_timesteps - 1 if simmat_max_t is None else simmat_max_t
        if not 0 <= simmat_min_t <= max_t <= self.num_train_timesteps - 1:
            raise ValueError(
                f"SimilarityLoss: need 0 <= simmat_min_t <= simmat_max_t <= "
                f"{self.num_train_timesteps - 1}, got {simmat_min_t}, {max_t}"
            )
        if lambda_sim < 0 or simmat_warmup_steps < 0:
            raise ValueError("SimilarityLoss: lambda_sim and simmat_warmup_steps must be >= 0")
        identity_encoder = as_identity_encoder(identity_encoder)
        freeze_identity_encoder(identity_encoder)
        self.identity_encoder = identity_encoder
        self.alphas_cumprod = alphas_cumprod
        self.lambda_sim = float(lambda_sim)
        self.prediction_type = prediction_type
        self.simmat_min_t = int(simmat_min_t)
        self.simmat_max_t = int(max_t)
        self.simmat_warmup_steps = int(simmat_warmup_steps)
        self.variation_guide = None  # cemiray.diffusion.variation_guide.VariationGuide

    @classmethod
    def from_scheduler(cls, identity_encoder: IdentityEncoder, scheduler: Any, **kwargs: Any):
        """Take ᾱ and the prediction type from a diffusers scheduler (DDPMScheduler & co.)."""
        kwargs.setdefault("prediction_type", scheduler.config.prediction_type)
        return cls(identity_encoder, scheduler.alphas_cumprod, **kwargs)

    def lambda_at(self, step: int | None) -> float:
        """λ after the warm-up ramp; `step` (optimizer steps so far) is needed with warm-up."""
        if self.simmat_warmup_steps == 0:
            return self.lambda_sim
        if step is None:
            raise ValueError("SimilarityLoss: simmat_warmup_steps > 0 needs the training step")
        return self.lambda_sim * min(1.0, max(0, step) / self.simmat_warmup_steps)

    def predicted_x0_and_eps(
        self, model_output: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(x̂0 clipped to [−1, 1], ε̂) from the network output."""
        abar = self.alphas_cumprod.to(x_t.device)[t].to(x_t.dtype).view(-1, 1, 1, 1)
        sqrt_a, sqrt_1ma = abar.sqrt(), (1 - abar).sqrt()
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (x_t - sqrt_1ma * eps) / sqrt_a
        else:
            eps = sqrt_1ma * x_t + sqrt_a * model_output
            x0 = sqrt_a * x_t - sqrt_1ma * model_output
        return x0.clamp(-1.0, 1.0), eps

    def __call__(
        self,
        model_output: Tensor,
        noise: Tensor,
        x0: Tensor,
        x_t: Tensor,
        t: Tensor,
        m: Tensor,
        target_embeddings: Tensor | None = None,
        step: int | None = None,
        inquiry_embeddings: Tensor | None = None,
        variation: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms for a batch. `t` holds integer timesteps in [0, T); `m` the requested
        similarities; `target_embeddings` = E_id(x0) if already computed (else computed here,
        without gradient); `inquiry_embeddings` = E_id(x_q) when the target x0 is not the inquiry
        image (the m-part is then measured against it). Returns total, mse, simmat, s_mean
        (mean s_t), lambda_sim, and s_inquiry_mean (mean s_q) when `inquiry_embeddings` is given;
        only total has grad. With a `variation_guide` and the batch's (dropped) `variation`, its
        weighted attribute term joins the total (logged as "variation")."""
        n = x0.shape[0]
        if model_output.shape != x0.shape or noise.shape != x0.shape or x_t.shape != x0.shape:
            raise ValueError(
                "SimilarityLoss: model_output, noise, x0, x_t must share one shape, got "
                f"{tuple(model_output.shape)}, {tuple(noise.shape)}, {tuple(x0.shape)}, "
                f"{tuple(x_t.shape)}"
            )
        if t.shape != (n,) or m.shape != (n,):
            raise ValueError(
                f"SimilarityLoss: t and m must have shape ({n},), got {tuple(t.shape)}, "
                f"{tuple(m.shape)}"
            )
        t = t.long()
        if self.prediction_type == "epsilon":
            target = noise
        else:
            abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
            target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
        mse = F.mse_loss(model_output.float(), target.float())

        x0_hat, _ = self.predicted_x0_and_eps(model_output, x_t, t)
        if target_embeddings is None:
            with torch.no_grad():
                target_embeddings = self.identity_encoder(x0)
        lam = self.lambda_at(step)
        # With λ = 0 the term is only logged: no graph through E_id, no backward cost.
        with torch.set_grad_enabled(torch.is_grad_enabled() and lam > 0):
            predicted_embeddings = self.identity_encoder(x0_hat)
        s = F.cosine_similarity(predicted_embeddings.float(), target_embeddings.float(), dim=1)
        s_q = s
        if inquiry_embeddings is not None:
            if inquiry_embeddings.shape != target_embeddings.shape:
                raise ValueError(
                    "SimilarityLoss: inquiry_embeddings must have the shape of the target "
                    f"embeddings {tuple(target_embeddings.shape)}, got "
                    f"{tuple(inquiry_embeddings.shape)}"
                )
            s_q = F.cosine_similarity(
                predicted_embeddings.float(), inquiry_embeddings.to(s.device).float(), dim=1
            )

        gamma = t.float() / self.num_train_timesteps
        m = m.to(s.device, torch.float32)
        per_sample = (1 - gamma) * (1 - s) ** 2 + gamma * (m - s_q) ** 2
        window = (t >= self.simmat_min_t) & (t <= self.simmat_max_t)
        simmat = (per_sample * window.to(per_sample.dtype)).mean()

        terms = {
            "total": mse + lam * simmat if lam > 0 else mse,
            "mse": mse.detach(),
            "simmat": simmat.detach(),
            "s_mean": s.detach().mean(),
            "lambda_sim": torch.tensor(lam),
        }
        if inquiry_embeddings is not None:
            terms["s_inquiry_mean"] = s_q.detach().mean()
        guide = self.variation_guide
        if guide is not None and variation is not None and guide.weight > 0:
            l_var = guide(x0_hat, variation, t)
            terms["total"] = terms["total"] + guide.weight * l_var
            terms["variation"] = l_var.detach()
        return terms


def training_step(
    unet: nn.Module,
    encoder: nn.Module,
    scheduler: Any,
    batch_images: Tensor,
    id_embeddings: Tensor,
    m: Tensor,
    loss_fn: SimilarityLoss,
    generator: torch.Generator | None = None,
    variation: Tensor | None = None,
    step: int | None = None,
    target_embeddings: Tensor | None = None,
) -> dict[str, Tensor]:
    """One forward pass of CemiFace training; returns `loss_fn`'s dict (call backward on
    "total"). Paper mode (`target_embeddings` None): `id_embeddings` must be E_id(batch_images),
    the target image is the inquiry image itself, so C_id doubles as the reference embedding of
    s. Pair mode: `batch_images` are the targets x_t, `target_embeddings` = E_id(x_t) and
    `id_embeddings` = E_id(x_q) of the inquiry images (the condition and the m-part's reference).
    t ~ U{0..T−1}, ε ~ N(0, I), both drawn from `generator` (on its device, then moved to the
    images' device)."""
    n = batch_images.shape[0]
    T = scheduler.config.num_train_timesteps
    if T != loss_fn.num_train_timesteps:
        raise ValueError(
            f"training_step: scheduler has T={T} but the loss was built for "
            f"T={loss_fn.num_train_timesteps}"
        )
    device = batch_images.device
    gen_device = generator.device if generator is not None else device
    t = torch.randint(0, T, (n,), generator=generator, device=gen_device).to(device)
    noise = torch.randn(batch_images.shape, generator=generator, device=gen_device).to(
        device, batch_images.dtype
    )
    x_t = scheduler.add_noise(batch_images, noise, t)
    if variation is not None:
        variation = encoder.drop_variation(variation, generator)  # one dropout for both uses
    condition = encoder(id_embeddings, m, variation=variation, generator=generator,
                        drop_variation=False)
    prediction = unet(
        x_t, t, encoder_hidden_states=condition.tokens, class_labels=condition.pooled
    ).sample
    if target_embeddings is None:
        return loss_fn(
            prediction, noise, batch_images, x_t, t, m, target_embeddings=id_embeddings, step=step,
            variation=variation,
        )
    return loss_fn(
        prediction,
        noise,
        batch_images,
        x_t,
        t,
        m,
        target_embeddings=target_embeddings,
        step=step,
        inquiry_embeddings=id_embeddings,
        variation=variation,
    )
