"""Named sizes of the CemiFace generator (UNet + condition encoder + noise schedule).

`paper` follows CemiFace/DCFace: a pixel-space ADM-style UNet at 112×112, base 128 channels,
channel multipliers (1, 1, 2, 2, 4, 4), one res-block per level, attention only at the 7×7 level
(plus the 4×4 middle block), timestep injected by adaptive group norm (`scale_shift`).
Counted with torch's FlopCounterMode it costs ≈ 64.8 GFLOP per image per step (multiply-add = 2).

`tiny` (32×32) and `small` (64×64) exist so that training and sampling run on a CPU. Versus
`paper` they shrink the image (fewer levels), the widths (32–64 instead of 128–512 channels),
the condition width (64/128 instead of 512 token channels) and the identity MLP, and they use
8 norm groups instead of 32 because their layers are narrow. As in `paper`, attention sits only
at the coarsest grids (8×8 and the middle block): on a CPU, attention at the full 32×32 grid
costs ~4× a whole forward without it (docs/STACK.md). Per image and step: tiny ≈ 0.53 GFLOP
(1.5M UNet parameters), small ≈ 3.1 GFLOP (5.7M), paper ≈ 64.8 GFLOP (100M).
What they keep: the same block kinds, the same conditioning routes
(cross-attention tokens + pooled vector added to the timestep embedding), the same schedule
(T = 1000, linear betas) and the same loss.

The training recipe differs. `paper` keeps CemiFace's: target image = inquiry image, m drawn
uniformly from the grid (`pairing="self"`), ε-prediction. `tiny` and `small` train
pair-supervised (`pairing="identity"`, cemiray.diffusion.pairing: the target is the inquiry
itself, another image of its identity or another identity's image, and m is their measured
similarity) with v-prediction, because on a CPU budget the paper's recipe learns no control: a
first tiny run (1,335 steps × 48) gave achieved similarity 0.07–0.24 for every m (Spearman
−0.27). Measured on a CPU proxy (16 px, 2-level UNet of 0.27M parameters, 100 ToyFaces
identities × 20, a small CNN trained 3 min as E_id, AdamW lr 1e-3, batch 32, λ = 0.05 unless
said), sampled with DDIM-10 for 24 new identities × m ∈ {−0.2, 0, …, 1}, Spearman(m, achieved):

| after 600 steps (19K images)  | ε-prediction | v-prediction |
|---|---|---|
| self (paper)                  | 0.03         | 0.09 (flat at 0.61–0.72: identity kept, m ignored) |
| identity                      | 0.13 (samples still noise) | 0.58 (0.03 → 0.62) |
| identity, λ = 0 (MSE only)    | —            | 0.28 |

identity + v-prediction after 1,500 steps (48K images): Spearman 0.82, achieved −0.14, 0.03,
0.25, 0.48, 0.65, 0.81, 0.80 for m = −0.2 … 1. With the paper's objective the m-term moves only
the high-t prediction (its one-step x̂0 at t = T−1 follows m: Spearman 0.87) and later steps
undo it; pairing makes m change the denoising target itself, v-prediction keeps x̂0 (which the
SimMat term scores) well-defined at high t, and SimMat doubles the control reached by MSE alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from cemiray.diffusion.condition_encoder import CemiConditionEncoder

PREDICTION_TYPES = ("epsilon", "v_prediction")
PAIRINGS = ("self", "identity")


@dataclass(frozen=True)
class GeneratorPreset:
    """Every number that fixes the generator's architecture and noise schedule.

    `attention_levels` are indices into `block_out_channels` (0 = full resolution) whose down and
    up blocks get cross-attention; `mid_attention` adds it to the middle block.
    `timestep_condition` also feeds the encoder's pooled vector into the timestep embedding
    (`class_embed_type="projection"`). `attention_heads` is the head count (diffusers calls it
    `attention_head_dim` for historical reasons).
    """

    name: str
    image_size: int
    id_dim: int = 512
    block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512, 512)
    attention_levels: tuple[int, ...] = (4,)
    mid_attention: bool = True
    layers_per_block: int = 1
    attention_heads: int = 8
    norm_num_groups: int = 32
    resnet_time_scale_shift: str = "scale_shift"
    cross_attention_dim: int = 512
    num_condition_tokens: int = 4
    timestep_condition: bool = True
    pooled_dim: int = 512
    sim_dim: int = 128
    encoder_hidden_dim: int = 1024
    num_variation_attrs: int = 0
    num_variation_tokens: int = 1
    variation_dropout_prob: float = 0.0
    id_dropout_prob: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    pairing: str = "self"
    extra_unet_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if levels < 1:
            raise ValueError(f"preset {self.name}: block_out_channels is empty")
        bad = [i for i in self.attention_levels if not 0 <= i < levels]
        if bad:
            raise ValueError(
                f"preset {self.name}: attention_levels {bad} outside 0..{levels - 1} "
                f"(block_out_channels has {levels} levels)"
            )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"preset {self.name}: prediction_type must be one of {PREDICTION_TYPES}, "
                f"got {self.prediction_type!r}"
            )
        if self.pairing not in PAIRINGS:
            raise ValueError(
                f"preset {self.name}: pairing must be one of {PAIRINGS}, got {self.pairing!r}"
            )
        if self.image_size < 2 ** (levels - 1):
            raise ValueError(
                f"preset {self.name}: image_size {self.image_size} is too small for {levels} levels"
            )
        for width in self.block_out_channels:
            if width % self.norm_num_groups:
                raise ValueError(
                    f"preset {self.name}: width {width} is not a multiple of "
                    f"norm_num_groups={self.norm_num_groups}"
                )

    def unet_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the UNet2DConditionModel."""
        levels = range(len(self.block_out_channels))
        attn = set(self.attention_levels)
        down = tuple("CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels)
        up = tuple("CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels))
        kwargs: dict[str, Any] = {
            "sample_size": self.image_size,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "down_block_types": down,
            "up_block_types": up,
            "mid_block_type": "UNetMidBlock2DCrossAttn" if self.mid_attention else "UNetMidBlock2D",
            "cross_attention_dim": self.cross_attention_dim,
            "attention_head_dim": self.attention_heads,
            "norm_num_groups": self.norm_num_groups,
            "resnet_time_scale_shift": self.resnet_time_scale_shift,
            "class_embed_type": "projection" if self.timestep_condition else None,
            "projection_class_embeddings_input_dim": (
                self.pooled_dim if self.timestep_condition else None
            ),
        }
        kwargs.update(self.extra_unet_kwargs)
        return kwargs

    def encoder_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the CemiConditionEncoder."""
        return {
            "id_dim": self.id_dim,
            "cross_attention_dim": self.cross_attention_dim,
            "num_tokens": self.num_condition_tokens,
            "sim_dim": self.sim_dim,
            "hidden_dim": self.encoder_hidden_dim,
            "pooled_dim": self.pooled_dim if self.timestep_condition else None,
            "num_variation_attrs": self.num_variation_attrs,
            "num_variation_tokens": self.num_variation_tokens,
            "variation_dropout_prob": self.variation_dropout_prob,
            "id_dropout_prob": self.id_dropout_prob,
        }

    def schedule_kwargs(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
        }


PRESETS: dict[str, GeneratorPreset] = {
    "paper": GeneratorPreset(name="paper", image_size=112),
    "small": GeneratorPreset(
        name="small",
        pairing="identity",
        prediction_type="v_prediction",
        image_size=64,
        block_out_channels=(32, 64, 128, 128),
        attention_levels=(3,),
        attention_heads=4,
        norm_num_groups=8,
        cross_attention_dim=128,
        pooled_dim=128,
        sim_dim=32,
        encoder_hidden_dim=256,
    ),
    "tiny": GeneratorPreset(
        name="tiny",
        pairing="identity",
        prediction_type="v_prediction",
        image_size=32,
        block_out_channels=(32, 64, 64),
        attention_levels=(2,),
        attention_heads=4,
        norm_num_groups=8,
        cross_attention_dim=64,
        pooled_dim=64,
        sim_dim=32,
        encoder_hidden_dim=256,
    ),
}


def resolve_preset(preset: str | GeneratorPreset, **overrides: Any) -> GeneratorPreset:
    """A named (or given) preset with some fields replaced; unknown field names raise."""
    if isinstance(preset, GeneratorPreset):
        base = preset
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown generator preset {preset!r}; known: {sorted(PRESETS)}")
    names = {f.name for f in dataclasses.fields(GeneratorPreset)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown preset field(s) {unknown}; known: {sorted(names)}")
    if "block_out_channels" in overrides:
        overrides["block_out_channels"] = tuple(overrides["block_out_channels"])
    if "attention_levels" in overrides:
        overrides["attention_levels"] = tuple(overrides["attention_levels"])
    return dataclasses.replace(base, **overrides)


def build_generator(
    preset: str | GeneratorPreset, **overrides: Any
) -> tuple[UNet2DConditionModel, CemiConditionEncoder]:
    """Freshly initialised UNet and condition encoder of a preset (see `resolve_preset`)."""
    resolved = resolve_preset(preset, **overrides)
    return (
        UNet2DConditionModel(**resolved.unet_kwargs()),
        CemiConditionEncoder(**resolved.encoder_kwargs()),
    )


def build_train_scheduler(preset: str | GeneratorPreset, **overrides: Any) -> DDPMScheduler:
    """The forward-noising schedule used in training (`add_noise`, `alphas_cumprod`)."""
    return DDPMScheduler(**resolve_preset(preset, **overrides).schedule_kwargs())


def build_sample_scheduler(preset: str | GeneratorPreset, **overrides: Any) -> DDIMScheduler:
    """The sampler stored with a pipeline: DDIM with x̂0 clipped to [−1, 1] (pixel space) and
    'trailing' timesteps, so the first of 20 steps starts at t = T−1 rather than T−50."""
    return DDIMScheduler(
        **resolve_preset(preset, **overrides).schedule_kwargs(),
        clip_sample=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
