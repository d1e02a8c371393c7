"""One ``torch.onnx.export`` call with the house settings, returning the manifest fields it defines;
and ``cast_model`` / ``write_cast_model``, an exported float32 graph recast to float16 or bfloat16."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ModelLoadError

DEFAULT_OPSET = 17  # LayerNormalization is native from 17; TensorRT 8.6+ and onnxruntime >= 1.14 read it


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _spec(name: str, t: torch.Tensor, axes: dict[int, str]) -> dict[str, Any]:
    """``{"name", "shape", "dtype"}`` with every dynamic axis as its name."""
    return {"name": name, "shape": [axes.get(i, int(n)) for i, n in enumerate(t.shape)], "dtype": _dtype_name(t.dtype)}


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s weights live (CPU for a module without any): where its example inputs must be."""
    return next((t.device for t in module.parameters()), torch.device("cpu"))


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
    device = module_device(module)
    stray = [f"{n} on {t.device}" for n, t in zip(input_names, args) if t.device != device]
    if stray:  # torch's own error comes from deep inside the trace
        raise ModelLoadError(f"{where}: the module is on {device} but its example inputs are not: {', '.join(stray)}")
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


# -- float32 graphs cast to 16 bits (for TensorRT's strongly typed networks) ------------------------

# Float32-only inputs of ops whose other inputs follow the data type (ONNX's type constraints):
# Resize's scales and Upsample's scales. Constant scales stay float32 where they are (TensorRT's
# parser wants Resize's scales as weights); computed ones get a Cast back to float32.
_FLOAT32_INPUTS = {"Resize": (2,), "Upsample": (1,)}
# Ops with float32-only tensors this cast does not rewrite.
_UNSUPPORTED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "NonMaxSuppression")
# Ops whose int attribute names their output's element type.
_DTYPE_ATTRS = {
    "Cast": "to",
    "RandomNormal": "dtype",
    "RandomUniform": "dtype",
    "RandomNormalLike": "dtype",
    "RandomUniformLike": "dtype",
    "EyeLike": "dtype",
    "Bernoulli": "dtype",
}
_FLOAT16_MAX = 65504.0
# A protobuf message cannot exceed 2 GiB: larger graphs keep their weights in a side file.
_EXTERNAL_DATA_BYTES = 1 << 30


def float_types() -> dict[str, int]:
    """The 16-bit float element types the installed ``onnx`` can write: ``{"float16": 10,
    "bfloat16": 16}``, without bfloat16 where ``onnx`` has no numpy type for it (before 1.17,
    which took bfloat16 from ``ml_dtypes``)."""
    from onnx import TensorProto, helper

    types = {"float16": TensorProto.FLOAT16}
    if np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)).name == "bfloat16":
        types["bfloat16"] = TensorProto.BFLOAT16
    return types


def _cast_tensor(tensor, to: int, where: str):
    """``tensor`` (a float32 TensorProto) as element type ``to``, same name. Finite float32 values
    beyond float16's range are clamped to it (an attention mask's -1e9 must stay a large negative,
    not become -inf); inf and nan stay what they were."""
    from onnx import TensorProto, helper, numpy_helper

    if tensor.data_location == tensor.EXTERNAL:
        raise ModelLoadError(f"{where}: initializer {tensor.name!r} is stored outside the graph and was not loaded with it")
    values = numpy_helper.to_array(tensor)
    if to == TensorProto.FLOAT16:
        values = np.where(np.isfinite(values), np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX), values)
    return numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(to)), tensor.name)


def _cast_value_info(value_info, to: int, where: str) -> None:
    from onnx import TensorProto

    kind = value_info.type.WhichOneof("value")
    if kind == "tensor_type":
        if value_info.type.tensor_type.elem_type == TensorProto.FLOAT:
            value_info.type.tensor_type.elem_type = to
    elif kind is not None:
        raise ModelLoadError(f"{where}: value {value_info.name!r} has a {kind}; only tensors can be cast to 16 bits")


def _cast_node_attributes(node, to: int, where: str) -> None:
    """A node's float32 type attributes and tensor attributes as ``to`` (subgraphs recursively)."""
    from onnx import AttributeProto, TensorProto, helper

    name = f"{node.op_type} node {_label(node)!r}"
    for i, attr in enumerate(node.attribute):
        if attr.type == AttributeProto.GRAPH:
            _cast_graph(attr.g, to, where)
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                _cast_graph(g, to, where)
        elif attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            if node.op_type not in ("Constant", "ConstantOfShape"):
                raise ModelLoadError(f"{where}: cannot cast the float32 tensor attribute {attr.name!r} of {name}")
            attr.t.CopyFrom(_cast_tensor(attr.t, to, where))
        elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
            # Constant's float shorthands are float32 by definition: make them a typed tensor.
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float32)
            tensor = _cast_tensor(helper.make_tensor("value", TensorProto.FLOAT, values.shape, values), to, where)
            node.attribute[i].CopyFrom(helper.make_attribute("value", tensor))
        elif attr.type == AttributeProto.SPARSE_TENSOR and attr.sparse_tensor.values.data_type == TensorProto.FLOAT:
            raise ModelLoadError(f"{where}: cannot cast the sparse float32 attribute {attr.name!r} of {name}")
        elif attr.type == AttributeProto.INT and attr.i == TensorProto.FLOAT and attr.name in ("to", "dtype", "output_dtype"):
            if _DTYPE_ATTRS.get(node.op_type) != attr.name:
                raise ModelLoadError(f"{where}: cannot cast {name}: its {attr.name!r} attribute asks for float32")
            attr.i = to


def _float32_uses(graph, nested: bool = False) -> list[tuple[str, bool]]:
    """(tensor name, whether the use is a float32-only op input of ``graph`` itself) for every
    node input of ``graph`` and of its subgraphs (whose uses never count as float32-only)."""
    from onnx import AttributeProto

    found = []
    for node in graph.node:
        only = () if nested else _FLOAT32_INPUTS.get(node.op_type, ())
        found += [(name, k in only) for k, name in enumerate(node.input) if name]
        for attr in node.attribute:
            for g in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                found += _float32_uses(g, nested=True)
    return found


def _kept_float32(graph) -> set[str]:
    """Tensors of ``graph`` that only feed float32-only op inputs and are made by an initializer,
    a Constant or a Cast: left float32 where they are made instead of cast there and back."""
    uses: dict[str, list[bool]] = {}
    for name, float32_only in _float32_uses(graph):
        uses.setdefault(name, []).append(float32_only)
    made_here = {t.name for t in graph.initializer}
    made_here |= {n.output[0] for n in graph.node if n.op_type in ("Constant", "Cast") and len(n.output) == 1}
    outputs = {o.name for o in graph.output}
    return {name for name, only in uses.items() if all(only) and name in made_here and name not in outputs}


def _cast_graph(graph, to: int, where: str) -> None:
    """Cast ``graph`` (a GraphProto, in place): float32 initializers, inputs, outputs, value_info
    and node attributes become ``to``; float32-only op inputs stay or are cast back to float32."""
    from onnx import NodeProto, TensorProto, helper

    if any(t.values.data_type == TensorProto.FLOAT for t in graph.sparse_initializer):
        raise ModelLoadError(f"{where}: sparse float32 initializers cannot be cast to 16 bits")
    keep = _kept_float32(graph)
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep:
            tensor.CopyFrom(_cast_tensor(tensor, to, where))
    for value_info in (*graph.input, *graph.output, *graph.value_info):
        if value_info.name not in keep:
            _cast_value_info(value_info, to, where)
    nodes = []
    for node in graph.node:
        if node.op_type in _UNSUPPORTED_OPS:
            raise ModelLoadError(f"{where}: cannot cast a graph with {node.op_type} (float32-only tensors) to 16 bits")
        if not (len(node.output) == 1 and node.output[0] in keep):
            _cast_node_attributes(node, to, where)
        for k in _FLOAT32_INPUTS.get(node.op_type, ()):
            if k < len(node.input) and node.input[k] and node.input[k] not in keep:
                cast = f"{node.input[k]}_as_float32_for_{_label(node)}"
                nodes.append(helper.make_node("Cast", [node.input[k]], [cast], name=cast, to=TensorProto.FLOAT))
                node.input[k] = cast
        kept = NodeProto()  # a copy: the originals go with the field cleared below
        kept.CopyFrom(node)
        nodes.append(kept)
    del graph.node[:]
    graph.node.extend(nodes)


def _label(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def cast_model(model, dtype: str = "float16", where: str = "export"):
    """The float32 ONNX ``model`` (a ModelProto, weights loaded) made to compute in ``dtype``
    ("float16" | "bfloat16"), in place (a copy of a graph over 2 GiB could not be made: protobuf
    copies by serialising), and returned: every float32 initializer, graph input/output, value_info and
    Constant/ConstantOfShape/Cast/random-op type becomes ``dtype``; int and bool tensors are
    untouched. What the graph computes in float32 on purpose (Resize's scales) stays float32.

    For TensorRT's strongly typed networks (TensorRT >= 11), whose precision is the graph's own.
    Raises ModelLoadError for what it cannot cast (quantisation ops, sparse or non-tensor floats,
    a bfloat16 the installed ``onnx`` cannot write).
    """
    types = float_types()
    if dtype not in types:
        have = ", ".join(types)
        raise ModelLoadError(f"{where}: cannot cast an ONNX graph to {dtype!r} with onnx {_onnx_version()} (it writes {have})")
    _cast_graph(model.graph, types[dtype], where)
    return model


def _onnx_version() -> str:
    import onnx

    return onnx.__version__


def write_cast_model(src: Path, dst: Path, dtype: str = "float16", where: str = "export") -> Path:
    """``cast_model`` of the ONNX file ``src`` (with its external weights) written to ``dst``; the
    weights go to ``<dst>.data`` beside it when they would not fit one protobuf. Returns ``dst``."""
    import onnx

    try:
        model = onnx.load(str(src))
    except Exception as err:  # protobuf's DecodeError, a missing external-data file
        raise ModelLoadError(f"{where}: cannot read ONNX graph {src}: {err}") from err
    model = cast_model(model, dtype, where)
    data = dst.with_name(dst.name + ".data")
    for stale in (dst, data):  # onnx appends to an existing external-data file
        stale.unlink(missing_ok=True)
    large = sum(len(t.raw_data) for t in model.graph.initializer) > _EXTERNAL_DATA_BYTES
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model, str(dst), save_as_external_data=large, all_tensors_to_one_file=True, location=data.name, size_threshold=0
    )
    return dst
