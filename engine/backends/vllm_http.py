"""The HTTP side of the ``openai`` VLM backend (``vlm_openai``): one keep-alive client to an
OpenAI-compatible server (``vllm serve``), a call's requests sent concurrently with at most
``concurrency`` in flight, each with a timeout and a bounded number of retries, the API key read
from an environment variable (never from the config itself).

A try is repeated after a transport error (refused connection, reset, timeout) or a status in
``RETRY_STATUSES``, waiting the answer's ``Retry-After`` seconds or else ``BACKOFF_S`` doubled each
try (both capped at ``MAX_WAIT_S``); any other status, or the last try's failure, raises
``ServerError`` with the method, URL, status and the server's own message.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlsplit

from ..errors import ConfigError

ROLE = "vlm"
# Statuses worth another try: a timeout, throttling, and the errors a busy or restarting server gives.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_S = 0.5
MAX_WAIT_S = 30.0


class ServerError(RuntimeError):
    """A request the server refused, or that failed on every try."""


def api_root(base_url: str) -> str:
    """The URL requests go under: ``base_url`` without a trailing slash, ``/v1`` appended when it
    has no path (``http://host:8000`` -> ``http://host:8000/v1``; ``https://gw/llava/v1`` as is)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{ROLE}: base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    root = base_url.rstrip("/")
    return root if parts.path.strip("/") else root + "/v1"


def api_key(env_name: str | None) -> str | None:
    """The key in environment variable ``env_name`` (None: no key is sent)."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise ConfigError(f"{ROLE}: api_key_env names {env_name!r}, but that environment variable is not set or empty")
    return key


def retry_wait(attempt: int, retry_after: str | None) -> float:
    """Seconds to wait before try ``attempt + 2``: the server's ``Retry-After`` (seconds) when it
    gives one, else ``BACKOFF_S * 2**attempt``; at most ``MAX_WAIT_S``."""
    try:
        wait = float(retry_after) if retry_after is not None else BACKOFF_S * 2**attempt
    except ValueError:  # an HTTP date: not worth parsing for a bounded wait
        wait = BACKOFF_S * 2**attempt
    return min(max(wait, 0.0), MAX_WAIT_S)


def error_message(response) -> str:
    """The server's message in an error answer: vLLM's ``{"error": {"message"}}`` (or
    ``{"message"}``), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(body)[:300]


class ServerClient:
    """Requests to one server's API root: ``get`` / ``post`` one, ``post_many`` a call's worth
    concurrently. ``sent`` counts the HTTP requests made, retries included; ``in_flight_max`` the
    most that were ever in flight at once. ``transport``: an httpx transport (tests)."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        retries: int = 2,
        transport: Any = None,
    ) -> None:
        import httpx

        if concurrency < 1:
            raise ConfigError(f"{ROLE}: concurrency must be >= 1, got {concurrency}")
        if timeout_s <= 0:
            raise ConfigError(f"{ROLE}: timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ConfigError(f"{ROLE}: retries must be >= 0, got {retries}")
        self.root = api_root(base_url)
        self.concurrency, self.retries = concurrency, retries
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.http = httpx.Client(base_url=self.root, headers=headers, timeout=timeout_s, limits=limits, transport=transport)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vlm-openai")
        self.sent = 0
        self.in_flight_max = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.http.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, body: dict) -> Any:
        return self._request("POST", path, body)

    def post_many(self, path: str, bodies: Sequence[dict]) -> list[Any]:
        """Every body POSTed to ``path``, at most ``concurrency`` at once; the answers in order.
        The first failure cancels the requests not yet sent and raises, naming its request."""
        futures = [self.pool.submit(self.post, path, body) for body in bodies]
        answers = []
        for j, future in enumerate(futures):
            try:
                answers.append(future.result())
            except BaseException as err:
                for rest in futures[j + 1 :]:
                    rest.cancel()
                if isinstance(err, ServerError):
                    raise ServerError(f"request {j} of {len(bodies)}: {err}") from err
                raise
        return answers

    def _request(self, method: str, path: str, body: dict | None = None) -> Any:
        import httpx

        where = f"{method} {self.root}{path}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._send(method, path, body)
            except httpx.TransportError as err:  # refused, reset, timed out
                if last:
                    raise ServerError(f"{ROLE}: {where}: {type(err).__name__}: {err} (tries: {attempt + 1})") from err
                time.sleep(retry_wait(attempt, None))
                continue
            if response.status_code == 200:
                return response.json()
            if response.status_code in RETRY_STATUSES and not last:
                time.sleep(retry_wait(attempt, response.headers.get("retry-after")))
                continue
            raise ServerError(f"{ROLE}: {where}: {response.status_code} {error_message(response)} (tries: {attempt + 1})")
        raise AssertionError("unreachable")

    def _send(self, method: str, path: str, body: dict | None):
        with self._lock:
            self.sent += 1
            self._in_flight += 1
            self.in_flight_max = max(self.in_flight_max, self._in_flight)
        try:
            return self.http.request(method, path, json=body)
        finally:
            with self._lock:
                self._in_flight -= 1
