"""DiffusersInpainter's ``runtime="compile"``: the denoiser (SDXL's UNet, SD3's transformer) and
the VAE decoder under ``torch.compile`` (inductor, on CPU here) give the eager outputs, compile
once for every call of up to ``max_batch`` jobs, and the runtimes the backend lacks are refused.

Compiling is the cost (tens of seconds per family on two cores): one working size (32), two
steps, one compiled inpainter per family, warmed up once in its module-scoped fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from int_engine.backends.inpaint_diffusers import CUDA_MAX_BATCH, DiffusersInpainter
from int_engine.errors import ConfigError, ModelLoadError
from int_engine.export.build import export_models
from int_engine.models import tiny_inpaint_sd3, tiny_inpaint_sdxl

STEPS, SIZE = 2, 32
BUILDERS = {"sdxl": tiny_inpaint_sdxl, "sd3": tiny_inpaint_sd3}
# Compiled vs eager, in uint8 levels of the composited output: inductor fuses and reorders the
# same float32 arithmetic, so only rounding differs (about 1e-6 relative per op), amplified by two
# denoising steps and the VAE decoder into at most a level or two.
TOLERANCE_LEVELS = 2


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers_compile")
    for family, builder in BUILDERS.items():
        builder.build(root / family, seed=0)
    return {family: root / family for family in BUILDERS}


def _jobs(n: int):
    """n random 32 x 32 images, each with its own square mask, prompts and seed."""
    rng = np.random.default_rng(n)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]
    masks = []
    for k in range(n):
        m = np.zeros((SIZE, SIZE), np.float32)
        m[6 + k : 22 + k, 8:24] = 1.0
        masks.append(m)
    return images, masks, ["sand"] * n, ["frog"] * n, [7 + k for k in range(n)]


@pytest.fixture(scope="module")
def pairs(dirs):
    """family -> (eager, compiled) inpainters; the compiled one already ran (and compiled) a full
    batch of ``max_batch`` jobs, the default bound under "compile"."""
    out = {}
    for family, d in dirs.items():
        eager = DiffusersInpainter.load(d, size=SIZE, steps=STEPS)
        compiled = DiffusersInpainter.load(d, size=SIZE, steps=STEPS, runtime="compile")
        compiled.inpaint(*_jobs(compiled.max_batch))
        out[family] = eager, compiled
    return out


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


@pytest.mark.parametrize("family", BUILDERS)
def test_compiled_modules_and_bound(pairs, family):
    _, compiled = pairs[family]
    pipe = compiled.pipe
    den = pipe.unet if family == "sdxl" else pipe.transformer
    assert type(den).__name__ == "OptimizedModule" and type(pipe.vae.decoder).__name__ == "OptimizedModule"
    assert type(pipe.vae.encoder).__name__ != "OptimizedModule"  # the decode only
    assert compiled.runtime == "compile" and compiled.max_batch == compiled.pad_to == CUDA_MAX_BATCH


@pytest.mark.parametrize("family", BUILDERS)
def test_compiled_equals_eager(pairs, family):
    eager, compiled = pairs[family]
    jobs = _jobs(compiled.max_batch)
    for e, c, im, m in zip(eager.inpaint(*jobs), compiled.inpaint(*jobs), jobs[0], jobs[1]):
        assert _max_diff(e, c) <= TOLERANCE_LEVELS
        assert np.abs(c[m > 0.5].astype(int) - im[m > 0.5].astype(int)).mean() > 10  # the model painted


@pytest.mark.parametrize("family", BUILDERS)
def test_fewer_jobs_do_not_recompile(pairs, family, monkeypatch):
    """One job after the fixture's two: filled up to two, the compiled graphs run as they are
    (``torch.compiler.set_stance("fail_on_recompile")`` raises on any recompilation); the job's
    output is the eager one's and the work counts one job. Without the filling it would recompile."""
    eager, compiled = pairs[family]
    jobs = _jobs(1)
    before = compiled.work["inpaint_jobs"]
    with torch.compiler.set_stance("fail_on_recompile"):
        (out,) = compiled.inpaint(*jobs)
    assert compiled.work["inpaint_jobs"] == before + 1
    assert _max_diff(out, eager.inpaint(*jobs)[0]) <= TOLERANCE_LEVELS
    monkeypatch.setattr(compiled, "pad_to", 0)
    with torch.compiler.set_stance("fail_on_recompile"), pytest.raises(RuntimeError, match="recompile"):
        compiled.inpaint(*jobs)


def test_runtimes_refused(dirs):
    for runtime in ("onnx", "tensorrt"):
        with pytest.raises(ConfigError, match=rf"runtime='{runtime}' is not supported.*must be one of eager, compile"):
            DiffusersInpainter.load(dirs["sdxl"], runtime=runtime)
    with pytest.raises(ConfigError, match=r"runtime must be one of eager, compile, got 'jit'"):
        DiffusersInpainter.load(dirs["sdxl"], runtime="jit")
    with pytest.raises(ConfigError, match=r"runtime='compile' needs max_batch >= 1"):
        DiffusersInpainter.load(dirs["sdxl"], runtime="compile", max_batch=0)
    inp = DiffusersInpainter.load(dirs["sd3"], size=SIZE, runtime="compile", max_batch=3)
    assert inp.max_batch == inp.pad_to == 3
    assert DiffusersInpainter.load(dirs["sd3"], size=SIZE).pad_to == 0  # eager: calls as they come


def test_compile_manifest_is_checked_against_the_checkpoint(dirs, tmp_path):
    """As the sd backend: an ``artifacts`` folder's "compile" entries give the options, and one
    exported from another checkpoint is refused."""
    export_models(None, "compile", tmp_path, roles=("inpaint",), paths={"inpaint": dirs["sdxl"]}, compile_backend="eager")
    inp = DiffusersInpainter.load(dirs["sdxl"], size=SIZE, runtime="compile", artifacts=tmp_path)
    assert type(inp.pipe.unet).__name__ == "OptimizedModule"
    with pytest.raises(ModelLoadError):
        DiffusersInpainter.load(dirs["sd3"], size=SIZE, runtime="compile", artifacts=tmp_path)
