"""The continuous engine core: requests enter at any time from any thread, with their own
options, share the model batches, and leave as each finishes; cancelled requests leave the
scheduler at the next tick; a full queue refuses, a closing core drains."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from int_engine.api import IntEngine
from int_engine.config import EngineConfig, request_config
from int_engine.core import EngineBusy, EngineClosed
from int_engine.errors import ConfigError
from int_engine.pipeline import run
from int_engine.testing import ColourWorld, Thing, scripted_models
from int_engine.testing.scenes import compose, ellipse

H, W = 72, 96
WORLD = ColourWorld(
    [
        Thing("bark", (120, 80, 40), kind="background"),
        Thing("frog", (70, 140, 50)),
        Thing("polyp", (200, 120, 120)),
        Thing("snake", (150, 40, 150), confusions={"bark": 0.08}),
    ]
)


def scene(seed: int, thing: str = "frog") -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = ellipse(H, W, rng.uniform(25, 70), rng.uniform(20, 50), rng.uniform(10, 20), rng.uniform(8, 14))
    return compose(WORLD, "bark", [(thing, mask)], H, W, seed=seed).image


class SlowSegmenter:
    """The scripted segmenter, ``delay`` seconds slower per call: keeps images in flight."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.calls = inner, delay, []

    def segment(self, requests):
        self.calls.append(len(requests))
        time.sleep(self.delay)
        return self.inner.segment(requests)


def slow_models(delay: float):
    models = scripted_models(WORLD)
    models.segmenter = SlowSegmenter(models.segmenter, delay)
    return models


def test_requests_with_their_own_options_equal_the_eager_pipeline_whatever_is_in_flight():
    """16 requests from 8 threads, three tasks, 1-3 iterations, two seeds: each result equals
    the eager pipeline on its own config; the batches carried several requests."""
    models = slow_models(0.01)
    base = EngineConfig(iterations=2, max_in_flight=6)
    requests = [
        (
            scene(s, ("frog", "polyp", "snake")[s % 3]),
            {"task": ("frog", "polyp", "snake")[s % 3], "iterations": 1 + s % 3, "seed": s % 2},
        )
        for s in range(16)
    ]
    with IntEngine(base, models=models) as engine, ThreadPoolExecutor(8) as pool:
        futures = list(pool.map(lambda r: engine.submit(r[0], **r[1]), requests))
        results = [f.result(timeout=120) for f in futures]
        stats = engine.core.stats
    for (image, options), got in zip(requests, results):
        want = run(image, scripted_models(WORLD), request_config(base, **options))
        assert got.trace.task == options["task"] and len(got.trace.iterations) <= options["iterations"]
        np.testing.assert_array_equal(got.binary, want.binary)
        np.testing.assert_allclose(got.soft, want.soft, atol=1e-6)
    assert stats.completed == 16 and max(stats.batch_images) > 1


def test_a_cancelled_request_leaves_the_scheduler_and_the_others_finish():
    models = slow_models(0.05)
    with IntEngine(EngineConfig(iterations=3, max_in_flight=4), models=models) as engine:
        keep = [engine.submit(scene(s)) for s in range(3)]
        gone = engine.submit(scene(9))
        deadline = time.time() + 30
        while engine.core.in_flight < 4 and time.time() < deadline:
            time.sleep(0.01)
        assert gone.cancel()
        while engine.core.stats.cancelled < 1 and time.time() < deadline:
            time.sleep(0.01)
        assert engine.core.stats.cancelled == 1 and engine.core.in_flight <= 3
        assert all(f.result(timeout=60).binary.shape == (H, W) for f in keep)
        assert engine.core.in_flight == 0 and engine.core.stats.completed == 3


def test_segment_async_timeout_cancels_the_request():
    models = slow_models(0.2)

    async def main(engine):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(engine.segment_async(scene(1)), timeout=0.1)
        return await engine.segment_async(scene(2), iterations=1)

    with IntEngine(EngineConfig(iterations=3), models=models) as engine:
        result = asyncio.run(main(engine))
        assert result.binary.shape == (H, W) and engine.core.stats.cancelled == 1


def test_a_full_queue_refuses_and_close_drains_then_refuses():
    gate = threading.Event()

    class Gate:
        def __init__(self, inner):
            self.inner = inner

        def segment(self, requests):
            gate.wait(30)
            return self.inner.segment(requests)

    models = scripted_models(WORLD)
    models.segmenter = Gate(models.segmenter)
    engine = IntEngine(EngineConfig(iterations=1, max_in_flight=1), models=models, max_queue=2)
    first = engine.submit(scene(0))
    deadline = time.time() + 30
    while engine.core.in_flight < 1 and time.time() < deadline:
        time.sleep(0.01)
    queued = [engine.submit(scene(1)), engine.submit(scene(2))]
    with pytest.raises(EngineBusy, match="queue full"):
        engine.submit(scene(3))
    assert not engine.core.accepting
    gate.set()
    engine.close()  # drains: everything admitted before close finishes
    assert all(f.result(timeout=0).binary.shape == (H, W) for f in [first, *queued])
    with pytest.raises(EngineClosed):
        engine.submit(scene(4))


def test_bad_request_options_fail_at_submit():
    with IntEngine(EngineConfig(iterations=1), models=scripted_models(WORLD)) as engine:
        for options in ({"task": " "}, {"iterations": 0}, {"tsk": "frog"}, {"ablation": {"pmn": False}}):
            with pytest.raises(ConfigError):
                engine.submit(scene(0), **options)
        assert engine.core.stats.submitted == 0
