"""An unconditional pixel-space DDPM face generator: a source of identity seeds of no real person.

DCFace sampled 200K faces from an FFHQ DDPM and filtered them; this is the same idea.

A diffusers `UNet2DModel` predicts the noise ε; the schedule is DDPM's (T = 1000, linear betas).
Sampling runs DDIM (deterministic, few steps) or ancestral DDPM. Every image draws its noise from
its own `torch.Generator(seed)` on the CPU, so an image is a function of its seed, not of the
batch it was sampled in (up to float rounding between batch sizes, see diffusion/pipeline.py).

A generator is saved as a folder: `unet/` (save_pretrained), `scheduler/` (the DDPM schedule's
config) and `unconditional.json`, written last, so a folder that has it is complete.
Presets follow diffusion/presets.py: attention only at the coarsest grid and the middle block,
because attention at 32×32 costs several whole forwards on a CPU
(docs/experiments/generator-recipe.md).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import posixpath
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from cemiray.data import pixels, storage
from cemiray.models.noise_seeds import check_noise_seeds

MARKER_NAME = "unconditional.json"
SAMPLERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class UncondPreset:
    """Every number that fixes the unconditional UNet and its noise schedule.
    `attention_levels` index `block_out_channels` (0 = full resolution)."""

    name: str
    image_size: int
    block_out_channels: tuple[int, ...]
    attention_levels: tuple[int, ...]
    mid_attention: bool = True
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        bad = [i for i in self.attention_levels if not 0 <= i < levels]
        if levels < 1 or bad:
            raise ValueError(f"uncond preset {self.name}: attention_levels {bad} outside "
                             f"0..{levels - 1}")
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"uncond preset {self.name}: image_size {self.image_size} is not "
                             f"divisible by 2**{levels - 1} ({levels} levels)")
        odd = [w for w in self.block_out_channels if w % self.norm_num_groups]
        if odd:
            raise ValueError(f"uncond preset {self.name}: widths {odd} are not multiples of "
                             f"norm_num_groups={self.norm_num_groups}")

    def unet_kwargs(self) -> dict[str, Any]:
        levels = range(len(self.block_out_channels))
        attn = set(self.attention_levels)
        return {
            "sample_size": self.image_size,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "down_block_types": tuple("AttnDownBlock2D" if i in attn else "DownBlock2D"
                                      for i in levels),
            "up_block_types": tuple("AttnUpBlock2D" if i in attn else "UpBlock2D"
                                    for i in reversed(levels)),
            "add_attention": self.mid_attention,
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "resnet_time_scale_shift": "scale_shift",
        }


UNCOND_PRESETS: dict[str, UncondPreset] = {
    "tiny": UncondPreset(name="tiny", image_size=32, block_out_channels=(32, 64, 64),
                         attention_levels=(2,)),
    "small": UncondPreset(name="small", image_size=64, block_out_channels=(32, 64, 128, 128),
                          attention_levels=(3,)),
}


def resolve_uncond_preset(preset: str | UncondPreset, **overrides: Any) -> UncondPreset:
    """A named (or given) preset with some fields replaced; unknown names raise."""
    if isinstance(preset, UncondPreset):
        base = preset
    elif preset in UNCOND_PRESETS:
        base = UNCOND_PRESETS[preset]
    else:
        raise ValueError(f"unknown unconditional preset {preset!r}; known: "
                         f"{sorted(UNCOND_PRESETS)}")
    names = {f.name for f in dataclasses.fields(UncondPreset)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown uncond preset field(s) {unknown}; known: {sorted(names)}")
    for key in ("block_out_channels", "attention_levels"):
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return dataclasses.replace(base, **overrides)


def build_unet(preset: str | UncondPreset, **overrides: Any) -> UNet2DModel:
    return UNet2DModel(**resolve_uncond_preset(preset, **overrides).unet_kwargs())


def build_noise_scheduler(preset: str | UncondPreset, **overrides: Any) -> DDPMScheduler:
    p = resolve_uncond_preset(preset, **overrides)
    return DDPMScheduler(num_train_timesteps=p.num_train_timesteps,
                         beta_schedule=p.beta_schedule, prediction_type="epsilon",
                         clip_sample=True)


def denoising_loss(unet: UNet2DModel, scheduler: DDPMScheduler, x0: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's simple loss: ‖ε − ε̂(x_t, t)‖² with t uniform on [0, T) and ε ~ N(0, I).
    `x0` is N×3×S×S in [−1, 1]; noise and t come from `generator` (CPU) for reproducibility."""
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device,
                                                                               x0.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator)
    x_t = scheduler.add_noise(x0, noise, t).to(x0.dtype)
    prediction = unet(x_t, t.to(x0.device)).sample
    return F.mse_loss(prediction.float(), noise.float())


@dataclass
class UnconditionalGenerator:
    """A trained UNet and the DDPM schedule it was trained with."""

    unet: UNet2DModel
    scheduler: DDPMScheduler
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.unet.config.sample_size)


def sample_unconditional(gen: UnconditionalGenerator, seeds: Sequence[int], steps: int = 50,
                         sampler: str = "ddim", device: str | torch.device = "cpu") -> np.ndarray:
    """One uint8 RGB image (N×S×S×3) per seed. "ddim": deterministic DDIM (η = 0) over `steps`
    trailing timesteps; "ddpm": ancestral sampling whose per-step noise also comes from the
    seed's own generator."""
    seeds = check_noise_seeds(seeds)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    config = dict(gen.scheduler.config)
    if sampler == "ddim":
        schedule = DDIMScheduler.from_config(config, clip_sample=True, set_alpha_to_one=True,
                                             timestep_spacing="trailing")
    else:
        schedule = DDPMScheduler.from_config(config, timestep_spacing="trailing")
    device = torch.device(device)
    unet = gen.unet.to(device).eval()
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    size = gen.image_size
    x = torch.cat([torch.randn((1, 3, size, size), generator=g) for g in generators])
    schedule.set_timesteps(int(steps), device="cpu")
    with torch.no_grad():
        for t in schedule.timesteps:
            eps = unet(x.to(device), t.to(device)).sample.float().cpu()
            x = schedule.step(eps, t, x, generator=generators).prev_sample
    return pixels.to_numpy(x)


def _copy_tree_to(local_root: str, url: str, last: str) -> None:
    """Copy a local folder to an fsspec URL file by file (atomic renames), `last` at the end."""
    files = []
    for root, _, names in os.walk(local_root):
        files.extend(os.path.relpath(os.path.join(root, n), local_root) for n in names)
    files.sort(key=lambda rel: (rel == last, rel))
    for rel in files:
        with (open(os.path.join(local_root, rel), "rb") as src,
              storage.atomic_open(storage.join(url, *rel.split(os.sep)), "wb") as dst):
            shutil.copyfileobj(src, dst, length=16 << 20)


def save_unconditional(gen: UnconditionalGenerator, url: str) -> None:
    """Write the generator folder to any fsspec URL; `unconditional.json` goes last."""
    with tempfile.TemporaryDirectory(prefix="cemiray-uncond-") as staging:
        gen.unet.save_pretrained(os.path.join(staging, "unet"))
        gen.scheduler.save_pretrained(os.path.join(staging, "scheduler"))
        marker = {"kind": "cemiray-unconditional-ddpm", "image_size": gen.image_size,
                  **gen.meta}
        with open(os.path.join(staging, MARKER_NAME), "w") as f:
            json.dump(marker, f, indent=2, sort_keys=True)
        _copy_tree_to(staging, url, MARKER_NAME)


def load_unconditional(url: str, device: str | torch.device = "cpu") -> UnconditionalGenerator:
    """Read a folder written by `save_unconditional` (local or any fsspec URL)."""
    marker_url = storage.join(url, MARKER_NAME)
    if not storage.exists(marker_url):
        raise storage.StorageError(f"{url}: not an unconditional generator folder "
                                   f"(no {MARKER_NAME}; train one with `cemiray train-uncond`)")
    try:
        meta = json.loads(storage.read_text(marker_url))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{marker_url}: not valid JSON ({exc})") from exc
    fs, path = storage.filesystem(url)
    with tempfile.TemporaryDirectory(prefix="cemiray-uncond-load-") as staging:
        if storage.protocol_prefix(url) in ("", "file://"):
            root = path
        else:
            for remote in fs.find(path):
                local = os.path.join(staging, *posixpath.relpath(remote, path).split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                fs.get_file(remote, local)
            root = staging
        try:
            unet = UNet2DModel.from_pretrained(os.path.join(root, "unet"))
            scheduler = DDPMScheduler.from_pretrained(os.path.join(root, "scheduler"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{url}: cannot load the generator's unet/scheduler ({exc})") from exc
    return UnconditionalGenerator(unet=unet.to(device).eval(), scheduler=scheduler, meta=meta)
