"""What every benchmark shares (bench): ratios measured in one run and one JSON per benchmark.

What every benchmark job shares: the machine and versions it ran on, ratios measured in one
run (alternating repeats, median of the per-repeat ratios), and one JSON file per benchmark."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from cemiray.data import storage
from cemiray.runtime.machine import machine_info


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of per-repeat ratios (each repeat measured back to back)."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("median_ratio needs the same, non-zero number of measurements")
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


REPOSITORY = str(Path(__file__).resolve().parents[2])


def repository_relative(value):
    """`value` (JSON-like) with every string path inside this repository made relative to it,
    so a result copied into docs/results names no path of the machine that measured it."""
    if isinstance(value, dict):
        return {k: repository_relative(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [repository_relative(v) for v in value]
    if isinstance(value, str) and value.startswith(REPOSITORY + "/"):
        return value[len(REPOSITORY) + 1:]
    return value


def write_result(out_url: str, name: str, config: dict, figures: dict) -> str:
    url = storage.join(out_url, f"{name}.json")
    payload = repository_relative({"benchmark": name, "machine": machine_info(),
                                   "config": config, "figures": figures})
    storage.atomic_write_text(url, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return url
