"""SPEC "Early stop": an image stops once its pick is unchanged and its segmentation moved less
than ``stop_iou``; eq 13 chooses among the iterations that ran; the trace says why; the freed
slot is taken at the next tick; and each iteration reaches ``on_iteration`` as it lands."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from int_engine import fuse
from int_engine.api import IntEngine
from int_engine.config import ConfigError, EngineConfig, preset_config
from int_engine.loop import EngineLoop
from int_engine.pipeline import image_steps, run
from int_engine.result import IterationUpdate, Result
from int_engine.testing import ColourWorld, Thing, scripted_models
from int_engine.testing.scenes import compose, ellipse

H, W = 96, 128
WORLD = ColourWorld(
    [
        Thing("bark", (120, 80, 40), kind="background"),
        Thing("frog", (70, 140, 50)),
        Thing("snake", (150, 40, 150), confusions={"bark": 0.08}),
    ]
)


def frog(seed: int, r: float = 16.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = ellipse(H, W, rng.uniform(40, 88), rng.uniform(30, 66), r, 0.8 * r)
    return compose(WORLD, "bark", [("frog", mask)], H, W, seed=seed).image


def masks(*pairs: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(10, 10, dtype=torch.bool)
    for y, x in pairs:
        m[y, x] = True
    return m


def test_the_stop_rule():
    a, b = masks((0, 0), (0, 1), (0, 2), (0, 3)), masks((0, 0), (0, 1), (0, 2))
    assert fuse.iou(a, b) == 0.75 and fuse.iou(masks(), masks()) == 1.0
    assert fuse.stop_reason(1, ("frog", "frog"), (a, b), 1, 0.7).startswith("converged after iteration 1")
    assert fuse.stop_reason(1, ("frog", "frog"), (a, b), 1, 0.8) is None  # moved too much
    assert fuse.stop_reason(1, ("frog", "snake"), (a, a), 1, 0.5) is None  # a new pick never stops
    assert fuse.stop_reason(1, ("frog", "frog"), (a, a), 2, 0.5) is None  # before min_iterations
    assert fuse.stop_reason(2, ("frog", "frog"), (a, a), 2, 0.5) is not None


def test_bad_settings_are_refused():
    for bad in ({"stop_iou": 0.0}, {"stop_iou": 1.5}, {"min_iterations": 0}):
        with pytest.raises(ConfigError, match="stop_iou"):
            EngineConfig(**bad)


def test_off_in_the_paper_on_in_fast():
    assert EngineConfig().early_stop is False and preset_config("paper").early_stop is False
    assert preset_config("fast").early_stop is True and preset_config("fast").iterations == EngineConfig().iterations


def test_a_converged_image_stops_and_eq13_chooses_among_the_iterations_that_ran():
    cfg = EngineConfig(iterations=6)
    image = frog(1)
    fixed = run(image, scripted_models(WORLD), cfg)
    stopped = run(image, scripted_models(WORLD), replace(cfg, early_stop=True))
    n = len(stopped.trace.iterations)
    assert len(fixed.trace.iterations) == 6 and n == 2 and stopped.trace.stopped_early
    assert "converged after iteration 1" in stopped.trace.stop_reason and "'frog'" in stopped.trace.stop_reason
    assert 0 <= stopped.trace.final_iteration < n and len(stopped.iteration_segmentations) == n
    assert fuse.iou(torch.from_numpy(stopped.binary), torch.from_numpy(fixed.binary)) >= 0.99  # what a user sees
    later = run(image, scripted_models(WORLD), replace(cfg, early_stop=True, min_iterations=3))
    assert len(later.trace.iterations) == 4  # iteration index 3 is the first allowed to stop
    assert not fixed.trace.stopped_early and fixed.trace.stop_reason == ""


def test_a_pick_that_changes_does_not_stop(monkeypatch):
    # the VLM's candidates flip between two names each iteration: the rule never sees the same pick twice
    import int_engine.pipeline as pipeline

    real = pipeline.select_name
    names = iter(["frog", "snake"] * 8)

    def alternating(it, *args):
        yield from real(it, *args)
        return next(names)

    monkeypatch.setattr(pipeline, "select_name", alternating)
    r = run(frog(2), scripted_models(WORLD), EngineConfig(iterations=4, early_stop=True, stop_iou=0.5))
    assert [it.pick for it in r.trace.iterations] == ["frog", "snake", "frog", "snake"] and not r.trace.stopped_early


def test_the_freed_slot_is_taken_at_the_next_tick():
    cfg = EngineConfig(iterations=6, max_in_flight=1, early_stop=True)
    images = [frog(3), frog(4)]
    loop = EngineLoop(scripted_models(WORLD), cfg)
    seen: list[str] = []
    loop.on_batch = lambda name, n, s: seen.append(name)
    finished_at = {}
    for key, result in loop.run((i, (lambda im=im: image_steps(im, cfg))) for i, im in enumerate(images)):
        assert isinstance(result, Result)
        finished_at[key] = loop.stats.ticks
    # image 1 joined the tick right after image 0's last: it was admitted into the freed slot
    alone = EngineLoop(scripted_models(WORLD), cfg)
    list(alone.run([(1, lambda: image_steps(images[1], cfg))]))
    assert finished_at[1] - finished_at[0] == alone.stats.ticks
    every = replace(cfg, early_stop=False)
    fixed = EngineLoop(scripted_models(WORLD), every)
    list(fixed.run((i, (lambda im=im: image_steps(im, every))) for i, im in enumerate(images)))
    assert loop.stats.ticks < fixed.stats.ticks and seen.count("vlm.generate") == 2


def test_each_iteration_reaches_on_iteration_and_the_async_iterator():
    engine = IntEngine(EngineConfig(iterations=3), models=scripted_models(WORLD))
    try:
        image = frog(5)
        got: list[IterationUpdate] = []
        result = engine.submit(image, on_iteration=got.append).result(timeout=120)
        assert [u.iteration for u in got] == [0, 1, 2] and [u.pick for u in got] == [it.pick for it in result.trace.iterations]
        for u, seg in zip(got, result.iteration_segmentations):
            assert u.binary.shape == result.binary.shape == image.shape[:2] and np.array_equal(u.binary, seg)
            assert u.soft.dtype == np.float32 and u.boxes().shape[1:] == (4,)

        async def collect():
            return [item async for item in engine.iterations(image)]

        items = asyncio.run(collect())
        assert [type(i).__name__ for i in items] == ["IterationUpdate"] * 3 + ["Result"]
        assert np.array_equal(items[-1].binary, result.binary)
    finally:
        engine.close()


def test_leaving_the_async_iterator_early_cancels_the_image():
    engine = IntEngine(EngineConfig(iterations=8), models=scripted_models(WORLD))
    try:

        async def first_only():
            async for item in engine.iterations(frog(6)):
                return item

        first = asyncio.run(first_only())
        assert isinstance(first, IterationUpdate) and first.iteration == 0
        deadline = time.time() + 30
        while (engine.core.stats.cancelled < 1 or engine.core.in_flight) and time.time() < deadline:
            time.sleep(0.05)
        assert engine.core.stats.cancelled == 1 and engine.core.in_flight == 0 and engine.core.stats.completed == 0
    finally:
        engine.close()


def test_a_callback_that_raises_fails_its_image_only():
    engine = IntEngine(EngineConfig(iterations=2), models=scripted_models(WORLD))
    try:

        def broken(update):
            raise ValueError("callback broke")

        bad = engine.submit(frog(7), on_iteration=broken)
        good = engine.submit(frog(8))
        with pytest.raises(ValueError, match="callback broke"):
            bad.result(timeout=120)
        assert isinstance(good.result(timeout=120), Result)
    finally:
        engine.close()
