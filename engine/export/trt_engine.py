"""TensorRT engines built from the exported ONNX graphs, and a runner for them.

``tensorrt`` is optional and GPU-only (its wheels come from NVIDIA's index); every entry point
here imports it lazily and says so clearly when it is missing. Written against the
TensorRT 10 Python API (named tensors, ``execute_async_v3``); ``build_engine`` also builds with
TensorRT 11, which only has strongly typed networks (see there).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelLoadError
from .onnx_io import write_cast_model

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


def trt_major(trt, where: str = "tensorrt") -> int:
    """The major version of the imported ``tensorrt`` module (``__version__`` "10.8.0.43" -> 10)."""
    version = str(getattr(trt, "__version__", ""))
    head = version.split(".")[0]
    if not head.isdigit():
        raise ModelLoadError(f"{where}: cannot read TensorRT's version from {version!r}")
    if int(head) < 10:
        raise ModelLoadError(f"{where}: TensorRT {version} is too old: the engine needs TensorRT >= 10 (named tensors)")
    return int(head)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    precision: str = "float16",
    where: str = "tensorrt",
) -> dict[str, Any]:
    """Parse ``onnx_path`` (a float32 graph), build an engine with one optimisation profile
    (``shapes``: per input name its (min, opt, max) shape) in ``precision``, and serialise it to
    ``engine_path``. Returns ``{"tensorrt": version, "strongly_typed": bool, "parsed": path}``,
    ``parsed`` being the ONNX file TensorRT read.

    TensorRT 10 builds a weakly typed network from the float32 graph and picks float16/bfloat16
    kernels where ``BuilderFlag.FP16``/``BF16`` allow. TensorRT 11 removed those flags: every
    network is strongly typed, its precision the graph's own, so for 16-bit precisions the graph
    is first cast (``onnx_io.write_cast_model``) to ``<onnx stem>.<precision>.onnx`` beside it.
    """
    trt = _trt(where)
    if precision not in PRECISIONS:
        raise ConfigError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    strongly_typed = trt_major(trt, where) >= 11
    parsed = Path(onnx_path)
    if strongly_typed and precision != "float32":
        parsed = write_cast_model(parsed, parsed.with_name(f"{parsed.stem}.{precision}.onnx"), precision, where)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode since TensorRT 10 (flags 0); STRONGLY_TYPED is 11's only mode.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(parsed)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"{where}: TensorRT cannot parse {parsed}: {errors}")
    config = builder.create_builder_config()
    if not strongly_typed and precision == "float16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif not strongly_typed and precision == "bfloat16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"{where}: TensorRT failed to build an engine from {parsed} (see its log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return {"tensorrt": str(trt.__version__), "strongly_typed": strongly_typed, "parsed": parsed}


def split_rows(inputs: dict[str, torch.Tensor], max_rows: int | None) -> list[dict[str, torch.Tensor]]:
    """``inputs`` cut along dim 0 into pieces of at most ``max_rows`` rows (an engine profile's
    batch bound). The batch is the largest dim 0; an input with one row (a timestep or mask
    input broadcast over the batch) goes whole into every piece. None: one piece."""
    rows = max((t.shape[0] for t in inputs.values() if t.dim()), default=0)
    if max_rows is None or rows <= max_rows:
        return [inputs]
    return [
        {n: t[s : s + max_rows] if t.dim() and t.shape[0] == rows else t for n, t in inputs.items()}
        for s in range(0, rows, max_rows)
    ]


class TrtRunner:
    """A deserialised engine: CUDA torch tensors in, CUDA torch tensors out, on torch's current stream.

    ``max_rows``: the batch bound of the engine's profile; larger batches run in pieces (``split_rows``).
    """

    def __init__(self, path: Path, device: str = "cuda", role: str = "tensorrt", max_rows: int | None = None) -> None:
        trt = _trt(role)
        self.max_rows = max_rows
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
        pieces = [self._run(part) for part in split_rows({n: inputs[n] for n in self.input_names}, self.max_rows)]
        return pieces[0] if len(pieces) == 1 else [torch.cat(outs) for outs in zip(*pieces)]

    def _run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
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
