"""Run an exported graph: a callable ``runner({name: tensor}) -> [tensor, ...]`` per artifact.

Runners take and give torch tensors, so that the backends' torch code around them is the
eager path's. ``OrtRunner`` uses onnxruntime with the best execution provider present for
the device (TensorRT, then CUDA, then CPU on a GPU; CPU otherwise). ``TrtRunner`` (in
``trt_engine``) runs a TensorRT engine. ``compile_module`` is the ``torch.compile`` runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..errors import ConfigError, ModelLoadError
from .manifest import require_artifact

RUNTIMES = ("eager", "onnx", "tensorrt", "compile")
# Which execution providers to try for a device kind, best first (those not installed are skipped).
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class Runner(Protocol):
    input_names: list[str]
    output_names: list[str]

    def __call__(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]: ...


def check_runtime(role: str, runtime: str, artifacts: str | Path | None) -> None:
    """ConfigError unless ``runtime`` is known and has the artifacts folder it needs."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"{role}: runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime in ("onnx", "tensorrt") and artifacts is None:
        raise ConfigError(f"{role}: runtime={runtime!r} needs artifacts=<export folder> (e.g. exported_models)")


def providers_for(device: str | torch.device) -> list[str]:
    """onnxruntime execution providers for ``device``: GPU ones first on CUDA (when the
    installed onnxruntime has them, i.e. onnxruntime-gpu), CPU always last."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if torch.device(device).type == "cuda":
        return [p for p in _GPU_PROVIDERS if p in available]
    return ["CPUExecutionProvider"]


class OrtRunner:
    """One onnxruntime session; torch tensors in, torch tensors (on ``device``) out.

    Tensors cross through host memory (numpy). On CUDA that costs two copies per call;
    binding device pointers (``io_binding``) would avoid them, at the price of code this
    CPU-only project cannot test.
    """

    def __init__(self, path: Path, device: str | torch.device = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.device = torch.device(device)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(self.device))
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"onnx: cannot open {path}: {err}") from err
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.providers = self.session.get_providers()

    def __call__(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feed = {name: _to_numpy(inputs[name]) for name in self.input_names}
        return [torch.from_numpy(o).to(self.device) for o in self.session.run(self.output_names, feed)]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    # The graphs are exported in float32; the pipelines may hand fp16/bf16 on a GPU.
    t = t.detach()
    if t.is_floating_point() and t.dtype != torch.float32:
        t = t.float()
    return t.cpu().contiguous().numpy()


def open_runner(
    role: str,
    module: str,
    runtime: str,
    artifacts: str | Path,
    model_dir: str | Path,
    device: str,
    sha: str | None = None,
) -> Runner:
    """The runner of ``role``/``module`` for ``runtime`` ("onnx" or "tensorrt") from ``artifacts``,
    refused (ModelLoadError) when missing or stale against ``model_dir``."""
    entry = require_artifact(artifacts, role, module, runtime, model_dir, sha)
    if runtime == "onnx":
        return OrtRunner(entry["path"], device)
    from .trt_engine import TrtRunner

    return TrtRunner(entry["path"], device, role=role)


def compile_options(
    role: str, artifacts: str | Path | None, model_dir: str | Path, modules: tuple[str, ...]
) -> dict[str, Any]:
    """``torch.compile`` keyword arguments for ``role``: those the "compile" manifest recorded
    (checked for staleness like any artifact), or the defaults when there is no artifacts folder."""
    if artifacts is None:
        return {}
    sha = None
    options: dict[str, Any] = {}
    for module in modules:
        entry = require_artifact(artifacts, role, module, "compile", model_dir, sha)
        sha = entry["source"]["sha256"]  # it matched the checkpoint: no need to hash it again
        options = dict(entry.get("compile_options", {}))  # one export call: the same for every module
    return options


def compile_module(module: torch.nn.Module | Callable, options: dict[str, Any]) -> Any:
    """``torch.compile(module, **options)``; compilation itself happens at the first call."""
    return torch.compile(module, **options)
