"""What every route family (``/v1``, the Open Inference Protocol ``/v2``) shares: the API key
check, and waiting for an image's future while watching the client and the deadline."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import Request


class ClientGone(Exception):
    """The client closed the connection before its result was ready."""


def authorised(request: Request, api_key: str | None) -> bool:
    """Whether the request carries ``api_key`` (``Authorization: Bearer KEY`` or ``X-API-Key``)."""
    if api_key is None:
        return True
    bearer = request.headers.get("authorization", "")
    given = bearer[7:] if bearer.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), api_key.encode())


async def wait_for(request: Request, future: Any, timeout_s: float) -> Any:
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
