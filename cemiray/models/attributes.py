"""Attribute predictor (models): an IResNet trunk with one head per face attribute.

A categorical attribute (ToyFaces' group, age, sex; glasses, hat, mask; a user's own labels) gets
a softmax head over its values, a continuous one (yaw, roll, smile, ...) a regression head on the
value standardised by the training set's mean and std. It is the demographic classifier of
`cemiray seeds` and the variation estimator; trained by `cemiray train-attr` from any labelled
set, saved as a folder of config.json + model.safetensors like the recognisers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cemiray.data import storage
from cemiray.models.iresnet import get_backbone
from cemiray.models.serialization import CheckpointError, load_model_folder, save_model_folder

MARKER = "cemiray-attributes"
CATEGORICAL, CONTINUOUS = "categorical", "continuous"


@dataclass
class AttributeSpec:
    """One predicted attribute: categorical with its `classes` (JSON values, in head order), or
    continuous with the `mean` and `std` its head's output is scaled back by."""

    name: str
    kind: str
    classes: list[Any] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in (CATEGORICAL, CONTINUOUS):
            raise ValueError(f"attribute {self.name!r}: kind must be {CATEGORICAL!r} or "
                             f"{CONTINUOUS!r}, got {self.kind!r}")
        if self.kind == CATEGORICAL and len(self.classes) < 2:
            raise ValueError(f"attribute {self.name!r}: a categorical attribute needs at least 2 "
                             f"values, the data holds {self.classes}")
        if self.kind == CONTINUOUS and not (np.isfinite(self.std) and self.std > 0):
            raise ValueError(f"attribute {self.name!r}: its values do not vary (std {self.std})")

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.kind == CATEGORICAL else 1


class AttributeNet(nn.Module):
    """Images N×3×S×S in [-1, 1] → {attribute: logits N×C (categorical) or N (standardised)}."""

    def __init__(self, backbone: dict[str, Any], specs: list[AttributeSpec]) -> None:
        super().__init__()
        if not specs:
            raise ValueError("an attribute predictor needs at least one attribute")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"attribute names repeat: {names}")
        self.backbone_config, self.specs = dict(backbone), list(specs)
        self.backbone = get_backbone(**self.backbone_config)
        dim = int(self.backbone_config.get("num_features", 512))
        self.heads = nn.ModuleDict({s.name: nn.Linear(dim, s.outputs) for s in specs})

    @property
    def input_size(self) -> int:
        return int(self.backbone_config.get("input_size", 112))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        out = {}
        for spec in self.specs:
            y = self.heads[spec.name](features)
            out[spec.name] = y if spec.kind == CATEGORICAL else y[:, 0]
        return out

    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]):
        """(total, {attribute: loss}): cross-entropy for categorical targets (class index, −1 =
        unlabelled), MSE for standardised continuous ones (NaN = unlabelled); an attribute with
        no label in the batch adds zero (its head gets a zero gradient, not none)."""
        total = outputs[self.specs[0].name].new_zeros(())
        parts = {}
        for spec in self.specs:
            y, out = targets[spec.name], outputs[spec.name]
            if spec.kind == CATEGORICAL:
                known = y >= 0
                term = (nn.functional.cross_entropy(out[known], y[known].long())
                        if known.any() else out.float().sum() * 0)
            else:
                known = torch.isfinite(y)
                term = (nn.functional.mse_loss(out[known].float(), y[known].float())
                        if known.any() else out.float().sum() * 0)
            parts[spec.name] = term
            total = total + term
        return total, parts

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Per attribute: the predicted value (a class value, or the continuous value in its
        own units); categorical attributes also give `<name>:p`, the class probabilities."""
        was = self.training
        self.eval()
        out = self(x)
        self.train(was)
        result: dict[str, np.ndarray] = {}
        for spec in self.specs:
            y = out[spec.name].float()
            if spec.kind == CATEGORICAL:
                p = torch.softmax(y, dim=1).cpu().numpy()
                result[spec.name] = np.asarray(spec.classes, dtype=object)[p.argmax(1)]
                result[f"{spec.name}:p"] = p
            else:
                result[spec.name] = y.cpu().numpy() * spec.std + spec.mean
        return result

    def config(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"kind": MARKER, "backbone": self.backbone_config,
                "attributes": [asdict(s) for s in self.specs], **(meta or {})}


def save_attribute_model(model: AttributeNet, url: str, meta: dict[str, Any] | None = None) -> None:
    save_model_folder(model, url, model.config(meta))


def load_attribute_model(url: str, device: str | torch.device = "cpu") -> AttributeNet:
    """An attribute predictor folder, every tensor checked against its config."""
    url = storage.absolute(url)
    state, config = load_model_folder(url)
    if config.get("kind") != MARKER:
        raise CheckpointError(f"{url}: not an attribute predictor (config kind "
                              f"{config.get('kind')!r}, expected {MARKER!r}; train one with "
                              f"`cemiray train-attr`)")
    try:
        specs = [AttributeSpec(**s) for s in config["attributes"]]
        model = AttributeNet(config["backbone"], specs)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{url}: config.json does not describe an attribute predictor "
                              f"({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or extra or wrong:
        raise CheckpointError(f"{url}: weights do not match the config (missing {missing[:3]}, "
                              f"unexpected {extra[:3]}, wrong shape {wrong[:3]})")
    model.load_state_dict(state)
    return model.to(device).eval()
