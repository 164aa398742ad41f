"""The `serve` job's config (serve): models to load, scaling and batching, request limits.

The typed config of the `serve` job: which models to load (only ever from here, never from a
request), how the deployments scale and batch, and the limits every request is held to."""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cemiray.runtime.config import JobConfig, RayConfig

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
INGRESS, RECOGNIZER, GENERATOR = "Ingress", "Recognizer", "Generator"


class ScalingConfig(BaseModel):
    """Replica autoscaling of one deployment (Serve's `autoscaling_config`) and how many requests
    one replica takes at once; for a batched model this caps the batch, so keep it at least
    `max_batch_size`."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    max_ongoing_requests: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ScalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} > max_replicas={self.max_replicas}")
        return self

    def autoscaling(self) -> dict:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }


class ServeConfig(JobConfig):
    """`cemiray serve`: HTTP endpoints for embedding, verification and generation."""

    recognizer: str = Field(description="recogniser URL: cemiray model folder, .pth?arch=..., .onnx")
    generator: str | None = Field(None, description="CemiFace pipeline folder; None: no /v1/generate")
    variation_estimator: str | None = Field(
        None, description="attribute model folder (train-attr) that measures the variation of "
        "generated images; None: responses carry only what was requested")
    ray: RayConfig = Field(default_factory=RayConfig)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "cemiray"
    route_prefix: str = "/"
    block: bool = Field(True, description="run() waits until interrupted; False returns at once")
    api_key_sha256: str | None = Field(
        None, description="SHA-256 hex of the key clients send as X-API-Key (the key itself is "
        "never stored); None: no key needed (refused off loopback, see allow_without_key)")
    api_key_sha256_env: str | None = Field(
        None, description="name of an environment variable holding api_key_sha256 (e.g. filled "
        "from a Kubernetes Secret), read where the app is built; the app refuses to start if it "
        "is unset")
    allow_without_key: bool = Field(
        False, description="serve on a non-loopback host with no API key (only behind a proxy "
        "that authenticates; say why in the config)")
    key_failures_per_minute: int = Field(
        10, ge=1, description="failed API keys a client host may send per minute before 429")
    body_timeout_s: float = Field(
        10.0, gt=0, description="a request body must arrive whole within this many seconds of "
        "the request's start, else 408 (slow clients free their slot)")

    use_gpu: bool = False
    num_gpus: float = Field(1.0, gt=0, description="GPUs per model replica when use_gpu")
    num_cpus: float = Field(0.25, gt=0, description="CPUs per replica (ingress and models)")
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="how long an idle model waits for companions of a lone request; "
        "under load a batch is whatever arrived while the previous one ran")
    ingress_scaling: ScalingConfig = Field(
        default_factory=lambda: ScalingConfig(max_ongoing_requests=256),
        description="the ingress only awaits I/O and model calls, so one replica holds many "
        "requests: slow clients (cut at body_timeout_s) do not starve /healthz")
    recognizer_scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    generator_scaling: ScalingConfig = Field(default_factory=ScalingConfig)

    verify_threshold: float = Field(0.3, ge=-1, le=1, description="same identity at cos >= this")
    align_size: int = Field(112, description="crop size of landmark alignment (ArcFace template)")
    default_steps: int = Field(20, ge=1)
    max_steps: int = Field(50, ge=1)
    max_tries: int = Field(8, ge=1, description="largest closed-loop max_tries a request may ask")
    max_body_bytes: int = Field(16 * 2**20, ge=1024)
    max_images_per_request: int = Field(32, ge=1)
    max_pixels_per_image: int = Field(2**22, ge=1)
    max_pixels_per_request: int = Field(
        2**24, ge=1, description="decoded-pixel budget of one request (sum of width x height "
        "read from the image headers before decoding); bounds a replica's memory per request")
    max_image_steps: int = Field(
        2048, ge=1, description="limit on images x steps x max_tries of one generate call")

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if self.api_key_sha256 is not None and not SHA256_HEX.match(self.api_key_sha256):
            raise ValueError("api_key_sha256 must be 64 lower-case hex digits (sha256 of the key)")
        if self.api_key_sha256 and self.api_key_sha256_env:
            raise ValueError("give api_key_sha256 or api_key_sha256_env, not both")
        keyed = bool(self.api_key_sha256 or self.api_key_sha256_env)
        if self.host not in LOOPBACK and not keyed and not self.allow_without_key:
            raise ValueError(
                f"host={self.host} serves off this machine without an API key: set "
                "api_key_sha256 (sha256 hex of the key clients send as X-API-Key) or "
                "api_key_sha256_env, or allow_without_key=true behind an authenticating proxy")
        if self.default_steps > self.max_steps:
            raise ValueError(f"default_steps={self.default_steps} > max_steps={self.max_steps}")
        if self.align_size % 112 and self.align_size % 128:
            raise ValueError(f"align_size={self.align_size}: must be a multiple of 112 or 128")
        for name in ("recognizer_scaling", "generator_scaling"):
            scaling = getattr(self, name)
            if scaling.max_ongoing_requests < self.max_batch_size:
                raise ValueError(
                    f"{name}.max_ongoing_requests={scaling.max_ongoing_requests} < "
                    f"max_batch_size={self.max_batch_size}: batches would be capped below it")
        if not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix {self.route_prefix!r} must start with '/'")
        return self

    def key_digest(self) -> str | None:
        """The API key's SHA-256 hex, from the config or from `api_key_sha256_env` (read now,
        where the app is built); an unset or malformed variable is an error, never "no key"."""
        if not self.api_key_sha256_env:
            return self.api_key_sha256
        digest = os.environ.get(self.api_key_sha256_env)
        if digest is None:
            raise ValueError(f"api_key_sha256_env={self.api_key_sha256_env}: the environment "
                             "variable is not set here; refusing to serve without the key")
        digest = digest.strip().lower()
        if not SHA256_HEX.match(digest):
            raise ValueError(f"api_key_sha256_env={self.api_key_sha256_env}: the variable is not "
                             "64 hex digits (the sha256 of the key)")
        return digest

    @property
    def device(self) -> str:
        return "cuda" if self.use_gpu else "cpu"

    def deployment_options(self) -> dict[str, dict]:
        """Serve options of each deployment, by name: used by build_app and written into the
        Serve config file, so both always agree."""
        model_actor = {"num_cpus": self.num_cpus}
        if self.use_gpu:
            model_actor["num_gpus"] = self.num_gpus
        scaling = {INGRESS: self.ingress_scaling, RECOGNIZER: self.recognizer_scaling}
        if self.generator:
            scaling[GENERATOR] = self.generator_scaling
        return {
            name: {
                "autoscaling_config": s.autoscaling(),
                "max_ongoing_requests": s.max_ongoing_requests,
                "ray_actor_options": {"num_cpus": self.num_cpus} if name == INGRESS
                else dict(model_actor),
            }
            for name, s in scaling.items()
        }
