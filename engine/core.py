"""The continuous engine core: one thread owns the models and the scheduler; requests enter a
bounded queue at any time and join the next tick; results leave as each image finishes.

Shaped like vLLM's engine core: callers submit requests and get futures, the loop admits new
requests between ticks (never waiting for a wave of images to drain), runs one tick
(``loop.EngineLoop.step``: schedule, execute, update) and completes the futures of the images
that finished. A request whose caller gave up (``future.cancel()``, an asyncio timeout through
``asyncio.wrap_future``) leaves the scheduler at the next tick and its state is freed.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable

from .config import EngineConfig
from .errors import IntEngineError
from .log import get_logger
from .loop import EngineLoop
from .protocols import Models
from .result import Result
from .scheduler import Steps

log = get_logger("core")


class EngineBusy(IntEngineError):
    """The request queue is full: try again later (HTTP 429)."""


class EngineClosed(IntEngineError):
    """The core no longer admits requests (closing or closed; HTTP 503)."""


@dataclass
class CoreStats:
    """What a service reports: requests by outcome, images per model batch, queue depth."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    batch_images: list[int] = field(default_factory=list)  # images carried by each model batch (bounded)


@dataclass
class _Request:
    key: int
    make: Callable[[], Steps]
    future: Future
    submitted: float


class EngineCore:
    """A scheduler loop on its own thread, fed by a bounded queue.

    Args:
        models: the loaded roles, owned by the loop's thread while it runs.
        config: the shared model-side settings (``max_in_flight``, ``max_batch_items``, devices);
            each request's algorithm settings travel in its own step generator.
        max_queue: requests waiting for admission at most; ``submit`` beyond it raises EngineBusy.
    """

    BATCH_HISTORY = 4096

    def __init__(self, models: Models, config: EngineConfig, max_queue: int = 256) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.loop = EngineLoop(models, config)
        self.loop.on_batch = self._on_batch
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=max_queue)
        self._ids = itertools.count()
        self._futures: dict[int, Future] = {}
        self._admitting = True
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.stats = CoreStats()
        self.on_batch: Callable[[str, int, float], None] | None = None  # e.g. a service's metrics
        self._thread = threading.Thread(target=self._loop, name="int-engine-core", daemon=True)
        self._thread.start()

    # ---- callers' side (any thread) ------------------------------------------------------

    def submit(self, make_steps: Callable[[], Steps], block: bool = False) -> "Future[Result]":
        """Queue one image (``make_steps`` returns its ``pipeline.image_steps`` generator; it is
        called on the loop's thread when the image is admitted). Raises EngineBusy when the queue
        is full (``block=True`` waits for room instead) and EngineClosed once ``close`` began."""
        with self._lock:
            if not self._admitting:
                raise EngineClosed("the engine is shutting down and admits no new requests")
            request = _Request(next(self._ids), make_steps, Future(), time.perf_counter())
            self.stats.submitted += 1
        try:
            # outside the lock: a blocked put must not stop close() from taking it
            self._queue.put(request, block=block)
        except queue.Full:
            self.stats.submitted -= 1
            raise EngineBusy(f"request queue full ({self._queue.maxsize} waiting)") from None
        if not self._thread.is_alive():  # closed while this put waited: nobody will run it
            request.future.cancel()
            raise EngineClosed("the engine closed before the request was admitted")
        return request.future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def in_flight(self) -> int:
        return len(self.loop.inflight)

    @property
    def alive(self) -> bool:
        """Whether the loop's thread is running (a health check's question)."""
        return self._thread.is_alive()

    @property
    def accepting(self) -> bool:
        return self._admitting and not self._queue.full()

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop admitting; with ``drain``, finish every queued and in-flight request first,
        else cancel them. Waits for the loop's thread (up to ``timeout`` seconds)."""
        with self._lock:
            self._admitting = False
        if not drain:
            while True:
                try:
                    self._queue.get_nowait().future.cancel()
                except queue.Empty:
                    break
            for future in list(self._futures.values()):
                future.cancel()
        self._stop.set()
        self._thread.join(timeout)

    # ---- the loop's side -----------------------------------------------------------------

    def _loop(self) -> None:
        loop = self.loop
        while True:
            self._admit(block=not loop.inflight)
            self._drop_cancelled()
            if not loop.inflight:
                if self._stop.is_set() and self._queue.empty():
                    return
                continue
            try:
                finished = loop.step()
            except Exception as err:  # a bug in the loop itself: fail what is in flight, keep serving
                log.exception("scheduler tick failed")
                finished = loop.scheduler.fail_all(err)
            for key, outcome in finished:
                self._complete(key, outcome)

    def _admit(self, block: bool) -> None:
        """Move queued requests into flight while there is room; wait briefly when idle."""
        sched = self.loop.scheduler
        while sched.has_room():
            try:
                request = self._queue.get(timeout=0.05) if block else self._queue.get_nowait()
            except queue.Empty:
                return
            block = False
            if request.future.cancelled():
                self.stats.cancelled += 1
                continue
            self._futures[request.key] = request.future
            done = sched.admit(request.key, request.make)
            if done is not None:
                self._complete(*done)

    def _drop_cancelled(self) -> None:
        for key, future in list(self._futures.items()):
            if future.cancelled():
                self.loop.scheduler.drop(key)
                del self._futures[key]
                self.stats.cancelled += 1

    def _complete(self, key: int, outcome: Result | Exception) -> None:
        future = self._futures.pop(key, None)
        if future is None:
            return
        try:
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
                self.stats.failed += 1
            else:
                future.set_result(outcome)
                self.stats.completed += 1
        except InvalidStateError:  # cancelled by its caller between the check and now
            self.stats.cancelled += 1

    def _on_batch(self, name: str, images: int, seconds: float) -> None:
        history = self.stats.batch_images
        history.append(images)
        del history[: max(0, len(history) - self.BATCH_HISTORY)]
        if self.on_batch is not None:
            self.on_batch(name, images, seconds)
