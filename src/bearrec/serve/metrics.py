"""Prometheus metrics of one server (its own registry, so several apps in one process never mix):
requests by endpoint and status, request latency, users per decoded batch, decode time, queue depth,
users being decoded, readiness and 503 refusals. `/metrics` renders them in the text format."""

from __future__ import annotations

from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, queue_depth: Callable[[], float], in_flight: Callable[[], float], ready: Callable[[], float]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("bearrec_http_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("bearrec_http_request_duration_seconds", "time from request to response, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("bearrec_batch_size", "users decoded together in one batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("bearrec_batch_decode_seconds", "time to decode one batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("bearrec_queue_rejections", "requests refused with 503 (queue full or shutting down)",
                                registry=r)
        Gauge("bearrec_queue_depth", "users waiting for a batch", registry=r).set_function(queue_depth)
        Gauge("bearrec_batch_in_flight_users", "users of the batch being decoded", registry=r).set_function(in_flight)
        Gauge("bearrec_model_ready", "1 once the model is loaded and the server accepts requests",
              registry=r).set_function(ready)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, users: int, seconds: float) -> None:
        self.batch_size.observe(users)
        self.batch_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
