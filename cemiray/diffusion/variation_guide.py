"""An attribute term for variation training: x̂0 must show the variation it was asked for.

The denoising loss alone teaches the variation condition slowly: on ToyFaces at 32 px a glasses
frame or a mask is a few pixels of the v-prediction target, so the condition's gradient is faint
(600-step pilots with the denoising loss alone learned blur and little else:
docs/results/variation_routes.json). As CemiFace's SimMat term reads the identity of x̂0 with a frozen recogniser,
this term reads its attributes with a frozen attribute predictor (cemiray.models.attributes, the
one that labels and selects, never the independent estimator that measures the results):

    L_var = mean over requested attributes of  CE(logits(x̂0), requested class)   (binary)
                                               or (â(x̂0) − a)² in the spec's units   (continuous)

for samples with t ≤ `max_t` (above it x̂0 is mostly noise). Gradients pass through the
predictor into x̂0, never into its weights.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VariationGuide:
    def __init__(self, predictor: nn.Module, spec, weight: float = 0.1, max_t: int = 600):
        from cemiray.models.attributes import CATEGORICAL

        if weight < 0 or max_t < 0:
            raise ValueError("VariationGuide: weight and max_t must be >= 0")
        predictor.eval()
        predictor.requires_grad_(False)
        self.predictor, self.weight, self.max_t = predictor, float(weight), int(max_t)
        readable = {s.name: s for s in predictor.specs}
        self.items: list[tuple[int, str, str, object]] = []
        for j, a in enumerate(spec.attributes):
            s = readable.get(a.name)
            if s is None:
                continue
            if a.kind == "binary":
                classes = [json.dumps(c) for c in s.classes]
                if s.kind != CATEGORICAL or sorted(classes) not in (["0", "1"], ["false", "true"]):
                    raise ValueError(f"VariationGuide: {a.name} is binary to the generator but "
                                     f"the predictor reads it as {s.kind} {s.classes}")
                present = classes.index("1") if "1" in classes else classes.index("true")
                self.items.append((j, a.name, "binary", present))
            else:
                if s.kind == CATEGORICAL:
                    raise ValueError(f"VariationGuide: {a.name} is continuous to the generator "
                                     f"but categorical to the predictor")
                self.items.append((j, a.name, "continuous", (s.mean, s.std, a.mean, a.std)))
        if not self.items:
            raise ValueError(f"VariationGuide: the predictor reads none of {spec.names}")

    @property
    def names(self) -> list[str]:
        return [name for _, name, _, _ in self.items]

    def to(self, device) -> VariationGuide:
        self.predictor.to(device)
        return self

    def __call__(self, x0_hat: Tensor, variation: Tensor, t: Tensor) -> Tensor:
        """L_var of a batch (0 when nothing is requested within the t window)."""
        window = (t <= self.max_t).to(x0_hat.device)
        size = self.predictor.input_size
        if x0_hat.shape[-1] != size or x0_hat.shape[-2] != size:
            x0_hat = F.interpolate(x0_hat, size=(size, size), mode="bilinear",
                                   align_corners=False)
        out = self.predictor(x0_hat)
        losses = []
        for j, name, kind, extra in self.items:
            v = variation[:, j].to(x0_hat.device)
            known = window & ~torch.isnan(v)
            if not known.any():
                continue
            if kind == "binary":
                logits = out[name][known].float()
                target = torch.where(v[known] > 0, extra, 1 - extra).long()
                losses.append(F.cross_entropy(logits, target))
            else:
                net_mean, net_std, mean, std = extra
                units = out[name][known].float() * net_std + net_mean
                losses.append(((units - mean) / std - v[known].float()).pow(2).mean())
        if not losses:
            return x0_hat.sum() * 0.0
        return torch.stack(losses).mean()
