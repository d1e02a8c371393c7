"""The scheduler runs the eager pipeline's steps for many images with batched calls:
same masks, fewer calls, bounded state, failures isolated to their image."""

import time

import numpy as np
import pytest
import torch
from scheduler_scenes import WORLD, H, W, jobs, scenes

from int_engine.calls import run_each
from int_engine.config import ConfigError, EngineConfig, apply_overrides
from int_engine.kernels import TickMiner
from int_engine.loop import EngineLoop
from int_engine.mining import mine
from int_engine.pipeline import drive, image_steps, run
from int_engine.testing import scripted_models


def test_scheduler_equals_eager_and_batches_every_model_call():
    cfg = EngineConfig(iterations=2, max_in_flight=4)
    images = scenes(4)
    models = scripted_models(WORLD)
    eager = [run(im, models, cfg) for im in images]
    sched = EngineLoop(models, cfg)
    out = dict(sched.run(jobs(images, cfg)))
    for i, ref in enumerate(eager):
        assert np.array_equal(out[i].soft, ref.soft)
        assert [it.pick for it in out[i].trace.iterations] == [it.pick for it in ref.trace.iterations]
        assert [it.scores for it in out[i].trace.iterations] == [it.scores for it in ref.trace.iterations]
    # four images in lockstep: one call per model per iteration, for all of them (the VLM's greedy
    # answers on the original views are asked once per image)
    assert sched.stats.calls["vlm.generate"] == 1
    assert sched.stats.calls["vlm.score"] == cfg.iterations
    assert sched.stats.calls["segmenter.segment"] == cfg.iterations
    assert sched.stats.request_counts["vlm.generate"] == 4 * 2 * 9
    mined = sum(it.pick_source != "only candidate" and bool(it.scores) for r in out.values() for it in r.trace.iterations)
    assert sched.stats.request_counts["mine.mine"] == mined  # one request per image mined, not one per launch
    assert sched.stats.calls["mine.mine"] <= cfg.iterations


def test_sequential_reference_makes_one_call_per_request_and_gives_the_same_masks():
    cfg = EngineConfig(iterations=2)
    image = scenes(1)[0]
    models = scripted_models(WORLD)
    calls = []

    def counting(models, call):
        calls.append(call.size)
        return run_each(models, call)

    ref = drive(image_steps(image, cfg), models, counting)
    assert np.array_equal(ref.soft, run(image, models, cfg).soft)
    assert max(calls) > 1  # the calls carried many requests; run_each split them one by one


def test_memory_is_bounded_by_max_in_flight():
    cfg = EngineConfig(iterations=1, max_in_flight=3)
    images = scenes(7)
    alive, peak = set(), [0]

    def make(i):
        def steps():
            alive.add(i)
            peak[0] = max(peak[0], len(alive))
            return image_steps(images[i], cfg)

        return steps

    done = []
    for key, result in EngineLoop(scripted_models(WORLD), cfg).run((i, make(i)) for i in range(7)):
        alive.discard(key)
        done.append(key)
    assert sorted(done) == list(range(7)) and peak[0] == 3


def _trimmed_ticks(monkeypatch, cfg, seconds_per_tick=None):
    """Run 3 scenes; return the ticks after which the heap was trimmed, the images in flight at
    each, and the tick count. With ``seconds_per_tick`` the scheduler's clock is a fake one
    that advances that much at every reading (one reading per tick)."""
    import types

    import int_engine.loop as scheduler_module

    trims = []
    monkeypatch.setattr(scheduler_module, "trim_heap", lambda: trims.append((sched.stats.ticks, len(sched.inflight))))
    if seconds_per_tick is not None:
        clock = iter(range(10_000))
        fake = types.SimpleNamespace(perf_counter=time.perf_counter, monotonic=lambda: next(clock) * seconds_per_tick)
        monkeypatch.setattr(scheduler_module, "time", fake)
    sched = EngineLoop(scripted_models(WORLD), cfg)
    assert len(dict(sched.run(jobs(scenes(3), cfg)))) == 3
    return [t for t, _ in trims], [n for _, n in trims], sched.stats.ticks


def test_the_heap_is_trimmed_after_every_tick_with_a_zero_interval(monkeypatch):
    from int_engine.memory import trim_heap

    assert trim_heap() is True  # glibc Linux, as on the machines this runs on
    ticks, _, n = _trimmed_ticks(monkeypatch, EngineConfig(iterations=1, max_in_flight=2, trim_heap_every_s=0))
    assert ticks == list(range(1, n + 1))


def test_the_heap_is_trimmed_when_the_loop_goes_idle_and_not_after_busy_ticks(monkeypatch):
    cfg = EngineConfig(iterations=1, max_in_flight=2, trim_heap_every_s=3600)
    ticks, in_flight, n = _trimmed_ticks(monkeypatch, cfg)
    assert ticks and ticks[-1] == n and set(in_flight) == {0}  # only when nothing was in flight
    assert len(ticks) < n


def test_the_heap_is_trimmed_every_interval_under_load(monkeypatch):
    cfg = EngineConfig(iterations=1, max_in_flight=3, trim_heap_every_s=1.0)
    ticks, in_flight, n = _trimmed_ticks(monkeypatch, cfg, seconds_per_tick=0.5)
    busy = [t for t, k in zip(ticks, in_flight) if k]
    assert busy == list(range(2, n, 2))[: len(busy)] and len(busy) >= 2  # every other tick at 0.5 s a tick
    assert ticks[-1] == n and in_flight[-1] == 0


def test_no_trim_when_turned_off(monkeypatch):
    ticks, _, _ = _trimmed_ticks(monkeypatch, EngineConfig(iterations=1, max_in_flight=2, trim_heap=False))
    assert ticks == []


def test_a_negative_trim_interval_is_refused():
    with pytest.raises(ConfigError, match="trim_heap_every_s"):
        EngineConfig(trim_heap_every_s=-1)


class _FailingVLM:
    """Raises on one poisoned image (all black), as a model may on a bad input."""

    def __init__(self, vlm):
        self.vlm = vlm

    def generate(self, images, prompts, max_new_tokens):
        if any(not im.any() for im in images):
            raise RuntimeError("device-side assert on a black image")
        return self.vlm.generate(images, prompts, max_new_tokens)

    def score(self, images, prompts, answers):
        return self.vlm.score(images, prompts, answers)


def test_a_failing_image_fails_alone_in_its_batch():
    cfg = EngineConfig(iterations=1, max_in_flight=4)
    images = scenes(3) + [np.zeros((H, W, 3), np.uint8)]
    models = scripted_models(WORLD)
    models.vlm = _FailingVLM(models.vlm)

    def make(i):
        if i == 4:
            raise FileNotFoundError("missing.png")
        return lambda: image_steps(images[i], cfg)

    out = {}
    for k, v in EngineLoop(models, cfg).run([(i, make(i) if i < 4 else (lambda: make(4)())) for i in range(5)]):
        out[k] = v
    assert isinstance(out[3], RuntimeError) and "black image" in str(out[3])
    assert isinstance(out[4], FileNotFoundError)
    for i in range(3):
        assert np.array_equal(out[i].soft, run(images[i], scripted_models(WORLD), cfg).soft)


@pytest.mark.parametrize("seed", range(5))
def test_one_mining_launch_for_many_images_equals_each_alone(seed):
    g = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(6):
        v, c = int(torch.randint(1, 10, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        sb = torch.randn(v, c, generator=g, dtype=torch.float64)
        sa = sb + torch.randn(v, c, generator=g, dtype=torch.float64)
        sb[0] = float("-inf")
        sa[0] = float("-inf")
        images.append((sb, sa, torch.rand(c, generator=g, dtype=torch.float64) + 1e-3))
    for (sb, sa, h), got in zip(images, TickMiner("cpu").mine(*(list(t) for t in zip(*images)), 1e-3)):
        ref = mine(sb[None], sa[None], h[None], 1e-3)
        assert int(got[0]) == int(ref[0])
        assert torch.allclose(got[1], ref[1][0], atol=1e-12) and torch.allclose(got[2], ref[2][0], atol=1e-12)


def test_tiny_zoo_scheduler_matches_eager_to_the_written_png(tiny_zoo):
    from int_engine.bench.synthetic import make_scene
    from int_engine.io import mask_to_uint8
    from int_engine.models.load import load_models

    cfg = apply_overrides(EngineConfig(iterations=2, max_new_tokens=8, max_in_flight=3), ["models.inpaint.options.steps=2"])
    models = load_models(cfg.models, tiny_zoo)
    images = [make_scene(s, 64, 80)[0] for s in range(3)]
    out = dict(EngineLoop(models, cfg).run(jobs(images, cfg)))
    for i, im in enumerate(images):
        ref = run(im, models, cfg)
        # batched float arithmetic differs from unbatched in the last bits: the soft masks are
        # continuous, so a pixel may cross one 8-bit level, or the threshold only where it sits on it
        assert np.abs(out[i].soft - ref.soft).max() < 1e-4
        assert np.abs(mask_to_uint8(out[i].soft).astype(int) - mask_to_uint8(ref.soft)).max() <= 1
        off_threshold = np.abs(ref.soft - cfg.binary_threshold) > 1e-4
        assert np.array_equal(out[i].binary[off_threshold], ref.binary[off_threshold])
        assert [it.pick for it in out[i].trace.iterations] == [it.pick for it in ref.trace.iterations]
