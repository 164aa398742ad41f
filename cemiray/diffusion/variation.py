"""What the generator's variation condition means: attribute names, kinds and their scaling.

GANDiffFace gives synthetic identities real-world intra-class variation; here the CemiFace
generator takes a per-image variation vector beside C_id and m. A `VariationSpec` fixes its
layout: an ordered list of attributes, each `binary` (absent / present: 0 / 1, fed as −1 / +1)
or `continuous` (fed standardised, (v − mean) / std, and requested inside [low, high], the
range its training data covered). An attribute left out of a request is unspecified: it
travels as NaN and the condition encoder sees it masked, the case it learned from per-attribute
dropout. The spec is measured from the training rows by `train-gen` and lives in the condition
encoder's config, so a generator folder says what its variation means.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BINARY, CONTINUOUS = "binary", "continuous"


@dataclass(frozen=True)
class VariationAttribute:
    name: str
    kind: str
    mean: float = 0.0
    std: float = 1.0
    low: float = 0.0
    high: float = 1.0

    def normalise(self, value):
        """A value (or an array of them) in the attribute's units → what the encoder takes."""
        if self.kind == BINARY:
            return 2.0 * value - 1.0
        return (value - self.mean) / self.std


@dataclass(frozen=True)
class VariationSpec:
    attributes: tuple[VariationAttribute, ...]

    def __post_init__(self) -> None:
        names = self.names
        if not names:
            raise ValueError("a variation spec needs at least one attribute")
        if len(set(names)) != len(names):
            raise ValueError(f"variation attribute names repeat: {names}")
        for a in self.attributes:
            if a.kind not in (BINARY, CONTINUOUS):
                raise ValueError(f"variation attribute {a.name!r}: kind must be {BINARY!r} or "
                                 f"{CONTINUOUS!r}, got {a.kind!r}")
            if a.kind == CONTINUOUS and not (math.isfinite(a.std) and a.std > 0):
                raise ValueError(f"variation attribute {a.name!r}: its values do not vary "
                                 f"(std {a.std})")

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def __len__(self) -> int:
        return len(self.attributes)

    def to_config(self) -> dict:
        return {"attributes": [asdict(a) for a in self.attributes]}

    @classmethod
    def from_config(cls, config: dict) -> VariationSpec:
        return cls(tuple(VariationAttribute(**a) for a in config["attributes"]))

    @classmethod
    def measure(cls, names: list[str], columns: dict[str, np.ndarray]) -> VariationSpec:
        """The spec of training values (`columns[name]`: float, NaN where a row lacks it): an
        attribute whose known values are all 0 or 1 is binary, any other continuous, with the
        values' mean and std and the 0.5–99.5 percentile range as what may be requested."""
        attributes = []
        for name in names:
            x = np.asarray(columns[name], dtype=np.float64)
            x = x[np.isfinite(x)]
            if len(x) == 0:
                raise ValueError(f"variation attribute {name!r}: no training row carries it")
            if np.isin(x, (0.0, 1.0)).all():
                if len(np.unique(x)) < 2:
                    raise ValueError(f"variation attribute {name!r}: every training row has "
                                     f"the value {x[0]:g}; it cannot be learned")
                attributes.append(VariationAttribute(name, BINARY))
                continue
            low, high = np.percentile(x, [0.5, 99.5])
            attributes.append(VariationAttribute(name, CONTINUOUS, float(x.mean()),
                                                 float(x.std()), float(low), float(high)))
        return cls(tuple(attributes))

    def encode_columns(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Training values (`columns[name]`, NaN = unknown) → float32 N×A normalised, NaN kept."""
        return np.stack([a.normalise(np.asarray(columns[a.name], dtype=np.float64))
                         for a in self.attributes], axis=1).astype(np.float32)

    def check_request(self, request: Any, where: str = "variation") -> dict[str, float]:
        """One image's requested variation, a mapping {attribute: value}, checked: unknown names,
        wrong types and values outside the trained range are refused naming the field."""
        if request is None:
            return {}
        if not isinstance(request, dict):
            raise ValueError(f"{where}: expected an object of attribute values, got "  # noqa: TRY004
                             f"{type(request).__name__}")
        known = {a.name: a for a in self.attributes}
        out = {}
        for name, value in request.items():
            field = f"{where}.{name}"
            if name not in known:
                raise ValueError(f"{field}: unknown variation attribute; this generator "
                                 f"knows {self.names}")
            a = known[name]
            if value is None:
                continue
            if a.kind == BINARY:
                if isinstance(value, numbers.Real) and value in (0, 1):
                    out[name] = float(value)
                    continue
                raise ValueError(f"{field}: a binary attribute takes true/false (or 0/1), got "
                                 f"{value!r}")
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"{field}: a continuous attribute takes a number, got "  # noqa: TRY004
                                 f"{value!r}")
            if not math.isfinite(value) or not a.low <= value <= a.high:
                raise ValueError(f"{field}: {value!r} lies outside the trained range "
                                 f"[{a.low:.4g}, {a.high:.4g}]")
            out[name] = float(value)
        return out

    def check_requests(self, requests: list[Any], where: str = "variation") -> list[dict]:
        """`check_request` of each request, named `where[i]` in an error."""
        return [self.check_request(r, f"{where}[{i}]") for i, r in enumerate(requests)]

    def encode_checked(self, checked: list[dict[str, float]]) -> np.ndarray:
        """Checked requests → float32 N×A normalised, NaN where unspecified."""
        out = np.full((len(checked), len(self)), np.nan, dtype=np.float32)
        for i, request in enumerate(checked):
            for j, a in enumerate(self.attributes):
                if a.name in request:
                    out[i, j] = a.normalise(request[a.name])
        return out

    def encode_requests(self, requests: list[Any], where: str = "variation") -> np.ndarray:
        """Requests (each a mapping or None) → float32 N×A normalised, NaN where unspecified."""
        return self.encode_checked(self.check_requests(requests, where))
