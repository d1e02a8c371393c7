"""The HTTP service: ``POST /v1/segment``, ``/healthz``, ``/readyz``, ``/metrics``, on FastAPI.

Requests go to ``IntEngine.submit``: every request in flight shares the engine core's model
batches, whatever its task. The app parses and checks a request (``upload``), waits for its
future with the service's timeout, and answers with the result or a JSON error naming the
problem: 400 bad image / body, 401 no or wrong API key, 413 too large, 415 wrong content type,
422 bad or unknown option, 429 queue full (``Retry-After``), 503 shutting down, 504 timed out.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..core import EngineBusy, EngineClosed
from ..errors import ConfigError, IntEngineError
from ..io import mask_to_uint8
from .metrics import ServiceMetrics
from .upload import Limits, RequestError, decode_image, parse_json, parse_options

if TYPE_CHECKING:
    from ..api import IntEngine


@dataclass
class ServiceSettings:
    """timeout_s: per request, from arrival to answer; api_key: required as ``Authorization:
    Bearer KEY`` or ``X-API-Key: KEY`` when set; limits: body bytes and image pixels."""

    timeout_s: float = 300.0
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    retry_after_s: int = 1


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
OPTION_PROPERTIES = {
    "task": {"type": "string", "minLength": 1},
    "preset": {"type": "string", "enum": ["cod", "polyp", "skin", "gensam", "promac"]},
    "iterations": {"type": "integer", "minimum": 1, "maximum": 16},
    "seed": {"type": "integer"},
}
STATUSES = {
    400: "bad image or body",
    401: "missing or wrong API key",
    413: "body or image too large",
    415: "content type is neither multipart/form-data nor application/json",
    422: "bad or unknown option",
    429: "queue full: retry after Retry-After seconds",
    499: "client closed the connection (the answer is never received)",
    500: "engine failure (a model or engine fault)",
    503: "shutting down",
    504: "timed out",
}


class ClientGone(Exception):
    """The client closed the connection before its result was ready."""


async def _wait(request: Request, future, timeout_s: float):
    """The future's result, polling every 0.5 s whether the client is still there. On timeout
    (asyncio.TimeoutError) or a disconnect (ClientGone) the future is cancelled, so the image
    leaves the scheduler at its next tick instead of computing for nobody."""
    loop = asyncio.get_running_loop()
    wrapped = asyncio.wrap_future(future)  # cancelling it cancels the core's future
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            wrapped.cancel()
            raise asyncio.TimeoutError
        done, _ = await asyncio.wait({wrapped}, timeout=min(0.5, remaining))
        if done:
            return wrapped.result()
        if await request.is_disconnected():
            wrapped.cancel()
            raise ClientGone


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


def _replay_body(body: bytes) -> Any:
    """An ASGI ``receive`` handing over ``body`` (the request's bytes, already read) as the
    whole request, then a disconnect: a ``Request`` built on it parses its form from them."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def _png(mask_u8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask_u8).save(buf, format="PNG")
    return buf.getvalue()


def result_json(result) -> dict[str, Any]:
    """The JSON answer for one ``pipeline.Result``."""
    seconds = stage_seconds(result)
    h, w = result.binary.shape
    return {
        "width": int(w),
        "height": int(h),
        "binary_rle": result.to_rle(),
        "soft_png": base64.b64encode(_png(mask_to_uint8(result.soft))).decode("ascii"),
        "picks": [it.pick for it in result.trace.iterations],
        "seconds": seconds,
        "task": result.trace.task,
        "final_iteration": int(result.trace.final_iteration),
    }


def create_app(engine: "IntEngine", settings: ServiceSettings | None = None) -> FastAPI:
    """The FastAPI app around a loaded ``IntEngine``; ``app.state.draining = True`` makes it
    answer 503 to new work (the server sets it on SIGTERM)."""
    settings = settings or ServiceSettings()
    core = engine.core
    metrics = ServiceMetrics(lambda: core.queue_depth, lambda: core.in_flight, lambda: core.stats.cancelled)
    core.on_batch = metrics.observe_batch
    working = {"max_side": engine.config.max_side, "min_side": engine.config.min_side, "max_aspect": engine.config.max_aspect}
    app = FastAPI(
        title="int-engine", version=__version__, description="INT segmentation from one task-generic prompt per request."
    )
    app.state.draining = False
    app.state.active = 0  # segmentation requests being answered (a drain waits for them)
    app.state.metrics = metrics

    def authorised(request: Request) -> bool:
        if settings.api_key is None:
            return True
        bearer = request.headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode(), settings.api_key.encode())

    async def read_request(request: Request) -> tuple[bytes, dict[str, Any]]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("multipart/form-data", "application/json"):
            raise RequestError(
                415,
                f"content type {ctype or '(none)'!r}: send multipart/form-data (field image) "
                'or application/json ({"image": base64})',
            )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.limits.max_body_bytes:
            raise RequestError(413, f"body of {int(declared):,} bytes is over the {settings.limits.max_body_bytes:,}-byte limit")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.limits.max_body_bytes:
                raise RequestError(413, f"body is over the {settings.limits.max_body_bytes:,}-byte limit")
        if not body:
            raise RequestError(400, "empty body: send the image")
        if ctype == "application/json":
            return parse_json(body)
        try:  # the client's stream is spent: a request whose receive replays the bytes read
            form = await Request(request.scope, _replay_body(body)).form()
        except Exception as err:  # python-multipart's parse errors have no common base class
            raise RequestError(400, f"malformed multipart body: {err}") from None
        fields = {k: v for k, v in form.multi_items()}
        upload = fields.pop("image", None)
        if upload is None or isinstance(upload, str):
            raise RequestError(422, "multipart body needs the image file in field 'image'")
        files = [k for k, v in fields.items() if not isinstance(v, str)]
        if files:
            raise RequestError(422, f"field {files[0]!r} must be text, not a file")
        return await upload.read(), parse_options(fields)

    @app.get("/healthz", responses={200: {"description": "the process is alive"}})
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={
            200: {"description": "ready"},
            503: {"description": "not ready", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
        },
    )
    async def readyz():
        if app.state.draining or not core.accepting:
            reason = "shutting down" if app.state.draining else f"queue full ({core.queue_depth} waiting)"
            return _error(503, reason)
        return {"ready": True, "queue_depth": core.queue_depth, "in_flight": core.in_flight}

    @app.get("/metrics", responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "the masks", "content": {"application/json": {"schema": RESULT_SCHEMA}, "image/png": {}}}
    }
    responses |= {
        code: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}} for code, text in STATUSES.items()
    }
    request_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "additionalProperties": False,
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        **OPTION_PROPERTIES,
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
                        **OPTION_PROPERTIES,
                        "ablation": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    },
                }
            },
        },
    }

    @app.post("/v1/segment", responses=responses, openapi_extra={"requestBody": request_body})
    async def segment(request: Request) -> Response:
        t0 = time.perf_counter()
        app.state.active += 1  # one event loop: no lock needed
        try:
            response = await _segment(request)
        finally:
            app.state.active -= 1
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - t0)
        return response

    async def _segment(request: Request) -> Response:
        if not authorised(request):
            return _error(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)")
        if app.state.draining:
            return _error(503, "shutting down: no new requests")
        try:
            image, options = await read_request(request)
            loaded = await run_in_threadpool(decode_image, image, settings.limits, working)
            future = engine.submit(loaded, **options)
        except RequestError as err:
            return _error(err.status, err.message)
        except ConfigError as err:
            return _error(422, str(err))
        except EngineBusy as err:
            return _error(429, str(err), {"Retry-After": str(settings.retry_after_s)})
        except EngineClosed as err:
            return _error(503, str(err))
        try:
            result = await _wait(request, future, settings.timeout_s)
        except asyncio.TimeoutError:
            return _error(504, f"no result within {settings.timeout_s:g} s; the request was cancelled")
        except ClientGone:
            return _error(499, "client disconnected; the request was cancelled")  # nobody reads it
        except IntEngineError as err:  # the image failed in the engine: that request's answer
            return _error(422, f"the image could not be segmented: {err}")
        except Exception as err:  # a model or engine fault, not the request's: said as such
            return _error(500, f"engine failure: {type(err).__name__}: {err}")
        metrics.observe_stages(stage_seconds(result))
        if "image/png" in request.headers.get("accept", ""):
            return Response(_png(result.binary.astype("uint8") * 255), media_type="image/png")
        return JSONResponse(result_json(result))

    return app


def stage_seconds(result) -> dict[str, float]:
    """Seconds per stage, summed over the result's iterations."""
    seconds: dict[str, float] = {}
    for it in result.trace.iterations:
        for stage, s in it.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + float(s)
    return seconds
