"""Runs a tick's plan: one model call per batch, its result cut back into each image's reply.

The executor owns what running a batch takes and the scheduler must not know: concatenating
the images' calls (``scheduler.Batch.merged``), waiting for the GPUs so that a timer charges a
call its own work, the named profiler range, charging each image its share of the seconds, and
failure isolation: when a batch raises, each of its images runs alone, so that only the image
that fails, fails.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from .calls import ModelCall, Reply, run_model, split
from .protocols import Models
from .scheduler import Batch, TickPlan
from .trace import call_range, cuda_sync


class Executor:
    """Runs plans on ``models``.

    Args:
        models: the loaded roles.
        devices: every CUDA device a role uses (``ModelsConfig.cuda_devices``), synchronised
            around each call so that its seconds are its own.
        execute: how one (batched) call runs; ``calls.run_model`` by default.
        on_batch: called after every batch with ("role.method", images carried, seconds): a
            service's metrics hang here without the loop knowing about them.
    """

    def __init__(
        self,
        models: Models,
        devices: Sequence[str] = (),
        execute: Callable[[Models, ModelCall], Any] = run_model,
        on_batch: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.models = models
        self.devices = tuple(devices)
        self.execute = execute
        self.on_batch = on_batch

    def run(self, plan: TickPlan) -> list[list[Reply | Exception]]:
        """Per batch of ``plan``, per image in it: its ``Reply``, or the exception its call raised."""
        return [self._run_batch(batch) for batch in plan.batches]

    def _run_batch(self, batch: Batch) -> list[Reply | Exception]:
        try:
            return self._timed(batch)
        except Exception as err:
            if len(batch.jobs) == 1:
                return [err]
        return [self._run_alone(Batch((job,))) for job in batch.jobs]

    def _run_alone(self, batch: Batch) -> Reply | Exception:
        """After a batch failed: this image alone, so that only a failing image fails."""
        try:
            return self._timed(batch)[0]
        except Exception as err:
            return err

    def _timed(self, batch: Batch) -> list[Reply]:
        merged = batch.merged
        cuda_sync(self.devices)
        t0 = time.perf_counter()
        with call_range(merged):
            results = split(self.execute(self.models, merged), batch.sizes)
        cuda_sync(self.devices)
        elapsed = time.perf_counter() - t0
        if self.on_batch is not None:
            self.on_batch(merged.label, len(batch.jobs), elapsed)
        total = merged.size or 1
        return [Reply(r, elapsed * n / total) for r, n in zip(results, batch.sizes)]
