"""The scheduler's negative mining: the ``Miner`` role, one ``mine_fused`` launch per tick, on the
mining device (the VLM's).

On this CPU the Triton kernel runs through its interpreter when TRITON_INTERPRET=1 (read by
``mine_fused`` at each call), and the torch reference ``mining.mine`` runs otherwise; on CUDA the
kernel gets the tick as float32 scores. Either way each image gets its outputs back on the CPU,
and the masks are those of the eager ``pipeline.run`` (one image per launch).
"""

import importlib

import numpy as np
import pytest
import torch
from scheduler_scenes import WORLD, jobs, scenes  # every image-iteration of these scenes mines

import int_engine.kernels.miner as miner_module
from int_engine.config import EngineConfig
from int_engine.kernels import TickMiner
from int_engine.kernels.miner import mining_dtypes
from int_engine.loop import EngineLoop
from int_engine.mining import mine
from int_engine.models.load import load_miner
from int_engine.pipeline import run
from int_engine.testing import scripted_models

# The module, not the function of the same name that int_engine.kernels re-exports over it.
mf = importlib.import_module("int_engine.kernels.mine_fused")


def mined(results):
    """How many image-iterations went through negative mining."""
    return sum(bool(it.scores) for r in results for it in r.trace.iterations)  # mining fills the scores


@pytest.fixture
def launches(monkeypatch):
    """Every Triton launch of mine_fused's kernel, as (grid, B, V, C)."""
    real, seen = mf._kernel, []

    class Counting:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append((grid, *args[6:9]))
                return self.kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(mf, "_kernel", lambda: Counting(real()))
    return seen


@pytest.fixture
def interpret(monkeypatch, launches):
    """mine_fused runs the kernel through Triton's interpreter, and may not fall back to mine."""
    if mf.triton is None:
        pytest.skip("triton is not installed (no wheel for this platform): only the torch path exists")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(mf, "mine", lambda *a: pytest.fail("mine_fused fell back to mining.mine under TRITON_INTERPRET=1"))
    return launches


@pytest.fixture
def received(monkeypatch):
    """The (s_before, s_after, history) of every mine_fused call the scheduler makes."""
    real, seen = miner_module.mine_fused, []

    def spy(s_before, s_after, history, eps):
        seen.append((s_before, s_after, history))
        return real(s_before, s_after, history, eps)

    monkeypatch.setattr(miner_module, "mine_fused", spy)
    return seen


def assert_same_as_eager(out, images, models, cfg):
    """Masks and picks equal to the eager run's; mining scores to the kernel's 1e-6 (of W)."""
    for i, im in enumerate(images):
        ref = run(im, models, cfg)
        assert np.array_equal(out[i].soft, ref.soft)
        assert [it.pick for it in out[i].trace.iterations] == [it.pick for it in ref.trace.iterations]
        for got, want in zip(out[i].trace.iterations, ref.trace.iterations):
            assert got.scores.keys() == want.scores.keys()
            assert all(abs(got.scores[k] - want.scores[k]) <= 1e-6 * max(1.0, got.weights_before[k]) for k in want.scores)


@pytest.mark.parametrize(
    "dtypes", [(torch.float64, torch.float64), (torch.float32, torch.float64)], ids=["cpu-dtypes", "cuda-dtypes"]
)
def test_interpreter_runs_one_kernel_launch_per_mining_tick(monkeypatch, interpret, received, dtypes):
    # cuda-dtypes: the float32 scores CUDA gets, through the interpreter on this CPU.
    monkeypatch.setattr(miner_module, "mining_dtypes", lambda device: dtypes)
    cfg = EngineConfig(iterations=2, max_in_flight=4)
    images, models = scenes(4), scripted_models(WORLD)
    sched = EngineLoop(models, cfg)
    out = dict(sched.run(jobs(images, cfg)))
    ticks = sched.stats.calls.get("mine.mine", 0)
    assert ticks == cfg.iterations  # four images in lockstep: one mining tick per iteration
    assert len(interpret) == len(received) == ticks  # exactly one launch per mining tick
    for (_, b, _, c), (s_before, _, history) in zip(interpret, received):
        assert (b, c) == tuple(history.shape) and s_before.dtype == dtypes[0] and history.dtype == dtypes[1]
    assert sum(b for _, b, _, _ in interpret) == mined(out.values()) == 4 * cfg.iterations  # every image in its tick's launch
    assert_same_as_eager(out, images, models, cfg)


def test_without_the_interpreter_the_cpu_runs_mining_mine(monkeypatch, launches):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    calls = []

    def spy(*args):
        calls.append(args)
        return mine(*args)

    monkeypatch.setattr(mf, "mine", spy)
    cfg = EngineConfig(iterations=2, max_in_flight=4)
    images, models = scenes(3), scripted_models(WORLD)
    sched = EngineLoop(models, cfg)
    out = dict(sched.run(jobs(images, cfg)))
    assert launches == [] and len(calls) == sched.stats.calls["mine.mine"] >= cfg.iterations
    assert all(a[0].dtype == torch.float64 and a[0].device.type == "cpu" for a in calls)
    for i, im in enumerate(images):  # the same torch function on the same float64 tensors: bit for bit
        ref = run(im, models, cfg)
        assert np.array_equal(out[i].soft, ref.soft)
        assert [it.scores for it in out[i].trace.iterations] == [it.scores for it in ref.trace.iterations]


def test_mining_runs_on_the_vlms_device_in_its_dtypes():
    cfg = EngineConfig()
    assert load_miner(cfg.models).device == torch.device("cpu")
    cfg.models.device = "cuda:1"  # a device name only; nothing is allocated
    assert load_miner(cfg.models).device == torch.device("cuda:1")
    cfg.models.vlm.device = "cuda:0"  # mining goes with the VLM, whatever the other roles use
    assert load_miner(cfg.models).device == torch.device("cuda:0") and cfg.models.sync_device == "cuda"
    assert mining_dtypes(torch.device("cpu")) == (torch.float64, torch.float64)
    assert mining_dtypes(torch.device("cuda", 0)) == (torch.float32, torch.float64)


def test_the_tick_reaches_the_kernel_in_the_devices_dtypes(monkeypatch, received):
    # Pretend the miner's device is a CUDA-like one: its dtypes reach mine_fused, and the
    # pipeline still gets CPU int64 / float64 outputs.
    monkeypatch.setattr(miner_module, "mining_dtypes", lambda device: (torch.float32, torch.float64))
    results = []
    models = scripted_models(WORLD)
    real_mine = models.miner.mine

    def spy(*args):
        results.append(real_mine(*args))
        return results[-1]

    monkeypatch.setattr(models.miner, "mine", spy)
    cfg = EngineConfig(iterations=1, max_in_flight=3)
    loop = EngineLoop(models, cfg)
    assert len(dict(loop.run(jobs(scenes(3), cfg)))) == 3
    assert received and len(results) == len(received) == loop.stats.calls["mine.mine"]
    for s_before, s_after, history in received:
        assert s_before.device == s_after.device == history.device == torch.device("cpu")
        assert s_before.dtype == s_after.dtype == torch.float32 and history.dtype == torch.float64
    for tick in results:
        for pick, scores, new_history in tick:
            assert pick.dtype == torch.int64 and pick.shape == () and not pick.is_cuda
            assert scores.dtype == new_history.dtype == torch.float64 and scores.shape == new_history.shape


def test_ticks_beyond_the_kernel_limits_use_mining_mine(interpret):
    # V <= 16 and C <= 64 hold for every configured split; a larger tick still mines, with torch.
    g = torch.Generator().manual_seed(0)
    images = [
        (
            torch.randn(3, c, generator=g, dtype=torch.float64),
            torch.randn(3, c, generator=g, dtype=torch.float64),
            torch.rand(c, generator=g, dtype=torch.float64),
        )
        for c in (5, 70)
    ]
    got = TickMiner("cpu").mine(*(list(t) for t in zip(*images)), 1e-3)
    for (sb, sa, h), (pick, scores, new_history) in zip(images, got):
        want = mine(sb[None], sa[None], h[None], 1e-3)
        assert int(pick) == int(want[0]) and torch.allclose(scores, want[1][0]) and torch.allclose(new_history, want[2][0])
    assert interpret == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled kernel's float32 CUDA inputs")
def test_cuda_mining_gets_float32_cuda_tensors_and_one_launch_per_tick(monkeypatch, launches, received):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(mf, "mine", lambda *a: pytest.fail("CUDA tensors must not use the torch fallback"))
    cfg = EngineConfig(iterations=2, max_in_flight=4)
    cfg.models.device = "cuda"
    images, models = scenes(4), scripted_models(WORLD)
    models.miner = load_miner(cfg.models)
    sched = EngineLoop(models, cfg)
    out = dict(sched.run(jobs(images, cfg)))
    assert len(launches) == len(received) == sched.stats.calls["mine.mine"] >= cfg.iterations
    for s_before, s_after, history in received:
        assert s_before.is_cuda and s_after.is_cuda and history.is_cuda
        assert s_before.dtype == s_after.dtype == torch.float32 and history.dtype == torch.float64
    assert_same_as_eager(out, images, models, cfg)
