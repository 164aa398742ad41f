"""Shared by the serve tests: tiny real models written to disk, and the application served on a
free loopback port of the session's Ray cluster: per module (`serving`), or one application kept
for every module that asks for the same settings (`shared_serving`; 13 s of Serve start-up and
5 s of shutdown saved per module), ended by the next `serving` or by `release_shared`."""

from __future__ import annotations

import atexit
import base64
import functools
import hashlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cemiray.assets import TOYFACES_ATTRIBUTES_JUDGE

API_KEY = "cemiray-test-key"
EMBED_DIM = 32


@dataclass(frozen=True)
class Served:
    base_url: str
    recognizer_url: str
    generator_url: str
    cfg: object

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": API_KEY}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


VARIATION = {"num_variation_attrs": 2, "variation_route": "both", "variation_spec": {
    "attributes": [{"name": "yaw", "kind": "continuous", "mean": 0.0, "std": 15.0, "low": -30.0,
                    "high": 30.0}, {"name": "glasses", "kind": "binary"}]}}


@functools.cache
def write_tiny_models() -> tuple[str, str]:
    """A random iresnet18 recogniser (32 px, 32-d) and a random `tiny` generator taking 32-d
    identities, saved once per test session as a cemiray model folder and a pipeline folder."""
    import torch

    from cemiray.diffusion import (
        CemiFacePipeline,
        build_generator,
        build_sample_scheduler,
        save_pipeline,
    )
    from cemiray.models.iresnet import get_backbone
    from cemiray.models.serialization import save_model_folder

    folder = Path(tempfile.mkdtemp(prefix="cemiray-serve-models-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    torch.manual_seed(0)
    recognizer_url, generator_url = str(folder / "recognizer"), str(folder / "generator")
    model = get_backbone("iresnet18", input_size=32, num_features=EMBED_DIM)
    save_model_folder(model, recognizer_url, model.config)
    # a generator that also takes variation (yaw, glasses), its variation layer as if trained
    unet, encoder = build_generator("tiny", id_dim=EMBED_DIM, **VARIATION)
    with torch.no_grad():
        encoder.variation_out.weight.normal_(0, 0.5)
    pipe = CemiFacePipeline(unet=unet.eval(), condition_encoder=encoder.eval(),
                            scheduler=build_sample_scheduler("tiny", id_dim=EMBED_DIM))
    save_pipeline(pipe, generator_url)
    return recognizer_url, generator_url


# What test_serve.py and test_serve_fuzz.py share: the schema fuzzer also sends missing and wrong
# keys, so no rate limit on them (it is tested in test_serve_hostile.py, on its own application).
OPEN_KEYS = {"key_failures_per_minute": 10**6}

_SHARED: dict[str, object] = {}  # the shared application: its overrides and its Served


def release_shared() -> None:
    """Shut the shared application down, if one is up (a module that needs Serve stopped or
    configured otherwise calls this first)."""
    from ray import serve

    if _SHARED:
        _SHARED.clear()
        serve.shutdown()


def shared_serving(**overrides) -> Served:
    """The tiny models served with small limits, started once for every caller that passes the
    same overrides; `release_shared` (or the session's end) shuts it down."""
    if _SHARED and _SHARED["overrides"] == overrides:
        return _SHARED["served"]
    from ray import serve

    release_shared()
    try:
        served = _start(overrides)
    except BaseException:
        serve.shutdown()  # a failed start leaves no Serve behind for the next module
        raise
    _SHARED.update(overrides=overrides, served=served)
    return served


@contextmanager
def serving(**overrides) -> Iterator[Served]:
    """Serve the tiny models with small limits for one module; `serve.shutdown()` afterwards."""
    from ray import serve

    release_shared()
    try:
        yield _start(overrides)
    finally:
        serve.shutdown()


def _start(overrides: dict) -> Served:
    from cemiray.serve.app import ServeConfig, run

    recognizer_url, generator_url = write_tiny_models()
    settings = {
        "recognizer": recognizer_url, "generator": generator_url, "port": free_port(),
        "block": False, "api_key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
        "max_batch_size": 8, "default_steps": 2, "max_steps": 8, "max_tries": 3,
        "max_image_steps": 64, "max_images_per_request": 8, "max_pixels_per_image": 128 * 128,
        "max_body_bytes": 2 * 2**20, "variation_estimator": TOYFACES_ATTRIBUTES_JUDGE,
    }
    cfg = ServeConfig(**(settings | overrides))
    return Served(run(cfg), recognizer_url, generator_url, cfg)


def face_image(seed: int, size: int = 48) -> np.ndarray:
    """A smooth random uint8 RGB image (upsampled blobs, so JPEG keeps it close)."""
    from cemiray.data.images import resize

    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return resize(coarse, size)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
