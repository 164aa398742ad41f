"""The HTTP guard of the serve app (serve): API key and body-size limits, and error bodies.

The API key (401) and the body size (413) are checked before any route runs; every refusal
carries a JSON body with a message.

(No `from __future__ import annotations` here: Serve ships the ingress to its replicas by value.)
"""

import hashlib
import hmac
import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})


class APIError(Exception):
    """A request the API refuses: an HTTP status and a message naming the field or item."""

    def __init__(self, status: int, detail: str, errors: list[dict] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


def error_body(detail: str, errors: list[dict] | None = None) -> dict:
    return {"detail": detail} if errors is None else {"detail": detail, "errors": errors}


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


async def api_error_response(_: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(error_body(exc.detail, exc.errors), exc.status)


async def internal_error_response(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal error"), 500)
