"""Many images in flight; at every tick, one batch per model.

Each image is a step generator (``pipeline.image_steps``) paused at its next model call.
A tick takes the earliest call (in the tick order declared by ``calls.Call``) that any in-flight image is
waiting at, concatenates that call of every image waiting at it (all views x {before, after} x candidates of every image in one VLM scoring call, all
views' SAM requests in one segment call, all inpainting jobs in one diffusion batch, one
mining launch for the whole padded [B, V, C] tick, ``mining.mine_batch``), runs each batch once and hands every
image its share. The scheduler owns batching, never the algorithm: it runs the same steps
as the eager pipeline, so it gives the same masks.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from . import mining
from .calls import ModelCall, Reply, concat, run_model, split
from .config import EngineConfig
from .memory import trim_heap
from .protocols import Models
from .result import Result
from .trace import call_range, cuda_sync

# The tick order is ``calls.Call``'s member order (``ModelCall.kind.rank``): declared there once.
Steps = Any  # Generator[ModelCall, Reply, Result]


@dataclass
class _Job:
    key: Any
    steps: Steps
    call: ModelCall | None = None


@dataclass
class TickStats:
    """What the loop did: model calls per (role, method) and requests per call."""

    ticks: int = 0
    calls: dict[str, int] | None = None
    request_counts: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.calls, self.request_counts = {}, {}

    def count(self, call: ModelCall, requests: int | None = None) -> None:
        """One call of ``call``'s kind carrying ``requests`` requests (default: its own size)."""
        name = call.label
        self.calls[name] = self.calls.get(name, 0) + 1
        self.request_counts[name] = self.request_counts.get(name, 0) + (call.size if requests is None else requests)


class Scheduler:
    """Runs step generators for many images with batched model calls.

    Args:
        models: the loaded roles.
        config: ``max_in_flight`` bounds the images whose state is held at once (memory stays
            flat however large the dataset); ``max_batch_items`` bounds the requests of one call.
        execute: how one (batched) call runs; ``calls.run_model`` by default.
    """

    def __init__(self, models: Models, config: EngineConfig, execute: Callable[[Models, ModelCall], Any] = run_model) -> None:
        self.models = models
        self.config = config
        self.execute = execute
        self.stats = TickStats()
        self.inflight: list[_Job] = []
        # called after every model batch with ("role.method", images carried, seconds): a
        # service's metrics hang here without the loop knowing about them
        self.on_batch: Callable[[str, int, float], None] | None = None
        self._last_trim = time.monotonic()

    def run(self, jobs: Iterable[tuple[Any, Callable[[], Steps]]]) -> Iterator[tuple[Any, Result | Exception]]:
        """Yield ``(key, Result)`` as images finish (not in input order), or ``(key, error)`` for an
        image whose preparation or steps raised. ``jobs`` yields ``(key, make_steps)``; ``make_steps``
        is called only when the image is admitted, so images are read lazily."""
        pending = iter(jobs)
        exhausted = False
        while self.inflight or not exhausted:
            while not exhausted and self.has_room():
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

    def has_room(self) -> bool:
        """Whether another image may be admitted (``max_in_flight``)."""
        return len(self.inflight) < self.config.max_in_flight

    def admit(self, key: Any, make: Callable[[], Steps]) -> tuple[Any, Result | Exception] | None:
        """Start an image: its steps run up to their first model call, which joins the next tick.
        Returns ``(key, outcome)`` if it finished or failed before any call, else None."""
        job = _Job(key, None)
        try:
            job.steps = make()
            job.call = next(job.steps)
        except StopIteration as done:
            return key, done.value
        except Exception as err:  # one image's failure is that image's result
            return key, err
        self.inflight.append(job)
        return None

    def drop(self, key: Any) -> bool:
        """Take an image out of flight (its caller gave up): its state is freed, and it joins no
        further call. Returns whether it was in flight."""
        for job in self.inflight:
            if job.key == key:
                self.inflight.remove(job)
                job.steps.close()
                return True
        return False

    def step(self) -> list[tuple[Any, Result | Exception]]:
        """One tick: decide which calls run (``_decide``), execute each as one batch, advance every
        image it carried. Returns the images that finished, as ``(key, outcome)``."""
        self.stats.ticks += 1
        finished = []
        for chunk in self._decide(self.inflight):
            for job, reply in self._run_group(chunk):
                outcome = self._advance(job, reply)
                if outcome is not None:
                    finished.append((job, outcome))
        for job, _ in finished:
            self.inflight.remove(job)
        self._maybe_trim_heap()
        return [(job.key, outcome) for job, outcome in finished]

    def _maybe_trim_heap(self) -> None:
        """``trim_heap`` once no image is in flight, or when ``trim_heap_every_s`` has passed since
        the last trim: trimming costs a tick the page faults of its buffers' return."""
        if not self.config.trim_heap:
            return
        now = time.monotonic()
        if not self.inflight or now - self._last_trim >= self.config.trim_heap_every_s:
            trim_heap()
            self._last_trim = now

    def _decide(self, inflight: list[_Job]) -> list[list[_Job]]:
        """The tick's batches: the images waiting at the earliest call in the tick order (``calls.Call``),
        grouped by call key (role, method, params) and chunked to ``max_batch_items`` requests."""
        first = min(j.call.kind.rank for j in inflight)
        groups: OrderedDict[tuple, list[_Job]] = OrderedDict()
        for job in inflight:
            if job.call.kind.rank == first:
                groups.setdefault(job.call.key, []).append(job)
        return [chunk for jobs in groups.values() for chunk in self._chunks(jobs)]

    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Split a group so that no call carries more than ``max_batch_items`` requests."""
        out, cur, n = [], [], 0
        for job in jobs:
            if cur and n + job.call.size > self.config.max_batch_items:
                out.append(cur)
                cur, n = [], 0
            cur.append(job)
            n += job.call.size
        return out + [cur] if cur else out

    def _run_group(self, jobs: list[_Job]) -> list[tuple[_Job, Reply | Exception]]:
        first = jobs[0].call
        devices = self.config.models.cuda_devices  # every GPU a role uses, not the current one only
        cuda_sync(devices)
        t0 = time.perf_counter()
        try:
            if first.kind.field is None:  # negative mining: no model, one fused launch for the tick
                results = mining.mine_batch([j.call for j in jobs], mining.mining_device(self.config))
                self.stats.count(first, requests=len(jobs))  # one launch, one request per image
            else:
                merged = ModelCall(
                    first.stage,
                    first.role,
                    first.method,
                    tuple(concat([j.call.items[i] for j in jobs]) for i in range(len(first.items))),
                    first.params,
                    first.keywords,
                )
                with call_range(merged):
                    results = split(self.execute(self.models, merged), [j.call.size for j in jobs])
                self.stats.count(merged)
            cuda_sync(devices)
        except Exception:
            if len(jobs) == 1:
                raise
            return [(job, reply) for sub in ([j] for j in jobs) for job, reply in self._run_isolated(sub[0])]
        elapsed = time.perf_counter() - t0
        if self.on_batch is not None:
            self.on_batch(first.label, len(jobs), elapsed)
        total = sum(j.call.size for j in jobs) or 1
        return [(j, Reply(r, elapsed * j.call.size / total)) for j, r in zip(jobs, results)]

    def _run_isolated(self, job: _Job) -> list[tuple[_Job, Reply | Exception]]:
        """After a batch failed: this image alone, so that only a failing image fails."""
        try:
            return self._run_group([job])
        except Exception as err:
            return [(job, err)]

    @staticmethod
    def _advance(job: _Job, reply: Reply | Exception) -> Result | Exception | None:
        try:
            job.call = job.steps.throw(reply) if isinstance(reply, Exception) else job.steps.send(reply)
            return None
        except StopIteration as done:
            return done.value
        except Exception as err:
            return err
