"""What every benchmark shares (bench): ratios measured in one run and one JSON per benchmark.

What every benchmark job shares: the machine and versions it ran on, ratios measured in one
run (alternating repeats, median of the per-repeat ratios), and one JSON file per benchmark."""

from __future__ import annotations

import json
import statistics

from cemiray.data import storage
from cemiray.runtime.machine import machine_info, repository_relative


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of per-repeat ratios (each repeat measured back to back)."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("median_ratio needs the same, non-zero number of measurements")
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def write_result(out_url: str, name: str, config: dict, figures: dict) -> str:
    url = storage.join(out_url, f"{name}.json")
    payload = repository_relative({"benchmark": name, "machine": machine_info(),
                                   "config": config, "figures": figures})
    storage.atomic_write_text(url, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return url
