"""One ``torch.onnx.export`` call with the house settings, returning the manifest fields it defines."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ModelLoadError

DEFAULT_OPSET = 17  # LayerNormalization is native from 17; TensorRT 8.6+ and onnxruntime >= 1.14 read it


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _spec(name: str, t: torch.Tensor, axes: dict[int, str]) -> dict[str, Any]:
    """``{"name", "shape", "dtype"}`` with every dynamic axis as its name."""
    return {"name": name, "shape": [axes.get(i, int(n)) for i, n in enumerate(t.shape)], "dtype": _dtype_name(t.dtype)}


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = DEFAULT_OPSET,
    where: str = "export",
) -> dict[str, Any]:
    """Export ``module(*args)`` to ``path`` with the TorchScript exporter; returns the manifest
    fields ``opset``, ``inputs``, ``outputs``, ``example_shapes``, ``export_seconds``.

    ``dynamo=False`` on purpose: torch >= 2.13 defaults to the dynamo exporter, which cannot
    trace SAM's prompt embedding (data-dependent boolean indexing) and needs onnxscript.
    The TorchScript exporter needs the ``onnx`` package to write the file.
    """
    try:
        import onnx  # noqa: F401  (the TorchScript exporter imports it late, with a vaguer error)
    except ImportError:
        raise ModelLoadError(f"{where}: ONNX export needs the 'onnx' package (pip install onnx)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with torch.no_grad():
        outputs = module(*args)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Tracer warnings about Python ints taken from shapes: the dynamic axes we need are
        # the batch/point axes, which the graphs keep symbolic; the rest are fixed on purpose.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
    return {
        "opset": opset,
        "inputs": [_spec(n, t, dynamic_axes.get(n, {})) for n, t in zip(input_names, args)],
        "outputs": [_spec(n, t, dynamic_axes.get(n, {})) for n, t in zip(output_names, outputs)],
        # The traced example: the opt shapes of a TensorRT profile, and what a test can feed.
        "example_shapes": {n: list(t.shape) for n, t in zip(input_names, args)},
        "export_seconds": round(time.perf_counter() - start, 3),
    }
