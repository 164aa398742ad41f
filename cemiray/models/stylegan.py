"""The StyleGAN generator and discriminator (models): presets, mapping, synthesis, sampling.

GANDiffFace's first stage: a GAN makes new identities in one forward pass (a DDPM needs tens).
A compact StyleGAN2 (docs: ../shared/docs/METHOD.md §7):

* mapping network: z → 2nd-moment normalised → `mapping_layers` equalised FC layers (learning
  rate ×0.01) → w; the average w̄ is tracked during training (`w_avg`, decay `w_avg_beta`) and
  truncation moves w towards it: w = w̄ + ψ (w − w̄), ψ ∈ [0, 1], 1 = none.
* synthesis network: a learned constant at `base_size`, then one block per doubling (bilinear
  ×2, two modulated/demodulated 3×3 convolutions, per-pixel noise), each adding its RGB output
  to the upsampled RGB so far (skip generator).
* discriminator: RGB → 1×1 conv, residual blocks halving the resolution, minibatch-stddev, a
  3×3 conv and two FC layers at `base_size` → one logit.

Sizes need not be powers of two: the synthesis starts at `base_size` and doubles, so the 112 px
preset starts from a 7×7 constant (7 → 14 → 28 → 56 → 112), nothing is resized. Sampling draws
z for seed s from `torch.Generator().manual_seed(s)`, so an image is a function of its seed and
ψ, not of its batch. Saving and loading folders: cemiray.models.stylegan_io."""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cemiray.data import pixels
from cemiray.models.noise_seeds import check_noise_seeds
from cemiray.models.stylegan_layers import (
    DiscriminatorBlock,
    EqualConv2d,
    EqualLinear,
    MinibatchStd,
    SynthesisBlock,
)


@dataclass(frozen=True)
class StyleGANPreset:
    """Every number that fixes both networks. `channels[i]` is the width at resolution
    base_size·2^i (the generator's and, mirrored, the discriminator's)."""

    name: str
    image_size: int
    base_size: int = 4
    channels: tuple[int, ...] = (128, 128, 64, 32)
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 2
    mapping_lr_mult: float = 0.01
    w_avg_beta: float = 0.995
    mbstd_group: int = 4

    def __post_init__(self) -> None:
        where = f"StyleGAN preset {self.name!r}"
        levels = len(self.channels)
        if levels < 1 or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"{where}: channels {self.channels} must be positive widths")
        if self.base_size < 2 or self.image_size != self.base_size * 2 ** (levels - 1):
            raise ValueError(f"{where}: image_size {self.image_size} must be base_size "
                             f"{self.base_size} doubled {levels - 1} times (one per channels "
                             f"entry after the first), i.e. {self.base_size * 2 ** (levels - 1)}")
        for key in ("z_dim", "w_dim", "mapping_layers", "mbstd_group"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{where}: {key} must be >= 1")
        if not 0 < self.mapping_lr_mult <= 1 or not 0 <= self.w_avg_beta < 1:
            raise ValueError(f"{where}: mapping_lr_mult in (0, 1], w_avg_beta in [0, 1)")

    @property
    def resolutions(self) -> list[int]:
        return [self.base_size * 2**i for i in range(len(self.channels))]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["channels"] = list(self.channels)
        return out


STYLEGAN_PRESETS: dict[str, StyleGANPreset] = {
    # 32 px on a CPU: 4 → 8 → 16 → 32, widths 128 → 32, z = w = 128, 2 mapping layers
    # (StyleGAN3's and StyleGAN2-ADA's low-resolution setting).
    "compact": StyleGANPreset(name="compact", image_size=32),
    # 112 px (the FR crop) for GPUs: a 7×7 constant doubled four times, StyleGAN2's 512-d w and
    # 8 mapping layers.
    "gpu112": StyleGANPreset(name="gpu112", image_size=112, base_size=7,
                             channels=(512, 512, 256, 128, 64), z_dim=512, w_dim=512,
                             mapping_layers=8),
}


def resolve_stylegan_preset(preset: str | StyleGANPreset | dict, **overrides: Any
                            ) -> StyleGANPreset:
    """A named preset (or a given one, or the dict a folder's config.json holds) with some
    fields replaced; unknown names and fields raise."""
    names = {f.name for f in dataclasses.fields(StyleGANPreset)}
    if isinstance(preset, dict):
        unknown = sorted(set(preset) - names)
        if unknown:
            raise ValueError(f"unknown StyleGAN preset field(s) {unknown}; known: {sorted(names)}")
        preset = StyleGANPreset(**{**preset, "channels": tuple(preset.get("channels", ()))})
    if isinstance(preset, StyleGANPreset):
        base = preset
    elif preset in STYLEGAN_PRESETS:
        base = STYLEGAN_PRESETS[preset]
    else:
        raise ValueError(f"unknown StyleGAN preset {preset!r}; known: {sorted(STYLEGAN_PRESETS)}")
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown StyleGAN preset field(s) {unknown}; known: {sorted(names)}")
    if "channels" in overrides:
        overrides["channels"] = tuple(int(c) for c in overrides["channels"])
    return dataclasses.replace(base, **overrides)


class MappingNetwork(nn.Module):
    """z → w, with the running average w̄ that truncation pulls towards."""

    def __init__(self, p: StyleGANPreset) -> None:
        super().__init__()
        dims = [p.z_dim] + [p.w_dim] * p.mapping_layers
        self.layers = nn.ModuleList(
            EqualLinear(a, b, activation=True, lr_mult=p.mapping_lr_mult)
            for a, b in itertools.pairwise(dims))
        self.register_buffer("w_avg", torch.zeros(p.w_dim))
        self.w_avg_beta = p.w_avg_beta

    def forward(self, z: torch.Tensor, psi: float = 1.0, update_w_avg: bool = False
                ) -> torch.Tensor:
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if psi != 1:
            x = self.w_avg.lerp(x, psi)
        return x


class SynthesisNetwork(nn.Module):
    """w (one per layer) → image N×3×S×S in about [−1, 1]."""

    def __init__(self, p: StyleGANPreset) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i, (res, ch) in enumerate(zip(p.resolutions, p.channels, strict=True)):
            self.blocks.append(SynthesisBlock(p.channels[max(i - 1, 0)], ch, p.w_dim, res,
                                              first=i == 0))
        # StyleGAN2's count: a block's RGB output shares its w with the next block's first conv
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = "random",
                generators: list[torch.Generator] | None = None) -> torch.Tensor:
        x = img = None
        i = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, i:i + block.num_conv + 1], noise_mode, generators)
            i += block.num_conv
        return img


class Generator(nn.Module):
    """The mapping and synthesis networks; `forward(z)` is one image per row of z."""

    def __init__(self, preset: str | StyleGANPreset, **overrides: Any) -> None:
        super().__init__()
        self.preset = resolve_stylegan_preset(preset, **overrides)
        self.mapping = MappingNetwork(self.preset)
        self.synthesis = SynthesisNetwork(self.preset)
        self.num_ws = self.synthesis.num_ws

    @property
    def image_size(self) -> int:
        return self.preset.image_size

    def styles(self, z: torch.Tensor, psi: float = 1.0, update_w_avg: bool = False,
               mixing_prob: float = 0.0) -> torch.Tensor:
        """N × num_ws × w_dim; with probability `mixing_prob` the layers from a random cutoff on
        take the w of a second z (style mixing, a training regulariser)."""
        w = self.mapping(z, psi, update_w_avg)
        ws = w[:, None].repeat(1, self.num_ws, 1)
        if mixing_prob > 0 and float(torch.rand([])) < mixing_prob:
            cutoff = int(torch.randint(1, self.num_ws, []))
            ws[:, cutoff:] = self.mapping(torch.randn_like(z), psi)[:, None]
        return ws

    def forward(self, z: torch.Tensor, psi: float = 1.0, noise_mode: str = "random",
                update_w_avg: bool = False, mixing_prob: float = 0.0) -> torch.Tensor:
        return self.synthesis(self.styles(z, psi, update_w_avg, mixing_prob), noise_mode)


class Discriminator(nn.Module):
    """A residual StyleGAN2 discriminator: image → one real/fake logit per row."""

    def __init__(self, preset: str | StyleGANPreset, **overrides: Any) -> None:
        super().__init__()
        p = self.preset = resolve_stylegan_preset(preset, **overrides)
        widths = list(reversed(p.channels))              # top resolution first
        self.fromrgb = EqualConv2d(3, widths[0], 1)
        self.blocks = nn.Sequential(*(DiscriminatorBlock(a, b)
                                      for a, b in itertools.pairwise(widths)))
        c, b = widths[-1], p.base_size
        self.mbstd = MinibatchStd(p.mbstd_group)
        self.conv = EqualConv2d(c + 1, c, 3)
        self.fc = EqualLinear(c * b * b, c, activation=True)
        self.out = EqualLinear(c, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.fromrgb(img))
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_truncation(psi: Any) -> float:
    """ψ as a float in [0, 1]; anything else (NaN, bool, text, outside) raises."""
    if isinstance(psi, bool) or not isinstance(psi, numbers.Real) or not 0 <= float(psi) <= 1:
        raise ValueError(f"truncation psi must be a number in [0, 1] (1: no truncation, 0: every "
                         f"sample is the average face), got {psi!r}")
    return float(psi)


def check_seeds(seeds: Sequence[int]) -> list[int]:
    return check_noise_seeds(seeds)


def seed_latents(seeds: Sequence[int], z_dim: int) -> tuple[list[torch.Generator], torch.Tensor]:
    """Each seed's CPU generator (after drawing its z) and the z rows, N×z_dim: sample k of a
    set is a function of its seed alone, whatever batch it is drawn in."""
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    return gens, torch.stack([torch.randn(z_dim, generator=g) for g in gens])


def sample_gan(generator: Generator, seeds: Sequence[int], truncation: float = 1.0,
               noise_mode: str = "const", batch_size: int = 64,
               device: str | torch.device = "cpu") -> np.ndarray:
    """One uint8 RGB image (N×S×S×3) per seed. z (and, with noise_mode="random", every noise
    image) comes from the seed's own CPU generator; "const" uses the noise fixed in the weights
    (StyleGAN's default for sampling), so ψ = 0 gives the same average face for every seed."""
    seeds = check_seeds(seeds)
    psi = check_truncation(truncation)
    if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = torch.device(device)
    generator = generator.to(device).eval()
    z_dim, out = generator.preset.z_dim, []
    with torch.no_grad():
        for start in range(0, len(seeds), int(batch_size)):
            gens, z = seed_latents(seeds[start:start + batch_size], z_dim)
            z = z.to(device)
            ws = generator.styles(z, psi)
            img = generator.synthesis(ws, noise_mode, gens if noise_mode == "random" else None)
            out.append(pixels.to_numpy(img.float().clamp(-1, 1)))
    return np.concatenate(out)

