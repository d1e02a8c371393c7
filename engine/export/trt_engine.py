"""TensorRT engines built from the exported ONNX graphs, and a runner for them.

``tensorrt`` is optional and GPU-only (its wheels come from NVIDIA's index); every entry point
here imports it lazily and says so clearly when it is missing. Written against the
TensorRT 10 Python API (named tensors, ``execute_async_v3``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import ConfigError, ModelLoadError

PRECISIONS = ("float16", "bfloat16", "float32")
MISSING = (
    "TensorRT is not installed (the 'tensorrt' package is GPU-only and comes from NVIDIA's package index: "
    "pip install tensorrt on a CUDA machine); export with --format onnx, or run the ONNX graphs"
)


def available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _trt(where: str):
    if not available():
        raise ModelLoadError(f"{where}: {MISSING}")
    import tensorrt as trt

    return trt


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    precision: str = "float16",
    where: str = "tensorrt",
) -> None:
    """Parse ``onnx_path``, build an engine with one optimisation profile (``shapes``: per input
    name its (min, opt, max) shape) in ``precision``, and serialise it to ``engine_path``."""
    trt = _trt(where)
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"{where}: TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "float16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bfloat16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"{where}: TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))


class TrtRunner:
    """A deserialised engine: CUDA torch tensors in, CUDA torch tensors out, on torch's current stream."""

    def __init__(self, path: Path, device: str = "cuda", role: str = "tensorrt") -> None:
        trt = _trt(role)
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ConfigError(f"{role}: runtime 'tensorrt' needs a CUDA device, got {device!r}")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ModelLoadError(f"{role}: cannot deserialise TensorRT engine {path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        keep = []  # the input copies must outlive the launch
        for name in self.input_names:
            t = inputs[name].to(self.device, self._dtypes[name]).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = []
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for inputs {self.input_names}")
        return [o.float() for o in outputs]


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dt]
