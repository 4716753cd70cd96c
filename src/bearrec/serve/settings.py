"""The server's settings (`bearrec serve` flags), validated before any model is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bearrec.errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    """What the server trades:

    - `max_batch_size` / `max_batch_delay_ms`: a batch is decoded when it holds this many users or
      when its oldest request has waited this long; larger batches raise throughput under load, the
      delay is added latency when traffic is light;
    - `max_queue`: users waiting for a batch; beyond it requests get 503 with Retry-After (bounded
      memory and latency instead of an unbounded backlog);
    - `max_body_bytes`, `max_history`, `max_request_users`: the largest request body, history and
      batch request accepted (413 / 422 above them).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    max_batch_delay_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 64 * 1024
    max_history: int = 200
    max_request_users: int = 64
    retry_after_s: int = 1
    log_level: str = "warning"

    def __post_init__(self):
        checks = [("--port", self.port, 0, 65535), ("--max-batch-size", self.max_batch_size, 1, None),
                  ("--max-batch-delay-ms", self.max_batch_delay_ms, 0, 60_000), ("--max-queue", self.max_queue, 1, None),
                  ("--max-body-bytes", self.max_body_bytes, 64, None), ("--max-history", self.max_history, 1, None),
                  ("--max-request-users", self.max_request_users, 1, None), ("retry_after_s", self.retry_after_s, 0, None)]
        for flag, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(f"{flag} must be a number, got {value!r}")
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high is not None else f">= {low}"
                raise ConfigError(f"{flag} must be {bound}, got {value}")
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(f"--host must be a host name or address, got {self.host!r}")

    @property
    def request_users_limit(self) -> int:
        """Users one batch request may carry: it must fit in the queue to be admitted at all."""
        return min(self.max_request_users, self.max_queue)

    def as_dict(self) -> dict:
        return asdict(self)


def settings_from_args(args) -> ServeSettings:
    """`ServeSettings` from the parsed `bearrec serve` flags (a bad value is a one-line ConfigError)."""
    fields = ("host", "port", "max_batch_size", "max_batch_delay_ms", "max_queue", "max_body_bytes", "max_history",
              "max_request_users", "log_level")
    return ServeSettings(**{f: getattr(args, f) for f in fields if getattr(args, f, None) is not None})
