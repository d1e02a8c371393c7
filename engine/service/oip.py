"""The Open Inference Protocol v2 (KServe's and NVIDIA Triton's HTTP/REST protocol, JSON) for the
one model this server holds, ``int-engine``: the protocol's JSON shapes (for the OpenAPI
document), an inference request's tensors read into an image and options, a result written as
output tensors. The routes are in ``service.v2``.

Input: one tensor named ``image``, either BYTES (``shape [1]``, ``data``: one string, the image
file's bytes in standard base64, RFC 4648 with padding; the JSON protocol carries BYTES as
strings) or UINT8 ``[H, W, 3]`` (or ``[1, H, W, 3]``) RGB pixels, row-major, flat or nested.
The request's ``parameters`` are the request options (``config.REQUEST_OPTIONS``: task, preset,
iterations, seed, ablation as ``"pnm=off,hcg=on"``); an input's own parameters are ignored.
Outputs (all of them unless the request's ``outputs`` names some): ``binary_rle`` BYTES [1] (the
COCO RLE JSON of eq 13's segmentation, as ``/v1/segment``'s ``binary_rle``), ``soft_mask``
UINT8 [H, W] (its soft map, round(255 m)), ``picks`` BYTES [n] (the picked name per iteration),
``final_iteration`` INT32 [1]. The response's parameters carry ``task`` and ``seconds_<stage>``.
Every problem is a ``RequestError`` (400 bad body / tensor / image, 413 too large, 422 bad option
or one over the server's ``upload.Limits``, as on /v1).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import REQUEST_OPTIONS
from ..io import LoadedImage, from_pixels, mask_to_uint8
from .upload import Limits, RequestError, decode_image, parse_options

MODEL_NAME = "int-engine"
INPUT = "image"
INPUT_TYPES = ("BYTES", "UINT8")
_END = object()  # the end of a list, in _flatten
OUTPUTS = {  # name -> (datatype, shape; -1 for a dimension that varies)
    "binary_rle": ("BYTES", [1]),
    "soft_mask": ("UINT8", [-1, -1]),
    "picks": ("BYTES", [-1]),
    "final_iteration": ("INT32", [1]),
}

# The protocol's JSON shapes (its inference_rest.md / open_inference_rest.yaml), as this server fills them
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
PARAMETERS = {
    "type": "object",
    "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
}
TENSOR_META = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
}
MODEL_METADATA = {
    "type": "object",
    "required": ["name", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": TENSOR_META},
        "outputs": {"type": "array", "items": TENSOR_META},
    },
}
INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            **PARAMETERS,
            "description": f"the request options: {', '.join(REQUEST_OPTIONS)} (ablation as 'pnm=off,hcg=on')",
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string", "enum": [INPUT]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": list(INPUT_TYPES)},
                    "parameters": PARAMETERS,
                    "data": {
                        "type": "array",
                        "description": "BYTES: one string, the image file in base64; UINT8: H*W*3 values, row-major",
                    },
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "enum": list(OUTPUTS)}, "parameters": PARAMETERS},
            },
        },
    },
}
INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "id": {"type": "string"},
        "parameters": PARAMETERS,
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string"},
                    "data": {"type": "array"},
                },
            },
        },
    },
}


def model_metadata() -> dict[str, Any]:
    """``GET /v2/models/int-engine``: the input as its BYTES form (UINT8 [H, W, 3] is also taken)."""
    return {
        "name": MODEL_NAME,
        "platform": "int-engine",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": name, "datatype": dtype, "shape": shape} for name, (dtype, shape) in OUTPUTS.items()],
    }


@dataclass(frozen=True)
class InferRequest:
    """A checked inference request: the image, the request options, the outputs asked for, its id."""

    image: LoadedImage
    options: dict[str, Any]
    outputs: tuple[str, ...]
    id: str | None


def read_request(body: bytes, limits: Limits, working: dict[str, Any]) -> InferRequest:
    """The inference request in ``body``, checked; ``working`` is the engine's working size
    (max_side, min_side, max_aspect), as ``upload.decode_image`` takes it."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as err:  # also a 5000-digit number, a 100000-deep nesting
        raise RequestError(400, f"body is not valid JSON: {shown(str(err), 200)}") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"the inference request must be a JSON object, got {type(data).__name__}")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(400, f'"id" must be a string, got {type(request_id).__name__}')
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f'"inputs" must hold one tensor, {INPUT!r} (BYTES [1] or UINT8 [H, W, 3])')
    image = _image(inputs[0], limits, working)
    return InferRequest(image, _options(data.get("parameters"), limits), _outputs(data.get("outputs")), request_id)


def _image(tensor: dict[str, Any], limits: Limits, working: dict[str, Any]) -> LoadedImage:
    name, dtype, shape, values = (tensor.get(k) for k in ("name", "datatype", "shape", "data"))
    if name != INPUT:
        raise RequestError(400, f"unknown input {shown(name)}: the model's one input is {INPUT!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(400, f'input "shape" must be a list of non-negative integers, got {shown(shape)}')
    if not isinstance(values, list):
        raise RequestError(400, 'input "data" must be a list (the tensor\'s elements, row-major)')
    if dtype == "BYTES":
        return _encoded_image(shape, values, limits, working)
    if dtype == "UINT8":
        return _pixels(shape, values, limits, working)
    raise RequestError(400, f"input datatype {shown(dtype)}: send BYTES (the image file in base64) or UINT8 [H, W, 3]")


def _encoded_image(shape: list[int], values: list[Any], limits: Limits, working: dict[str, Any]) -> LoadedImage:
    flat = _flatten(values, limit=2)
    if math.prod(shape) != 1 or len(flat) != 1 or not isinstance(flat[0], str):
        raise RequestError(400, f"a BYTES image is one element (shape [1]), the file in base64; got shape {shown(shape)}")
    try:
        encoded = base64.b64decode(flat[0], validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(400, f"the BYTES image is not valid base64: {err}") from None
    return decode_image(encoded, limits, working)


def _pixels(shape: list[int], values: list[Any], limits: Limits, working: dict[str, Any]) -> LoadedImage:
    dims = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(dims) != 3 or dims[2] != 3 or dims[0] < 1 or dims[1] < 1:
        raise RequestError(400, f"a UINT8 image is [H, W, 3] RGB (or [1, H, W, 3]), got shape {shown(shape)}")
    h, w = dims[0], dims[1]
    if h * w > limits.max_pixels:
        raise RequestError(413, f"image is {w}x{h} = {w * h:,} pixels, over the {limits.max_pixels:,}-pixel limit")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise RequestError(400, f"UINT8 data is not a row-major list of integers: {err}") from None
    if arr.dtype.kind not in "iu":
        raise RequestError(400, f"UINT8 data must be integers, got {arr.dtype.kind!r} values ({arr.dtype})")
    if arr.size != h * w * 3:
        raise RequestError(400, f"UINT8 data has {arr.size:,} values; shape {shown(shape)} needs {h * w * 3:,}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise RequestError(400, "UINT8 data must lie in 0..255")
    return from_pixels(arr.astype(np.uint8).reshape(h, w, 3), source="<upload>", **working)


def _flatten(values: list[Any], limit: int) -> list[Any]:
    """The elements of a flat or nested list, row-major, at most ``limit`` of them (iteratively:
    no depth limit to hit)."""
    out: list[Any] = []
    stack = [iter(values)]
    while stack and len(out) < limit:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


def _options(parameters: Any, limits: Limits) -> dict[str, Any]:
    """The request options from the request's parameters, checked as /v1's fields are
    (``upload.parse_options``: values, and the server's limits on iterations, task, seed)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(400, f'"parameters" must be an object, got {type(parameters).__name__}')
    unknown = sorted(set(parameters) - set(REQUEST_OPTIONS))
    if unknown:
        raise RequestError(422, f"unknown parameter {shown(unknown[0])}; allowed: {', '.join(REQUEST_OPTIONS)}")
    return parse_options(parameters, limits)


def _outputs(requested: Any) -> tuple[str, ...]:
    if requested is None:
        return tuple(OUTPUTS)
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise RequestError(400, '"outputs" must be a list of {"name": ...} objects')
    names = [o.get("name") for o in requested]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise RequestError(400, f"unknown output {shown(unknown[0])}; the model's outputs: {', '.join(OUTPUTS)}")
    return tuple(dict.fromkeys(names))


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error never echoes a huge value whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stage_seconds(result: Any) -> dict[str, float]:
    """Seconds per stage, summed over the result's iterations."""
    seconds: dict[str, float] = {}
    for it in result.trace.iterations:
        for stage, s in it.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + float(s)
    return seconds


def infer_response(result: Any, request: InferRequest) -> dict[str, Any]:
    """The inference response for one ``Result``: the outputs ``request`` asked for."""
    h, w = result.binary.shape
    picks = [it.pick for it in result.trace.iterations]
    tensors = {
        "binary_rle": lambda: [json.dumps(result.to_rle(), separators=(",", ":"))],
        "soft_mask": lambda: mask_to_uint8(result.soft).ravel().tolist(),
        "picks": lambda: picks,
        "final_iteration": lambda: [int(result.trace.final_iteration)],
    }
    shapes = {"binary_rle": [1], "soft_mask": [int(h), int(w)], "picks": [len(picks)], "final_iteration": [1]}
    seconds = {f"seconds_{stage}": s for stage, s in stage_seconds(result).items()}
    response: dict[str, Any] = {"model_name": MODEL_NAME}
    if request.id is not None:
        response["id"] = request.id
    response["parameters"] = {"task": result.trace.task, **seconds}
    response["outputs"] = [
        {"name": name, "datatype": OUTPUTS[name][0], "shape": shapes[name], "data": tensors[name]()} for name in request.outputs
    ]
    return response
