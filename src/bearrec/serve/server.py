"""Running the app: uvicorn on a socket bound first (so a busy port is a one-line error and port 0
works), the model loaded on a thread while `/health` already answers, graceful shutdown.

`run_server(settings, load)` is `bearrec serve`: `load(checked)` builds the `ServedModel` and calls
`checked()` once the config and data are valid, before the model is loaded; a busy port or an
error up to that point is raised before anything is served; a later one (the model) stops the
server and is raised after. SIGINT / SIGTERM stop accepting connections, finish the in-flight requests, decode what is
queued, then return 0. `ServerThread` runs an app in a background thread (tests, notebooks).
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable

import uvicorn

from bearrec.errors import BearrecError
from bearrec.serve.app import Service, create_app
from bearrec.serve.model import ServedModel
from bearrec.serve.settings import ServeSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); a one-line error if it cannot be."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise BearrecError(f"--host {host}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    except OSError as exc:
        sock.close()
        raise BearrecError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGINT / SIGTERM ends in a normal return once the graceful
    shutdown is done (uvicorn re-raises the signal afterwards: a traceback or a killed process)."""

    @contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _uvicorn(app, settings: ServeSettings) -> _Server:
    config = uvicorn.Config(app, log_level=settings.log_level, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=None, server_header=False)
    return _Server(config)


def run_server(settings: ServeSettings, load: Callable[[Callable[[], None]], ServedModel], out=None) -> int:
    """`bearrec serve`: listen, load the model in the background, serve until SIGINT / SIGTERM."""
    out = out or sys.stdout
    service = Service(settings)
    app = create_app(settings, service)
    checked, outcome, holder = threading.Event(), {}, {}

    def loader():
        start = time.perf_counter()
        try:
            served = load(checked.set)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = exc
            service.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            checked.set()
            if "server" in holder:
                holder["server"].should_exit = True
            return
        service.attach(served)
        print(f"bearrec serve: model ready in {time.perf_counter() - start:.1f} s ({served.identity['model']}, "
              f"{served.identity['dataset']}, {len(served.catalogue)} items)", file=out, flush=True)

    sock = bind(settings.host, settings.port)  # a busy port fails before anything is loaded
    threading.Thread(target=loader, name="bearrec-load", daemon=True).start()
    checked.wait()  # config and data checked (or failed): only then serve
    if "error" in outcome:
        sock.close()
        raise outcome["error"]
    server = holder["server"] = _uvicorn(app, settings)
    if "error" in outcome:  # the model failed before the server existed
        sock.close()
        raise outcome["error"]
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"bearrec serve: listening on http://{host}:{port} (GET /ready turns 200 once the model is loaded)",
          file=out, flush=True)
    server.run(sockets=[sock])
    if "error" in outcome:
        raise outcome["error"]
    print("bearrec serve: stopped", file=out, flush=True)
    return 0


class ServerThread:
    """`with ServerThread(app, settings) as srv:` serves `app` on a free loopback port in a background
    thread (`srv.url`); leaving the block shuts it down gracefully and waits for it."""

    def __init__(self, app, settings: ServeSettings, host: str = "127.0.0.1"):
        self.sock = bind(host, 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = _uvicorn(app, settings)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"uvicorn-{self.port}")

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server thread did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __exit__(self, *exc) -> None:
        self.stop()
