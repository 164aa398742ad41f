"""Machine facts: the one record of where a figure was measured (host, CPUs, GPU, versions, commit)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "ray", "deepspeed", "diffusers", "numpy", "pyarrow", "onnxruntime", "cemiray")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The checkout's short commit, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict:
    """Host, platform, CPUs, torch threads, GPU name, UTC date and package versions."""
    import torch

    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "versions": versions(),
    }


REPOSITORY = str(Path(__file__).resolve().parents[2])  # the checkout holding cemiray/


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
