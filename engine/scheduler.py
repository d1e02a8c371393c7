"""Which images' calls run together at each tick: the scheduler plans, it never runs a model.

Each image is a step generator (``pipeline.image_steps``) paused at its next model call.
``schedule`` takes the earliest call in the tick order (``calls.Call``'s member order) that any
in-flight image is waiting at and groups every image waiting at it into batches, by call key and
bounded by ``max_batch_items``: all views x {before, after} x candidates of every image in one
VLM scoring call, all views' SAM requests in one segment call, all inpainting jobs in one
diffusion batch, all images' negative mining in one ``Miner`` launch. The plan is data
(``TickPlan``); an ``executor.Executor`` runs it; ``update`` hands each image its reply and
advances it. The scheduler owns batching, never the algorithm: it runs the same steps as the
eager pipeline, so it gives the same masks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from .calls import ModelCall, Reply, concat

# The tick order is ``calls.Call``'s member order (``ModelCall.kind.rank``): declared there once.
Steps = Generator[ModelCall, Reply, Any]  # an image's steps; returns its result


@dataclass(eq=False)  # identity: two images may share a key
class _Job:
    key: Any
    steps: Steps
    call: ModelCall | None = None


@dataclass(frozen=True)
class Batch:
    """One model call of a tick: the calls of the images ``keys`` (in order), concatenated."""

    jobs: tuple[_Job, ...]

    @property
    def keys(self) -> tuple[Any, ...]:
        return tuple(j.key for j in self.jobs)

    @property
    def calls(self) -> tuple[ModelCall, ...]:
        return tuple(j.call for j in self.jobs)

    @property
    def merged(self) -> ModelCall:
        """The images' calls as one: each item list concatenated, params and keywords shared."""
        first = self.calls[0]
        items = tuple(concat([c.items[i] for c in self.calls]) for i in range(len(first.items)))
        return first.kind.call(items, first.params, first.keywords)

    @property
    def sizes(self) -> list[int]:
        """Each image's requests in the merged call, to cut its result back apart."""
        return [c.size for c in self.calls]


@dataclass(frozen=True)
class TickPlan:
    """What one tick runs: its batches, in order (all of the same call kind)."""

    tick: int
    batches: tuple[Batch, ...]


@dataclass
class TickStats:
    """What the loop did: model calls per ``role.method`` and requests per call."""

    ticks: int = 0
    calls: dict[str, int] = field(default_factory=dict)
    request_counts: dict[str, int] = field(default_factory=dict)

    def count(self, label: str, requests: int) -> None:
        """One ``role.method`` call carrying ``requests`` requests."""
        self.calls[label] = self.calls.get(label, 0) + 1
        self.request_counts[label] = self.request_counts.get(label, 0) + requests


class Scheduler:
    """The images in flight and, per tick, which of their calls are batched together.

    Args:
        max_in_flight: images whose state is held at once (memory stays flat however large the
            dataset).
        max_batch_items: requests one call carries at most.
    """

    def __init__(self, max_in_flight: int, max_batch_items: int) -> None:
        self.max_in_flight = max_in_flight
        self.max_batch_items = max_batch_items
        self.stats = TickStats()
        self.inflight: list[_Job] = []

    def has_room(self) -> bool:
        """Whether another image may be admitted (``max_in_flight``)."""
        return len(self.inflight) < self.max_in_flight

    def admit(self, key: Any, make: Callable[[], Steps]) -> tuple[Any, Any] | None:
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

    def fail_all(self, err: Exception) -> list[tuple[Any, Exception]]:
        """Every image in flight fails with ``err`` (the loop itself broke) and leaves."""
        failed = [(job.key, err) for job in self.inflight]
        for job in self.inflight:
            job.steps.close()
        self.inflight.clear()
        return failed

    def schedule(self) -> TickPlan:
        """The next tick's batches: the images waiting at the earliest call in the tick order,
        grouped by call key (role, method, params) and chunked to ``max_batch_items`` requests."""
        self.stats.ticks += 1
        if not self.inflight:
            return TickPlan(self.stats.ticks, ())
        first = min(j.call.kind.rank for j in self.inflight)
        groups: OrderedDict[tuple, list[_Job]] = OrderedDict()
        for job in self.inflight:
            if job.call.kind.rank == first:
                groups.setdefault(job.call.key, []).append(job)
        batches = []
        for jobs in groups.values():
            for chunk in self._chunks(jobs):
                batch = Batch(tuple(chunk))
                # counted from the sizes: the executor concatenates the items once, when it runs them
                self.stats.count(chunk[0].call.label, sum(batch.sizes))
                batches.append(batch)
        return TickPlan(self.stats.ticks, tuple(batches))

    def _chunks(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Split a group so that no call carries more than ``max_batch_items`` requests."""
        out, cur, n = [], [], 0
        for job in jobs:
            if cur and n + job.call.size > self.max_batch_items:
                out.append(cur)
                cur, n = [], 0
            cur.append(job)
            n += job.call.size
        return out + [cur] if cur else out

    def update(self, plan: TickPlan, replies: list[list[Reply | Exception]]) -> list[tuple[Any, Any]]:
        """Hand every image of ``plan`` its reply (``replies[b][j]``: batch b's j-th image) and
        advance it to its next call. Returns the images that finished, as ``(key, outcome)``:
        a ``Result`` or the exception that ended its steps."""
        finished = []
        for batch, batch_replies in zip(plan.batches, replies):
            for job, reply in zip(batch.jobs, batch_replies):
                if job not in self.inflight:  # dropped while its call ran
                    continue
                outcome = self._advance(job, reply)
                if outcome is not None:
                    finished.append((job, outcome))
        for job, _ in finished:
            self.inflight.remove(job)
        return [(job.key, outcome) for job, outcome in finished]

    @staticmethod
    def _advance(job: _Job, reply: Reply | Exception) -> Any:
        try:
            job.call = job.steps.throw(reply) if isinstance(reply, Exception) else job.steps.send(reply)
            return None
        except StopIteration as done:
            return done.value
        except Exception as err:
            return err
