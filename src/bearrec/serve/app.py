"""The HTTP API (FastAPI): routes, error handlers and the state they share (`Service`).

Every error is JSON, `{"error": {"status", "field", "message"}, "errors": [...]}`, naming the field:
422 for invalid input (unknown id or title, empty or too long history, k out of 1..num_beams,
wrong types, unknown keys), 400 for invalid JSON, 413 for a body over `max_body_bytes`, 404/405 for
unknown routes, 503 with Retry-After while the model loads, when the queue is full or while
shutting down. `create_app(settings)` returns the app; `Service.attach(served)` (any thread) makes it
ready.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from bearrec import __version__
from bearrec.serve.batcher import Batcher, BatcherClosed, QueueFull
from bearrec.serve.metrics import Metrics
from bearrec.serve.middleware import AccountingMiddleware, BodyLimitMiddleware
from bearrec.serve.model import ApiError, ServedModel
from bearrec.serve.schemas import BatchRequest, BatchResponse, ErrorResponse, RecommendRequest, RecommendResponse
from bearrec.serve.settings import ServeSettings

log = logging.getLogger("bearrec.serve")
ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 422, 503)}
UNION_TAGS = {"int", "str"}  # pydantic's loc suffixes for the members of `int | str`


class Service:
    """The model once loaded, its batcher, readiness and metrics. `decode_hook(decode) -> decode`
    wraps the decoder (tests use it to slow or block decoding)."""

    def __init__(self, settings: ServeSettings, decode_hook: Callable | None = None):
        self.settings, self.decode_hook = settings, decode_hook
        self.served: ServedModel | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.stopping = False
        self.metrics = Metrics(lambda: self.batcher.depth if self.batcher else 0,
                               lambda: self.batcher.in_flight if self.batcher else 0, lambda: float(self.ready))

    @property
    def ready(self) -> bool:
        return self.served is not None and not self.stopping

    def attach(self, served: ServedModel) -> None:
        """Start serving `served` (called once, from any thread, when the model is loaded)."""
        decode = served.recommender.recommend
        if self.decode_hook is not None:
            decode = self.decode_hook(decode)
        s = self.settings
        self.batcher = Batcher(decode, s.max_batch_size, s.max_batch_delay_ms / 1000, s.max_queue,
                               on_batch=self.metrics.observe_batch).start()
        self.served = served

    def fail(self, message: str) -> None:
        self.error = message

    def require(self) -> ServedModel:
        if self.served is not None and not self.stopping:
            return self.served
        if self.stopping:
            reason = "the server is shutting down"
        else:
            reason = f"the model failed to load: {self.error}" if self.error else "the model is loading"
        raise ApiError(None, reason, 503, {"Retry-After": str(self.settings.retry_after_s)})

    async def decode(self, histories: list) -> list:
        try:
            return await self.batcher.submit(histories)
        except (QueueFull, BatcherClosed) as exc:
            self.metrics.rejected.inc()
            message = f"the server is busy ({exc}); retry later" if isinstance(exc, QueueFull) else str(exc)
            raise ApiError(None, message, 503, {"Retry-After": str(self.settings.retry_after_s)}) from None

    async def close(self) -> None:
        self.stopping = True
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close)


def _error(status: int, errors: list[tuple[str | None, str]], headers: dict | None = None) -> JSONResponse:
    details = [{"status": status, "field": f, "message": m} for f, m in errors]
    return JSONResponse({"error": details[0], "errors": details}, status_code=status, headers=headers)


def _validation_errors(exc: RequestValidationError) -> tuple[int, list[tuple[str, str]]]:
    merged: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        if err.get("type") == "json_invalid":
            return 400, [("body", f"invalid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")]
        if loc and loc[0] == "body":
            loc = loc[1:]
        union = bool(loc) and loc[-1] in UNION_TAGS
        loc = loc[:-1] if union else loc
        field = ".".join(loc) or "body"
        if field == "body":
            message = "a JSON object body is required"
        elif union:
            message = "expected an item id (a JSON integer) or an exact catalogue title (a JSON string)"
        elif err.get("type") == "missing":
            message = "this field is required"
        else:
            message = err.get("msg", "invalid")
        if message not in merged.setdefault(field, []):
            merged[field].append(message)
    return 422, [(field, " or ".join(messages)) for field, messages in list(merged.items())[:20]]


def create_app(settings: ServeSettings, service: Service | None = None) -> FastAPI:
    """The FastAPI app; `app.state.service` is its `Service` (attach a model to make it ready)."""
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await service.close()  # uvicorn has finished the in-flight requests; decode what is queued

    app = FastAPI(title="bearrec", version=__version__, lifespan=lifespan,
                  description="Top-K recommendations from a bearrec model: trie-constrained beam search, batched.",
                  telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False})
    app.state.service = service

    @app.exception_handler(ApiError)
    async def input_error(request, exc: ApiError):
        return _error(exc.status, [(exc.field, exc.message)], exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        return _error(*_validation_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):
        return _error(exc.status_code, [(None, str(exc.detail))], getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        log.exception("request failed")
        return _error(500, [(None, f"internal error: {type(exc).__name__}")])

    @app.get("/health", summary="the process is alive")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="the model is loaded and requests are accepted", responses={503: {}})
    async def ready():
        if service.ready:
            return {"ready": True}
        reason = "shutting down" if service.stopping else (service.error or "loading the model")
        return JSONResponse({"ready": False, "reason": reason}, status_code=503,
                            headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/info", summary="run directory, config hash, dataset, catalogue size, decode and serve settings",
             responses=ERRORS)
    async def info():
        return {**service.require().info, "serve": settings.as_dict(), "bearrec_version": __version__}

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def metrics():
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS,
              summary="top-k items for one history (item ids or exact titles)")
    async def recommend(body: RecommendRequest):
        served = service.require()
        history, exclude = served.resolve(body.history, "history", settings.max_history)
        k = served.check_k(body.k, "k")
        (rec,) = await service.decode([history])
        return {"history": list(history), "model": served.identity,
                "recommendations": served.rows(rec, k, exclude if body.exclude_history else frozenset())}

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=ERRORS,
              summary="top-k items for several users in one call (decoded together)")
    async def recommend_batch(body: BatchRequest):
        served = service.require()
        limit = settings.request_users_limit
        if not body.users or len(body.users) > limit:
            raise ApiError("users", f"give between 1 and {limit} users, got {len(body.users)}")
        parsed = []
        for i, user in enumerate(body.users):
            history, exclude = served.resolve(user.history, f"users.{i}.history", settings.max_history)
            parsed.append((history, exclude if user.exclude_history else frozenset(), served.check_k(user.k, f"users.{i}.k")))
        recs = await service.decode([history for history, _, _ in parsed])
        return {"model": served.identity,
                "results": [{"history": list(history), "recommendations": served.rows(rec, k, exclude)}
                            for (history, exclude, k), rec in zip(parsed, recs)]}

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccountingMiddleware, metrics=service.metrics)  # outermost: sees every refusal
    return app
