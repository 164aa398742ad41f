"""The HTTP ingress of the serve app (serve): the versioned routes and the OpenAPI schema.

Every request is checked (cemiray.serve.guard, cemiray.serve.parsing) before any model work,
then fanned out into one call per image to the model deployments, so images of concurrent
requests share batches.

(No `from __future__ import annotations` here: Serve ships the ingress class to its replicas by
value, and FastAPI must resolve the route signatures there.)
"""

import asyncio
import base64
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from ray import serve

from cemiray.data.images import encode_png
from cemiray.serve.config import GENERATOR, INGRESS, RECOGNIZER, ServeConfig
from cemiray.serve.deployments import ImageJob
from cemiray.serve.guard import APIError, RequestGuard, api_error_response, internal_error_response
from cemiray.serve.parsing import (
    check_part_count,
    check_pixel_budget,
    check_work,
    decode_base64,
    load_image,
    media_type,
    parse_json,
    parse_multipart,
    sampling_spec,
    unit_embedding,
)
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
    ModelsResponse,
    VerifyRequest,
    VerifyResponse,
)

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 10.0


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
                           api_key_sha256=self.cfg.api_key_sha256,
                           body_timeout_s=self.cfg.body_timeout_s,
                           key_failures_per_minute=self.cfg.key_failures_per_minute)
        app.openapi = lambda: openapi_schema(app, bool(self.cfg.api_key_sha256))
        return app

    async def model_info(self, name: str) -> dict:
        if name not in self._info:
            handle = self.recognizer if name == RECOGNIZER else self.generator
            self._info[name] = await handle.info.remote()
        return self._info[name]

    async def load_images(self, items: list[tuple[bytes, list | None]], names: list[str]
                          ) -> list[np.ndarray]:
        """Decoded (and aligned) images, off the event loop, once the request's decoded-pixel
        budget is known to hold."""
        check_pixel_budget([raw for raw, _ in items], self.cfg.max_pixels_per_request)

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
            body, content_type = await request.body(), request.headers["content-type"]
            check_part_count(body, content_type, self.cfg.max_images_per_request + 1)
            items = await asyncio.to_thread(parse_multipart, body, content_type)
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
        variations, encoded = await self.variation_plan(req.variation)
        n = len(req.m) * req.images_per_m * len(variations)
        self.check_count(n, f"len(m)={len(req.m)} x images_per_m={req.images_per_m}"
                            + (f" x len(variation)={len(variations)}" if req.variation else ""))
        spec = sampling_spec(req, self.cfg)
        check_work(spec, n, self.cfg)
        rec_info = await self.model_info(RECOGNIZER)
        if req.embedding is not None:
            identity = unit_embedding(req.embedding, rec_info["details"]["dim"])
        else:
            raw = decode_base64(req.image.data, "image")
            image = (await self.load_images([(raw, req.image.landmarks)], ["image"]))[0]
            identity = await self.recognizer.embed.remote(image)
        # image k of each m comes from seed + k whatever its variation, so a variation is the
        # only difference between the images of one (m, k)
        targets = [(m, k, v) for v in range(len(variations)) for k, m in
                   enumerate(m for m in req.m for _ in range(req.images_per_m))]
        jobs = [ImageJob(identity, m, req.seed + k, spec,
                         None if encoded is None else tuple(encoded[v].tolist()))
                for m, k, v in targets]
        results = await asyncio.gather(*(self.generator.generate.remote(j) for j in jobs))
        pngs = await asyncio.to_thread(lambda: [encode_png(r["image"]) for r in results])
        gen_info = await self.model_info(GENERATOR)
        return GenerateResponse(
            images=[GeneratedImage(m=m, seed=r["seed"], similarity=r["similarity"],
                                   tries=r["tries"], within_tolerance=r["within_tolerance"],
                                   variation=variations[v], variation_measured=r.get(
                                       "variation_measured"),
                                   png_base64=base64.b64encode(png).decode("ascii"))
                    for (m, _, v), r, png in zip(targets, results, pngs)],
            steps=spec.steps, scheduler=spec.scheduler, generator_hash=gen_info["content_hash"],
            recognizer_hash=rec_info["content_hash"])

    async def variation_plan(self, requested: list | None) -> tuple[list, np.ndarray | None]:
        """The checked requests (attribute units) and their normalised values for the
        generator; a request this generator cannot honour is a 422 naming the field."""
        if requested is None:
            return [None], None
        from cemiray.diffusion.variation import VariationSpec

        spec = (await self.model_info(GENERATOR))["details"].get("variation")
        if not spec:
            raise APIError(422, "variation: this server's generator was trained without a "
                                "variation condition")
        spec = VariationSpec.from_config(spec)
        try:
            checked = spec.check_requests(requested)
        except ValueError as exc:
            raise APIError(422, str(exc)) from None
        return [c or None for c in checked], spec.encode_checked(checked)

    async def models(self) -> ModelsResponse:
        """What is loaded (with content hashes and batch counts) and the request limits."""
        cfg = self.cfg
        handles = {RECOGNIZER: self.recognizer, GENERATOR: self.generator}
        live = {k: await h.info.remote() for k, h in handles.items() if h is not None}
        limits = {k: getattr(cfg, k) for k in (
            "max_body_bytes", "max_images_per_request", "max_pixels_per_image",
            "max_pixels_per_request", "body_timeout_s", "max_steps", "max_tries",
            "max_image_steps", "default_steps")}
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
