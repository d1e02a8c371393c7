"""The Open Inference Protocol v2 routes (KServe, NVIDIA Triton) beside ``/v1/segment``, in the
same app and over the same ``IntEngine``: ``GET /v2`` (server metadata), ``/v2/health/live``,
``/v2/health/ready``, ``/v2/models/int-engine`` (model metadata), ``/v2/models/int-engine/ready``
and ``POST /v2/models/int-engine/infer``. The tensors are read and written by ``service.oip``.

Inference answers as ``/v1/segment`` does, under the same limits (``upload.Limits``: body bytes
and upload seconds, image pixels, iterations, task length, seed), each error as the protocol's
``{"error": message}``: 400 bad body, tensor or image, 401 no or wrong API key, 404 another model,
408 body too slow, 413 too large, 422 bad or unknown option or one over the limits (or an image
the engine cannot segment), 429 queue full (``Retry-After``), 500 engine failure, 503 shutting
down, 504 timed out; a client that leaves has its image cancelled.
Health and metadata need no API key, as ``/healthz`` and ``/readyz`` do not.

``service.app`` mounts these routes, so this module does not import it (no import cycle): the
API-key check and the wait for a result are ``service.common``'s, as ``/v1``'s are.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..core import EngineBusy, EngineClosed
from ..errors import ConfigError, IntEngineError
from .common import ClientGone, authorised, wait_for
from .oip import (
    ERROR,
    INFER_REQUEST,
    INFER_RESPONSE,
    MODEL_METADATA,
    MODEL_NAME,
    SERVER_METADATA,
    infer_response,
    model_metadata,
    read_request,
    shown,
    stage_seconds,
)
from .upload import Limits, RequestError, read_body

if TYPE_CHECKING:
    from ..api import IntEngine
    from .app import ServiceSettings

INFER_STATUSES = {
    400: "bad body, tensor or image",
    401: "missing or wrong API key",
    404: "no such model (this server holds int-engine)",
    408: "body not received within the server's upload timeout (the connection is closed)",
    413: "body or image too large",
    422: "bad or unknown option (parameters), or an image the engine cannot segment",
    429: "queue full: retry after Retry-After seconds",
    499: "client closed the connection (the answer is never received)",
    500: "engine failure (a model or engine fault)",
    503: "shutting down",
    504: "timed out",
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


NOT_FOUND = {404: _json(ERROR, "no such model (this server holds int-engine)")}
NOT_READY = {503: _json({**ERROR, "properties": {**ERROR["properties"], "ready": {"type": "boolean"}}}, "not ready")}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {200: _json(INFER_RESPONSE, "the output tensors")}
INFER_RESPONSES |= {code: _json(ERROR, text) for code, text in INFER_STATUSES.items()}
INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": INFER_REQUEST}}}}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The protocol's error object, ``{"error": message}``, with ``status``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_json_body(request: Request, limits: Limits) -> bytes:
    """The body, read by ``upload.read_body`` (413 over ``limits.max_body_bytes``, 408 slower than
    ``limits.upload_timeout_s``, 499 client gone); 400 when empty or in Triton's binary tensor
    extension (not supported)."""
    if "inference-header-content-length" in request.headers:
        raise RequestError(400, "the binary tensor data extension is not supported: send the tensors as JSON")
    body = await read_body(request, limits)
    if not body:
        raise RequestError(400, "empty body: send an inference request (JSON)")
    return body


async def result_or_error(request: Request, future: Any, timeout_s: float) -> Any:
    """The future's ``Result``, or the error response: 504 after ``timeout_s``, 499 when the
    client is gone (both cancel the image: it leaves the scheduler at its next tick), 422 when the
    image fails in the engine, 500 for an engine fault."""
    try:
        return await wait_for(request, future, timeout_s)
    except asyncio.TimeoutError:
        return error(504, f"no result within {timeout_s:g} s; the request was cancelled")
    except ClientGone:
        return error(499, "client disconnected; the request was cancelled")  # nobody reads it
    except IntEngineError as err:  # the image failed in the engine: that request's answer
        return error(422, f"the image could not be segmented: {err}")
    except Exception as err:  # a model or engine fault, not the request's: said as such
        return error(500, f"engine failure: {type(err).__name__}: {err}")


def add_v2_routes(app: FastAPI, engine: "IntEngine", settings: "ServiceSettings") -> None:
    """Mount the v2 routes on ``app`` (``service.app.create_app``'s): they share its engine,
    settings, metrics (``app.state.metrics``), draining flag and count of requests being answered."""
    core = engine.core
    working = {"max_side": engine.config.max_side, "min_side": engine.config.min_side, "max_aspect": engine.config.max_aspect}

    def not_ready() -> str | None:
        if app.state.draining:
            return "shutting down"
        return None if core.accepting else f"queue full ({core.queue_depth} waiting)"

    @app.get("/v2", responses={200: _json(SERVER_METADATA, "server metadata")}, tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "int-engine", "version": __version__, "extensions": []}

    @app.get("/v2/health/live", responses={200: {"description": "the server is live"}}, tags=["v2"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", responses={200: {"description": "ready"}, **NOT_READY}, tags=["v2"])
    async def ready() -> Any:
        reason = not_ready()
        return {"ready": True} if reason is None else JSONResponse({"ready": False, "error": reason}, status_code=503)

    @app.get("/v2/models/{model_name}", responses={200: _json(MODEL_METADATA, "model metadata"), **NOT_FOUND}, tags=["v2"])
    async def metadata(model_name: str) -> Any:
        return model_metadata() if model_name == MODEL_NAME else _no_model(model_name)

    @app.get("/v2/models/{model_name}/ready", responses={200: {"description": "ready"}, **NOT_READY, **NOT_FOUND}, tags=["v2"])
    async def model_ready(model_name: str) -> Any:
        if model_name != MODEL_NAME:
            return _no_model(model_name)
        reason = not_ready()
        body = {"name": MODEL_NAME, "ready": reason is None}
        return body if reason is None else JSONResponse({**body, "error": reason}, status_code=503)

    @app.post("/v2/models/{model_name}/infer", responses=INFER_RESPONSES, openapi_extra=INFER_BODY, tags=["v2"])
    async def infer(model_name: str, request: Request) -> Response:
        t0 = time.perf_counter()
        app.state.active += 1  # one event loop: no lock needed; a drain waits for it
        try:
            response = await _infer(model_name, request)
        finally:
            app.state.active -= 1
        app.state.metrics.requests.labels(str(response.status_code)).inc()
        app.state.metrics.latency.observe(time.perf_counter() - t0)
        return response

    async def _infer(model_name: str, request: Request) -> Response:
        if not authorised(request, settings.api_key):
            return error(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)")
        if model_name != MODEL_NAME:
            return _no_model(model_name)
        if app.state.draining:
            return error(503, "shutting down: no new requests")
        try:
            body = await read_json_body(request, settings.limits)
            wanted = await run_in_threadpool(read_request, body, settings.limits, working)
            future = engine.submit(wanted.image, **wanted.options)
        except RequestError as err:  # after a 408 or 413 the rest of the body is not read: the connection ends
            return error(err.status, err.message, {"Connection": "close"} if err.status in (408, 413) else None)
        except ConfigError as err:
            return error(422, str(err))
        except EngineBusy as err:
            return error(429, str(err), {"Retry-After": str(settings.retry_after_s)})
        except EngineClosed as err:
            return error(503, str(err))
        result = await result_or_error(request, future, settings.timeout_s)
        if isinstance(result, Response):
            return result
        app.state.metrics.observe_stages(stage_seconds(result))
        payload = await run_in_threadpool(lambda: json.dumps(infer_response(result, wanted), separators=(",", ":")).encode())
        return Response(payload, media_type="application/json")


def _no_model(name: str) -> JSONResponse:
    return error(404, f"no model {shown(name)}: this server holds {MODEL_NAME!r}")
