"""``POST /v1/segment`` streamed as Server-Sent Events: one ``iteration`` event per iteration as
it lands (its pick, its boxes, its segmentation as RLE), then one ``result`` event (the answer a
plain request gets), or one ``error`` event. A comment line every ``HEARTBEAT_S`` keeps proxies
from closing a quiet stream; a client that goes away cancels its image (the stream's generator is
cancelled, and leaving it cancels the request: the image leaves the core at its next tick).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from fastapi import Request

from ..errors import IntEngineError
from ..result import IterationUpdate

HEARTBEAT_S = 1.0
MEDIA_TYPE = "text/event-stream"


def wants_stream(request: Request) -> bool:
    """``?stream=true`` (or 1 / yes), or ``Accept: text/event-stream``."""
    flag = request.query_params.get("stream", "").lower() in ("1", "true", "yes")
    return flag or MEDIA_TYPE in request.headers.get("accept", "")


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One event in the text/event-stream format (the JSON on one ``data:`` line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def iteration_json(update: IterationUpdate) -> dict[str, Any]:
    """An ``iteration`` event's data: the iteration, its pick, its boxes (original pixels) and
    its segmentation M_i^bin as COCO RLE at the image's size."""
    h, w = update.binary.shape
    return {
        "iteration": update.iteration,
        "pick": update.pick,
        "boxes": [[round(float(v), 1) for v in box] for box in update.boxes()],
        "binary_rle": update.to_rle(),
        "width": int(w),
        "height": int(h),
    }


async def events(
    stream: Any, timeout_s: float, result_json: Callable[[Any], dict[str, Any]], on_result: Callable[[Any], None]
) -> AsyncIterator[bytes]:
    """The SSE bytes of an ``IntEngine.iterations`` stream, ending with ``result`` or ``error``;
    504 as an error event once ``timeout_s`` has passed since the request began."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    items = aiter(stream)
    pending: asyncio.Task | None = None
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                yield sse("error", _error(504, f"no result within {timeout_s:g} s; the request was cancelled"))
                return
            pending = pending or asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=min(HEARTBEAT_S, remaining))
            if not done:
                yield b": waiting\n\n"
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            except IntEngineError as err:  # the image failed in the engine: that request's answer
                yield sse("error", _error(422, f"the image could not be segmented: {err}"))
                return
            except Exception as err:  # a model or engine fault, not the request's
                yield sse("error", _error(500, f"engine failure: {type(err).__name__}: {err}"))
                return
            if isinstance(item, IterationUpdate):
                yield sse("iteration", iteration_json(item))
            else:
                on_result(item)
                yield sse("result", result_json(item))
    finally:
        if pending is not None:
            pending.cancel()
        stream.cancel()


def _error(status: int, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "message": message}}
