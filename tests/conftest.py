"""Shared fixtures. One real local Ray cluster per test session, started with modest resources
the first time a test asks for it and shut down at the end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORL_ROOT = (ROOT / ".." / "shared" / "data" / "orl_faces").resolve()

os.environ.setdefault("CEMIRAY_PROGRESS", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller polls its workers every 2 s: a finished tiny training then waits up to
# 2 s to be noticed, on every one of the suite's trainings. Read by the controller's process.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by every test of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=400 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
        )
    yield ray
    from serve_helpers import release_shared

    release_shared()  # the serve tests' shared application, if one is up
    ray.shutdown()


@pytest.fixture(scope="session")
def orl_root() -> Path:
    if not ORL_ROOT.is_dir():
        pytest.skip(f"ORL database not found at {ORL_ROOT}")
    return ORL_ROOT
