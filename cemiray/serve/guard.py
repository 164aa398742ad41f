"""The HTTP guard of the serve app (serve): API key, rate limit, body size and deadline, errors.

Before any route runs: failed keys are rate-limited per client (429), the API key is checked
(401), the body size from Content-Length (413), and the body must arrive whole within
`body_timeout_s` (408), so a slow client frees its slot instead of holding it. Every refusal
carries a JSON body with a message; user input is quoted escaped and truncated (`quoted`).

(No `from __future__ import annotations` here: Serve ships the ingress to its replicas by value.)
"""

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict, deque
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

logger = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
QUOTE_LIMIT = 64
TRACKED_CLIENTS = 4096


class APIError(Exception):
    """A request the API refuses: an HTTP status and a message naming the field or item."""

    def __init__(self, status: int, detail: str, errors: list[dict] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


def error_body(detail: str, errors: list[dict] | None = None) -> dict:
    return {"detail": detail} if errors is None else {"detail": detail, "errors": errors}


def quoted(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """User input as it may appear in a message: ASCII-escaped (no control or text-direction
    characters reach a log or a terminal) and cut to `limit` characters, with the length said."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if len(text) <= limit:
        return ascii(text)
    return f"{text[:limit]!a}... ({len(text)} characters)"


class FailedKeys:
    """Failed API-key attempts per client host in a sliding window; a client over the limit is
    refused (429) before its key is even compared. Bounded in memory (oldest clients dropped)."""

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s
        self.times: OrderedDict[str, deque] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque:
        times = self.times.get(client)
        if times is None:
            return deque()
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until this client may try again, or None when it may try now."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.limit:
            return None
        return max(1.0, self.window_s - (now - times[0]))

    def record(self, client: str) -> None:
        now = time.monotonic()
        times = self._recent(client, now)
        times.append(now)
        self.times[client] = times
        self.times.move_to_end(client)
        while len(self.times) > TRACKED_CLIENTS:
            self.times.popitem(last=False)


class RequestGuard:
    """ASGI middleware: rate limit of failed keys (429), the API key (401), the body size from
    Content-Length and again while reading (413), the body's deadline (408); the route gets the
    body only once it is whole and known to fit."""

    def __init__(self, app: Any, max_body_bytes: int, api_key_sha256: str | None,
                 body_timeout_s: float = 10.0, key_failures_per_minute: int = 10):
        self.app, self.max_body_bytes, self.key_digest = app, max_body_bytes, api_key_sha256
        self.body_timeout_s = body_timeout_s
        self.failed = FailedKeys(key_failures_per_minute)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = self._check_key(scope, headers) or self._check_length(headers)
        if refusal:
            status, detail, extra = refusal
            await JSONResponse(error_body(detail), status, headers=extra)(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except TimeoutError:
            detail = f"request body did not arrive within body_timeout_s={self.body_timeout_s}"
            await JSONResponse(error_body(detail), 408, headers={"Connection": "close"})(
                scope, receive, send)
            return
        except BodyTooLarge:
            detail = f"request body exceeds max_body_bytes={self.max_body_bytes}"
            await JSONResponse(error_body(detail), 413)(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Any) -> bytes | None:
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check_key(self, scope: dict, headers: dict) -> tuple[int, str, dict] | None:
        if self.key_digest is None or route_path(scope) in OPEN_PATHS:
            return None
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.failed.retry_after(client)
        if wait is not None:
            return 429, f"too many failed API keys from this client; retry in {wait:.0f} s", {
                "Retry-After": str(int(wait + 0.999))}
        given = headers.get(b"x-api-key")
        if given is None:
            self.failed.record(client)
            return 401, "missing X-API-Key header", {}
        if not hmac.compare_digest(hashlib.sha256(given).hexdigest(), self.key_digest):
            self.failed.record(client)
            return 401, "wrong API key (X-API-Key)", {}
        return None

    def _check_length(self, headers: dict) -> tuple[int, str, dict] | None:
        length = headers.get(b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return 400, f"Content-Length {quoted(length, 32)} is not a non-negative integer", {}
        if int(length) > self.max_body_bytes:
            return 413, (f"Content-Length {int(length)} exceeds max_body_bytes="
                         f"{self.max_body_bytes}"), {}
        return None


class BodyTooLarge(Exception):
    """The body grew past max_body_bytes while it was read."""


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
