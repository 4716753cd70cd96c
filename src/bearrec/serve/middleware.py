"""Pure ASGI middleware (no BaseHTTPMiddleware: a client that disconnects never cancels a handler):

- `AccountingMiddleware` (outermost): every request's endpoint, status and latency into `Metrics`,
  refusals by the inner layers included; unknown paths share one label (bounded cardinality);
- `BodyLimitMiddleware`: a request body over `max_bytes` is answered 413 (Content-Length checked
  first, then the bytes as they arrive); at most `max_bytes` is buffered. The rest of an oversized
  body is read and discarded up to `DRAIN_FACTOR * max_bytes`, so that a client still writing it
  gets its 413 rather than a reset connection; a larger one is cut off.
"""

from __future__ import annotations

import json
import time

from bearrec.serve.metrics import Metrics

DRAIN_FACTOR = 16
KNOWN_PATHS = frozenset({"/health", "/ready", "/info", "/metrics", "/v1/recommend", "/v1/recommend/batch", "/docs",
                         "/redoc", "/openapi.json"})


async def send_error(send, status: int, field: str | None, message: str) -> None:
    """A JSON error in the server's format ({"error": {status, field, message}}) from raw ASGI."""
    detail = {"status": status, "field": field, "message": message}
    body = json.dumps({"error": detail, "errors": [detail]}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive, budget: int) -> None:
    """Read and discard the rest of a request body, at most `budget` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class AccountingMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in KNOWN_PATHS else "other"
            self.metrics.observe_request(endpoint, scope.get("method", ""), status[0], time.perf_counter() - start)


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = f"the request body exceeds {self.max_bytes} bytes (--max-body-bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_error(send, 400, "content-length", "Content-Length is not an integer")
            if declared > self.max_bytes:
                if declared <= DRAIN_FACTOR * self.max_bytes:
                    await _drain(receive, declared)
                return await send_error(send, 413, "body", too_big)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_FACTOR * self.max_bytes - size)
                return await send_error(send, 413, "body", too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
