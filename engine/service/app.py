"""The HTTP service: ``POST /v1/segment`` (streamed per iteration with ``?stream=true``,
``service.stream``), ``/`` (a page that shows the stream), ``/healthz``, ``/readyz``,
``/metrics``, on FastAPI.

Requests go to ``IntEngine.submit``: every request in flight shares the engine core's model
batches, whatever its task. The app parses and checks a request (``upload``), waits for its
future with the service's timeout, and answers with the result or a JSON error naming the
problem: 400 bad image / body, 401 no or wrong API key, 408 body too slow (``--upload-timeout``),
413 too large, 415 wrong content type, 422 bad or unknown option or one over the server's limits
(``upload.check_request_limits``), 429 queue full (``Retry-After``), 503 shutting down, 504 timed out.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..core import EngineBusy, EngineClosed
from ..errors import ConfigError, IntEngineError
from ..io import mask_to_uint8
from .common import ClientGone, authorised, wait_for
from .metrics import ServiceMetrics
from .schemas import METRICS_RESPONSES, READY_RESPONSES, SEGMENT_PARAMETERS, SEGMENT_RESPONSES, segment_request_body
from .stream import MEDIA_TYPE as STREAM_MEDIA_TYPE
from .stream import events, wants_stream
from .upload import Limits, RequestError, decode_image, read_upload
from .v2 import add_v2_routes

PAGE = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")  # one file, its own JS
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # events reach the client as they are sent

if TYPE_CHECKING:
    from ..api import IntEngine


@dataclass
class ServiceSettings:
    """timeout_s: per request, from arrival to answer; api_key: required as ``Authorization:
    Bearer KEY`` or ``X-API-Key: KEY`` when set (by ``/metrics`` too when ``metrics_auth``);
    limits: what one request may cost (body bytes and seconds, image pixels, iterations, ...)."""

    timeout_s: float = 300.0
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    retry_after_s: int = 1
    metrics_auth: bool = False


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message}}, status_code=status, headers=headers)


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


NO_KEY = "missing or wrong API key (Authorization: Bearer KEY or X-API-Key: KEY)"
CLOSE = {"Connection": "close"}  # after a 408 or 413 the rest of the body is not read: the connection ends


async def accept(request: Request, settings: ServiceSettings, working: dict[str, Any], draining: bool) -> Any:
    """A segmentation request's ``(image, options)``, or the error response that refuses it."""
    if not authorised(request, settings.api_key):
        return _error(401, NO_KEY)
    if draining:
        return _error(503, "shutting down: no new requests")
    try:
        image, options = await read_upload(request, settings.limits)
        return await run_in_threadpool(decode_image, image, settings.limits, working), options
    except RequestError as err:
        return _error(err.status, err.message, CLOSE if err.status in (408, 413) else None)


def submit(start: Callable[..., Any], accepted: tuple[Any, dict[str, Any]], retry_after_s: int) -> Any:
    """``start(image, **options)`` (``IntEngine.submit`` or ``.iterations``), or the error
    response for a bad option, a full queue or a closing engine."""
    image, options = accepted
    try:
        return start(image, **options)
    except ConfigError as err:
        return _error(422, str(err))
    except EngineBusy as err:
        return _error(429, str(err), {"Retry-After": str(retry_after_s)})
    except EngineClosed as err:
        return _error(503, str(err))


async def _counted(body: AsyncIterator[bytes], state: Any) -> AsyncIterator[bytes]:
    """``body``, with ``state.active`` decremented once it ends (however it ends)."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        state.active -= 1


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

    @app.get("/", response_class=HTMLResponse, responses={200: {"description": "a page that streams a segmentation"}})
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/healthz", responses={200: {"description": "the process is alive"}})
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses=READY_RESPONSES)
    async def readyz():
        if app.state.draining or not core.accepting:
            reason = "shutting down" if app.state.draining else f"queue full ({core.queue_depth} waiting)"
            return _error(503, reason)
        return {"ready": True, "queue_depth": core.queue_depth, "in_flight": core.in_flight}

    @app.get("/metrics", responses=METRICS_RESPONSES)
    async def prometheus(request: Request) -> Response:
        if settings.metrics_auth and not authorised(request, settings.api_key):
            return _error(401, NO_KEY)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    extra = {"requestBody": segment_request_body(settings.limits), "parameters": SEGMENT_PARAMETERS}

    @app.post("/v1/segment", responses=SEGMENT_RESPONSES, openapi_extra=extra)
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
        accepted = await accept(request, settings, working, app.state.draining)
        if isinstance(accepted, Response):
            return accepted
        streaming = wants_stream(request)
        submitted = submit(engine.iterations if streaming else engine.submit, accepted, settings.retry_after_s)
        if isinstance(submitted, Response):
            return submitted
        if streaming:
            app.state.active += 1  # until the stream ends; the request's own count ends on return
            body = events(submitted, settings.timeout_s, result_json, lambda r: metrics.observe_stages(stage_seconds(r)))
            return StreamingResponse(_counted(body, app.state), media_type=STREAM_MEDIA_TYPE, headers=NO_BUFFERING)
        try:
            result = await wait_for(request, submitted, settings.timeout_s)
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

    add_v2_routes(app, engine, settings)  # the Open Inference Protocol v2 beside /v1 (service/v2.py)
    return app


def stage_seconds(result) -> dict[str, float]:
    """Seconds per stage, summed over the result's iterations."""
    seconds: dict[str, float] = {}
    for it in result.trace.iterations:
        for stage, s in it.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + float(s)
    return seconds
