"""Named sizes of the CemiFace generator: UNet, condition encoder and noise schedule per preset.

`paper` is CemiFace's 112 px ADM-style UNet (attention only at the coarsest grids, adaptive
group norm, ε-prediction, self-target recipe); `tiny` (32 px) and `small` (64 px) keep its block
kinds and conditioning routes at CPU size and train pair-supervised with v-prediction.
Why, with the measurements: docs/experiments/generator-recipe.md.
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
    variation_attr_dropout_prob: float = 0.0
    variation_route: str = "tokens"
    variation_spec: dict | None = None
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
            "variation_attr_dropout_prob": self.variation_attr_dropout_prob,
            "variation_route": self.variation_route,
            "variation_spec": self.variation_spec,
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
