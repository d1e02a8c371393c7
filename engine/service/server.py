"""Running the app under uvicorn with a graceful SIGTERM: stop admitting (new requests get
503), let the requests in flight finish within a grace period, then exit 0. A connection's
request headers must arrive within the upload timeout and under ``MAX_HEADER_BYTES``
(``header_limited``): uvicorn itself waits for them forever and keeps however many bytes come."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from ..log import get_logger
from .app import ServiceSettings, create_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..api import IntEngine

log = get_logger("service")

MAX_HEADER_BYTES = 64 * 1024  # a request line and headers beyond this get 431 (h11's own limit is 16 KiB)


def _refusal(status: int, reason: str) -> bytes:
    body = f"{status} {reason}\n".encode()
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def header_limited(base: type[asyncio.Protocol], timeout_s: float, max_bytes: int = MAX_HEADER_BYTES) -> type:
    """uvicorn's HTTP protocol ``base`` with a deadline and a size bound on each request's
    headers: from the connection (or a later request's first byte) they have ``timeout_s``
    seconds (then 408) and ``max_bytes`` bytes (then 431), and the connection is closed. Once
    they are in, the app has the request and ``upload.read_body`` bounds its body. Relies on
    the protocol's ``cycle`` (the request being answered, set when its headers are complete),
    ``cycle.response_complete`` and ``cycle.more_body``, in uvicorn's h11 and httptools protocols alike (the pin's; the
    real-socket tests in tests/service/test_limits.py fail if they go)."""

    class HeaderLimited(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            super().connection_made(transport)
            self.header_timer: asyncio.TimerHandle | None = None
            self.header_bytes = 0
            self._arm()  # a client that connects and says nothing is timed too

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:  # no request being answered
                if self.header_timer is None:
                    self._arm()  # the first bytes of the next request (or the unread rest of the last)
                if cycle is None or not cycle.more_body:  # not the rest of an answered request's body
                    self.header_bytes += len(data)
            super().data_received(data)
            if self.cycle is not cycle:
                self._disarm()  # headers complete: the request is the app's
            elif self.header_timer is not None and self.header_bytes > max_bytes:
                self._refuse(431, "Request Header Fields Too Large")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            loop = asyncio.get_running_loop()
            self.header_timer, self.header_bytes = loop.call_later(timeout_s, self._refuse, 408, "Request Timeout"), 0

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _refuse(self, status: int, reason: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_refusal(status, reason))
                self.transport.close()

    return HeaderLimited


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
    settings = settings or ServiceSettings()
    app = create_app(engine, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(grace_s)),
        http=header_limited(AutoHTTPProtocol, settings.limits.upload_timeout_s),
    )
    server = DrainingServer(config, app, engine, grace_s)
    log.warning("serving on http://%s:%d (POST /v1/segment, GET /healthz /readyz /metrics /docs)", host, port)
    server.run()
    engine.close()
    return 0
