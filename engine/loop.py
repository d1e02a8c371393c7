"""The engine's loop, as vLLM's core runs it: ``schedule()`` -> ``Executor.run(plan)`` ->
``update(plan, replies)``, tick after tick, with the host heap trimmed between ticks.

``EngineLoop`` is synchronous (``run`` for a batch of images, ``step`` for one tick);
``core.EngineCore`` runs the same loop on its own thread for requests that arrive at any time.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

from .calls import ModelCall, run_model
from .config import EngineConfig
from .executor import Executor
from .memory import trim_heap
from .protocols import Models
from .scheduler import Scheduler, Steps


class EngineLoop:
    """Runs step generators for many images with batched model calls.

    Args:
        models: the loaded roles.
        config: ``max_in_flight``, ``max_batch_items``, the devices to synchronise and the heap
            trimming (``trim_heap``, ``trim_heap_every_s``).
        execute: how one (batched) call runs; ``calls.run_model`` by default.
    """

    def __init__(self, models: Models, config: EngineConfig, execute: Callable[[Models, ModelCall], Any] = run_model) -> None:
        self.config = config
        self.scheduler = Scheduler(config.max_in_flight, config.max_batch_items)
        self.executor = Executor(models, config.models.cuda_devices, execute)
        self._last_trim = time.monotonic()

    @property
    def stats(self):
        """The scheduler's ``TickStats``: ticks, calls and requests per ``role.method``."""
        return self.scheduler.stats

    @property
    def inflight(self) -> list:
        return self.scheduler.inflight

    @property
    def on_batch(self) -> Callable[[str, int, float], None] | None:
        """Called after every model batch with ("role.method", images carried, seconds)."""
        return self.executor.on_batch

    @on_batch.setter
    def on_batch(self, hook: Callable[[str, int, float], None] | None) -> None:
        self.executor.on_batch = hook

    def admit(self, key: Any, make: Callable[[], Steps]) -> tuple[Any, Any] | None:
        """``Scheduler.admit``: the image joins the next tick, or its outcome if it needed no call."""
        return self.scheduler.admit(key, make)

    def step(self) -> list[tuple[Any, Any]]:
        """One tick: plan, run, advance. Returns the images that finished, as ``(key, outcome)``."""
        plan = self.scheduler.schedule()
        finished = self.scheduler.update(plan, self.executor.run(plan))
        self._maybe_trim_heap()
        return finished

    def run(self, jobs: Iterable[tuple[Any, Callable[[], Steps]]]) -> Iterator[tuple[Any, Any]]:
        """Yield ``(key, Result)`` as images finish (not in input order), or ``(key, error)`` for an
        image whose preparation or steps raised. ``jobs`` yields ``(key, make_steps)``; ``make_steps``
        is called only when the image is admitted, so images are read lazily."""
        pending = iter(jobs)
        exhausted = False
        while self.inflight or not exhausted:
            while not exhausted and self.scheduler.has_room():
                try:
                    key, make = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                done = self.admit(key, make)
                if done is not None:
                    yield done
            if self.inflight:
                yield from self.step()

    def _maybe_trim_heap(self) -> None:
        """``trim_heap`` once no image is in flight, or when ``trim_heap_every_s`` has passed since
        the last trim: trimming costs a tick the page faults of its buffers' return."""
        if not self.config.trim_heap:
            return
        now = time.monotonic()
        if not self.inflight or now - self._last_trim >= self.config.trim_heap_every_s:
            trim_heap()
            self._last_trim = now
