"""The Ray Serve application: a FastAPI ingress in front of two batched model deployments.

    HTTP → Ingress (auth, body limits, parsing, image decoding, limits)
             ├─ Recognizer.embed   one image per call, batched by @serve.batch
             └─ Generator.generate one image per call, batched by @serve.batch

The ingress fans a request out into one call per image, so images of concurrent requests share
batches. Every check on a request runs in the ingress before any model work; the model replicas
receive only validated arrays. Models are loaded from the server config alone.

(No `from __future__ import annotations` here: Serve ships the ingress class to its replicas by
value, and FastAPI must resolve the route signatures there.)
"""

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import posixpath
import time
from collections import defaultdict
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError
from pydantic.json_schema import models_json_schema
from ray import serve

from cemiray.data import storage
from cemiray.data.images import ImageDecodeError, decode_image, encode_png, image_format, image_size
from cemiray.serve.config import GENERATOR, INGRESS, RECOGNIZER, ServeConfig
from cemiray.serve.schemas import (
    EMBED_MULTIPART_SCHEMA,
    ERROR_RESPONSES,
    REQUEST_MODELS,
    EmbedRequest,
    EmbedResponse,
    GeneratedImage,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    Landmarks,
    ModelsResponse,
    VerifyRequest,
    VerifyResponse,
)

__all__ = ["ServeConfig", "app_builder", "build_app", "run"]

logger = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx")
HEALTH_TIMEOUT_S = 10.0


class APIError(Exception):
    """A request the API refuses: an HTTP status and a message naming the field or item."""

    def __init__(self, status: int, detail: str, errors: list[dict] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


def error_body(detail: str, errors: list[dict] | None = None) -> dict:
    return {"detail": detail} if errors is None else {"detail": detail, "errors": errors}


# ---- request guard: API key and body size, before any route runs ------------------------------


class RequestGuard:
    """ASGI middleware: checks the API key (401), then the body size from Content-Length and
    again while reading (413); the route gets the body only once it is known to fit."""

    def __init__(self, app: Any, max_body_bytes: int, api_key_sha256: str | None):
        self.app, self.max_body_bytes, self.key_digest = app, max_body_bytes, api_key_sha256

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = self._check_key(route_path(scope), headers) or self._check_length(headers)
        if refusal:
            await JSONResponse(error_body(refusal[1]), refusal[0])(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                detail = f"request body exceeds max_body_bytes={self.max_body_bytes}"
                await JSONResponse(error_body(detail), 413)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _check_key(self, path: str, headers: dict) -> tuple[int, str] | None:
        if self.key_digest is None or path in OPEN_PATHS:
            return None
        given = headers.get(b"x-api-key")
        if given is None:
            return 401, "missing X-API-Key header"
        if not hmac.compare_digest(hashlib.sha256(given).hexdigest(), self.key_digest):
            return 401, "wrong API key (X-API-Key)"
        return None

    def _check_length(self, headers: dict) -> tuple[int, str] | None:
        length = headers.get(b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return 400, f"Content-Length {length[:32]!r} is not a non-negative integer"
        if int(length) > self.max_body_bytes:
            return 413, (f"Content-Length {int(length)} exceeds max_body_bytes="
                         f"{self.max_body_bytes}")
        return None


def route_path(scope: dict) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


# ---- request parsing and image decoding --------------------------------------------------------


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def location(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def validation_error(exc: ValidationError, prefix: str = "") -> APIError:
    """A 422 listing where and what, never echoing the input (it may be huge or not JSON-able)."""
    errors = [
        {"loc": prefix + location(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    shown = "; ".join(f"{e['loc'] or '<body>'}: {e['msg']}" for e in errors[:5])
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return APIError(422, f"invalid request body: {shown}{more}", errors)


async def parse_json(request: Request, model: type) -> Any:
    if media_type(request) not in ("application/json", ""):
        raise APIError(415, f"content type {media_type(request)!r} is not supported here; send "
                            "application/json")
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise validation_error(exc) from None


LANDMARK_LIST = TypeAdapter(list[Landmarks | None], config={"strict": True})


def parse_multipart(body: bytes, content_type: str) -> list[tuple[bytes, list | None]]:
    """(image bytes, landmarks) per file part named `images`; an optional `landmarks` part holds
    a JSON list with one entry (null or 5 points) per image."""
    header = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise APIError(422, "multipart body: no parts found (check the boundary)")
    images, landmarks_text = [], None
    for i, part in enumerate(message.iter_parts()):
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "images":
            images.append(payload)
        elif name == "landmarks" and landmarks_text is None:
            landmarks_text = payload
        else:
            raise APIError(422, f"multipart part {i}: unexpected field {name!r}; expected "
                                "'images' (files) and at most one 'landmarks'")
    if not images:
        raise APIError(422, "multipart body: no 'images' file part")
    landmarks: list = [None] * len(images)
    if landmarks_text is not None:
        try:
            landmarks = LANDMARK_LIST.validate_json(landmarks_text)
        except ValidationError as exc:
            raise validation_error(exc, prefix="landmarks") from None
        if len(landmarks) != len(images):
            raise APIError(422, f"landmarks: {len(landmarks)} entries for {len(images)} images")
    return list(zip(images, landmarks))


def decode_base64(data: str, where: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(422, f"{where}.data: not valid base64 ({exc})") from None


def load_image(raw: bytes, where: str, landmarks: list | None, cfg: ServeConfig) -> np.ndarray:
    """Decoded uint8 RGB pixels, aligned when landmarks are given; the pixel count is read from
    the header and checked before any decoding."""
    if image_format(raw) not in ("png", "jpeg"):
        raise APIError(422, f"{where}: not a PNG or JPEG image")
    try:
        height, width = image_size(raw, where)
        if height * width > cfg.max_pixels_per_image:
            raise APIError(413, f"{where}: {width}x{height} = {height * width} pixels exceeds "
                                f"max_pixels_per_image={cfg.max_pixels_per_image}")
        pixels = decode_image(raw, where)
    except ImageDecodeError as exc:
        raise APIError(422, str(exc)) from None
    if landmarks is None:
        return pixels
    return align(pixels, np.asarray(landmarks, dtype=np.float64), where, cfg.align_size)


def align(pixels: np.ndarray, points: np.ndarray, where: str, size: int) -> np.ndarray:
    from cemiray.models.recognizer import align_face

    height, width = pixels.shape[:2]
    inside = (points >= 0).all() and (points[:, 0] <= width).all() and (
        points[:, 1] <= height).all()
    if not inside:
        raise APIError(422, f"{where}.landmarks: every point must lie inside the {width}x{height} "
                            "image")
    if np.ptp(points, axis=0).max() < 2.0:
        raise APIError(422, f"{where}.landmarks: the 5 points coincide; cannot align")
    try:
        return align_face(pixels, points.astype(np.float32), size)
    except Exception as exc:  # noqa: BLE001 - skimage/OpenCV raise assorted types here
        raise APIError(422, f"{where}.landmarks: cannot align ({type(exc).__name__}: {exc})")


def unit_embedding(values: list[float], dim: int) -> np.ndarray:
    if len(values) != dim:
        raise APIError(422, f"embedding: {len(values)} values; the recogniser's embeddings have "
                            f"{dim}")
    vector = np.asarray(values, dtype=np.float64)
    if not np.isfinite(vector).all():
        raise APIError(422, "embedding: holds NaN or infinity")
    scale = np.abs(vector).max()
    if scale == 0:
        raise APIError(422, "embedding: all zeros; an identity needs a non-zero vector")
    vector = vector / scale
    return (vector / np.linalg.norm(vector)).astype(np.float32)


# ---- model deployments ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageJob:
    """One image to generate; jobs of one batch sharing steps/scheduler/loop run together."""

    embedding: np.ndarray
    m: float
    seed: int
    steps: int
    scheduler: str | None
    tolerance: float | None
    max_tries: int
    guidance_scale: float = 1.0
    guidance_m: float = 0.0


class BatchStats:
    def __init__(self) -> None:
        self.batches = self.items = self.largest = 0

    def record(self, size: int) -> None:
        self.batches, self.items, self.largest = self.batches + 1, self.items + size, max(
            self.largest, size)

    def as_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "largest_batch": self.largest}


@serve.deployment(name=RECOGNIZER)
class RecognizerModel:
    """The face recogniser: one image per call (any size; resized to the model's input)."""

    def __init__(self, cfg: ServeConfig):
        from cemiray.models.recognizer import load_recognizer

        self.uri = cfg.recognizer
        self.recognizer = load_recognizer(cfg.recognizer, device=cfg.device)
        self.stats = BatchStats()
        self.embed.set_max_batch_size(cfg.max_batch_size)
        self.embed.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def info(self) -> dict:
        rec = self.recognizer
        return {"uri": self.uri, "content_hash": rec.content_hash, "details": {
            "kind": type(rec).__name__, "dim": rec.dim, "input_size": rec.input_size,
            **self.stats.as_dict()}}

    def ping(self) -> str:
        return "ok"

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def embed(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self.stats.record(len(images))
        return await asyncio.to_thread(self._embed, images)

    def _embed(self, images: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        from cemiray.models.recognizer import images_to_tensor, resize_square

        size = self.recognizer.input_size
        # np.array copies: arrays from the object store are read-only, which torch warns about.
        x = torch.cat([resize_square(images_to_tensor(np.array(im[None])), size) for im in images])
        return list(self.recognizer.embed(x))


def weights_hash(url: str) -> str:
    """SHA-256 over (relative path, SHA-256 of the file) of every weight file under a folder."""
    fs, root = storage.filesystem(url)
    digest = hashlib.sha256()
    for path in sorted(p for p in fs.find(root) if p.endswith(WEIGHT_SUFFIXES)):
        rel = posixpath.relpath(path, root)
        digest.update(f"{rel}\0{hashlib.sha256(fs.cat_file(path)).hexdigest()}\n".encode())
    return digest.hexdigest()


@serve.deployment(name=GENERATOR)
class GeneratorModel:
    """The CemiFace sampler plus its own copy of the recogniser, which measures each image's
    achieved similarity (and drives the closed loop)."""

    def __init__(self, cfg: ServeConfig):
        from cemiray.diffusion.pipeline import load_pipeline
        from cemiray.models.recognizer import load_recognizer

        self.uri = cfg.generator
        self.pipe = load_pipeline(cfg.generator).to(cfg.device)
        self.recognizer = load_recognizer(cfg.recognizer, device=cfg.device)
        id_dim = self.pipe.condition_encoder.config.id_dim
        if id_dim != self.recognizer.dim:
            raise ValueError(f"generator {cfg.generator} takes {id_dim}-d identities but "
                             f"recogniser {cfg.recognizer} gives {self.recognizer.dim}-d ones")
        timesteps = self.pipe.scheduler.config.num_train_timesteps
        if cfg.max_steps > timesteps:
            raise ValueError(f"max_steps={cfg.max_steps} exceeds the generator's "
                             f"{timesteps} training timesteps")
        self.content_hash = weights_hash(cfg.generator)
        self.stats = BatchStats()
        self.generate.set_max_batch_size(cfg.max_batch_size)
        self.generate.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    def info(self) -> dict:
        cfg = self.pipe.condition_encoder.config
        return {"uri": self.uri, "content_hash": self.content_hash, "details": {
            "image_size": self.pipe.unet.config.sample_size, "id_dim": cfg.id_dim,
            "stored_scheduler": type(self.pipe.scheduler).__name__, **self.stats.as_dict()}}

    def ping(self) -> str:
        return "ok"

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def generate(self, jobs: list[ImageJob]) -> list[dict]:
        self.stats.record(len(jobs))
        return await asyncio.to_thread(self._generate, jobs)

    def _generate(self, jobs: list[ImageJob]) -> list[dict]:
        import torch

        from cemiray.diffusion.closed_loop import closed_loop_generate

        results: list[dict] = [{} for _ in jobs]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[(job.steps, job.scheduler, job.tolerance, job.max_tries, job.guidance_scale,
                    job.guidance_m)].append(i)
        for (steps, scheduler, tolerance, max_tries, scale, ref_m), index in groups.items():
            ids = torch.from_numpy(np.stack([jobs[i].embedding for i in index]))
            sims = torch.tensor([jobs[i].m for i in index], dtype=torch.float32)
            seeds = [jobs[i].seed for i in index]
            kw = {"num_inference_steps": steps, "scheduler": scheduler,
                  "guidance_scale": scale, "guidance_m": ref_m}
            if tolerance is None:
                out = self.pipe(ids, sims, seeds, recognizer=self.recognizer, **kw)
                tries, within, kept = [1] * len(index), [None] * len(index), seeds
            else:
                out = closed_loop_generate(self.pipe, ids, sims, seeds, self.recognizer,
                                           tolerance=tolerance, max_tries=max_tries, **kw)
                tries, kept = out.tries.tolist(), out.seeds.tolist()
                within = [bool(w) for w in out.within_tolerance]
            for j, i in enumerate(index):
                results[i] = {"image": out.images[j], "similarity": float(out.similarity[j]),
                              "seed": int(kept[j]), "tries": int(tries[j]),
                              "within_tolerance": within[j]}
        return results


# ---- the HTTP ingress ----------------------------------------------------------------------------


@serve.deployment(name=INGRESS)
@serve.ingress()
class CemirayAPI:
    """The HTTP front: versioned JSON routes built per replica from the server config."""

    def __init__(self, cfg: ServeConfig, recognizer: Any, generator: Any | None = None):
        self.cfg, self.recognizer, self.generator = cfg, recognizer, generator
        self._info: dict[str, dict] = {}

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="cemiray", version="1", docs_url=None, redoc_url=None,
                      description="Face embeddings, verification and similarity-controlled "
                                  "face generation (CemiFace).")
        security = {"security": [{"APIKey": []}]} if self.cfg.api_key_sha256 else {}

        def body(name: str, multipart: bool = False) -> dict:
            content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
            if multipart:
                content["multipart/form-data"] = {"schema": EMBED_MULTIPART_SCHEMA}
            return {"requestBody": {"required": True, "content": content}, **security}

        route = {"methods": ["POST"], "responses": ERROR_RESPONSES}
        app.add_api_route("/v1/embed", self.embed, response_model=EmbedResponse,
                          openapi_extra=body("EmbedRequest", multipart=True), **route)
        app.add_api_route("/v1/verify", self.verify, response_model=VerifyResponse,
                          openapi_extra=body("VerifyRequest"), **route)
        if self.generator is not None:
            app.add_api_route("/v1/generate", self.generate, response_model=GenerateResponse,
                              openapi_extra=body("GenerateRequest"), **route)
        app.add_api_route("/v1/models", self.models, methods=["GET"],
                          response_model=ModelsResponse, openapi_extra=security or None)
        app.add_api_route("/healthz", self.healthz, methods=["GET"],
                          response_model=HealthResponse)
        app.add_exception_handler(APIError, api_error_response)
        app.add_exception_handler(Exception, internal_error_response)
        app.add_middleware(RequestGuard, max_body_bytes=self.cfg.max_body_bytes,
                           api_key_sha256=self.cfg.api_key_sha256)
        app.openapi = lambda: openapi_schema(app, bool(self.cfg.api_key_sha256))
        return app

    async def model_info(self, name: str) -> dict:
        if name not in self._info:
            handle = self.recognizer if name == RECOGNIZER else self.generator
            self._info[name] = await handle.info.remote()
        return self._info[name]

    async def load_images(self, items: list[tuple[bytes, list | None]], names: list[str]
                          ) -> list[np.ndarray]:
        def work() -> list[np.ndarray]:
            return [load_image(raw, name, lm, self.cfg) for (raw, lm), name in zip(items, names)]

        return await asyncio.to_thread(work)

    async def embed_all(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return list(await asyncio.gather(*(self.recognizer.embed.remote(im) for im in images)))

    def check_count(self, n: int, what: str) -> None:
        if n > self.cfg.max_images_per_request:
            raise APIError(413, f"{what}: {n} images exceed max_images_per_request="
                                f"{self.cfg.max_images_per_request}")

    async def embed(self, request: Request) -> EmbedResponse:
        """Unit embeddings of one or more images (JSON base64, or multipart file parts)."""
        if media_type(request) == "multipart/form-data":
            items = parse_multipart(await request.body(), request.headers["content-type"])
            self.check_count(len(items), "images")
        else:
            req: EmbedRequest = await parse_json(request, EmbedRequest)
            self.check_count(len(req.images), "images")
            items = [(decode_base64(im.data, f"images[{i}]"), im.landmarks)
                     for i, im in enumerate(req.images)]
        images = await self.load_images(items, [f"images[{i}]" for i in range(len(items))])
        embeddings = await self.embed_all(images)
        info = await self.model_info(RECOGNIZER)
        return EmbedResponse(embeddings=[e.tolist() for e in embeddings],
                             dim=info["details"]["dim"], recognizer_hash=info["content_hash"])

    async def verify(self, request: Request) -> VerifyResponse:
        """Cosine similarity of two faces and the decision at the configured threshold."""
        req: VerifyRequest = await parse_json(request, VerifyRequest)
        items = [(decode_base64(im.data, name), im.landmarks)
                 for im, name in ((req.image_a, "image_a"), (req.image_b, "image_b"))]
        a, b = await self.embed_all(await self.load_images(items, ["image_a", "image_b"]))
        similarity = float(np.clip(np.dot(a, b), -1.0, 1.0))
        info = await self.model_info(RECOGNIZER)
        return VerifyResponse(similarity=similarity, threshold=self.cfg.verify_threshold,
                              same_identity=similarity >= self.cfg.verify_threshold,
                              recognizer_hash=info["content_hash"])

    async def generate(self, request: Request) -> GenerateResponse:
        """Images of one identity at each target similarity m, with the achieved similarity."""
        req: GenerateRequest = await parse_json(request, GenerateRequest)
        cfg = self.cfg
        n = len(req.m) * req.images_per_m
        self.check_count(n, f"len(m)={len(req.m)} x images_per_m={req.images_per_m}")
        steps = req.steps or cfg.default_steps
        if steps > cfg.max_steps:
            raise APIError(422, f"steps={steps} exceeds max_steps={cfg.max_steps}")
        loop = req.closed_loop
        tries = loop.max_tries if loop else 1
        if tries > cfg.max_tries:
            raise APIError(422, f"closed_loop.max_tries={tries} exceeds max_tries={cfg.max_tries}")
        passes = 1 if req.guidance_scale == 1.0 else 2  # guidance runs the UNet twice a step
        if n * steps * tries * passes > cfg.max_image_steps:
            raise APIError(422, f"{n} images x {steps} steps x {tries} tries x {passes} UNet "
                                f"passes = {n * steps * tries * passes} exceeds "
                                f"max_image_steps={cfg.max_image_steps}")
        rec_info = await self.model_info(RECOGNIZER)
        if req.embedding is not None:
            identity = unit_embedding(req.embedding, rec_info["details"]["dim"])
        else:
            raw = decode_base64(req.image.data, "image")
            image = (await self.load_images([(raw, req.image.landmarks)], ["image"]))[0]
            identity = await self.recognizer.embed.remote(image)
        targets = [m for m in req.m for _ in range(req.images_per_m)]
        jobs = [ImageJob(identity, m, req.seed + k, steps, req.scheduler,
                         loop.tolerance if loop else None, tries, req.guidance_scale,
                         req.guidance_m) for k, m in enumerate(targets)]
        results = await asyncio.gather(*(self.generator.generate.remote(j) for j in jobs))
        pngs = await asyncio.to_thread(lambda: [encode_png(r["image"]) for r in results])
        gen_info = await self.model_info(GENERATOR)
        return GenerateResponse(
            images=[GeneratedImage(m=m, seed=r["seed"], similarity=r["similarity"],
                                   tries=r["tries"], within_tolerance=r["within_tolerance"],
                                   png_base64=base64.b64encode(png).decode("ascii"))
                    for m, r, png in zip(targets, results, pngs)],
            steps=steps, scheduler=req.scheduler, generator_hash=gen_info["content_hash"],
            recognizer_hash=rec_info["content_hash"])

    async def models(self) -> ModelsResponse:
        """What is loaded (with content hashes and batch counts) and the request limits."""
        cfg = self.cfg
        handles = {RECOGNIZER: self.recognizer, GENERATOR: self.generator}
        live = {k: await h.info.remote() for k, h in handles.items() if h is not None}
        limits = {k: getattr(cfg, k) for k in (
            "max_body_bytes", "max_images_per_request", "max_pixels_per_image", "max_steps",
            "max_tries", "max_image_steps", "default_steps")}
        return ModelsResponse(recognizer=live[RECOGNIZER], generator=live.get(GENERATOR),
                              limits=limits, verify_threshold=cfg.verify_threshold)

    async def healthz(self) -> JSONResponse:
        """200 when every model deployment answers within HEALTH_TIMEOUT_S, else 503."""
        handles = {RECOGNIZER: self.recognizer, GENERATOR: self.generator}
        names = [k for k, h in handles.items() if h is not None]
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(handles[k].ping.remote() for k in names)), HEALTH_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a timeout or any replica failure is "down"
            logger.warning("health check failed: %r", exc)
            return JSONResponse({"status": "unavailable", "models": {}}, 503)
        return JSONResponse({"status": "ok", "models": dict(zip(names, answers))})


async def api_error_response(_: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc.detail, exc.errors), exc.status)


async def internal_error_response(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal error"), 500)


def openapi_schema(app: FastAPI, with_key: bool) -> dict:
    """FastAPI's schema plus the request models (routes parse bodies themselves, so that the
    size guard runs first and embed can also take multipart)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS],
                                     ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs.get("$defs", {}))
        if with_key:
            components["securitySchemes"] = {
                "APIKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        app.openapi_schema = schema
    return app.openapi_schema


# ---- building and running ------------------------------------------------------------------------


def build_app(cfg: ServeConfig) -> serve.Application:
    """The bound application: ingress → recogniser (and generator when configured)."""
    options = cfg.deployment_options()
    recognizer = RecognizerModel.options(**options[RECOGNIZER]).bind(cfg)
    generator = (GeneratorModel.options(**options[GENERATOR]).bind(cfg)
                 if cfg.generator else None)
    return CemirayAPI.options(**options[INGRESS]).bind(cfg, recognizer, generator)


def app_builder(args: dict) -> serve.Application:
    """The import path of a Serve config file (`cemiray.serve.app:app_builder`): args are
    ServeConfig fields."""
    return build_app(ServeConfig(**args))


def run(cfg: ServeConfig) -> str:
    """Start Serve on cfg.host:cfg.port with this application; block until interrupted (then
    delete the application) unless cfg.block is False. Returns the base URL."""
    from cemiray.runtime.cluster import init_ray

    init_ray(cfg.ray)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    started = time.perf_counter()
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    print(json.dumps({"serving": url, "openapi": f"{url}/openapi.json",
                      "startup_s": round(time.perf_counter() - started, 1)}), flush=True)
    if not cfg.block:
        return url
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(cfg.app_name)
    return url

