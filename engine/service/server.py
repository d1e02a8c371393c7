"""Running the app under uvicorn with a graceful SIGTERM: stop admitting (new requests get
503), let the requests in flight finish within a grace period, then exit 0."""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from ..log import get_logger
from .app import ServiceSettings, create_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..api import IntEngine

log = get_logger("service")


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose first SIGTERM/SIGINT drains instead of stopping at once: the app
    answers 503 to new work while the engine core finishes what it holds (at most ``grace_s``
    seconds), then the server stops. A second signal stops it at once. The signal is not
    re-raised afterwards (uvicorn's default), so a drained shutdown exits 0."""

    def __init__(self, config: uvicorn.Config, app: "FastAPI", engine: "IntEngine", grace_s: float) -> None:
        super().__init__(config)
        self.int_app, self.engine, self.grace_s = app, engine, grace_s
        self._draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining is not None:  # a second signal: stop now
            self.should_exit = True
            self.force_exit = sig == signal.SIGINT
            return
        log.warning("signal %d: draining (new requests get 503, at most %.0f s)", sig, self.grace_s)
        self.int_app.state.draining = True
        self._draining = threading.Thread(target=self._drain, name="int-engine-drain", daemon=True)
        self._draining.start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_s
        core = self.engine.core
        while time.monotonic() < deadline and (core.queue_depth or core.in_flight or self.int_app.state.active):
            time.sleep(0.05)
        if core.queue_depth or core.in_flight:
            log.warning("grace period over with %d queued and %d in flight: cancelling them", core.queue_depth, core.in_flight)
        self.should_exit = True


def serve(
    engine: "IntEngine", settings: ServiceSettings | None = None, host: str = "127.0.0.1", port: int = 8000, grace_s: float = 30.0
) -> int:
    """Serve ``engine`` until SIGTERM/SIGINT; returns the exit code (0 after a drained stop)."""
    app = create_app(engine, settings)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=max(1, int(grace_s))
    )
    server = DrainingServer(config, app, engine, grace_s)
    log.warning("serving on http://%s:%d (POST /v1/segment, GET /healthz /readyz /metrics /docs)", host, port)
    server.run()
    engine.close()
    return 0
