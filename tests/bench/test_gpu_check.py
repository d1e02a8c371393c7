"""bench/gpu_check.py: its CPU form runs and passes, says what it skipped, and a figure past its
bound fails the check (exit 1); its probes compare like with like."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from int_engine.bench import gpu_check
from int_engine.bench.gpu_check import largest_difference, probe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU form")
def test_the_cpu_form_runs_every_check_that_has_one_and_names_the_others(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "int_engine.bench.gpu_check", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert report["passed"] and report["device"] == "cpu"
    for name in ("dtypes", "runtimes", "mining", "engine"):
        assert checks[name]["passed"] and checks[name]["figures"], name
    for name in ("vllm", "sdpa", "memory"):
        assert "skipped" in checks[name] and f"{name}: skipped: " in done.stdout
    figures = checks["dtypes"]["figures"]
    assert {"segmenter.disagreement@bfloat16", "clip.map_correlation@bfloat16", "vlm.scores@bfloat16"} <= set(figures)
    assert checks["mining"]["figures"]["dtypes"] == ["torch.float64", "torch.float64"]
    assert checks["mining"]["figures"]["kernel"] == "triton"  # under the interpreter
    assert checks["runtimes"]["figures"]["runtime.float32@segmenter/onnx"] < 1e-3
    assert report["bounds"]["runtime.float32"] == ["<", 1e-3]


def test_a_figure_past_its_bound_fails_the_check_and_the_run(monkeypatch, tmp_path):
    ctx = gpu_check.Context("cpu", tmp_path, tmp_path)
    plan = {
        "good": (lambda: {"clip.map_correlation": 0.99, "vllm.scores": 0.01}, None),
        "bad": (lambda: {"segmenter.disagreement": 0.3}, None),
        "broken": (lambda: 1 / 0, None),
        "away": (lambda: {}, "needs CUDA"),
    }
    monkeypatch.setattr(gpu_check, "plan", lambda ctx, compile_too: plan)
    report = gpu_check.run_checks(ctx, False)
    checks = report["checks"]
    assert checks["good"]["passed"] and not checks["bad"]["passed"] and not report["passed"]
    assert checks["bad"]["failures"] == ["segmenter.disagreement = 0.3, bound < 0.02"]
    assert "ZeroDivisionError" in checks["broken"]["error"] and checks["away"] == {"skipped": "needs CUDA"}
    assert gpu_check.judged({"clip.map_correlation": 0.5, "unbounded": 9.0}) == ["clip.map_correlation = 0.5, bound > 0.95"]


def test_probes_of_the_same_model_are_identical(tiny_zoo):
    """The check's float32/half comparison is only meaningful if a probe is deterministic."""
    from int_engine.bench.synthetic import make_scene
    from int_engine.config import EngineConfig
    from int_engine.models.load import load_role

    image = make_scene(0, 64, 80)[0]
    for role in ("vlm", "detector", "segmenter", "clip"):
        model = load_role(EngineConfig().models, role, tiny_zoo)
        a, b = probe(role, model, image), probe(role, model, image)
        assert all(v == 0.0 for v in largest_difference(a, b).values()), role
        assert all(np.size(v) for v in a.values()), role
