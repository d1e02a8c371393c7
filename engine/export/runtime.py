"""Run an exported graph: a callable ``runner({name: tensor}) -> [tensor, ...]`` per artifact.

Runners take and give torch tensors, so that the backends' torch code around them is the
eager path's. ``OrtRunner`` uses onnxruntime with the best execution provider present for
the device (CUDA, then CPU on a GPU; CPU otherwise: ``providers_for``). ``TrtRunner`` (in
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
# The execution providers runtime "onnx" tries on a GPU, best first (those not installed are
# skipped). Not onnxruntime's TensorRT provider: see ``providers_for``.
_GPU_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


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


def providers_for(device: str | torch.device) -> list[str | tuple[str, dict[str, Any]]]:
    """onnxruntime execution providers for runtime "onnx" on ``device``, as ``InferenceSession``
    takes them: on CUDA, CUDA's provider on the device's index (when the installed onnxruntime has
    it, i.e. onnxruntime-gpu), then CPU; CPU alone otherwise.

    onnxruntime's TensorRT provider is left out on purpose, even where installed. Without an
    engine cache it builds TensorRT engines at every session start and again at every new input
    shape (minutes for SAM-H's encoder or the UNet, in the middle of serving), and its fp16/TF32
    choices would make "onnx" drift from the float32 graphs it is checked against. TensorRT is
    runtime "tensorrt": engines built once by ``int-engine export --format tensorrt``, with
    profiles sized to the backends' batches, and run by ``TrtRunner``.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    device = torch.device(device)
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    # The CUDA provider runs on GPU 0 unless told otherwise; io_binding binds the device's index.
    options = {"CUDAExecutionProvider": {"device_id": device.index or 0}}
    return [(p, options[p]) if p in options else p for p in _GPU_PROVIDERS if p in available]


# ONNX TensorProto element types -> numpy type strings (for __cuda_array_interface__)
_ONNX_TYPESTR = {1: "<f4", 10: "<f2", 11: "<f8", 6: "<i4", 7: "<i8", 9: "|b1"}


class _DeviceArray:
    """An onnxruntime output on the GPU, seen by torch through ``__cuda_array_interface__``."""

    def __init__(self, value) -> None:
        self.__cuda_array_interface__ = {
            "shape": tuple(value.shape()),
            "typestr": _ONNX_TYPESTR[value.element_type()],
            "data": (value.data_ptr(), False),
            "version": 2,
        }


class OrtRunner:
    """One onnxruntime session; torch tensors in, torch tensors (on ``device``) out.

    On CPU tensors cross as numpy arrays (no copy). On CUDA with a GPU provider the inputs and
    outputs stay on the device (``io_binding``): inputs are bound by pointer after torch's stream
    is synchronised, outputs are bound to the device and copied once, device to device, into
    torch tensors (the session owns their memory).
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
        self.providers = self.session.get_providers()  # names only, those the session took

    @property
    def io_binding(self) -> bool:
        """Whether calls bind device memory (CUDA device and a GPU execution provider first)."""
        return self.device.type == "cuda" and self.providers[0] != "CPUExecutionProvider"

    def __call__(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if self.io_binding:
            return self._run_bound(inputs)
        feed = {name: _to_numpy(inputs[name]) for name in self.input_names}
        return [torch.from_numpy(o).to(self.device) for o in self.session.run(self.output_names, feed)]

    def _run_bound(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        index = self.device.index or 0
        binding = self.session.io_binding()
        held = []  # keep the bound inputs alive until the run has read them
        for name in self.input_names:
            t = inputs[name].detach()
            t = (t.float() if t.is_floating_point() else t).to(self.device).contiguous()
            held.append(t)
            binding.bind_input(name, "cuda", index, np.dtype(str(t.dtype).removeprefix("torch.")), tuple(t.shape), t.data_ptr())
        for name in self.output_names:
            binding.bind_output(name, "cuda", index)
        torch.cuda.synchronize(self.device)  # torch's kernels writing the inputs are done
        self.session.run_with_iobinding(binding)
        outputs = [torch.as_tensor(_DeviceArray(v), device=self.device).clone() for v in binding.get_outputs()]
        del held
        return outputs


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

    return TrtRunner(entry["path"], device, role=role, max_rows=profile_rows(entry))


def profile_rows(entry: dict[str, Any]) -> int | None:
    """The most rows (dim 0) a TensorRT artifact's profile accepts on its first input; None when
    the entry has no profile or that axis is not dynamic."""
    inputs, profile = entry.get("inputs") or [], entry.get("profile") or {}
    if not inputs or not isinstance(inputs[0].get("shape", [None])[0], str) or inputs[0]["name"] not in profile:
        return None
    return int(profile[inputs[0]["name"]][2][0])


def compile_options(role: str, artifacts: str | Path | None, model_dir: str | Path, modules: tuple[str, ...]) -> dict[str, Any]:
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
