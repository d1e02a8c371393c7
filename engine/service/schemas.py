"""The service's OpenAPI pieces: the JSON shapes of a result and an error, the statuses it
answers with, and ``POST /v1/segment``'s request body (multipart or JSON), whose bounds are the
server's own limits (``segment_request_body``)."""

from __future__ import annotations

from typing import Any

from ..config import PRESETS, SEED_MAGNITUDE
from .upload import Limits

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "message"],
            "properties": {"status": {"type": "integer"}, "message": {"type": "string"}},
        }
    },
}
RESULT_SCHEMA = {
    "type": "object",
    "required": ["width", "height", "binary_rle", "soft_png", "picks", "seconds"],
    "properties": {
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "binary_rle": {
            "type": "object",
            "required": ["size", "counts"],
            "properties": {"size": {"type": "array", "items": {"type": "integer"}}, "counts": {"type": "string"}},
        },
        "soft_png": {"type": "string", "description": "base64 8-bit PNG of the soft mask at the image's size"},
        "picks": {"type": "array", "items": {"type": "string"}, "description": "the picked name, one per iteration"},
        "seconds": {"type": "object", "additionalProperties": {"type": "number"}, "description": "seconds per stage"},
        "task": {"type": "string"},
        "final_iteration": {"type": "integer"},
    },
}


def option_properties(limits: Limits) -> dict[str, Any]:
    """The per-request options' schemas, bounded as ``upload.check_request_limits`` bounds them."""
    return {
        "task": {"type": "string", "minLength": 1, "maxLength": limits.max_task_chars},
        "preset": {"type": "string", "enum": list(PRESETS)},
        "iterations": {"type": "integer", "minimum": 1, "maximum": limits.max_iterations},
        "seed": {"type": "integer", "minimum": -SEED_MAGNITUDE, "maximum": SEED_MAGNITUDE},
    }


OPTION_PROPERTIES = option_properties(Limits())  # the default server's
STATUSES = {
    400: "bad image or body",
    401: "missing or wrong API key",
    408: "body not received within the server's upload timeout (the connection is closed)",
    413: "body or image too large",
    415: "content type is neither multipart/form-data nor application/json",
    422: "bad or unknown option, or one over the server's limits (e.g. iterations over --max-iterations)",
    429: "queue full: retry after Retry-After seconds",
    499: "client closed the connection (the answer is never received)",
    500: "engine failure (a model or engine fault)",
    503: "shutting down",
    504: "timed out",
}

SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the masks", "content": {"application/json": {"schema": RESULT_SCHEMA}, "image/png": {}}}
}
SEGMENT_RESPONSES |= {
    code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}} for code, text in STATUSES.items()
}


def segment_request_body(limits: Limits) -> dict[str, Any]:
    """``POST /v1/segment``'s request body, multipart or JSON, its options within ``limits``."""
    options = option_properties(limits)
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "additionalProperties": False,
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        **options,
                        "ablation": {"type": "string", "description": "e.g. pnm=off,hcg=on"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "additionalProperties": False,
                    "properties": {
                        "image": {"type": "string", "format": "byte"},
                        **options,
                        "ablation": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    },
                }
            },
        },
    }


SEGMENT_REQUEST_BODY = segment_request_body(Limits())  # the default server's
METRICS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text format", "content": {"text/plain": {}}},
    401: {"description": "missing or wrong API key (--metrics-auth)", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "ready"},
    503: {"description": "not ready", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
}
# ?stream=true (or Accept: text/event-stream): the answer as Server-Sent Events (service/stream.py)
SEGMENT_RESPONSES[200]["content"]["text/event-stream"] = {
    "schema": {
        "type": "string",
        "description": "events: 'iteration' per iteration (iteration, pick, boxes, binary_rle), then 'result' "
        "(the JSON a plain request gets) or 'error' ({error: {status, message}})",
    }
}
SEGMENT_PARAMETERS = [
    {
        "name": "stream",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean"},
        "description": "stream each iteration as it lands (Server-Sent Events)",
    }
]
