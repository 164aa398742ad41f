"""The diffusion trainers' modules (train part): what train-gen and train-uncond hand DeepSpeed.

Each forward returns the training loss, so the DeepSpeed engine wraps exactly the weights being
trained. Imported by the worker loops only (torch and diffusers at module level): the job
configs stay cheap to import."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cemiray.diffusion.similarity_loss import SimilarityLoss, training_step
from cemiray.diffusion.unconditional import denoising_loss


class GeneratorTrainModule(nn.Module):
    """train-gen: UNet + condition encoder are its parameters; the noise schedule and the loss
    (which holds the frozen E_id) are plain attributes, outside the engine."""

    def __init__(self, unet: nn.Module, condition_encoder: nn.Module, noise_scheduler: Any,
                 loss_fn: SimilarityLoss | None) -> None:
        super().__init__()
        self.unet, self.condition_encoder = unet, condition_encoder
        self.noise_scheduler, self.loss_fn = noise_scheduler, loss_fn

    def forward(self, x_t: torch.Tensor, inquiry_emb: torch.Tensor, target_emb: torch.Tensor,
                m: torch.Tensor, generator: torch.Generator | None = None,
                step: int | None = None,
                variation: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return training_step(self.unet, self.condition_encoder, self.noise_scheduler, x_t,
                             inquiry_emb, m, self.loss_fn, generator=generator, step=step,
                             target_embeddings=target_emb, variation=variation)


class UncondTrainModule(nn.Module):
    """train-uncond: the UNet; forward(x0, generator) returns the denoising loss."""

    def __init__(self, unet: nn.Module, noise_scheduler: Any) -> None:
        super().__init__()
        self.unet, self.noise_scheduler = unet, noise_scheduler

    def forward(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return denoising_loss(self.unet, self.noise_scheduler, x0, generator)
