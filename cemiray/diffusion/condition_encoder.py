"""The CemiFace condition encoder (diffusion): identity, m and variation → UNet conditions.

The condition encoder of the CemiFace generator: identity embedding + similarity scalar m
(+ optional nuisance attributes) → cross-attention tokens and a pooled vector.

CemiFace appends `C_att = F2(concat(C_id, F1(m)))` as extra keys/values to the UNet's attention.
In diffusers terms these are the `encoder_hidden_states` tokens that the UNet's cross-attention
blocks attend to. The pooled vector feeds the UNet's `class_labels` input
(`class_embed_type="projection"`), so the condition is also added to the timestep embedding
(DCFace's route). A per-image variation vector (GANDiffFace's controllable intra-class
variation: pose, expression, occluders, light; its meaning in cemiray.diffusion.variation) is
embedded by a small MLP from [value · known, known], so a NaN (unspecified) attribute is masked
rather than guessed, and reaches the UNet by `variation_route`: extra cross-attention tokens, an
addition to the pooled vector (hence to every ResNet block's timestep modulation), or both. The
MLP's last layer starts at zero, so a generator trained without variation can be fine-tuned
with it and starts exactly where it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn


@dataclass
class ConditionOutput:
    """`tokens`: N×L×cross_attention_dim for `encoder_hidden_states`; `pooled`: N×pooled_dim for
    the UNet's `class_labels`, or None when the encoder was built without a pooled output."""

    tokens: Tensor
    pooled: Tensor | None


VARIATION_ROUTES = ("tokens", "pooled", "both")


class CemiConditionEncoder(ModelMixin, ConfigMixin):
    """F1 (linear on m) and F2 (MLP on [C_id, F1(m)]) of CemiFace, plus an optional variation
    condition.

    Token layout: `num_tokens` identity/similarity tokens, then `num_variation_tokens` variation
    tokens when `num_variation_attrs > 0` and the route has tokens. Training-time condition
    dropout (only in `train()` mode): `variation_dropout_prob` makes a sample's whole variation
    unspecified, `variation_attr_dropout_prob` each of its attributes on its own;
    `id_dropout_prob` replaces its identity embedding by a learned null identity (IDiff-Face's
    condition dropout; 0 in CemiFace, which samples without guidance). `variation_spec` (a
    cemiray.diffusion.variation.VariationSpec config) names the attributes and their scaling.
    """

    @register_to_config
    def __init__(
        self,
        id_dim: int = 512,
        cross_attention_dim: int = 512,
        num_tokens: int = 4,
        sim_dim: int = 128,
        hidden_dim: int = 1024,
        pooled_dim: int | None = 512,
        num_variation_attrs: int = 0,
        num_variation_tokens: int = 1,
        variation_hidden_dim: int = 128,
        variation_dropout_prob: float = 0.0,
        id_dropout_prob: float = 0.0,
        variation_route: str = "tokens",
        variation_attr_dropout_prob: float = 0.0,
        variation_spec: dict | None = None,
    ):
        super().__init__()
        for name, value in (
            ("id_dim", id_dim),
            ("cross_attention_dim", cross_attention_dim),
            ("num_tokens", num_tokens),
            ("sim_dim", sim_dim),
            ("hidden_dim", hidden_dim),
            ("num_variation_tokens", num_variation_tokens),
            ("variation_hidden_dim", variation_hidden_dim),
        ):
            if value < 1:
                raise ValueError(f"CemiConditionEncoder: {name} must be >= 1, got {value}")
        if pooled_dim is not None and pooled_dim < 1:
            raise ValueError(
                f"CemiConditionEncoder: pooled_dim must be >= 1 or None, got {pooled_dim}"
            )
        if num_variation_attrs < 0:
            raise ValueError(
                f"CemiConditionEncoder: num_variation_attrs must be >= 0, got {num_variation_attrs}"
            )
        for name, p in (
            ("variation_dropout_prob", variation_dropout_prob),
            ("variation_attr_dropout_prob", variation_attr_dropout_prob),
            ("id_dropout_prob", id_dropout_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"CemiConditionEncoder: {name} must lie in [0, 1], got {p}")
        if variation_route not in VARIATION_ROUTES:
            raise ValueError(f"CemiConditionEncoder: variation_route must be one of "
                             f"{VARIATION_ROUTES}, got {variation_route!r}")
        if num_variation_attrs and variation_route != "tokens" and pooled_dim is None:
            raise ValueError(f"CemiConditionEncoder: variation_route {variation_route!r} adds to "
                             f"the pooled vector, but pooled_dim is None")
        if variation_spec is not None:
            from cemiray.diffusion.variation import VariationSpec

            spec = VariationSpec.from_config(variation_spec)
            if len(spec) != num_variation_attrs:
                raise ValueError(f"CemiConditionEncoder: variation_spec names {len(spec)} "
                                 f"attributes but num_variation_attrs is {num_variation_attrs}")

        self.similarity_proj = nn.Linear(1, sim_dim)
        self.fuse = nn.Sequential(nn.Linear(id_dim + sim_dim, hidden_dim), nn.SiLU())
        self.to_tokens = nn.Linear(hidden_dim, num_tokens * cross_attention_dim)
        self.token_norm = nn.LayerNorm(cross_attention_dim)
        self.to_pooled = nn.Linear(hidden_dim, pooled_dim) if pooled_dim is not None else None
        self.null_identity = nn.Parameter(torch.zeros(id_dim)) if id_dropout_prob > 0 else None
        self.variation_mlp = self.variation_out = None
        if num_variation_attrs > 0:
            self.variation_mlp = nn.Sequential(
                nn.Linear(2 * num_variation_attrs, variation_hidden_dim),
                nn.SiLU(),
                nn.Linear(variation_hidden_dim, variation_hidden_dim),
                nn.SiLU(),
            )
            width = 0
            if variation_route != "pooled":
                width += num_variation_tokens * cross_attention_dim
            if variation_route != "tokens":
                width += pooled_dim
            self.variation_out = nn.Linear(variation_hidden_dim, width)
            nn.init.zeros_(self.variation_out.weight)
            nn.init.zeros_(self.variation_out.bias)

    @property
    def num_condition_tokens(self) -> int:
        """Length of the token sequence the UNet attends to."""
        cfg = self.config
        has_tokens = cfg.num_variation_attrs > 0 and cfg.variation_route != "pooled"
        return cfg.num_tokens + (cfg.num_variation_tokens if has_tokens else 0)

    @property
    def variation(self):
        """The VariationSpec of this encoder's attributes, or None when it was not given."""
        from cemiray.diffusion.variation import VariationSpec

        spec = self.config.variation_spec
        return VariationSpec.from_config(spec) if spec else None

    def forward(
        self,
        id_embeddings: Tensor,
        similarity: Tensor,
        variation: Tensor | None = None,
        generator: torch.Generator | None = None,
        drop_variation: bool = True,
    ) -> ConditionOutput:
        """`id_embeddings` N×id_dim, `similarity` N (m per sample), `variation`
        N×num_variation_attrs normalised values, NaN where unspecified (None: all unspecified).
        `generator` drives the training-time condition dropout; `drop_variation=False` when the
        caller already applied `drop_variation` (to use the same dropped variation elsewhere)."""
        cfg = self.config
        n = id_embeddings.shape[0]
        if id_embeddings.ndim != 2 or id_embeddings.shape[1] != cfg.id_dim:
            raise ValueError(
                f"CemiConditionEncoder: id_embeddings must be N×{cfg.id_dim}, "
                f"got {tuple(id_embeddings.shape)}"
            )
        if similarity.shape != (n,):
            raise ValueError(
                f"CemiConditionEncoder: similarity must have shape ({n},), "
                f"got {tuple(similarity.shape)}"
            )
        dtype = self.to_tokens.weight.dtype
        id_embeddings = id_embeddings.to(dtype)
        if self.training and self.null_identity is not None:
            drop = self._drop_mask(n, cfg.id_dropout_prob, generator, id_embeddings.device)
            id_embeddings = torch.where(drop[:, None], self.null_identity.to(dtype), id_embeddings)

        c_sim = self.similarity_proj(similarity.to(dtype)[:, None])
        hidden = self.fuse(torch.cat([id_embeddings, c_sim], dim=1))
        tokens = self.to_tokens(hidden).view(n, cfg.num_tokens, cfg.cross_attention_dim)
        tokens = self.token_norm(tokens)
        pooled = self.to_pooled(hidden) if self.to_pooled is not None else None

        if self.variation_mlp is not None:
            if variation is not None and drop_variation:
                variation = self.drop_variation(variation, generator)
            extra = self._variation_embedding(n, variation, tokens)
            width = 0
            if cfg.variation_route != "pooled":
                width = cfg.num_variation_tokens * cfg.cross_attention_dim
                extra_tokens = extra[:, :width].view(n, cfg.num_variation_tokens,
                                                     cfg.cross_attention_dim)
                tokens = torch.cat([tokens, extra_tokens], 1)
            if cfg.variation_route != "tokens":
                pooled = pooled + extra[:, width:]
        elif variation is not None:
            raise ValueError(
                "CemiConditionEncoder: got variation attributes but the encoder was built with "
                "num_variation_attrs=0"
            )
        return ConditionOutput(tokens=tokens, pooled=pooled)

    def drop_variation(self, variation: Tensor, generator: torch.Generator | None = None
                       ) -> Tensor:
        """In `train()` mode, `variation` with the training-time dropout applied: a whole row
        (`variation_dropout_prob`) or single values (`variation_attr_dropout_prob`) set to NaN,
        unspecified. In eval mode, unchanged."""
        cfg = self.config
        if not self.training or (cfg.variation_dropout_prob == 0
                                 and cfg.variation_attr_dropout_prob == 0):
            return variation
        n, attrs = variation.shape
        drop = torch.zeros(n, attrs, dtype=torch.bool, device=variation.device)
        if cfg.variation_dropout_prob > 0:
            drop |= self._drop_mask(n, cfg.variation_dropout_prob, generator,
                                    variation.device)[:, None]
        if cfg.variation_attr_dropout_prob > 0:
            drop |= self._drop_mask(n * attrs, cfg.variation_attr_dropout_prob, generator,
                                    variation.device).view(n, attrs)
        return variation.masked_fill(drop, float("nan"))

    def _variation_embedding(self, n: int, variation: Tensor | None, like: Tensor) -> Tensor:
        cfg = self.config
        attrs = cfg.num_variation_attrs
        if variation is None:
            variation = torch.full((n, attrs), float("nan"), device=like.device)
        if variation.shape != (n, attrs):
            raise ValueError(
                f"CemiConditionEncoder: variation must be {n}×{attrs}, "
                f"got {tuple(variation.shape)}"
            )
        variation = variation.to(like.device, like.dtype)
        if torch.isinf(variation).any():
            raise ValueError("CemiConditionEncoder: variation holds inf")
        known = ~torch.isnan(variation)
        mask = known.to(like.dtype)
        features = torch.cat([torch.nan_to_num(variation) * mask, mask], dim=1)
        return self.variation_out(self.variation_mlp(features))

    @staticmethod
    def _drop_mask(
        n: int, p: float, generator: torch.Generator | None, device: torch.device
    ) -> Tensor:
        gen_device = generator.device if generator is not None else device
        return (torch.rand(n, generator=generator, device=gen_device) < p).to(device)
