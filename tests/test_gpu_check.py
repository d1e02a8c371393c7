"""bench/gpu_check.py: one line and exit 0 without CUDA; its probes compare like with like."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from int_engine.bench.gpu_check import largest_difference, probe


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_without_cuda_one_line_and_exit_0():
    done = subprocess.run([sys.executable, "-m", "int_engine.bench.gpu_check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1 and "no CUDA device" in done.stdout


def test_probes_of_the_same_model_are_identical(tiny_zoo):
    """The check's float32/float16 comparison is only meaningful if a probe is deterministic."""
    from int_engine.bench.synthetic import make_scene
    from int_engine.config import EngineConfig
    from int_engine.models.load import load_role

    image = make_scene(0, 64, 80)[0]
    for role in ("vlm", "detector", "segmenter", "clip"):
        model = load_role(EngineConfig().models, role, tiny_zoo)
        a, b = probe(role, model, image), probe(role, model, image)
        assert all(v == 0.0 for v in largest_difference(a, b).values()), role
        assert all(np.size(v) for v in a.values()), role
