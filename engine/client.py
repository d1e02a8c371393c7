"""A typed client for int-engine's HTTP service (``int-engine serve``): ``Client`` (blocking) and
``AsyncClient`` (asyncio), over httpx (the ``[client]`` extra).

    from int_engine.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as client:
        result = client.segment("colon.png", task="polyp")      # a path, file bytes or uint8 [H, W, 3]
        result.binary, result.soft, result.picks                  # bool [H, W], float32 [H, W], names
        for item in client.iterations("colon.png", iterations=3):  # ClientIteration ..., then ClientResult
            print(item)

``segment`` posts to ``/v1/segment`` (``protocol="v2"``: ``/v2/models/int-engine/infer``, the
Open Inference Protocol, an array sent as a UINT8 tensor); ``iterations`` reads
``/v1/segment?stream=true``'s Server-Sent Events; leaving its loop early closes the stream, which
cancels the image on the server. A 429 (queue full) is retried after its ``Retry-After`` (at most
``MAX_WAIT_S`` each), ``retries`` times at most; any other error answer raises ``ServiceError``
(status and the server's message); a failed connection raises httpx's error.

The results equal the library's ``Result`` for the same image: ``binary`` is the same mask,
``soft`` is the server's 8-bit copy of it (within 1/255). This module imports neither the
engine's models nor a server library.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Union

import httpx
import numpy as np
from PIL import Image

from . import __version__

ImageLike = Union[str, Path, bytes, np.ndarray]  # a file's path, its bytes, or uint8 [H, W, 3] RGB pixels
MAX_WAIT_S = 60.0  # the longest a Retry-After is honoured for (a longer one waits this long)
MODEL = "int-engine"


class ServiceError(Exception):
    """An error answer: ``status`` (400, 401, 413, 415, 422, 429, 500, 503, 504, ...), the server's
    ``message``, and ``retry_after`` (seconds; on a 429 after the last retry)."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """bool [H, W] from COCO RLE ``{"size": [H, W], "counts": str}`` (pycocotools' encoding)."""
    from pycocotools import mask as coco_mask

    return coco_mask.decode({"size": list(rle["size"]), "counts": rle["counts"].encode()}).astype(bool)


class _Mask:
    """``binary`` bool [H, W], decoded from ``rle`` on first use; ``to_rle`` gives the RLE back."""

    rle: dict[str, Any]

    @cached_property
    def binary(self) -> np.ndarray:
        return decode_rle(self.rle)

    def to_rle(self) -> dict[str, Any]:
        """COCO RLE of ``binary``, ``{"size": [H, W], "counts": str}``, as the library's ``to_rle`` gives it."""
        return {"size": [int(s) for s in self.rle["size"]], "counts": self.rle["counts"]}


@dataclass
class ClientResult(_Mask):
    """One image's answer, as the library's ``Result`` holds it: ``binary`` bool [H, W] (eq 13's
    segmentation) and ``soft`` float32 [H, W] in [0, 1] (its soft map, from the server's 8-bit
    copy), both decoded on first use; ``picks`` (the picked name per iteration), the kept
    ``final_iteration``, ``seconds`` per stage, ``task``."""

    rle: dict[str, Any]
    picks: list[str]
    final_iteration: int
    seconds: dict[str, float]
    task: str | None
    soft_u8: Callable[[], np.ndarray] = field(repr=False, compare=False)

    @cached_property
    def soft(self) -> np.ndarray:
        return self.soft_u8().astype(np.float32) / np.float32(255.0)

    @classmethod
    def from_v1(cls, body: dict[str, Any]) -> "ClientResult":
        """From ``/v1/segment``'s JSON (or a stream's ``result`` event)."""
        png = base64.b64decode(body["soft_png"])
        return cls(
            body["binary_rle"],
            list(body["picks"]),
            int(body["final_iteration"]),
            dict(body.get("seconds", {})),
            body.get("task"),
            lambda: np.asarray(Image.open(io.BytesIO(png))),
        )

    @classmethod
    def from_v2(cls, body: dict[str, Any]) -> "ClientResult":
        """From ``/v2/models/int-engine/infer``'s output tensors (all four asked for)."""
        out = {o["name"]: o for o in body["outputs"]}
        soft = out["soft_mask"]
        params = body.get("parameters", {})
        return cls(
            json.loads(out["binary_rle"]["data"][0]),
            list(out["picks"]["data"]),
            int(out["final_iteration"]["data"][0]),
            {k.removeprefix("seconds_"): float(v) for k, v in params.items() if k.startswith("seconds_")},
            params.get("task"),
            lambda: np.asarray(soft["data"], dtype=np.uint8).reshape(soft["shape"]),
        )


@dataclass(eq=False)  # boxes is an array
class ClientIteration(_Mask):
    """One iteration as it lands (a stream's ``iteration`` event): its index, its ``pick``, its
    ``boxes`` float32 [N, 4] (x0, y0, x1, y1, image pixels), its segmentation ``binary`` bool [H, W]."""

    iteration: int
    pick: str
    boxes: np.ndarray
    rle: dict[str, Any] = field(repr=False)

    @classmethod
    def from_event(cls, data: dict[str, Any]) -> "ClientIteration":
        boxes = np.asarray(data.get("boxes") or np.zeros((0, 4)), dtype=np.float32).reshape(-1, 4)
        return cls(int(data["iteration"]), data["pick"], boxes, data["binary_rle"])


def _file_bytes(image: ImageLike) -> bytes:
    """The image as a file: a path's bytes, bytes as given, an array as PNG (lossless: the server
    gets the same pixels)."""
    if isinstance(image, (str, Path)):
        return Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buf = io.BytesIO()
    Image.fromarray(_pixels(image)).save(buf, format="PNG")
    return buf.getvalue()


def _pixels(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise TypeError(f"expected a path, file bytes or uint8 [H, W, 3] RGB pixels, got {type(image).__name__}")
    return arr


def _form(options: dict[str, Any]) -> dict[str, str]:
    """The options as form fields (``ablation={"pnm": False}`` -> ``"pnm=off"``)."""
    return {k: _text(v) for k, v in options.items() if v is not None}


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={'on' if v else 'off'}" for k, v in value.items())
    return str(value)


def _infer_body(image: ImageLike, options: dict[str, Any]) -> dict[str, Any]:
    """A v2 inference request: an array as a UINT8 tensor, a file as a BYTES one (base64)."""
    if isinstance(image, np.ndarray):
        pixels = _pixels(image)
        tensor = {"name": "image", "datatype": "UINT8", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}
    else:
        tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(_file_bytes(image)).decode()]}
    params = {k: (_text(v) if isinstance(v, dict) else v) for k, v in options.items() if v is not None}
    return {"inputs": [tensor], "parameters": params}


def retry_after(response: httpx.Response) -> float:
    """A 429's ``Retry-After`` in seconds (a number or an HTTP date), 1 when absent, at most ``MAX_WAIT_S``."""
    value = response.headers.get("retry-after", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            seconds = 1.0
    return min(max(seconds, 0.0), MAX_WAIT_S)


def failure(response: httpx.Response) -> ServiceError:
    """The ``ServiceError`` of an error answer: v1's ``{"error": {status, message}}``, the v2
    protocol's ``{"error": message}``, or the body's text."""
    try:
        err = response.json()["error"]
        message = err["message"] if isinstance(err, dict) else str(err)
    except (ValueError, KeyError, TypeError):
        message = response.text[:500] or response.reason_phrase
    wait = retry_after(response) if response.status_code == 429 else None
    return ServiceError(response.status_code, message, wait)


class _Events:
    """Server-Sent Events read line by line: ``feed`` returns each event's item once its blank
    line arrives (None meanwhile, and for a comment: a heartbeat); an ``error`` event raises."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def feed(self, line: str) -> ClientIteration | ClientResult | None:
        if line:
            self.lines.append(line)
            return None
        lines, self.lines = self.lines, []
        name = next((x[6:].strip() for x in lines if x.startswith("event:")), "message")
        data = [x[5:].removeprefix(" ") for x in lines if x.startswith("data:")]
        if not data:
            return None
        body = json.loads("\n".join(data))
        if name == "iteration":
            return ClientIteration.from_event(body)
        if name == "result":
            return ClientResult.from_v1(body)
        err = body.get("error", {})
        raise ServiceError(int(err.get("status", 500)), str(err.get("message", body)))


def _check_stream(response: httpx.Response) -> None:
    ctype = response.headers.get("content-type", "")
    if not ctype.startswith("text/event-stream"):
        raise ServiceError(
            response.status_code, f"expected an event stream (text/event-stream), got {ctype or 'no content type'}"
        )


class _Base:
    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int, protocol: str) -> None:
        if protocol not in ("v1", "v2"):
            raise ValueError(f"protocol must be 'v1' or 'v2', got {protocol!r}")
        self.url, self.retries, self.protocol = url.rstrip("/"), max(0, int(retries)), protocol
        self.headers = {"User-Agent": f"int-engine-client/{__version__}"}
        if api_key is not None:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _request(self, image: ImageLike, options: dict[str, Any], stream: bool = False) -> dict[str, Any]:
        """httpx request arguments for one segmentation."""
        if self.protocol == "v2" and not stream:
            return {"method": "POST", "url": f"/v2/models/{MODEL}/infer", "json": _infer_body(image, options)}
        return {
            "method": "POST",
            "url": "/v1/segment" + ("?stream=true" if stream else ""),
            "files": {"image": ("image", _file_bytes(image), "application/octet-stream")},
            "data": _form(options),
        }

    def _result(self, response: httpx.Response) -> ClientResult:
        if response.status_code != 200:
            raise failure(response)
        body = response.json()
        return ClientResult.from_v2(body) if self.protocol == "v2" else ClientResult.from_v1(body)


class Client(_Base):
    """A blocking client (thread-safe: one keep-alive connection pool).

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer KEY`` (``serve --api-key-file``).
        timeout: seconds per request (connect, each read; a stream's heartbeats keep it alive).
        retries: times a 429 is retried, each after its ``Retry-After``.
        protocol: ``"v1"`` (``/v1/segment``) or ``"v2"`` (the Open Inference Protocol) for ``segment``.
        transport: an httpx transport instead of the network (tests).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 3,
        protocol: str = "v1",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, protocol)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    def segment(self, image: ImageLike, **options: Any) -> ClientResult:
        """Segment one image with the request's ``options`` (task, preset, iterations, seed, ablation)."""
        request, attempt = self._request(image, options), 0
        while True:
            response = self.http.request(**request)
            if response.status_code != 429 or attempt == self.retries:
                return self._result(response)
            attempt += 1
            time.sleep(retry_after(response))

    def iterations(self, image: ImageLike, **options: Any) -> Iterator[ClientIteration | ClientResult]:
        """Each iteration as it lands (``ClientIteration``), then the ``ClientResult``; raises
        ``ServiceError`` for an error answer or an error event. Leaving early cancels the image."""
        request = self._request(image, options, stream=True)
        for attempt in range(self.retries + 1):
            with self.http.stream(**request) as response:
                if response.status_code == 429 and attempt < self.retries:
                    time.sleep(retry_after(response))
                    continue
                if response.status_code != 200:
                    response.read()
                    raise failure(response)
                _check_stream(response)
                events = _Events()
                for line in response.iter_lines():
                    item = events.feed(line)
                    if item is not None:
                        yield item
                        if isinstance(item, ClientResult):
                            return
                raise ServiceError(502, "the stream ended without a result")

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 200 (serving, queue not full)."""
        return self.http.get("/readyz").status_code == 200

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """``Client`` for asyncio: the same arguments (``transport``: an ``httpx.AsyncBaseTransport``,
    e.g. ``httpx.ASGITransport(app)``); ``await segment(...)``, ``async for item in iterations(...)``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 300.0,
        retries: int = 3,
        protocol: str = "v1",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, protocol)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    async def segment(self, image: ImageLike, **options: Any) -> ClientResult:
        request, attempt = self._request(image, options), 0
        while True:
            response = await self.http.request(**request)
            if response.status_code != 429 or attempt == self.retries:
                return self._result(response)
            attempt += 1
            await asyncio.sleep(retry_after(response))

    async def iterations(self, image: ImageLike, **options: Any) -> AsyncIterator[ClientIteration | ClientResult]:
        request = self._request(image, options, stream=True)
        for attempt in range(self.retries + 1):
            async with self.http.stream(**request) as response:
                if response.status_code == 429 and attempt < self.retries:
                    await asyncio.sleep(retry_after(response))
                    continue
                if response.status_code != 200:
                    await response.aread()
                    raise failure(response)
                _check_stream(response)
                events = _Events()
                async for line in response.aiter_lines():
                    item = events.feed(line)
                    if item is not None:
                        yield item
                        if isinstance(item, ClientResult):
                            return
                raise ServiceError(502, "the stream ended without a result")

    async def ready(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
